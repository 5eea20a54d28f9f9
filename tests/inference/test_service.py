"""The inference service end to end over a fake runner: prompt, parsing, statistics, context,
truncation, embeddings, running models, and that nothing slow runs on the event loop."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from pollama.errors import InvalidRequest, TemplateExecError, UnsupportedCapability
from pollama.inference import Chunk, CompletionRequest, EmbedRequest
from pollama.inference.service import InferenceService
from tests.inference.conftest import Install
from tests.inference.fake_runner import CHATML, FakeRunner, Runners

T = TypeVar("T")
MakeService = Callable[..., InferenceService]


def serve(make_service: MakeService, work: Callable[[InferenceService], Awaitable[T]], **settings: Any) -> T:
    """Run ``work`` against a started service, then close it."""

    async def main() -> T:
        service = make_service(**settings)
        service.start()
        try:
            return await work(service)
        finally:
            await service.close()

    return asyncio.run(main())


async def answer(service: InferenceService, req: CompletionRequest) -> list[Chunk]:
    return [chunk async for chunk in service.complete(req)]


def chat(content: str, **fields: Any) -> CompletionRequest:
    return CompletionRequest(model="m", messages=[{"role": "user", "content": content}], **fields)


def test_chat_renders_the_template_and_streams_the_reply(
    install: Install, make_service: MakeService, runners: Runners
) -> None:
    install("m", template=CHATML, system="Be brief.", parameters={"temperature": 0.5, "num_ctx": 1024})
    runners.replies.append(["Hel", "lo", "!"])
    chunks = serve(make_service, lambda s: answer(s, chat("Hi")))
    runner = runners.last
    assert runner.completions[0].prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # Load-time options go into the runner's spec, sampling options to the generation.
    assert runner.spec.num_ctx == 1024 and runner.completions[0].options == {"temperature": 0.5}
    assert runner.completions[0].return_tokens is False
    assert [c.content for c in chunks] == ["Hel", "lo", "!", ""]
    final = chunks[-1]
    assert final.done and final.done_reason == "stop" and final.model == "m" and final.context is None
    assert final.stats is not None
    assert (final.stats.prompt_eval_count, final.stats.eval_count) == (len(runner.completions[0].prompt) + 1, 3)
    assert final.stats.total_duration >= final.stats.load_duration > 0


def test_load_duration_is_measured_when_the_model_is_already_loaded(
    install: Install, make_service: MakeService, runners: Runners
) -> None:
    # Ollama reports the time it took to get a runner, loaded or not; 0 made `--verbose` drop the line.
    install("m", template=CHATML)

    async def work(service: InferenceService) -> list[int]:
        durations = []
        for _ in range(2):
            final = (await answer(service, chat("Hi")))[-1]
            assert final.stats is not None
            durations.append(final.stats.load_duration)
        embedded = await service.embed(EmbedRequest(model="m", inputs=["x"]))
        return [*durations, embedded.load_duration]

    durations = serve(make_service, work)
    assert len(runners.started) == 2  # one completion runner (reused), one embedding runner
    assert all(d > 0 for d in durations), durations


def test_generate_context_continues_the_conversation(
    install: Install, make_service: MakeService, runners: Runners
) -> None:
    install(
        "m",
        template=CHATML,
        messages=[{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "noted"}],
    )
    runners.replies += [["Four."], ["Five."]]

    async def work(service: InferenceService) -> tuple[list[Chunk], list[Chunk]]:
        first = await answer(service, CompletionRequest(model="m", endpoint="generate", prompt="2+2?"))
        context = first[-1].context
        assert context is not None
        second = await answer(
            service, CompletionRequest(model="m", endpoint="generate", prompt="And 2+3?", context=context)
        )
        return first, second

    first, second = serve(make_service, work)
    runner = runners.last
    first_prompt = (
        "<|im_start|>user\nearlier<|im_end|>\n<|im_start|>assistant\nnoted<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert runner.completions[0].prompt == first_prompt
    # context = the prompt's tokens (BOS included) + the generated ones
    assert first[-1].context == FakeRunner.tokens_of(first_prompt) + [ord(c) for c in "Four."]
    # Sent back, it is detokenized in front of the new prompt, and the model's MESSAGEs are not repeated.
    assert runner.completions[1].prompt == (
        first_prompt + "Four." + "<|im_start|>user\nAnd 2+3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert second[-1].stats is not None
    assert second[-1].stats.prompt_eval_count == len(runner.completions[1].prompt) + 1


def test_truncation_counts_candidates_in_batches(install: Install, make_service: MakeService, runners: Runners) -> None:
    install("m", template=CHATML, parameters={"num_ctx": 200})
    history = [{"role": "system", "content": "S"}]
    for i in range(20):
        history.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i:02d} " + "x" * 30})
    history.append({"role": "user", "content": "last"})
    serve(make_service, lambda s: answer(s, CompletionRequest(model="m", messages=history)))
    runner = runners.last
    # Only the system message, the newest history message and the last one fit in 200 tokens.
    assert runner.completions[0].prompt == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>assistant\nmessage 19 " + "x" * 30 + "<|im_end|>\n"
        "<|im_start|>user\nlast<|im_end|>\n<|im_start|>assistant\n"
    )
    # Candidates are counted oldest first in batches of 1, 2, 4, 8, then the 6 left (one runner call per
    # batch, not per candidate); the one that fits is short enough to need no count (its byte length).
    assert [len(call) for call in runner.count_calls] == [1, 2, 4, 8, 5]
    assert runner.tokenize_calls == []


def test_short_history_is_never_counted(install: Install, make_service: MakeService, runners: Runners) -> None:
    install("m", template=CHATML)
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    serve(make_service, lambda s: answer(s, CompletionRequest(model="m", messages=messages)))
    assert runners.last.count_calls == [] and runners.last.tokenize_calls == []


def test_thinking_and_tool_calls_are_parsed(install: Install, make_service: MakeService, runners: Runners) -> None:
    template = (
        "{{- range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}"
        "{{ if .ToolCalls }}<tool_call>{{ range .ToolCalls }}{{ json .Function }}{{ end }}</tool_call>"
        "{{ end }}{{ end }}{{ if .Tools }}{{ json .Tools }}{{ end }}"
    )
    install("m", template=template)
    runners.replies.append(
        [
            "<thi",
            "nk>Let me see",
            ".</think>",
            "Calling. <tool_call>",
            '{"name": "weather", "arguments": {"city": "Paris"}}',
            "</tool_call>",
        ]
    )
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    chunks = serve(make_service, lambda s: answer(s, chat("Weather?", tools=tools)))
    assert "".join(c.thinking for c in chunks) == "Let me see."
    assert "".join(c.content for c in chunks) == "Calling. "
    calls = [call for c in chunks for call in c.tool_calls]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [("weather", {"city": "Paris"})]


def test_request_checks(install: Install, make_service: MakeService, runners: Runners) -> None:
    install("m", template=CHATML)

    async def work(service: InferenceService) -> list[str]:
        errors = []
        for req in (
            chat("x", think=True),
            CompletionRequest(model="m", endpoint="generate", prompt="x", raw=True, system="s"),
            CompletionRequest(model="m", endpoint="generate", prompt="x", images=["aGk="]),
        ):
            with pytest.raises(InvalidRequest) as err:
                await answer(service, req)
            errors.append(str(err.value))
        return errors

    assert serve(make_service, work) == [
        '"m" does not support thinking',
        "raw mode does not support template, system, or context",
        "this model is missing data required for image input",
    ]
    assert runners.started == []  # refused before any runner is loaded


def test_runner_errors_reach_the_caller(install: Install, make_service: MakeService, runners: Runners) -> None:
    install("m", template=CHATML)

    async def work(service: InferenceService) -> None:
        await answer(service, chat("warm up"))
        runners.last.failure = InvalidRequest("input is too long")
        await answer(service, chat("again"))

    with pytest.raises(InvalidRequest, match="input is too long"):
        serve(make_service, work)


def test_debug_render_only_and_load_and_unload(install: Install, make_service: MakeService, runners: Runners) -> None:
    install("m", template=CHATML)

    async def work(service: InferenceService) -> list[Chunk]:
        debug = await answer(service, chat("Hi", debug_render_only=True))
        loaded = await answer(service, CompletionRequest(model="m"))
        running = service.running()
        unloaded = await answer(service, CompletionRequest(model="m", keep_alive=0))
        assert [r.name for r in running] == ["m:latest"] and service.running() == []
        return debug + loaded + unloaded

    debug, loaded, unloaded = serve(make_service, work)
    assert debug.debug_info == {"rendered_template": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"}
    assert runners.last.completions == []
    assert (loaded.done_reason, unloaded.done_reason) == ("load", "unload")


def test_running_models_are_boundary_values(install: Install, make_service: MakeService, runners: Runners) -> None:
    install("m", template=CHATML, parameters={"num_ctx": 512})

    async def work(service: InferenceService) -> Any:
        await answer(service, chat("Hi", keep_alive=math.inf))
        return service.running()

    started = time.time()
    (running,) = serve(make_service, work)
    assert (running.name, running.model, running.context_length, running.size, running.size_vram) == (
        "m:latest",
        "m:latest",
        512,
        1000,
        0,
    )
    assert running.expires_at == math.inf and running.digest
    (short,) = serve(make_service, lambda s: _run_and_list(s, 60))
    assert started + 59 <= short.expires_at <= time.time() + 61


async def _run_and_list(service: InferenceService, keep_alive: float) -> Any:
    await answer(service, chat("Hi", keep_alive=keep_alive))
    return service.running()


def test_embeddings(install: Install, make_service: MakeService, runners: Runners) -> None:
    install("e", embedding=True, parameters={"num_ctx": 8})

    async def work(service: InferenceService) -> Any:
        whole = await service.embed(EmbedRequest(model="e", inputs=["abc", "abcdefghijk"], dimensions=2))
        with pytest.raises(InvalidRequest, match="the input length exceeds the context length"):
            await service.embed(EmbedRequest(model="e", inputs=["abcdefghijk"], truncate=False))
        return whole

    result = serve(make_service, work)
    # inputs: BOS + 3 tokens, and BOS + 11 tokens cut to the runner's 8; vectors normalised, cut to 2, renormalised
    assert result.prompt_eval_count == 4 + 8
    assert result.embeddings == [[1.0, 0.0], [1.0, 0.0]]
    assert runners.last.tokenize_calls == ["abc", "abcdefghijk", "abcdefghijk"]


def test_capabilities_refuse_tools_for_embedding_models(install: Install, make_service: MakeService) -> None:
    install("e", embedding=True)
    with pytest.raises(UnsupportedCapability, match='"e" does not support chat'):
        serve(
            make_service, lambda s: answer(s, CompletionRequest(model="e", messages=[{"role": "user", "content": "x"}]))
        )


# --- nothing slow on the event loop ---------------------------------------------------------------


def _ticking(work: Callable[[InferenceService], Awaitable[Any]]) -> Callable[[InferenceService], Awaitable[Any]]:
    """``work`` run beside a ticker; returns (the largest gap between ticks, how long ``work`` took)."""

    async def run(service: InferenceService) -> tuple[float, float]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        try:
            await work(service)
        except TemplateExecError:
            pass  # a template budget may end the render early; the loop must stay free meanwhile either way
        elapsed = time.perf_counter() - started
        stop.set()
        await ticker
        return max(gaps), elapsed

    return run


@pytest.mark.parametrize("where", ["request", "stored"])
def test_go_template_renders_off_the_event_loop(where: str, install: Install, make_service: MakeService) -> None:
    heavy = "{{ range 400000 }}{{ end }}{{ .Prompt }}"
    install("m", template=heavy if where == "stored" else CHATML)
    req = CompletionRequest(model="m", endpoint="generate", prompt="x", template=heavy if where == "request" else None)
    gap, elapsed = serve(make_service, _ticking(lambda s: answer(s, req)))
    assert gap < min(0.1, elapsed / 2), (gap, elapsed)


def test_jinja_template_renders_off_the_event_loop(install: Install, make_service: MakeService) -> None:
    heavy = (
        "{% set ns = namespace(n=0) %}{% for i in range(100) %}{% for j in range(300) %}"
        "{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
    )
    install("j", chat_template=heavy)
    req = CompletionRequest(model="j", messages=[{"role": "user", "content": "x"}])
    gap, elapsed = serve(make_service, _ticking(lambda s: answer(s, req)))
    assert gap < min(0.1, elapsed / 2), (gap, elapsed)
