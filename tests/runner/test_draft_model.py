"""Draft-model speculative decoding in the engine: a second model proposes tokens, the target verifies.

The reference for every answer is the same engine code run without a draft model on its own context:
greedy output must match token for token, sampled output at a seed too (the engine samples each
position from the target's full chain and keeps a draft token only when it is the one drawn, so the
random draws are the same in the same order), and the draft model's tokens must actually be used
(``draft_accepted`` > 0). Prompt lookup is turned off (``draft_max=0``) where the test is about the
draft model's own drafts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_cpp.llama_grammar import json_schema_to_gbnf

from pollama.runner.drafter import DraftModel, vocab_mismatch
from pollama.runner.engine import Engine
from pollama.runner.native import Context, ContextParams, Model, ModelParams, SamplingParams
from tests.conftest import chatml, run_completion, start_completion

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)
N_CTX = 512


@pytest.fixture(scope="module")
def model(smollm2_gguf: Path) -> Iterator[Model]:
    with Model(ModelParams(path=smollm2_gguf)) as m:
        yield m


@pytest.fixture(scope="module")
def plain(model: Model) -> Iterator[Engine]:
    """The reference: the same model and engine without a draft model."""
    ctx = Context(model, ContextParams(n_ctx=N_CTX * 2, n_batch=128, n_seq_max=2))
    eng = Engine(model, ctx, num_ctx=N_CTX, num_parallel=2, num_batch=128)
    eng.start()
    yield eng
    eng.stop()
    ctx.close()


def _drafting_engine(model: Model, draft_path: Path, *, num_ctx: int = N_CTX) -> tuple[Engine, Context, DraftModel]:
    draft = Model(ModelParams(path=draft_path))
    assert vocab_mismatch(model, draft) == ""
    dctx = Context(draft, ContextParams(n_ctx=num_ctx * 2, n_batch=128, n_seq_max=2))
    drafter = DraftModel(draft, dctx, n_max=4, num_parallel=2, num_batch=128)
    ctx = Context(model, ContextParams(n_ctx=num_ctx * 2, n_batch=128, n_seq_max=2))
    eng = Engine(model, ctx, num_ctx=num_ctx, num_parallel=2, num_batch=128, drafter=drafter)
    eng.start()
    return eng, ctx, drafter


@pytest.fixture(scope="module")
def drafting(model: Model, smollm2_f16_gguf: Path) -> Iterator[Engine]:
    """The engine with SmolLM2 F16 drafting for SmolLM2 Q4_1 (same vocabulary, other weights' numbers)."""
    eng, ctx, drafter = _drafting_engine(model, smollm2_f16_gguf)
    yield eng
    if eng.stop():
        ctx.close()
        drafter.close()


def test_vocabulary_check_follows_llama_cpp(model: Model, gemma3_gguf: Path, smollm2_f16_gguf: Path) -> None:
    with Model(ModelParams(path=smollm2_f16_gguf, vocab_only=True)) as same:
        assert vocab_mismatch(model, same) == ""
    with Model(ModelParams(path=gemma3_gguf, vocab_only=True)) as other:
        # SmolLM2 is a GPT-2 BPE vocabulary (llama.cpp type 2), Gemma 3 a SentencePiece one (type 1)
        assert vocab_mismatch(model, other) == "the vocabulary types differ (target 2, draft 1)"


@pytest.mark.parametrize(
    ("prompt", "options"),
    [
        (chatml("Write a short poem about the sea."), {"num_predict": 64}),
        (chatml("List three fruits, one per line."), {"num_predict": 48, "stop": ("\n3",)}),
        (chatml("Explain what a CPU does in two sentences."), {"num_predict": 64}),
    ],
)
def test_greedy_output_is_the_same_and_uses_the_drafts(
    plain: Engine, drafting: Engine, prompt: str, options: dict[str, Any]
) -> None:
    off, f_off, _ = run_completion(plain, prompt, draft_max=0, **options)
    on, f_on, _ = run_completion(drafting, prompt, draft_max=0, **options)
    assert on == off
    assert f_on["tokens"] == f_off["tokens"]
    assert f_off["draft_tokens"] == 0
    assert f_on["draft_accepted"] > len(f_on["tokens"]) // 3
    assert f_on["draft_accepted"] <= f_on["draft_tokens"]


def test_grammar_and_logprobs_are_the_same(plain: Engine, drafting: Engine) -> None:
    schema = (
        '{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name","age"]}'
    )
    grammar = SamplingParams(temperature=0, grammar=json_schema_to_gbnf(schema))
    prompt = chatml("Give me a JSON object for a person named Ann aged 31.")
    off = run_completion(plain, prompt, sampling=grammar, draft_max=0, num_predict=40, logprobs=True, top_logprobs=2)
    on = run_completion(drafting, prompt, sampling=grammar, draft_max=0, num_predict=40, logprobs=True, top_logprobs=2)
    assert on[0] == off[0]
    assert [p["token"] for p in on[2]] == [p["token"] for p in off[2]]
    assert [p["logprob"] for p in on[2]] == pytest.approx([p["logprob"] for p in off[2]], abs=1e-3)
    assert on[1]["draft_accepted"] > 0


@pytest.mark.parametrize("seed", [7, 1234])
def test_sampled_output_at_a_seed_is_the_same(plain: Engine, drafting: Engine, seed: int) -> None:
    sampling = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=seed)
    prompt = chatml("Tell me a story about a fox.")
    off, _, _ = run_completion(plain, prompt, sampling=sampling, draft_max=0, num_predict=64)
    on, final, _ = run_completion(drafting, prompt, sampling=sampling, draft_max=0, num_predict=64)
    assert on == off
    assert 0 < final["draft_accepted"] < final["draft_tokens"]  # greedy drafts, sampled target: some rejected


