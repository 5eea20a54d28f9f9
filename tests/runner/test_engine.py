"""The runner's engine in-process on SmolLM2: batching, prefix reuse, stop strings, UTF-8, shifting."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollama.runner.engine import CompletionJob, EmbedJob, Engine, common_prefix, split_stop
from pollama.runner.native import Context, ContextParams, Model, ModelParams, SamplingParams

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)


def test_split_stop_holds_back_partial_matches() -> None:
    assert split_stop("hello", ("</s>",)) == ("hello", "", False)
    assert split_stop("hello</", ("</s>",)) == ("hello", "</", False)
    assert split_stop("hello</s> more", ("</s>",)) == ("hello", "", True)
    assert split_stop("ab", ("abc", "b")) == ("a", "", True)
    assert split_stop("xa", ("abc",)) == ("x", "a", False)
    assert split_stop("text", ()) == ("text", "", False)


@pytest.mark.parametrize("text", ["one two STOP three", "STOP", "no stop here at all", "ST OP STO"])
def test_stop_matching_is_independent_of_chunking(text: str) -> None:
    stops = ("STOP",)

    def run(chunks: list[str]) -> str:
        held, out = "", []
        for chunk in chunks:
            emit, held, stopped = split_stop(held + chunk, stops)
            out.append(emit)
            if stopped:
                return "".join(out)
        return "".join(out) + held

    whole = run([text])
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]]) == whole
    assert run(list(text)) == whole


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2


@pytest.fixture(scope="module")
def engine(smollm2_gguf: Path) -> Iterator[Engine]:
    model = Model(ModelParams(path=smollm2_gguf))
    ctx = Context(model, ContextParams(n_ctx=512 * 4, n_batch=128, n_seq_max=4))
    eng = Engine(model, ctx, num_ctx=512, num_parallel=4, num_batch=128)
    eng.start()
    yield eng
    eng.stop()
    ctx.close()
    model.close()


def run_job(engine: Engine, prompt: str, **kw: object) -> tuple[str, dict]:
    done = threading.Event()
    text: list[str] = []
    final: dict = {}

    def emit(event: dict) -> None:
        if "content" in event:
            text.append(event["content"])
        if event.get("done") or "error" in event:
            final.update(event)
            done.set()

    tokens = engine.model.tokenize(prompt)
    job = CompletionJob(tokens=tokens, sampling=kw.pop("sampling", GREEDY), emit=emit, **kw)  # type: ignore[arg-type]
    engine.submit(job)
    assert done.wait(120)
    return "".join(text), final


def test_greedy_is_deterministic_and_counts(engine: Engine) -> None:
    a, fa = run_job(engine, "The capital of France is", num_predict=12)
    b, fb = run_job(engine, "The capital of France is", num_predict=12)
    assert a == b and a
    assert fa["done_reason"] == "length" and fa["eval_count"] == 12
    # The second run reuses the cached prompt: only the last prompt token is evaluated again.
    assert fb["prompt_eval_count"] == fa["prompt_eval_count"] == len(engine.model.tokenize("The capital of France is"))
    assert fa["prompt_cached"] == 0 or fa["prompt_cached"] == fa["prompt_eval_count"] - 1
    assert fb["prompt_cached"] == fb["prompt_eval_count"] - 1


def test_parallel_jobs_match_solo(engine: Engine) -> None:
    prompts = ["Hello, my name is", "Once upon a time", "The best fruit is", "In 1492,"]
    solo = [run_job(engine, p, num_predict=16)[0] for p in prompts]
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        results[i] = run_job(engine, prompts[i], num_predict=16)[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(4)] == solo


def test_stop_string_across_tokens(engine: Engine) -> None:
    full, _ = run_job(engine, "Count: 1, 2, 3,", num_predict=20)
    assert " 6" in full, full
    stopped, final = run_job(engine, "Count: 1, 2, 3,", num_predict=20, stop=(" 6",))
    assert stopped == full[: full.index(" 6")]
    assert final["done_reason"] == "stop"


def test_utf8_is_never_split(engine: Engine) -> None:
    chunks: list[str] = []
    done = threading.Event()

    def emit(event: dict) -> None:
        if "content" in event:
            chunks.append(event["content"])
        if event.get("done"):
            done.set()

    prompt = "Translate to Japanese: good morning ->"
    engine.submit(CompletionJob(tokens=engine.model.tokenize(prompt), sampling=GREEDY, emit=emit, num_predict=24))
    assert done.wait(60)
    assert all("\ufffd" not in c for c in chunks)
    "".join(chunks).encode("utf-8")


def test_context_shift_keeps_generating(engine: Engine) -> None:
    _, final = run_job(
        engine,
        "Write a very long story about a dragon.",
        num_predict=700,
        sampling=SamplingParams(temperature=0.7, seed=3),
    )
    assert final["done_reason"] in ("length", "stop")
    if final["done_reason"] == "length":
        assert final["eval_count"] == 700  # past num_ctx=512 thanks to shifting


def test_no_shift_stops_at_context(engine: Engine) -> None:
    _, final = run_job(
        engine,
        "Write a very long story about a dragon.",
        num_predict=700,
        shift=False,
        sampling=SamplingParams(temperature=0.7, seed=3),
    )
    assert final["done_reason"] in ("length", "stop")
    assert final["eval_count"] < 512


def test_cancel_frees_slot(engine: Engine) -> None:
    started = threading.Event()
    jobs = []
    for _ in range(4):
        job = CompletionJob(
            tokens=engine.model.tokenize("Tell me everything."),
            sampling=GREEDY,
            emit=lambda e: started.set(),
            num_predict=100000,
        )
        engine.submit(job)
        jobs.append(job)
    assert started.wait(30)
    for job in jobs:
        engine.cancel(job)
    _, final = run_job(engine, "Hi", num_predict=2)
    assert final["eval_count"] == 2


def test_prompt_too_long_without_shift_is_an_error(engine: Engine) -> None:
    _, final = run_job(engine, "word " * 600, num_predict=2, shift=False)
    assert final["kind"] == "invalid_request" and "longer than the context length" in final["error"]


def test_embed_job_requires_embedding_context(smollm2_gguf: Path) -> None:
    model = Model(ModelParams(path=smollm2_gguf))
    ctx = Context(model, ContextParams(n_ctx=256, n_batch=256, embeddings=True))
    eng = Engine(model, ctx, num_ctx=256, num_parallel=1, num_batch=256)
    eng.start()
    try:
        result: dict = {}
        done = threading.Event()
        eng.submit(
            EmbedJob(
                inputs=[model.tokenize("hello"), model.tokenize("hello world")],
                emit=lambda e: (result.update(e), done.set()),
            )
        )
        assert done.wait(60)
        assert len(result["embeddings"]) == 2 and len(result["embeddings"][0]) == model.n_embd
        assert result["embeddings"][0] != result["embeddings"][1]
    finally:
        eng.stop()
        ctx.close()
        model.close()


def test_logprobs_of_greedy_tokens(engine: Engine) -> None:
    events: list[dict] = []
    done = threading.Event()

    def emit(event: dict) -> None:
        events.append(event)
        if event.get("done"):
            done.set()

    engine.submit(
        CompletionJob(
            tokens=engine.model.tokenize("The capital of France is"),
            sampling=GREEDY,
            emit=emit,
            num_predict=5,
            logprobs=True,
            top_logprobs=3,
        )
    )
    assert done.wait(60)
    entries = [p for e in events for p in e.get("logprobs", [])]
    assert len(entries) == 5
    for entry in entries:
        top = entry["top_logprobs"]
        assert len(top) == 3 and top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]
        assert entry["token"] == top[0]["token"] and entry["logprob"] == top[0]["logprob"] <= 0
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
    assert "".join(e["token"] for e in entries) == "".join(e.get("content", "") for e in events)


@pytest.mark.parametrize("mirostat", [1, 2])
def test_mirostat_sampling_is_seeded(engine: Engine, mirostat: int) -> None:
    params = SamplingParams(temperature=0.8, mirostat=mirostat, mirostat_tau=5.0, mirostat_eta=0.1, seed=11)
    a, fa = run_job(engine, "Once upon a time", num_predict=16, sampling=params)
    b, _ = run_job(engine, "Once upon a time", num_predict=16, sampling=params)
    assert a == b and fa["eval_count"] == 16


def test_penalties_and_truncation_samplers_change_output(engine: Engine) -> None:
    plain, _ = run_job(engine, "Repeat after me: la la la la la", num_predict=24)
    penalized, _ = run_job(
        engine,
        "Repeat after me: la la la la la",
        num_predict=24,
        sampling=SamplingParams(
            temperature=0, repeat_penalty=1.8, repeat_last_n=64, presence_penalty=1.0, frequency_penalty=1.0
        ),
    )
    assert plain != penalized
    a, _ = run_job(
        engine,
        "My favourite animal is",
        num_predict=16,
        sampling=SamplingParams(temperature=1.5, top_k=5, top_p=0.5, min_p=0.1, typical_p=0.9, seed=4),
    )
    b, _ = run_job(
        engine,
        "My favourite animal is",
        num_predict=16,
        sampling=SamplingParams(temperature=1.5, top_k=5, top_p=0.5, min_p=0.1, typical_p=0.9, seed=4),
    )
    assert a == b and a


# A grammar that never reaches an accepting state: the model can never end the text on its own,
# so only a length limit stops it.
ENDLESS = 'root ::= "a" root'


@pytest.fixture(scope="module")
def tiny_engine(smollm2_gguf: Path) -> Iterator[Engine]:
    """An engine with a 16-token context, so Ollama's cap (10 × num_ctx = 160 tokens) is quick to reach."""
    model = Model(ModelParams(path=smollm2_gguf))
    ctx = Context(model, ContextParams(n_ctx=16 * 2, n_batch=16, n_seq_max=2))
    eng = Engine(model, ctx, num_ctx=16, num_parallel=2, num_batch=16)
    eng.start()
    yield eng
    eng.stop()
    ctx.close()
    model.close()


