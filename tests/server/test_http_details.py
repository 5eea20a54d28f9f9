"""HTTP details of issue 10 item 8 and the busy answers of item 7, against a real server: invalid base64
images are a 400 on every API, 405 answers carry ``Allow``, and every 503 for a full queue carries
``Retry-After``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from pollama.errors import ServerBusy
from pollama.server.anthropic.messages import error_response as anthropic_error
from pollama.server.errors import RETRY_AFTER_SECONDS
from pollama.server.errors import error_response as ollama_error
from pollama.server.openai.errors import error_response as openai_error
from tests.conftest import ServerProcess, create_from_gguf

GOOD = "aGVsbG8="  # "hello"
BAD = "aGVs*G8="  # '*' at byte 4


def test_invalid_base64_images_are_400_on_every_api(smollm2_server: ServerProcess) -> None:
    illegal = "illegal base64 data at input byte 4"
    with smollm2_server.client(timeout=60) as c:
        r = c.post("/api/generate", json={"model": "smollm2", "prompt": "hi", "images": [GOOD, BAD]})
        assert (r.status_code, r.json()) == (400, {"error": illegal})
        r = c.post(
            "/api/chat", json={"model": "smollm2", "messages": [{"role": "user", "content": "hi", "images": [BAD]}]}
        )
        assert (r.status_code, r.json()) == (400, {"error": illegal})
        r = c.post("/api/generate", json={"model": "smollm2", "prompt": "hi", "images": ["aGVsbG8"]})
        assert (r.status_code, r.json()) == (400, {"error": "illegal base64 data at input byte 4"})
        # Valid base64 reaches the capability check (SmolLM2 has no vision).
        r = c.post("/api/generate", json={"model": "smollm2", "prompt": "hi", "images": [GOOD]})
        assert (r.status_code, r.json()) == (400, {"error": "this model is missing data required for image input"})

        part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{BAD}"}}
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": "smollm2",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}],
            },
        )
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "invalid image input"
        part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8=="}}  # extra padding
        r = c.post("/v1/chat/completions", json={"model": "smollm2", "messages": [{"role": "user", "content": [part]}]})
        assert (r.status_code, r.json()["error"]["message"]) == (400, "invalid image input")
        r = c.post(
            "/v1/responses",
            json={
                "model": "smollm2",
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": f"data:image/jpeg;base64,{BAD}"}]}
                ],
            },
        )
        assert (r.status_code, r.json()["error"]["message"]) == (400, "invalid image input")

        block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": BAD}}
        r = c.post(
            "/v1/messages",
            json={
                "model": "smollm2",
                "max_tokens": 4,
                "messages": [{"role": "user", "content": [block, {"type": "text", "text": "hi"}]}],
            },
        )
        assert r.status_code == 400
        expected = {"type": "invalid_request_error", "message": f"invalid base64 image data: {illegal}"}
        assert r.json()["error"] == expected


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/tags", "GET, HEAD"),
        ("POST", "/api/version", "GET, HEAD"),
        ("PATCH", "/", "GET, HEAD"),
        ("GET", "/api/generate", "POST"),
        ("GET", "/api/delete", "DELETE"),
        ("GET", "/api/blobs/sha256:" + "0" * 64, "HEAD, POST"),
        ("DELETE", "/v1/chat/completions", "POST"),
        ("POST", "/v1/models", "GET"),
    ],
)
def test_405_lists_allowed_methods(smollm2_server: ServerProcess, method: str, path: str, allow: str) -> None:
    r = httpx.request(method, smollm2_server.url + path, timeout=10)
    assert (r.status_code, r.text, r.headers.get("allow")) == (405, "405 method not allowed", allow)


def test_busy_errors_carry_retry_after() -> None:
    for render in (ollama_error, openai_error, anthropic_error):
        response = render(ServerBusy())
        assert response.status_code == 503
        assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS) == "1"
        assert "retry-after" not in render(ValueError("x")).headers


def test_queue_overflow_503_has_retry_after(start_server: object, smollm2_gguf: Path) -> None:
    """Requests that each need their own runner (distinct ``num_ctx``) queue behind the first load;
    past ``OLLAMA_MAX_QUEUE`` they get Ollama's 503 with ``Retry-After: 1``."""
    srv: ServerProcess = start_server(OLLAMA_MAX_QUEUE="1")  # type: ignore[operator]
    with srv.client() as c:
        create_from_gguf(c, "smollm2", smollm2_gguf)
    answers: list[httpx.Response] = []
    start = threading.Barrier(6)

    def run(ctx: int) -> None:
        with srv.client() as c:
            start.wait()
            answers.append(
                c.post(
                    "/api/generate",
                    json={
                        "model": "smollm2",
                        "prompt": "hi",
                        "stream": False,
                        "options": {"num_ctx": ctx, "num_predict": 1},
                    },
                )
            )

    threads = [threading.Thread(target=run, args=(256 + 64 * i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = [r for r in answers if r.status_code == 503]
    assert busy, [r.status_code for r in answers]
    assert {r.status_code for r in answers} <= {200, 503}
    for r in busy:
        assert r.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
        assert r.headers["retry-after"] == "1"


def test_an_unexpected_error_is_a_500_and_its_connection_stays_usable(isolated_env: Path) -> None:
    """An exception no handler knows is Ollama's 500 ``{"error": ...}``, and the keep-alive
    connection it came on serves the next request (uvicorn closed it when the exception reached
    it, which reset a client's next request; a real uvicorn here, as ``serve`` runs it)."""
    import http.client
    import json

    import uvicorn

    from pollama.config import Settings
    from pollama.server.app import create_app
    from tests.conftest import free_port

    app = create_app(Settings.from_env())

    @app.get("/api/broken")
    async def broken() -> None:
        raise RuntimeError("the disk went away")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            time.sleep(0.01)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/api/broken")
        first = connection.getresponse()
        assert (first.status, json.loads(first.read())) == (500, {"error": "the disk went away"})
        sock = connection.sock
        connection.request("GET", "/api/version")
        second = connection.getresponse()
        assert second.status == 200 and "version" in json.loads(second.read())
        assert connection.sock is sock  # the same connection
        connection.close()
    finally:
        server.should_exit = True
        thread.join(30)
