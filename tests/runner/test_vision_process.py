"""Images through the runner subprocess (``--mmproj``): the wire format, the answers, the errors,
and a runner that keeps serving after each bad request."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

from pollama.errors import InvalidRequest, RunnerError
from pollama.runner.client import RunnerProcess, runner_command
from pollama.runner.engine import PROMPT_TOO_LONG
from pollama.scheduler import LoadSpec
from tests.runner.vision import MODEL_FILE, PROJECTOR_FILE, prompt, reference_tokens, sample_images, vision_dir

IMAGES = sample_images()
GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 8}


def spec(*, projector: bool = True, num_ctx: int = 512, parallel: int = 2) -> LoadSpec:
    folder = vision_dir()
    return LoadSpec(
        name="tiny-gemma3-vision",
        model_path=folder / MODEL_FILE,
        projectors=(folder / PROJECTOR_FILE,) if projector else (),
        num_ctx=num_ctx,
        num_parallel=parallel,
        num_thread=2,
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def complete(runner: RunnerProcess, text: str, images: list[Any], **extra: Any) -> list[dict[str, Any]]:
    body = {"op": "completion", "prompt": text, "images": images, "options": GREEDY, **extra}
    return [event async for event in runner.stream(body)]


def test_the_runner_is_started_with_the_projector() -> None:
    cmd = runner_command(spec(), "/tmp/sock")
    assert cmd[cmd.index("--mmproj") + 1] == str(vision_dir() / PROJECTOR_FILE)
    assert "--mmproj" not in runner_command(spec(projector=False), "/tmp/sock")


def test_images_over_the_wire_equal_the_reference() -> None:
    expected, n_prompt = reference_tokens(prompt(), [IMAGES["shapes"]], 8)

    async def main() -> None:
        runner = await RunnerProcess.start(spec())
        try:
            assert runner.info["vision"] is True
            events = await complete(runner, prompt(), [b64(IMAGES["shapes"])], return_tokens=True)
            assert events[0]["prompt_tokens"] == n_prompt == 37
            assert all(t >= 0 for t in events[0]["tokens"]) and len(events[0]["tokens"]) == 37 - 16
            final = events[-1]
            assert final["done"] and final["tokens"] == expected and final["prompt_eval_count"] == 37
            plain = await complete(runner, prompt(images=0), [])
            assert plain[-1]["prompt_eval_count"] == 19 and plain[-1]["tokens"] != expected
        finally:
            await runner.stop()

    asyncio.run(main())


def test_bad_image_requests_are_refused_and_the_runner_keeps_serving() -> None:
    shapes = b64(IMAGES["shapes"])
    cases: list[tuple[str, list[Any], str]] = [
        (prompt(images=0), [shapes], "the prompt has 0 image markers (<__media__>) but 1 image was sent"),
        (prompt(images=2), [shapes], "the prompt has 2 image markers (<__media__>) but 1 image was sent"),
        (prompt(), [b64(b"plain text, not a picture")], "failed to decode image 1: "),
        (prompt(images=2), [shapes, b64(b"\x89PNG\r\n\x1a\n" + bytes(64))], "failed to decode image 2: "),
        (prompt(), ["not base64!"], "failed to decode image 1: invalid base64 data"),
        (prompt(), [42], "failed to decode image 1: "),
    ]

    async def main() -> None:
        runner = await RunnerProcess.start(spec())
        try:
            for text, images, message in cases:
                with pytest.raises(InvalidRequest) as caught:
                    await complete(runner, text, images)
                assert str(caught.value).startswith(message), (str(caught.value), message)
            assert (await complete(runner, prompt(), [shapes]))[-1]["prompt_eval_count"] == 37
            assert await runner.health() == {"status": "ok", "busy": 0}
        finally:
            await runner.stop()

    asyncio.run(main())


def test_decode_failure_message_is_exact() -> None:
    async def main() -> None:
        runner = await RunnerProcess.start(spec(parallel=1))
        try:
            with pytest.raises(InvalidRequest) as caught:
                await complete(runner, prompt(), [b64(b"GIF89a\x01\x00\x01\x00 but broken")])
            assert str(caught.value) == "failed to decode image 1: the data is not a supported image (PNG, JPEG, ...)"
        finally:
            await runner.stop()

    asyncio.run(main())


def test_images_without_a_projector_get_ollamas_error() -> None:
    async def main() -> None:
        runner = await RunnerProcess.start(spec(projector=False))
        try:
            assert runner.info["vision"] is False
            events: list[dict[str, Any]] = []
            with pytest.raises(InvalidRequest) as caught:
                events = await complete(runner, prompt(), [b64(IMAGES["shapes"])])
            assert not events
            assert str(caught.value) == "this model is missing data required for image input"
            assert (await complete(runner, prompt(images=0), []))[-1]["prompt_eval_count"] == 19
        finally:
            await runner.stop()

    asyncio.run(main())


def test_images_that_overflow_the_context_get_ollamas_error() -> None:
    async def main() -> None:
        runner = await RunnerProcess.start(spec(num_ctx=32, parallel=1))
        try:
            for truncate in (True, False):
                with pytest.raises(InvalidRequest) as caught:
                    await complete(runner, prompt(), [b64(IMAGES["stripes"])], truncate=truncate)
                assert str(caught.value) == PROMPT_TOO_LONG
            assert (await complete(runner, prompt(images=0), []))[-1]["prompt_eval_count"] == 19
        finally:
            await runner.stop()

    asyncio.run(main())


def test_a_projector_that_does_not_load_fails_the_start(smollm2_gguf: Path) -> None:
    # The tiny projector's embeddings (64) do not fit SmolLM2 (576): libmtmd refuses the pair.
    mismatched = LoadSpec(name="smollm2", model_path=smollm2_gguf, projectors=(vision_dir() / PROJECTOR_FILE,))

    async def main() -> None:
        with pytest.raises(RunnerError) as caught:
            await RunnerProcess.start(mismatched)
        message = str(caught.value)
        assert message.startswith("llama runner process has terminated: exit status 1")
        assert f"unable to load projector: {vision_dir() / PROJECTOR_FILE}" in message

    asyncio.run(main())


def test_runner_frees_the_projector_on_exit(tmp_path: Path) -> None:
    async def main() -> int | None:
        runner = await RunnerProcess.start(spec())
        await complete(runner, prompt(), [b64(IMAGES["stripes"])])
        await runner.stop()
        return runner._proc.returncode

    assert asyncio.run(main()) == 0
