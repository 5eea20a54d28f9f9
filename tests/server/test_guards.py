"""The guards in front of every route, through a real server: CORS with ``OLLAMA_ORIGINS`` (preflight
and simple requests, allowed, denied, wildcard), the Origin guard that refuses cross-site requests
before they run (issue 10 item 6), and the DNS-rebinding Host guard (issue 11 item 6)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerProcess

EVIL = "http://evil.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


def _cross_site_create(c: httpx.Client, origin: str, system: str) -> httpx.Response:
    # What a web page can send without a preflight: a "simple" POST with a text/plain body.
    body = f'{{"model": "victim", "from": "base", "system": "{system}", "stream": false}}'
    return c.post("/api/create", content=body, headers={"Origin": origin, "Content-Type": "text/plain"})


def _system(c: httpx.Client, model: str) -> str:
    r = c.post("/api/show", json={"model": model})
    assert r.status_code == 200, r.text
    return str(r.json().get("system", ""))


def test_cross_site_simple_request_is_refused_before_it_runs(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        r = c.post("/api/copy", json={"source": "smollm2", "destination": "base"})
        assert r.status_code == 200, r.text
        r = c.post("/api/create", json={"model": "victim", "from": "base", "system": "Be kind.", "stream": False})
        assert r.status_code == 200, r.text
        r = _cross_site_create(c, EVIL, "Be evil.")
        assert (r.status_code, r.content) == (403, b"")
        assert _system(c, "victim") == "Be kind."
        # GETs too: a page must not read the model list either.
        r = c.get("/api/tags", headers={"Origin": EVIL})
        assert (r.status_code, r.content) == (403, b"")
        assert "access-control-allow-origin" not in r.headers
        # No Origin (curl, SDKs): unaffected.
        r = c.get("/api/tags")
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_default_origins_are_allowed(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        for origin in (
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8443",
            "http://0.0.0.0:1",
            "app://anything",
            "file://",
            "tauri://localhost",
            "vscode-webview://abc",
        ):
            r = c.get("/api/version", headers={"Origin": origin})
            assert r.status_code == 200, origin
            assert r.headers["access-control-allow-origin"] == origin
        for origin in ("http://localhost.evil.example", "http://127.0.0.2", "null", "https://example.com"):
            r = c.get("/api/version", headers={"Origin": origin})
            assert r.status_code == 403, origin


def test_same_origin_is_always_allowed(smollm2_server: ServerProcess) -> None:
    """A page served by the server itself, reached on a LAN address: ``Origin`` equals ``scheme://Host``."""
    with smollm2_server.client() as c:
        for host in ("192.168.1.20:11434", "10.0.0.7:8080", f"127.0.0.1:{smollm2_server.port}"):
            r = c.get("/api/version", headers={"Origin": f"http://{host}", "Host": host})
            assert r.status_code == 200, host
        r = c.get("/api/version", headers={"Origin": "http://192.168.1.20:11434", "Host": "192.168.1.21:11434"})
        assert r.status_code == 403


def test_preflight_allowed_and_denied(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        r = c.options("/api/chat", headers={"Origin": "http://localhost:5173", **PREFLIGHT})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "content-type" in r.headers["access-control-allow-headers"].lower()
        r = c.options("/api/chat", headers={"Origin": EVIL, **PREFLIGHT})
        assert (r.status_code, r.content) == (403, b"")
        assert "access-control-allow-origin" not in r.headers


def test_ollama_origins_adds_origins_with_wildcards(start_server: object) -> None:
    srv: ServerProcess = start_server(OLLAMA_ORIGINS="https://app.example.com, https://*.trusted.example")  # type: ignore[operator]
    with srv.client(timeout=30) as c:
        for origin in (
            "https://app.example.com",
            "https://a.trusted.example",
            "https://x.y.trusted.example",
            "http://localhost:9",
        ):
            r = c.get("/api/tags", headers={"Origin": origin})
            assert r.status_code == 200, origin
            assert r.headers["access-control-allow-origin"] == origin
            r = c.options("/api/generate", headers={"Origin": origin, **PREFLIGHT})
            assert r.status_code == 200, origin
        for origin in (
            "http://app.example.com",
            "https://app.example.com.evil.example",
            "https://trusted.example",
            EVIL,
        ):
            assert c.get("/api/tags", headers={"Origin": origin}).status_code == 403, origin
            assert c.options("/api/generate", headers={"Origin": origin, **PREFLIGHT}).status_code == 403, origin


def test_ollama_origins_star_allows_every_origin(start_server: object) -> None:
    srv: ServerProcess = start_server(OLLAMA_ORIGINS="*")  # type: ignore[operator]
    with srv.client(timeout=30) as c:
        r = c.get("/api/tags", headers={"Origin": EVIL})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] in ("*", EVIL)
        r = c.options("/api/generate", headers={"Origin": EVIL, **PREFLIGHT})
        assert r.status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:11434",
        "LOCALHOST",
        "127.0.0.1:1",
        "[::1]:11434",
        "10.1.2.3",
        "192.168.0.9:80",
        "172.16.0.1",
        "0.0.0.0",
        "my-box.local",
        "app.localhost",
        "svc.internal:8080",
    ],
)
def test_host_guard_accepts_local_names(smollm2_server: ServerProcess, host: str) -> None:
    r = httpx.get(smollm2_server.url + "/api/version", headers={"Host": host}, timeout=10)
    assert r.status_code == 200, host


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:11434", "8.8.8.8", "[2001:4860::8888]:80", "localhost.evil.example", "local"]
)
def test_host_guard_refuses_other_names(smollm2_server: ServerProcess, host: str) -> None:
    """DNS rebinding: a name an attacker controls resolving to 127.0.0.1 must not reach the API."""
    r = httpx.post(
        smollm2_server.url + "/api/create",
        headers={"Host": host},
        json={"model": "x", "from": "smollm2", "stream": False},
        timeout=10,
    )
    assert (r.status_code, r.content) == (403, b""), host
    r = httpx.get(smollm2_server.url + "/api/tags", timeout=10)
    assert "x:latest" not in [m["name"] for m in r.json()["models"]]
