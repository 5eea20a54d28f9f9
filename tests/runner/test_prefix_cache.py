"""Prompt prefixes shared across slots: KV cells copied from the slot that holds (or is evaluating) them.

The reference for what a shared prefix is comes from the tokenizer (the common prefix of the token
lists); the answers are checked against the same prompts evaluated cold in an engine of their own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pollama.runner.engine import SHARE_MIN, CompletionJob, Engine, common_prefix
from pollama.runner.native import Context, ContextParams, Model, ModelParams, SamplingParams

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def model(smollm2_gguf: Path) -> Iterator[Model]:
    with Model(ModelParams(path=smollm2_gguf)) as m:
        yield m


def _engine(model: Model, parallel: int) -> Engine:
    ctx = Context(model, ContextParams(n_ctx=768 * parallel, n_batch=128, n_seq_max=parallel))
    eng = Engine(model, ctx, num_ctx=768, num_parallel=parallel, num_batch=128)
    eng.start()
    return eng


@pytest.fixture(scope="module")
def engine(model: Model) -> Iterator[Engine]:
    eng = _engine(model, 4)
    yield eng
    eng.stop()
    eng.ctx.close()


@pytest.fixture(scope="module")
def cold(model: Model) -> Iterator[Engine]:
    """An engine like ``engine`` (the same geometry, so the same numerics) for reference runs."""
    eng = _engine(model, 4)
    yield eng
    eng.stop()
    eng.ctx.close()


class Run:
    """One submitted job and what it sent back."""

    def __init__(self, engine: Engine, prompt: str, **kw: Any) -> None:
        self.tokens = engine.model.tokenize(prompt)
        self.done = threading.Event()
        self.started = threading.Event()
        self.text: list[str] = []
        self.final: dict[str, Any] = {}
        job = CompletionJob(tokens=self.tokens, sampling=GREEDY, emit=self._emit, **kw)
        engine.submit(job)

    def _emit(self, event: dict[str, Any]) -> None:
        if "content" in event:
            self.text.append(event["content"])
            self.started.set()
        if event.get("done") or "error" in event:
            self.final.update(event)
            self.done.set()

    def result(self) -> tuple[str, dict[str, Any]]:
        assert self.done.wait(600)
        assert "error" not in self.final, self.final
        return "".join(self.text), self.final


def system_prompt(tag: str) -> str:
    rules = " ".join(f"Rule {i}: answer politely and briefly about topic {tag}-{i}." for i in range(24))
    return f"<|im_start|>system\n{rules}<|im_end|>\n"


def question(system: str, i: int) -> str:
    return f"{system}<|im_start|>user\nQuestion {i}: what is {i} plus {i}?<|im_end|>\n<|im_start|>assistant\n"


def cold_answer(cold: Engine, prompt: str) -> str:
    flushes = [Run(cold, f"Flush the cache, slot {i}.", num_predict=4) for i in range(4)]  # one per slot
    for flush in flushes:
        flush.result()
    text, final = Run(cold, prompt, num_predict=16, draft_max=0).result()
    assert final["prompt_cached"] == 0
    return text


def _same_answer(shared: str, cold: str) -> None:
    """The same greedy text, but for where it ends: llama.cpp's results depend slightly on how a
    prompt is split into batches (a copied prefix is one split more), which can flip a near-tie
    between a last full stop and the end of generation; every token before that must match."""
    n = min(len(shared), len(cold))
    assert shared[:n] == cold[:n] and n >= max(len(shared), len(cold)) - 1, (shared, cold)


def test_concurrent_conversations_evaluate_a_shared_system_prompt_once(engine: Engine, cold: Engine) -> None:
    prompts = [question(system_prompt("concurrent"), i) for i in range(4)]
    runs = [Run(engine, p, num_predict=16) for p in prompts]
    results = [run.result() for run in runs]
    shared = common_prefix(runs[0].tokens, runs[1].tokens)
    assert shared > 200 + SHARE_MIN
    assert all(common_prefix(r.tokens, runs[0].tokens) == shared for r in runs[1:])
    cached = sorted(final["prompt_cached"] for _, final in results)
    assert cached == [0, shared, shared, shared]  # the first evaluates it, the others copy it
    for run, (_, final) in zip(runs, results, strict=True):
        assert final["prompt_eval_count"] == len(run.tokens)  # Ollama's count: the whole prompt
    for (text, _), prompt in zip(results, prompts, strict=True):
        _same_answer(text, cold_answer(cold, prompt))


def test_a_prefix_held_by_a_busy_slot_is_copied(engine: Engine, cold: Engine) -> None:
    system = system_prompt("busy")
    first = Run(engine, question(system, 1), num_predict=80)
    assert first.started.wait(600)  # its prompt is in its slot's cache, and it is still generating
    second = Run(engine, question(system, 2), num_predict=16)
    text, final = second.result()
    first.result()
    shared = common_prefix(first.tokens, second.tokens)
    assert final["prompt_cached"] == shared
    assert final["prompt_eval_count"] - final["prompt_cached"] == len(second.tokens) - shared  # only the suffix
    _same_answer(text, cold_answer(cold, question(system, 2)))


def test_a_short_shared_prefix_is_evaluated_not_copied(engine: Engine) -> None:
    prompts = [f"<|im_start|>user\nTell me about the number {i}.<|im_end|>\n" for i in range(2)]
    runs = [Run(engine, p, num_predict=4) for p in prompts]
    finals = [run.result()[1] for run in runs]
    assert common_prefix(runs[0].tokens, runs[1].tokens) < SHARE_MIN
    assert all(f["prompt_cached"] < SHARE_MIN for f in finals)  # at most what a slot's own cache had
