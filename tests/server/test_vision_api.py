"""Images through every API of a real server, with the tiny Gemma 3 vision model created from its two
GGUF files by ``/api/create``: the exact prompts ``_debug_render_only`` shows for images (the model's
own Jinja chat template, and a Go TEMPLATE's ``[img-N]`` tags), and each API's answer to bad images.
Nothing here needs the runner to read images (that is the runner's own tests' job)."""

from __future__ import annotations

import asyncio
import base64
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CHATML_TEMPLATE, ServerProcess, create_from_gguf, free_port

MARK = "<__media__>"
NOT_IMAGE = base64.b64encode(b"GIF? no: just some text bytes").decode()
NOT_IMAGE_ERROR = "image 1: unsupported or invalid image data (expected PNG, JPEG, GIF or WebP)"
NO_VISION_ERROR = "this model is missing data required for image input"


def _upload(c: httpx.Client, path: Path) -> str:
    import hashlib

    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    r = c.post(f"/api/blobs/{digest}", content=path.read_bytes())
    assert r.status_code in (200, 201), r.text
    return digest


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory, vision_testdata: Path) -> Iterator[ServerProcess]:
    """A server with ``tiny-vision`` (model + projector), ``tiny-vision-go`` (the same with a Go
    TEMPLATE) and ``tiny-text`` (the text model alone: no vision)."""
    home = tmp_path_factory.mktemp("home")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OLLAMA_")}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({**env, "HOME": str(home), "OLLAMA_MODELS": str(home / ".ollama" / "models")})
    try:
        proc = ServerProcess(home, {"OLLAMA_CONTEXT_LENGTH": "2048"}).start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        with proc.client() as c:
            model = vision_testdata / "tiny-gemma3-vision-f16.gguf"
            files = {model.name: _upload(c, model)}
            mmproj = vision_testdata / "mmproj-tiny-gemma3-vision-f16.gguf"
            files[mmproj.name] = _upload(c, mmproj)
            for name, extra in (("tiny-vision", {}), ("tiny-vision-go", {"template": CHATML_TEMPLATE})):
                r = c.post("/api/create", json={"model": name, "files": files, "stream": False, **extra})
                assert r.status_code == 200, r.text
            create_from_gguf(c, "tiny-text", model)
            assert "vision" in c.post("/api/show", json={"model": "tiny-vision"}).json()["capabilities"]
            assert "vision" not in c.post("/api/show", json={"model": "tiny-text"}).json()["capabilities"]
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def shapes(vision_testdata: Path) -> str:
    return base64.b64encode((vision_testdata / "shapes.png").read_bytes()).decode()


@pytest.fixture(scope="module")
def stripes(vision_testdata: Path) -> str:
    return base64.b64encode((vision_testdata / "stripes.png").read_bytes()).decode()


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    with server.client(timeout=60) as c:
        return c.post(path, json={"stream": False, **body})