@pytest.mark.parametrize("num_predict", [-1, -2, 2**63, 10_000])
def test_num_predict_is_capped_at_ten_times_num_ctx(tiny_engine: Engine, num_predict: int) -> None:
    sampling = SamplingParams(temperature=0, grammar=ENDLESS)
    text, final = run_job(tiny_engine, "Say a", num_predict=num_predict, sampling=sampling)
    assert (final["done_reason"], final["eval_count"]) == ("length", 160)
    assert set(text) == {"a"}


def test_num_predict_below_the_cap_is_kept(tiny_engine: Engine) -> None:
    _, final = run_job(tiny_engine, "Say a", num_predict=7, sampling=SamplingParams(temperature=0, grammar=ENDLESS))
    assert (final["done_reason"], final["eval_count"]) == ("length", 7)


@pytest.mark.parametrize("bad", [49152, -1, 2**31, 2**63])
def test_out_of_vocabulary_ids_are_refused_and_the_engine_keeps_serving(engine: Engine, bad: int) -> None:
    from pollama.errors import InvalidRequest

    tokens = [*engine.model.tokenize("Hello"), bad]
    job = CompletionJob(tokens=tokens, sampling=GREEDY, emit=lambda e: None, num_predict=2)
    with pytest.raises(InvalidRequest, match=rf"^invalid token id {bad}: the model's vocabulary has ids 0 to 49151$"):
        engine.submit(job)
    with pytest.raises(InvalidRequest, match="^invalid token id"):
        engine.submit(EmbedJob(inputs=[[1, 2], [bad]], emit=lambda e: None))
    with pytest.raises(InvalidRequest, match="^invalid token id"):
        engine.model.detokenize([1, bad])
    assert engine.busy == 0
    _, final = run_job(engine, "Hi", num_predict=2)
    assert final["eval_count"] == 2


