"""Graceful shutdown: ``/health`` turns 503, streams shorter than the grace finish, longer ones end
with ``{"error":"server shutting down"}``, and the process exits soon after the grace."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pollama.config import Settings
from pollama.errors import ConfigError
from pollama.server.app import create_app
from tests.conftest import CHATML_TEMPLATE, ServerProcess, create_from_gguf

COUNTING = {"model": "smollm2", "raw": True, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"}


def test_health_is_503_once_shutdown_begins(isolated_env: Path) -> None:
    # In process: once the real server begins shutting down it no longer accepts connections.
    app = create_app(Settings.from_env())

    async def probe() -> list[tuple[int, Any]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            first = await c.get("/health")
            app.state.shutdown.begin()
            second = await c.get("/health")
        return [(first.status_code, first.json()), (second.status_code, second.json())]

    assert asyncio.run(probe()) == [(200, {"status": "ok"}), (503, {"status": "shutting down"})]


def test_grace_setting() -> None:
    assert Settings.from_env({}).shutdown_grace == 10.0
    assert Settings.from_env({"POLLAMA_SHUTDOWN_GRACE": "1m30s"}).shutdown_grace == 90.0
    assert Settings.from_env({"POLLAMA_SHUTDOWN_GRACE": "3"}).shutdown_grace == 3.0
    with pytest.raises(ConfigError, match="^POLLAMA_SHUTDOWN_GRACE: invalid duration 'soon'"):
        Settings.from_env({"POLLAMA_SHUTDOWN_GRACE": "soon"})
    with pytest.raises(ConfigError, match="^POLLAMA_LOG_FORMAT: invalid format 'xml'"):
        Settings.from_env({"POLLAMA_LOG_FORMAT": "xml"})


def _stream_through_sigterm(server: ServerProcess, num_predict: int) -> tuple[list[dict[str, Any]], float]:
    """Stream a completion, SIGTERM the server at its first line; the lines and the exit time."""
    with server.client() as c:
        assert c.get("/health").json() == {"status": "ok"}
        body = {**COUNTING, "options": {"num_predict": num_predict, "temperature": 0}}
        with c.stream("POST", "/api/generate", json=body) as s:
            lines: list[dict[str, Any]] = []
            for raw in s.iter_lines():
                if not raw:
                    continue
                lines.append(json.loads(raw))
                if len(lines) == 1:
                    assert server.process is not None
                    os.kill(server.process.pid, signal.SIGTERM)
                    signalled = time.monotonic()
    assert server.process is not None
    server.process.wait(timeout=30)
    return lines, time.monotonic() - signalled


@pytest.fixture
def model_server(start_server: Any, smollm2_gguf: Path) -> Any:
    def start(grace: str) -> ServerProcess:
        server: ServerProcess = start_server(POLLAMA_SHUTDOWN_GRACE=grace)
        with server.client() as c:
            create_from_gguf(c, "smollm2", smollm2_gguf, template=CHATML_TEMPLATE)
            warm = {**COUNTING, "stream": False, "options": {"num_predict": 1}}
            assert c.post("/api/generate", json=warm).status_code == 200
        return server

    return start


def test_a_stream_shorter_than_the_grace_finishes(model_server: Any) -> None:
    server = model_server("30s")
    lines, exited_after = _stream_through_sigterm(server, 24)
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 24
    assert not any("error" in line for line in lines)
    assert exited_after < 15
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=2)


def test_a_stream_longer_than_the_grace_ends_with_an_error_line(model_server: Any) -> None:
    server = model_server("1s")
    lines, exited_after = _stream_through_sigterm(server, 4000)
    assert lines[-1] == {"error": "server shutting down"}
    assert not any(line.get("done") for line in lines)
    assert len(lines) > 2
    assert exited_after < 1 + 6


def test_an_openai_stream_ends_with_an_sse_error_event(model_server: Any) -> None:
    server = model_server("1s")
    assert server.process is not None
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number a line."}],
        "max_tokens": 4000,
        "temperature": 0,
        "stream": True,
    }
    events: list[str] = []
    with server.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as s:
        for raw in s.iter_lines():
            if raw.startswith("data: "):
                events.append(raw[len("data: ") :])
                if len(events) == 1:
                    os.kill(server.process.pid, signal.SIGTERM)
    server.process.wait(timeout=30)
    assert json.loads(events[-1]) == {
        "error": {"message": "server shutting down", "type": "api_error", "param": None, "code": None}
    }
    assert "[DONE]" not in events
