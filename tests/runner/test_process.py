"""The runner subprocess through its client: load, tokenize, stream, cancel, die."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from pollama.errors import InvalidRequest, RunnerError
from pollama.runner.client import RUNNER_STOPPED, RunnerProcess
from pollama.scheduler import LoadSpec


def spec(path: Path, **kw: object) -> LoadSpec:
    return LoadSpec(name="smollm2", model_path=path, num_ctx=512, num_parallel=2, **kw)  # type: ignore[arg-type]


def test_runner_round_trip(smollm2_gguf: Path) -> None:
    async def main() -> None:
        runner = await RunnerProcess.start(spec(smollm2_gguf))
        try:
            assert runner.alive and runner.info["n_ctx"] == 512 and runner.info["parallel"] == 2
            tokens = await runner.tokenize("Hello world")
            assert await runner.detokenize(tokens) == "Hello world"
            events = [e async for e in runner.stream({"op": "completion", "prompt": "The capital of France is",
                                                       "options": {"temperature": 0, "num_predict": 6}})]
            assert events[0]["prompt_tokens"] == len(await runner.tokenize("The capital of France is",
                                                                            add_special=True))
            assert events[-1]["done"] and events[-1]["eval_count"] == 6
            assert "".join(e.get("content", "") for e in events).strip()
            with pytest.raises(InvalidRequest):
                async for _ in runner.stream({"op": "completion", "prompt": "word " * 600, "shift": False,
                                              "options": {"num_predict": 1}}):
                    pass
            health = await runner.health()
            assert health == {"status": "ok", "busy": 0}
        finally:
            await runner.stop()
        assert not runner.alive

    asyncio.run(main())


def test_closing_the_stream_frees_the_slot(smollm2_gguf: Path) -> None:
    async def main() -> None:
        runner = await RunnerProcess.start(spec(smollm2_gguf))
        try:
            for _ in range(3):  # more abandoned generations than slots
                stream = runner.stream({"op": "completion", "prompt": "Tell me a long story.",
                                        "options": {"num_predict": 100000}})
                async for event in stream:
                    if "content" in event:
                        break
                await stream.aclose()
            for _ in range(50):
                if (await runner.health())["busy"] == 0:
                    break
                await asyncio.sleep(0.1)
            assert (await runner.health())["busy"] == 0
        finally:
            await runner.stop()

    asyncio.run(main())


def test_killed_runner_fails_the_request(smollm2_gguf: Path) -> None:
    async def main() -> None:
        runner = await RunnerProcess.start(spec(smollm2_gguf))
        try:
            with pytest.raises(RunnerError) as err:
                async for event in runner.stream({"op": "completion", "prompt": "Count from 1 to 1000: 1, 2, 3,",
                                                  "options": {"num_predict": 100000, "temperature": 0}}):
                    if "content" in event:
                        os.kill(runner.pid, signal.SIGKILL)
            assert str(err.value) == RUNNER_STOPPED
            await asyncio.wait_for(runner.wait_exit(), 10)
            assert not runner.alive
        finally:
            await runner.stop()

    asyncio.run(main())


def test_bad_model_file_fails_to_load(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)

    async def main() -> None:
        with pytest.raises(RunnerError, match="llama runner process has terminated"):
            await RunnerProcess.start(spec(junk))

    asyncio.run(main())


def test_count_and_special_tokens(smollm2_gguf: Path) -> None:
    async def main() -> None:
        runner = await RunnerProcess.start(spec(smollm2_gguf))
        try:
            texts = ["Hello world", "<|im_start|>user\nHi<|im_end|>\n", ""]
            expected = [len(await runner.tokenize(text, add_special=True)) for text in texts]
            assert await runner.count(texts) == expected  # one round trip for all of them
            assert await runner.count([]) == []
            # Special tokens survive a round trip (Ollama's context carries the template's markup).
            tokens = await runner.tokenize(texts[1])
            assert tokens[0] == 1 and tokens[4] == 2 and await runner.detokenize(tokens) == texts[1]
            with pytest.raises(InvalidRequest, match="unknown op 'nope'"):
                await runner.call({"op": "nope"})
        finally:
            await runner.stop()

    asyncio.run(main())


def test_broken_connection_marks_the_runner_dead_at_once(smollm2_gguf: Path) -> None:
    # The scheduler asks ``alive`` before handing the runner to the next request; it must not wait for
    # the process exit to be reaped, or a request right after a crash gets the dead runner (a 500).
    async def main() -> None:
        runner = await RunnerProcess.start(spec(smollm2_gguf))
        try:
            with pytest.raises(RunnerError):
                async for event in runner.stream({"op": "completion", "prompt": "Count: 1, 2, 3,",
                                                  "options": {"num_predict": 100000, "temperature": 0}}):
                    if "content" in event:
                        os.kill(runner.pid, signal.SIGKILL)
            assert not runner.alive  # no await in between: known from the socket, not from the exit status
        finally:
            await runner.stop()

    asyncio.run(main())
