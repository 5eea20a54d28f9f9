"""Images from every API to the runner body, over a fake runner at the ``ModelRunner`` seam: the
prompt's media markers and the ``images`` list in marker order, the adapters' image parts ending in
the same runner body as the native API, and the bad inputs refused before any runner is started."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pollama.errors import InvalidRequest
from pollama.inference import CompletionRequest
from pollama.inference.service import InferenceService
from pollama.runner.client import CompletionParams
from pollama.server.anthropic.messages import completion_request as anthropic_request
from pollama.server.anthropic.types import MessagesRequest
from pollama.server.openai.chat import completion_request as openai_request
from pollama.server.openai.responses import completion_request as responses_request
from pollama.server.openai.types import ChatCompletionRequest, ResponsesRequest
from tests.inference.conftest import Install
from tests.inference.fake_runner import CHATML, Runners

MakeService = Callable[..., InferenceService]
MARK = "<__media__>"
PNG = b"\x89PNG\r\n\x1a\n" + b"one"
JPEG = b"\xff\xd8\xff\xe0" + b"two"
PNG64, JPEG64 = base64.b64encode(PNG).decode(), base64.b64encode(JPEG).decode()
# The tiny vision model's way of rendering content parts (see shared/testdata/vision/README.md).
PARTS_TEMPLATE = (
    "{%- for m in messages -%}<{{ m['role'] }}>{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}{%- for p in m['content'] -%}{%- if p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}</{{ m['role'] }}>{%- endfor -%}<assistant>"
)


def run(make_service: MakeService, *requests: CompletionRequest) -> list[Any]:
    """Each request's chunks (or the error it raised), one service for all."""

    async def main() -> list[Any]:
        service = make_service()
        service.start()
        out: list[Any] = []
        try:
            for req in requests:
                try:
                    out.append([c async for c in service.complete(req)])
                except InvalidRequest as exc:
                    out.append(exc)
        finally:
            await service.close()
        return out

    return asyncio.run(main())


def sent(runners: Runners) -> list[CompletionParams]:
    return [params for runner in runners.started for params in runner.completions]


def chat(*messages: dict[str, Any], model: str = "v") -> CompletionRequest:
    return CompletionRequest(model=model, messages=list(messages), options={"num_predict": 1})


def test_native_chat_and_generate_send_markers_and_images_in_order(
    install: Install, make_service: MakeService, runners: Runners
) -> None:
    install("v", template=CHATML, projector=True)
    run(
        make_service,
        chat(
            {"role": "user", "content": "first", "images": [PNG64]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "this [img] and", "images": [JPEG64, PNG64]},
        ),
        CompletionRequest(model="v", endpoint="generate", prompt="Describe.", images=[JPEG64]),
    )
    first, second = sent(runners)
    assert first.prompt == (
        f"<|im_start|>user\n{MARK}first<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
        f"<|im_start|>user\n{MARK}this {MARK} and<|im_end|>\n<|im_start|>assistant\n"
    )
    # Tags: [img-0] (PNG), then [img-2] (PNG) prefixed and [img-1] (JPEG) in place of [img].
    assert first.images == [PNG, PNG, JPEG]
    assert first.wire()["images"] == [PNG64, PNG64, JPEG64]
    assert second.prompt == f"<|im_start|>user\n{MARK}Describe.<|im_end|>\n<|im_start|>assistant\n"
    assert second.wire()["images"] == [JPEG64]
    assert "images" not in CompletionParams(prompt="x").wire()


def test_debug_render_shows_ollamas_tags_and_counts_the_images(
    install: Install, make_service: MakeService, runners: Runners
) -> None:
    install("v", template=CHATML, projector=True)
    req = chat({"role": "user", "content": "What?", "images": [PNG64, JPEG64]})
    req.debug_render_only = True
    (chunks,) = run(make_service, req)
    assert chunks[-1].debug_info == {
        "rendered_template": "<|im_start|>user\n[img-0][img-1]What?<|im_end|>\n<|im_start|>assistant\n",
        "image_count": 2,
    }
    assert sent(runners) == []


def test_truncation_drops_old_images_with_their_messages(
    install: Install, make_service: MakeService, runners: Runners
) -> None:
    # 768 tokens are counted per image: with num_ctx 1000 the first message's image no longer fits.
    install("v", template=CHATML, projector=True, parameters={"num_ctx": 1000})
    run(
        make_service,
        chat(
            {"role": "user", "content": "old", "images": [PNG64]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "new", "images": [JPEG64]},
        ),
    )
    (params,) = sent(runners)
    assert params.prompt == (
        f"<|im_start|>assistant\nok<|im_end|>\n<|im_start|>user\n{MARK}new<|im_end|>\n<|im_start|>assistant\n"
    )
    assert params.images == [JPEG]


def test_a_raw_prompt_names_its_images_with_tags(install: Install, make_service: MakeService, runners: Runners) -> None:
    install("v", template=CHATML, projector=True)
    raw = CompletionRequest(
        model="v", endpoint="generate", prompt="[img-1] vs [img-0]", images=[PNG64, JPEG64], raw=True
    )
    bad = CompletionRequest(model="v", endpoint="generate", prompt="[img-3]", images=[PNG64], raw=True)
    _, error = run(make_service, raw, bad)
    (params,) = sent(runners)
    assert (params.prompt, params.images) == (f"{MARK} vs {MARK}", [JPEG, PNG])
    assert isinstance(error, InvalidRequest) and str(error) == "invalid image index: 3"


