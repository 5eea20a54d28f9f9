"""Prompt-lookup speculative decoding in the engine: the output is the same with and without it.

Greedy output must match token for token (stop strings, a JSON-schema grammar, repeat penalties,
logprobs, a context shift, concurrent streams). Sampled output at a fixed seed must match too: the
engine samples every position from the full chain and keeps a draft token only when it is the one
drawn, which uses the same random draws in the same order as decoding without a draft, so any other
acceptance rule (or a chain that saw a different history) would show up as a different text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_cpp.llama_grammar import json_schema_to_gbnf

from pollama.runner.engine import Engine, PromptLookup
from pollama.runner.native import Context, ContextParams, Model, ModelParams, SamplingParams
from tests.conftest import chatml, run_completion

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)

PASSAGE = (
    "The committee met on Tuesday to review the budget for the new library. After a long discussion, "
    "members agreed to fund the children's section, the reading room and a small cafe, but postponed "
    "the decision on the parking lot until spring."
)


COPY = chatml(f"Repeat this passage exactly:\n{PASSAGE}")


@pytest.fixture(scope="module")
def model(smollm2_gguf: Path) -> Iterator[Model]:
    with Model(ModelParams(path=smollm2_gguf)) as m:
        yield m


@pytest.fixture(scope="module")
def engine(model: Model) -> Iterator[Engine]:
    ctx = Context(model, ContextParams(n_ctx=512 * 4, n_batch=128, n_seq_max=4))
    eng = Engine(model, ctx, num_ctx=512, num_parallel=4, num_batch=128)
    eng.start()
    yield eng
    eng.stop()
    ctx.close()


def both(engine: Engine, prompt: str, **kw: Any) -> tuple[tuple[str, dict[str, Any], list[dict[str, Any]]], ...]:
    """The job without speculation, then with it, on the same cache: the prompt runs once first,
    so both find it cached and evaluate only its last token. (A prompt of 64 tokens or more
    evaluated in one batch takes ggml's tiled flash attention, a single token does not; the
    float difference can flip a near-tie of this small model, with or without speculation.)"""
    run_completion(engine, prompt, draft_max=0, **kw)
    return run_completion(engine, prompt, draft_max=0, **kw), run_completion(engine, prompt, **kw)


def test_lookup_drafts_what_followed_the_last_ngram() -> None:
    lookup = PromptLookup([5, 6, 7, 8, 9, 5, 6, 7])
    assert lookup.draft(3) == [8, 9, 5]  # after the earlier 5 6 7
    assert lookup.draft(0) == []
    lookup.extend(8)  # 6 7 8 recurs: its continuation is 9 5 6 ...
    assert lookup.draft(2) == [9, 5]
    assert PromptLookup([1, 2, 3, 4]).draft(4) == []  # nothing recurs
    assert PromptLookup([1, 2, -7, 3, 1, 2]).draft(4) == []  # an image's pseudo-token is never drafted
    assert PromptLookup([1, 2, 3, 9, 9, 2, 3]).draft(2) == [9, 9]  # a 2-gram when no 3-gram recurs


def test_copying_is_identical_and_accepts_drafts(engine: Engine) -> None:
    (off, f_off, _), (on, f_on, _) = both(engine, COPY, num_predict=80)
    assert on == off and f_on["tokens"] == f_off["tokens"]
    assert f_on["eval_count"] == f_off["eval_count"] == len(f_off["tokens"])
    assert f_off["draft_tokens"] == 0
    assert f_on["draft_accepted"] > 20  # the passage is copied from the prompt
    assert f_on["draft_accepted"] <= f_on["draft_tokens"]


@pytest.mark.parametrize(
    ("prompt", "options"),
    [
        (chatml("Write a python function that adds two numbers, and a test for it."), {"num_predict": 40}),
        (chatml("List the days of the week, one per line."), {"num_predict": 40, "stop": ("Friday",)}),
        (COPY, {"num_predict": 40, "stop": ("reading room",)}),
        (COPY, {"num_predict": 40, "sampling": SamplingParams(temperature=0, repeat_penalty=1.3, repeat_last_n=16)}),
    ],
    ids=["code", "stop", "stop-in-copy", "penalties"],
)
def test_greedy_output_is_the_same(engine: Engine, prompt: str, options: dict[str, Any]) -> None:
    (off, f_off, _), (on, f_on, _) = both(engine, prompt, **options)
    assert on == off
    assert f_on["tokens"] == f_off["tokens"] and f_on["done_reason"] == f_off["done_reason"]
    for stop in options.get("stop", ()):
        assert stop not in on


def test_json_schema_grammar_output_is_the_same(engine: Engine) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "tags"],
    }
    sampling = SamplingParams(temperature=0, grammar=json_schema_to_gbnf(json.dumps(schema)))
    prompt = chatml(f'Describe this as JSON with a name and tags: "{PASSAGE}"')
    (off, _, _), (on, f_on, _) = both(engine, prompt, num_predict=48, sampling=sampling)
    assert on == off
    if f_on["done_reason"] == "stop":
        assert set(json.loads(on)) == {"name", "tags"}


def test_logprobs_are_the_same(engine: Engine) -> None:
    (off, _, p_off), (on, f_on, p_on) = both(engine, COPY, num_predict=40, logprobs=True, top_logprobs=2)
    assert on == off and f_on["draft_accepted"] > 0
    assert len(p_on) == len(p_off) == 40
    for a, b in zip(p_on, p_off, strict=True):
        assert a["token"] == b["token"] and a["bytes"] == b["bytes"]
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-3)
        assert [t["token"] for t in a["top_logprobs"]] == [t["token"] for t in b["top_logprobs"]]


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=7),
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=1234, repeat_penalty=1.1),
        SamplingParams(temperature=0.8, mirostat=2, seed=5),
    ],
    ids=["top-k-p", "full-vocab-penalty", "mirostat2"],
)
def test_sampled_output_at_a_seed_is_the_same(engine: Engine, sampling: SamplingParams) -> None:
    (off, f_off, _), (on, f_on, _) = both(engine, COPY, num_predict=40, sampling=sampling)
    assert f_on["tokens"] == f_off["tokens"] and on == off


def test_concurrent_streams_with_speculation_match_their_solo_answers(engine: Engine) -> None:
    prompts = [
        COPY,
        chatml("Count from one to twenty in words."),
        chatml("Name three colours."),
        chatml(PASSAGE + " Why?"),
    ]
    solo = [run_completion(engine, p, num_predict=24, draft_max=0)[0] for p in prompts]
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        results[i] = run_completion(engine, prompts[i], num_predict=24)[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(prompts))] == solo


def test_context_shift_output_is_the_same(model: Model) -> None:
    ctx = Context(model, ContextParams(n_ctx=96 * 2, n_batch=64, n_seq_max=2))
    eng = Engine(model, ctx, num_ctx=96, num_parallel=2, num_batch=64)
    eng.start()
    try:
        prompt = chatml("Repeat after me, many times: one two three four five six seven.")
        (off, f_off, _), (on, f_on, _) = both(eng, prompt, num_predict=130)
        assert f_off["eval_count"] == 130  # ran past num_ctx=96: shifted
        assert on == off and f_on["tokens"] == f_off["tokens"]
        assert f_on["draft_accepted"] > 0
    finally:
        eng.stop()
        ctx.close()
