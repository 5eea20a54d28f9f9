"""Bad JSON is a 400 in each API's error shape on every route, never a 500, and one request's odd
``keep_alive`` never breaks another client's ``/api/ps`` (issue 10 item 5), against a real server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from pollama.duration import FOREVER, MAX_SECONDS, keep_alive_seconds
from pollama.errors import InvalidRequest
from pollama.server.wire import FOREVER_TIME, decode_base64, local_time
from tests.conftest import ServerProcess

OLLAMA_ROUTES = [
    ("POST", "/api/generate"),
    ("POST", "/api/chat"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/show"),
    ("POST", "/api/create"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
]
OPENAI_ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/responses"),
]
ANTHROPIC_ROUTES = [("POST", "/v1/messages")]

DEEP = 10_000
BAD_BODIES: list[tuple[str, bytes, str]] = [
    (
        "5000-digit integer",
        b'{"model": "smollm2", "top_logprobs": ' + b"7" * 5000 + b"}",
        "json: cannot unmarshal number " + "7" * 32 + "..." + "7" * 8 + " into Go value of type float64",
    ),
    (
        "5000-digit integer in an unknown field",
        b'{"model": "smollm2", "x": -' + b"1" * 5000 + b"}",
        "json: cannot unmarshal number -" + "1" * 31 + "..." + "1" * 8 + " into Go value of type float64",
    ),
    (
        "nesting depth 10000",
        b'{"model": "smollm2", "options": ' + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}",
        "exceeded max depth",
    ),
    ("nested arrays", b"[" * DEEP + b"]" * DEEP, "exceeded max depth"),
    ("NaN", b'{"model": "smollm2", "keep_alive": NaN}', "invalid character 'N' looking for beginning of value"),
    (
        "Infinity",
        b'{"model": "smollm2", "options": {"temperature": Infinity}}',
        "invalid character 'I' looking for beginning of value",
    ),
    ("-Infinity", b'{"model": "smollm2", "keep_alive": -Infinity}', "invalid character 'I' in numeric literal"),
    (
        "keep_alive 1e400",
        b'{"model": "smollm2", "keep_alive": 1e400}',
        "json: cannot unmarshal number 1e400 into Go value of type float64",
    ),
]


def _message(route: str, body: Any) -> str:
    if route == "/v1/messages":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
        return str(body["error"]["message"])
    if route.startswith("/v1/"):
        assert body["error"]["type"] == "invalid_request_error", body
        return str(body["error"]["message"])
    assert set(body) == {"error"}, body
    return str(body["error"])


@pytest.mark.parametrize(("case", "raw", "expected"), BAD_BODIES, ids=[case[0] for case in BAD_BODIES])
def test_bad_json_is_400_on_every_route(smollm2_server: ServerProcess, case: str, raw: bytes, expected: str) -> None:
    with smollm2_server.client(timeout=30) as c:
        for method, route in OLLAMA_ROUTES + OPENAI_ROUTES + ANTHROPIC_ROUTES:
            r = c.request(method, route, content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (case, route, r.status_code, r.text[:300])
            assert _message(route, r.json()) == expected, (case, route)


def test_lone_surrogate_becomes_replacement_character(smollm2_server: ServerProcess) -> None:
    """Go decodes an unpaired ``\\ud800`` as U+FFFD (a pair stays one character); Python kept it and
    then failed to encode it (500)."""
    body = b'{"model": "smollm2", "prompt": "a\\ud800b\\ud83d\\ude00", "raw": true, "_debug_render_only": true}'
    with smollm2_server.client(timeout=60) as c:
        r = c.post("/api/generate", content=body)
        assert r.status_code == 200, r.text
        assert r.json()["_debug_info"]["rendered_template"] == "a\ufffdb\U0001f600"
        chat = b'{"model": "smollm2", "max_tokens": 1, "messages": [{"role": "user", "content": "\\udfff"}]}'
        r = c.post("/v1/chat/completions", content=chat)
        assert r.status_code == 200, r.text
        r = c.post("/api/show", content=b'{"model": "\\ud800"}')
        assert r.status_code == 400, r.text
        assert r.json() == {"error": "invalid model name"}


def test_huge_keep_alive_never_breaks_ps(smollm2_server: ServerProcess) -> None:
    """``keep_alive: 1e308`` used to make every later ``/api/ps`` a 500 (an expiry no datetime holds)."""
    with smollm2_server.client(timeout=120) as c:
        try:
            for keep_alive in (1e308, 10**300, 9.3e9):
                r = c.post("/api/generate", content=json.dumps({"model": "smollm2", "keep_alive": keep_alive}))
                assert r.status_code == 200, r.text
                assert r.json()["done_reason"] == "load"
                ps = c.get("/api/ps")
                assert ps.status_code == 200, ps.text
                assert [m["expires_at"] for m in ps.json()["models"]] == [FOREVER_TIME]
            r = c.post("/api/generate", json={"model": "smollm2", "keep_alive": 3600})
            assert r.status_code == 200, r.text
            ps = c.get("/api/ps").json()["models"]
            assert len(ps) == 1 and ps[0]["expires_at"] != FOREVER_TIME and ps[0]["expires_at"] < "2300"
        finally:
            c.post("/api/generate", json={"model": "smollm2", "keep_alive": "5m"})


def test_keep_alive_is_clamped_to_go_durations() -> None:
    assert MAX_SECONDS == (2**63 - 1) / 1e9
    assert keep_alive_seconds(1e308) == FOREVER
    assert keep_alive_seconds(10**400) == FOREVER
    assert keep_alive_seconds(-(10**400)) == FOREVER
    assert keep_alive_seconds(MAX_SECONDS) == FOREVER
    assert keep_alive_seconds(9.2e9) == 9.2e9
    assert keep_alive_seconds(1.5) == 1.5
    with pytest.raises(InvalidRequest, match="^json: cannot unmarshal number NaN into Go value of type float64$"):
        keep_alive_seconds(float("nan"))
    with pytest.raises(InvalidRequest, match=r'^time: invalid duration "9999999999h"$'):
        keep_alive_seconds("9999999999h")


def test_expiry_beyond_any_datetime_renders_as_forever() -> None:
    assert local_time(1e308) == FOREVER_TIME
    assert local_time(float("inf")) == FOREVER_TIME
    assert local_time(0).startswith(("1970-01-01T", "1969-12-31T"))


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        ("abc", 0),
        ("abcde", 4),
        ("ab*d", 2),
        ("ab=c", 2),
        ("=abc", 0),
        ("abcd=", 4),
        ("abcd====", 4),
        ("ab==cd", 4),
        ("ab==\n", None),
        ("aGVsbG8=", None),
        ("aGVs\r\nbG8=", None),
        ("", None),
    ],
)
def test_base64_follows_go(data: str, offset: int | None) -> None:
    if offset is None:
        decode_base64(data)
        return
    with pytest.raises(InvalidRequest, match=f"^illegal base64 data at input byte {offset}$"):
        decode_base64(data)


def test_large_prompt_is_decoded(smollm2_server: ServerProcess) -> None:
    """A 20 MB body is decoded (on a worker thread) and answered; the loop stays free meanwhile (see
    test_abuse for the latency check)."""
    prompt = "word " * (4 * 1024 * 1024)
    with smollm2_server.client(timeout=120) as c:
        r = c.post("/api/show", content=json.dumps({"model": "missing", "system": prompt}))
        assert r.status_code == 404, r.text[:200]
        assert r.json() == {"error": "model 'missing' not found"}
        assert isinstance(httpx.get(smollm2_server.url + "/api/version").json()["version"], str)
