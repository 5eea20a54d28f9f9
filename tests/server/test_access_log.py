"""Access log: one ``pollama.access`` line per request, JSON with ``POLLAMA_LOG_FORMAT=json``,
without bodies or headers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.conftest import CHATML_TEMPLATE, ServerProcess, create_from_gguf

SECRET_PROMPT = "the-prompt-must-not-be-logged-4711"
SECRET_KEY = "sk-very-secret-key-0815"


def access_lines(server: ServerProcess, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The server's JSON access-log lines, once at least ``count`` are written."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
        found = [line for line in lines if line["source"] == "pollama.access"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_json_access_lines(start_server: Any, smollm2_gguf: Path) -> None:
    server: ServerProcess = start_server(POLLAMA_LOG_FORMAT="json")
    with server.client() as c:
        create_from_gguf(c, "smollm2", smollm2_gguf, template=CHATML_TEMPLATE, parameters={"stop": ["<|im_end|>"]})
        r = c.post(
            "/api/generate",
            json={"model": "smollm2", "prompt": SECRET_PROMPT, "stream": False, "options": {"num_predict": 5}},
            headers={"Authorization": f"Bearer {SECRET_KEY}"},
        )
        assert r.status_code == 200
        answer = r.json()
        assert c.post("/api/show", json={"model": "nope"}).status_code == 404
    before = len(access_lines(server, 0))
    lines = access_lines(server, before)
    generate = [line for line in lines if line["path"] == "/api/generate"]
    assert len(generate) == 1
    line = generate[0]
    assert set(line) == {
        "time",
        "level",
        "source",
        "msg",
        "method",
        "path",
        "route",
        "status",
        "duration",
        "client",
        "model",
        "prompt_tokens",
        "generated_tokens",
    }
    assert (line["method"], line["route"], line["status"], line["model"]) == ("POST", "/api/generate", 200, "smollm2")
    assert (line["prompt_tokens"], line["generated_tokens"]) == (answer["prompt_eval_count"], answer["eval_count"])
    assert 0 < line["duration"] < 120
    assert line["client"].startswith("127.0.0.1:")
    show = [entry for entry in lines if entry["path"] == "/api/show"]
    assert [(e["status"], "model" in e, "prompt_tokens" in e) for e in show] == [(404, False, False)]
    text = server.log.read_text()
    assert SECRET_PROMPT not in text and SECRET_KEY not in text and "Authorization" not in text
    # Every line of the log is one JSON object, uvicorn's access log is off: one line per request.
    assert all(json.loads(raw) for raw in text.splitlines() if raw.startswith("{"))
    assert "HTTP/1.1" not in text


def test_text_access_lines(server: ServerProcess) -> None:
    with server.client() as c:
        assert c.get("/api/tags").status_code == 200
    deadline = time.monotonic() + 10
    while "path=/api/tags" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    (line,) = [raw for raw in server.log.read_text().splitlines() if "path=/api/tags" in raw]
    assert "level=INFO source=pollama.access msg=request method=GET path=/api/tags route=/api/tags status=200" in line
    assert " client=127.0.0.1:" in line and " duration=" in line and "model=" not in line