def test_jinja_chat_template_gets_image_parts(install: Install, make_service: MakeService, runners: Runners) -> None:
    install("v", chat_template=PARTS_TEMPLATE, projector=True)
    run(make_service, chat({"role": "user", "content": "What?", "images": [PNG64, JPEG64]}))
    (params,) = sent(runners)
    assert params.prompt == f"<user>{MARK}{MARK}What?</user><assistant>"
    assert params.images == [PNG, JPEG]


# --- the adapters end in the same runner body as the native API -----------------------------------


def data_uri(b64: str, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64}"


@pytest.mark.parametrize("template", ["go", "jinja"])
def test_adapters_send_the_native_runner_body(
    template: str, install: Install, make_service: MakeService, runners: Runners
) -> None:
    if template == "go":
        install("v", template=CHATML, projector=True)
    else:
        install("v", chat_template=PARTS_TEMPLATE, projector=True)
    native = chat({"role": "user", "content": "What is it?", "images": [PNG64]})
    # OpenAI splits content parts into one message per part (Ollama's mapping): compare with the same split.
    native_split = chat({"role": "user", "content": "What is it?"}, {"role": "user", "content": "", "images": [PNG64]})
    openai = openai_request(
        ChatCompletionRequest.model_validate(
            {
                "model": "v",
                "max_tokens": 1,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is it?"},
                            {"type": "image_url", "image_url": {"url": data_uri(PNG64)}},
                        ],
                    }
                ],
            }
        )
    )
    anthropic = anthropic_request(
        MessagesRequest.model_validate(
            {
                "model": "v",
                "max_tokens": 1,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG64}},
                            {"type": "text", "text": "What is it?"},
                        ],
                    }
                ],
            }
        )
    )
    responses = responses_request(
        ResponsesRequest.model_validate(
            {
                "model": "v",
                "max_output_tokens": 1,
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "What is it?"},
                            {"type": "input_image", "image_url": data_uri(PNG64)},
                        ],
                    }
                ],
            }
        )
    )
    run(make_service, native, native_split, openai, anthropic, responses)
    bodies = [(p.prompt, p.images) for p in sent(runners)]
    native_body, split_body, openai_body, anthropic_body, responses_body = bodies
    assert openai_body == split_body
    assert anthropic_body == native_body == responses_body
    assert native_body[1] == [PNG] and native_body[0].count(MARK) == 1
    if template == "jinja":
        # One turn with the image where its part was, as llama-server renders it.
        assert openai_body[0] == f"<user>What is it?{MARK}</user><assistant>"
        assert native_body[0] == f"<user>{MARK}What is it?</user><assistant>"
    else:
        assert openai_body[0] == f"<|im_start|>user\nWhat is it?\n\n{MARK}<|im_end|>\n<|im_start|>assistant\n"


# --- bad input ------------------------------------------------------------------------------------


def test_bad_images_are_refused_before_a_runner_is_involved(
    install: Install, make_service: MakeService, runners: Runners
) -> None:
    install("v", template=CHATML, projector=True)
    install("text", template=CHATML)
    not_image = base64.b64encode(b"hello, not an image").decode()
    errors = run(
        make_service,
        chat({"role": "user", "content": "x", "images": [PNG64]}, model="text"),
        CompletionRequest(model="text", endpoint="generate", prompt="x", images=[PNG64]),
        chat({"role": "user", "content": "x", "images": [PNG64, not_image]}),
        CompletionRequest(model="v", endpoint="generate", prompt="x", images=[""]),
        # Line breaks in the base64 (Go's decoder skips them) do not hide a real image.
        CompletionRequest(
            model="v", endpoint="generate", prompt="[img-0][img-1]x", images=["\n".join(PNG64), JPEG64], raw=True
        ),
    )
    assert [str(e) for e in errors[:4]] == [
        "this model is missing data required for image input",
        "this model is missing data required for image input",
        "image 2: unsupported or invalid image data (expected PNG, JPEG, GIF or WebP)",
        "image 1: unsupported or invalid image data (expected PNG, JPEG, GIF or WebP)",
    ]
    assert [(p.prompt, p.images) for p in sent(runners)] == [(f"{MARK}{MARK}x", [PNG, JPEG])]


def test_generate_without_a_prompt_only_loads_and_ignores_images(
    install: Install, make_service: MakeService, runners: Runners
) -> None:
    install("v", template=CHATML, projector=True)
    (chunks,) = run(make_service, CompletionRequest(model="v", endpoint="generate", images=[PNG64]))
    assert [(c.done, c.done_reason) for c in chunks] == [(True, "load")]
    assert sent(runners) == []


def test_webp_is_re_encoded_as_png_for_the_runner(
    install: Install, make_service: MakeService, runners: Runners, vision_testdata: Path
) -> None:
    from PIL import Image

    with Image.open(vision_testdata / "shapes.png") as png:
        pixels = png.convert("RGB").tobytes()
        out = io.BytesIO()
        png.save(out, format="WEBP", lossless=True)
    webp = out.getvalue()
    broken = webp[:40]  # a WebP header with its image data cut off
    install("v", template=CHATML, projector=True)
    _, error = run(
        make_service,
        chat({"role": "user", "content": "x", "images": [base64.b64encode(webp).decode(), PNG64]}),
        chat({"role": "user", "content": "x", "images": [PNG64, base64.b64encode(broken).decode()]}),
    )
    (params,) = sent(runners)
    assert params.images[1] == PNG and params.images[0].startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(params.images[0])) as sent_png:
        assert sent_png.convert("RGB").tobytes() == pixels
    assert isinstance(error, InvalidRequest)
    assert str(error) == "image 2: unsupported or invalid image data (expected PNG, JPEG, GIF or WebP)"