def rendered(server: ServerProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = post(server, path, {**body, "_debug_render_only": True})
    assert r.status_code == 200, r.text
    info: dict[str, Any] = r.json()["_debug_info"]
    return info


# --- placement --------------------------------------------------------------------------------------


def test_jinja_template_renders_the_media_marker(vision_server: ServerProcess, shapes: str, stripes: str) -> None:
    chat = rendered(
        vision_server,
        "/api/chat",
        {
            "model": "tiny-vision",
            "messages": [
                {"role": "user", "content": "What is in this image?", "images": [shapes]},
                {"role": "assistant", "content": "Shapes."},
                {"role": "user", "content": "Compare [img] with this.", "images": [stripes, shapes]},
            ],
        },
    )
    # The template writes {{ bos_token }} first; the model's tokenizer adds BOS itself, so the prompt
    # leaves it out (as llama-server does) and the model sees one BOS, not two.
    assert chat == {
        "rendered_template": (
            f"<start_of_turn>user\n{MARK}What is in this image?<end_of_turn>\n"
            "<start_of_turn>model\nShapes.<end_of_turn>\n"
            f"<start_of_turn>user\n{MARK}Compare {MARK} with this.<end_of_turn>\n<start_of_turn>model\n"
        ),
        "image_count": 3,
    }
    generate = rendered(
        vision_server, "/api/generate", {"model": "tiny-vision", "prompt": "What is in this image?", "images": [shapes]}
    )
    assert generate == {
        "rendered_template": (
            f"<start_of_turn>user\n{MARK}What is in this image?<end_of_turn>\n<start_of_turn>model\n"
        ),
        "image_count": 1,
    }


def test_go_template_renders_ollamas_image_tags(vision_server: ServerProcess, shapes: str, stripes: str) -> None:
    def chat(*images: list[str]) -> str:
        messages = [
            {"role": "user", "content": "first", "images": images[0]},
            {"role": "user", "content": "then [img] and", "images": images[1]},
        ]
        info = rendered(vision_server, "/api/chat", {"model": "tiny-vision-go", "messages": messages})
        return str(info["rendered_template"])

    # Consecutive user messages are collated (Ollama's messages path); tags count across them.
    assert chat([shapes], [stripes]) == (
        "<|im_start|>user\n[img-0]first\n\nthen [img-1] and<|im_end|>\n<|im_start|>assistant\n"
    )
    # More images than fit: 768 tokens are counted per image, so with num_ctx 2048 three images do not
    # fit and the oldest message goes with its image (the last message is always kept).
    assert chat([shapes], [stripes, shapes]) == (
        "<|im_start|>user\n[img-1]then [img-0] and<|im_end|>\n<|im_start|>assistant\n"
    )
    generate = rendered(vision_server, "/api/generate", {"model": "tiny-vision-go", "prompt": "Hi", "images": [shapes]})
    assert generate["rendered_template"] == "<|im_start|>user\n[img-0]Hi<|im_end|>\n<|im_start|>assistant\n"


# --- bad input, per API ----------------------------------------------------------------------------


def _openai(model: str, url: str) -> dict[str, Any]:
    content = [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 1}


def _responses(model: str, url: str) -> dict[str, Any]:
    content = [{"type": "input_text", "text": "What?"}, {"type": "input_image", "image_url": url}]
    return {"model": model, "input": [{"type": "message", "role": "user", "content": content}], "max_output_tokens": 1}


def _anthropic(model: str, source: dict[str, Any]) -> dict[str, Any]:
    content = [{"type": "image", "source": source}, {"type": "text", "text": "What?"}]
    return {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": content}]}


def _b64(data: str) -> dict[str, Any]:
    return {"type": "base64", "media_type": "image/png", "data": data}


def error_of(r: httpx.Response) -> str:
    body = r.json()
    error = body["error"]
    return str(error["message"] if isinstance(error, dict) else error)


def test_native_api_bad_images(vision_server: ServerProcess, shapes: str) -> None:
    cases = [
        ("/api/chat", {"model": "tiny-vision", "messages": [{"role": "user", "content": "x", "images": ["%%%"]}]}),
        ("/api/generate", {"model": "tiny-vision", "prompt": "x", "images": ["%%%"]}),
        ("/api/chat", {"model": "tiny-vision", "messages": [{"role": "user", "content": "x", "images": [NOT_IMAGE]}]}),
        ("/api/generate", {"model": "tiny-vision", "prompt": "x", "images": [NOT_IMAGE]}),
        ("/api/chat", {"model": "tiny-text", "messages": [{"role": "user", "content": "x", "images": [shapes]}]}),
        ("/api/generate", {"model": "tiny-text", "prompt": "x", "images": [shapes]}),
        ("/api/generate", {"model": "tiny-vision-go", "prompt": "[img-1]", "images": [shapes], "raw": True}),
    ]
    answers = [post(vision_server, path, body) for path, body in cases]
    assert [(r.status_code, r.json()["error"]) for r in answers] == [
        (400, "illegal base64 data at input byte 0"),
        (400, "illegal base64 data at input byte 0"),
        (400, NOT_IMAGE_ERROR),
        (400, NOT_IMAGE_ERROR),
        (400, NO_VISION_ERROR),
        (400, NO_VISION_ERROR),
        (400, "invalid image index: 1"),
    ]


def test_openai_and_responses_bad_images(vision_server: ServerProcess, shapes: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}/shapes.png"
    for path, make in (("/v1/chat/completions", _openai), ("/v1/responses", _responses)):
        answers = [
            post(vision_server, path, make("tiny-vision", "data:image/png;base64,%%%")),
            post(vision_server, path, make("tiny-vision", "data:image/gif;base64," + shapes)),
            post(vision_server, path, make("tiny-vision", "data:image/png;base64," + NOT_IMAGE)),
            post(vision_server, path, make("tiny-text", "data:image/png;base64," + shapes)),
            post(vision_server, path, make("tiny-vision", closed)),
        ]
        statuses = [r.status_code for r in answers]
        messages = [error_of(r) for r in answers]
        assert statuses == [400] * 5, (path, messages)
        assert messages[:4] == ["invalid image input", "invalid image input", NOT_IMAGE_ERROR, NO_VISION_ERROR], path
        assert messages[4].startswith(f"invalid image input: failed to fetch image URL {closed}: "), messages[4]


def test_anthropic_bad_images(vision_server: ServerProcess, shapes: str) -> None:
    answers = [
        post(vision_server, "/v1/messages", _anthropic("tiny-vision", _b64("%%%"))),
        post(vision_server, "/v1/messages", _anthropic("tiny-vision", _b64(NOT_IMAGE))),
        post(vision_server, "/v1/messages", _anthropic("tiny-text", _b64(shapes))),
        post(vision_server, "/v1/messages", _anthropic("tiny-vision", {"type": "url", "url": "http://127.0.0.1/x"})),
    ]
    assert [(r.status_code, r.json()["type"], error_of(r)) for r in answers] == [
        (400, "error", "invalid base64 image data: illegal base64 data at input byte 0"),
        (400, "error", NOT_IMAGE_ERROR),
        (400, "error", NO_VISION_ERROR),
        (400, "error", "invalid image source type: url. Only base64 images are supported."),
    ]


# --- image URLs ------------------------------------------------------------------------------------


class _Images(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        if self.path != "/shapes.png":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_host(vision_testdata: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving ``/shapes.png``."""
    handler = type("Handler", (_Images,), {"body": (vision_testdata / "shapes.png").read_bytes()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_image_url_becomes_a_data_uri_when_it_can_be_fetched(image_host: str, shapes: str) -> None:
    from pollama.errors import InvalidRequest
    from pollama.server.common import inline_image

    def inline(url: str, **limits: Any) -> str:
        return asyncio.run(inline_image(url, **limits))

    assert inline(f"{image_host}/shapes.png") == "data:;base64," + shapes
    assert inline("data:image/png;base64,xyz") == "data:image/png;base64,xyz"
    with pytest.raises(InvalidRequest) as info:
        inline(f"{image_host}/missing.png")
    assert str(info.value) == f"invalid image input: failed to fetch image URL {image_host}/missing.png: status 404"
    with pytest.raises(InvalidRequest) as info:
        inline(f"{image_host}/shapes.png", max_bytes=100)
    assert str(info.value) == (
        f"invalid image input: failed to fetch image URL {image_host}/shapes.png: larger than 100 bytes"
    )


def test_image_urls_share_one_deadline() -> None:
    import anyio

    from pollama.errors import InvalidRequest
    from pollama.server.common import inline_image

    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x.png"

        async def fetch() -> str:
            return await inline_image(url, deadline=anyio.current_time() + 0.3)

        started = time.monotonic()
        with pytest.raises(InvalidRequest) as info:
            asyncio.run(fetch())
        assert time.monotonic() - started < 5
    assert str(info.value) == f"invalid image input: failed to fetch image URL {url}: timed out"


def test_openai_image_url_is_fetched_and_reaches_the_model(vision_server: ServerProcess, image_host: str) -> None:
    # A URL that serves an image is accepted (the same request with a closed port is a 400, above).
    for path, make in (("/v1/chat/completions", _openai), ("/v1/responses", _responses)):
        r = post(vision_server, path, make("tiny-vision", f"{image_host}/shapes.png"))
        assert r.status_code == 200, r.text


# --- generation with images, end to end ---------------------------------------------------------------

GREEDY = {"temperature": 0, "num_predict": 8}


def _chat(server: ServerProcess, *images: str, model: str = "tiny-vision") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "user", "content": "What is this?"}
    if images:
        message["images"] = list(images)
    r = post(server, "/api/chat", {"model": model, "messages": [message], "options": GREEDY})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_the_image_reaches_the_model(vision_server: ServerProcess, shapes: str, stripes: str) -> None:
    plain = _chat(vision_server)
    first, second, other = _chat(vision_server, shapes), _chat(vision_server, shapes), _chat(vision_server, stripes)
    # Each image is 16 embeddings between <start_of_image> and <end_of_image>: 18 more prompt tokens.
    assert first["prompt_eval_count"] == plain["prompt_eval_count"] + 18
    assert other["prompt_eval_count"] == plain["prompt_eval_count"] + 18
    assert _chat(vision_server, shapes, stripes)["prompt_eval_count"] == plain["prompt_eval_count"] + 36
    # The answer depends on the image: the same one gives the same greedy text, another one does not.
    assert first["message"]["content"] == second["message"]["content"]
    assert first["message"]["content"] != other["message"]["content"]
    assert first["message"]["content"] != plain["message"]["content"]


def test_openai_and_anthropic_images_answer_like_the_native_api(vision_server: ServerProcess, shapes: str) -> None:
    native = _chat(vision_server, shapes)["message"]["content"]
    with vision_server.client(timeout=60) as c:
        openai = c.post(
            "/v1/chat/completions",
            json={
                "model": "tiny-vision",
                "temperature": 0,
                "max_tokens": 8,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{shapes}"}},
                            {"type": "text", "text": "What is this?"},
                        ],
                    }
                ],
            },
        )
        anthropic = c.post(
            "/v1/messages",
            json={
                "model": "tiny-vision",
                "temperature": 0,
                "max_tokens": 8,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": shapes}},
                            {"type": "text", "text": "What is this?"},
                        ],
                    }
                ],
            },
        )
    assert openai.status_code == 200, openai.text
    assert openai.json()["choices"][0]["message"]["content"] == native
    assert anthropic.status_code == 200, anthropic.text
    assert anthropic.json()["content"][0]["text"] == native