def test_prompt_lookup_and_the_draft_model_together_are_the_same(plain: Engine, drafting: Engine) -> None:
    passage = "The committee met on Tuesday to review the budget for the new library and the parking lot."
    prompt = chatml(f"Repeat this passage exactly:\n{passage}")
    off, _, _ = run_completion(plain, prompt, draft_max=0, num_predict=40)
    on, final, _ = run_completion(drafting, prompt, num_predict=40)
    assert on == off
    assert final["draft_accepted"] > 0


def test_concurrent_streams_match_their_solo_answers(plain: Engine, drafting: Engine) -> None:
    prompts = [chatml("Name a color and describe it."), chatml("Describe a cat in one paragraph.")]
    solo = [run_completion(plain, p, draft_max=0, num_predict=48)[0] for p in prompts]
    started = [start_completion(drafting, p, draft_max=0, num_predict=48) for p in prompts]
    for _, done, _ in started:
        assert done.wait(300)
    assert ["".join(state["text"]) for _, _, state in started] == solo
    # once alone again, the draft sequences catch up with what was generated meanwhile
    assert run_completion(drafting, prompts[0], draft_max=0, num_predict=48)[0] == solo[0]


def test_cancel_mid_draft_leaves_the_next_answer_right(plain: Engine, drafting: Engine) -> None:
    prompt = chatml("Write a long essay about rivers.")
    job, _, state = start_completion(drafting, prompt, draft_max=0, num_predict=200)
    deadline = time.monotonic() + 60
    while not state["text"] and not state["final"] and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for the first output (not ordering: the cancel may land anywhere)
    assert state["text"]
    drafting.cancel(job)
    expected, _, _ = run_completion(plain, prompt, draft_max=0, num_predict=32)
    again, final, _ = run_completion(drafting, prompt, draft_max=0, num_predict=32)
    assert again == expected
    assert final["draft_accepted"] > 0


def test_context_shift_is_the_same(model: Model, smollm2_f16_gguf: Path) -> None:
    num_ctx = 64
    ctx = Context(model, ContextParams(n_ctx=num_ctx * 2, n_batch=128, n_seq_max=2))
    ref = Engine(model, ctx, num_ctx=num_ctx, num_parallel=2, num_batch=128)
    ref.start()
    eng, dctx, drafter = _drafting_engine(model, smollm2_f16_gguf, num_ctx=num_ctx)
    try:
        prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # raw: the model counts on past the context, never stopping
        off, f_off, _ = run_completion(ref, prompt, draft_max=0, num_predict=100)
        on, f_on, _ = run_completion(eng, prompt, draft_max=0, num_predict=100)
        assert len(f_off["tokens"]) == 100  # generated past the context: shifted at least once
        assert on == off
        assert f_on["draft_accepted"] > 0
    finally:
        if ref.stop():
            ctx.close()
        if eng.stop():
            dctx.close()
            drafter.close()
