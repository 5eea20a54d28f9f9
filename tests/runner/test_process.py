"""The runner subprocess through its client: load, tokenize, stream, cancel, die."""

from __future__ import annotations

import asyncio
import json
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
            events = [
                e
                async for e in runner.stream(
                    {
                        "op": "completion",
                        "prompt": "The capital of France is",
                        "options": {"temperature": 0, "num_predict": 6},
                    }
                )
            ]
            assert events[0]["prompt_tokens"] == len(
                await runner.tokenize("The capital of France is", add_special=True)
            )
            assert events[-1]["done"] and events[-1]["eval_count"] == 6
            assert "".join(e.get("content", "") for e in events).strip()
            with pytest.raises(InvalidRequest):
                async for _ in runner.stream(
                    {"op": "completion", "prompt": "word " * 600, "shift": False, "options": {"num_predict": 1}}
                ):
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
                stream = runner.stream(
                    {"op": "completion", "prompt": "Tell me a long story.", "options": {"num_predict": 100000}}
                )
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
                async for event in runner.stream(
                    {
                        "op": "completion",
                        "prompt": "Count from 1 to 1000: 1, 2, 3,",
                        "options": {"num_predict": 100000, "temperature": 0},
                    }
                ):
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


async def _wait_idle(runner: RunnerProcess, within: float) -> float:
    """Seconds until the runner's health says no slot is busy (fails after ``within``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while (await runner.health())["busy"] != 0:
        assert loop.time() - started < within, "runner still busy"
        await asyncio.sleep(0.02)
    return loop.time() - started


ENDLESS = 'root ::= "a" root'  # never accepting: only a length limit ends the generation


def test_disconnect_frees_the_slot_within_a_second(smollm2_gguf: Path) -> None:
    async def main() -> None:
        runner = await RunnerProcess.start(spec(smollm2_gguf, num_batch=64))
        try:
            # Generating: an endless generation with Ollama's largest num_predict.
            stream = runner.stream(
                {
                    "op": "completion",
                    "prompt": "Say a",
                    "grammar": ENDLESS,
                    "options": {"num_predict": 2**63, "temperature": 0},
                }
            )
            async for event in stream:
                if "content" in event:
                    break
            assert (await runner.health())["busy"] == 1
            await stream.aclose()
            assert await _wait_idle(runner, 1.0) < 1.0
            # Evaluating a long prompt (many batches of 64): leave right after the runner accepted it.
            tokens = (await runner.tokenize("word " * 2000))[:500]
            stream = runner.stream({"op": "completion", "tokens": tokens, "options": {"num_predict": 2**63}})
            first = await stream.__anext__()
            assert first == {"prompt_tokens": 500}
            await stream.aclose()
            assert await _wait_idle(runner, 1.0) < 1.0
        finally:
            await runner.stop()

    asyncio.run(main())


def test_num_predict_is_capped_by_the_runner(smollm2_gguf: Path) -> None:
    async def main() -> None:
        runner = await RunnerProcess.start(LoadSpec(name="smollm2", model_path=smollm2_gguf, num_ctx=32))
        try:
            for num_predict in (-1, 2**63):
                events = [
                    e
                    async for e in runner.stream(
                        {
                            "op": "completion",
                            "prompt": "Say a",
                            "grammar": ENDLESS,
                            "options": {"num_predict": num_predict, "temperature": 0},
                        }
                    )
                ]
                assert (events[-1]["done_reason"], events[-1]["eval_count"]) == ("length", 320)
        finally:
            await runner.stop()

    asyncio.run(main())


@pytest.mark.parametrize("bad", [49152, -1, 2**31])
def test_out_of_vocabulary_ids_are_a_bad_request_and_others_keep_running(smollm2_gguf: Path, bad: int) -> None:
    message = f"^invalid token id {bad}: the model's vocabulary has ids 0 to 49151$"

    async def main() -> None:
        runner = await RunnerProcess.start(spec(smollm2_gguf))
        try:
            other = runner.stream(
                {
                    "op": "completion",
                    "prompt": "Say a",
                    "grammar": ENDLESS,
                    "options": {"num_predict": 40, "temperature": 0},
                }
            )
            assert "prompt_tokens" in await other.__anext__()
            with pytest.raises(InvalidRequest, match=message):
                await runner.call({"op": "completion", "tokens": [1, 2, bad], "options": {"num_predict": 2}})
            with pytest.raises(InvalidRequest, match=message):
                await runner.detokenize([1, bad])
            with pytest.raises(InvalidRequest, match="^invalid token id"):
                await runner.call({"op": "completion", "tokens": [1, "x"]})
            rest = [e async for e in other]
            assert (rest[-1]["done_reason"], rest[-1]["eval_count"]) == ("length", 40)
            assert runner.alive and (await runner.health()) == {"status": "ok", "busy": 0}
        finally:
            await runner.stop()

    asyncio.run(main())


def test_tokenizing_a_huge_prompt_does_not_block_the_runner(smollm2_gguf: Path) -> None:
    async def main() -> None:
        runner = await RunnerProcess.start(spec(smollm2_gguf))
        loop = asyncio.get_running_loop()
        try:
            big = asyncio.create_task(runner.tokenize("hello world, this is a test. " * 120_000))  # 3.5 MB
            slowest = 0.0
            while not big.done():
                started = loop.time()
                assert (await runner.health())["status"] == "ok"
                slowest = max(slowest, loop.time() - started)
                await asyncio.sleep(0.05)
            assert len(await big) > 500_000
            assert slowest < 0.25, f"health took {slowest:.2f} s while a prompt was tokenized"
        finally:
            await runner.stop()

    asyncio.run(main())


def test_a_server_that_goes_away_takes_the_socket_folder_with_it(smollm2_gguf: Path) -> None:
    async def main() -> None:
        runner = await RunnerProcess.start(spec(smollm2_gguf))
        folder = Path(runner.socket_path).parent
        assert folder.name.startswith("pollama-runner-") and folder.is_dir()
        assert runner._proc.stdin is not None
        runner._proc.stdin.close()  # what the runner sees when the server is killed
        await asyncio.wait_for(runner.wait_exit(), 10)
        assert not folder.exists()
        await runner.stop()

    asyncio.run(main())


def test_a_big_json_schema_is_compiled_off_the_runner_loop(smollm2_gguf: Path) -> None:
    import time

    from llama_cpp.llama_grammar import json_schema_to_gbnf

    n = 100_000
    schema = {
        "type": "object",
        "properties": {f"field_{i}": {"type": "integer"} for i in range(n)},
        "required": [f"field_{i}" for i in range(n)],
    }
    started = time.perf_counter()
    json_schema_to_gbnf(json.dumps(schema))
    compile_time = time.perf_counter() - started  # what the runner spends on it (plus the sampler chain)

    async def main() -> None:
        runner = await RunnerProcess.start(spec(smollm2_gguf))
        loop = asyncio.get_running_loop()
        try:
            big = asyncio.create_task(
                runner.call(
                    {
                        "op": "completion",
                        "prompt": "JSON:",
                        "json_schema": schema,
                        "options": {"num_predict": 3, "temperature": 0},
                    }
                )
            )
            slowest = 0.0
            while not big.done():
                t = loop.time()
                assert (await runner.health())["status"] == "ok"
                slowest = max(slowest, loop.time() - t)
                await asyncio.sleep(0.02)
            assert "prompt_tokens" in await big
            # Compiled on the loop, health would wait the whole compile; off it, it waits for the GIL
            # between the compiling thread's slices (up to a third of it on a busy 2-core machine).
            assert slowest < max(0.25, compile_time * 0.6), (
                f"health took {slowest:.2f} s while a schema that takes {compile_time:.2f} s to compile was handled"
            )
        finally:
            await runner.stop()

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
                async for event in runner.stream(
                    {
                        "op": "completion",
                        "prompt": "Count: 1, 2, 3,",
                        "options": {"num_predict": 100000, "temperature": 0},
                    }
                ):
                    if "content" in event:
                        os.kill(runner.pid, signal.SIGKILL)
            assert not runner.alive  # no await in between: known from the socket, not from the exit status
        finally:
            await runner.stop()

    asyncio.run(main())