def test_cancel_removes_a_queued_job_at_once(engine: Engine) -> None:
    started = threading.Event()
    runners = []
    for _ in range(4):  # fill every slot
        job = CompletionJob(
            tokens=engine.model.tokenize("Tell me everything."),
            sampling=GREEDY,
            emit=lambda e: started.set(),
            num_predict=100000,
        )
        engine.submit(job)
        runners.append(job)
    assert started.wait(30)
    events: list[dict] = []
    queued = CompletionJob(tokens=engine.model.tokenize("Queued"), sampling=GREEDY, emit=events.append)
    engine.submit(queued)
    assert engine.busy == 5
    engine.cancel(queued)
    assert engine.busy == 4 and queued.chain is None  # its sampler chain was freed with it
    for job in runners:
        engine.cancel(job)
    _, final = run_job(engine, "Hi", num_predict=2)
    assert final["eval_count"] == 2 and events == []


def test_stop_waits_for_the_engine_thread_and_fails_waiting_jobs(smollm2_gguf: Path) -> None:
    model = Model(ModelParams(path=smollm2_gguf))
    ctx = Context(model, ContextParams(n_ctx=256, n_batch=64, n_seq_max=1))
    eng = Engine(model, ctx, num_ctx=256, num_parallel=1, num_batch=64)
    eng.start()
    events: list[dict] = []
    started = threading.Event()

    def emit(event: dict) -> None:
        events.append(event)
        started.set()

    endless = SamplingParams(temperature=0, grammar=ENDLESS)
    eng.submit(CompletionJob(tokens=model.tokenize("Tell me a story."), sampling=endless, emit=emit))
    waiting: list[dict] = []
    eng.submit(CompletionJob(tokens=model.tokenize("Waiting"), sampling=endless, emit=waiting.append))
    assert started.wait(30)
    assert eng.stop() is True
    assert eng._thread is not None and not eng._thread.is_alive()
    assert events[-1] == {"error": "runner is shutting down", "kind": "canceled"}
    assert waiting == [{"error": "runner is shutting down", "kind": "canceled"}]
    assert eng.stop() is True  # idempotent
    ctx.close()
    model.close()
