"""API keys (``POLLAMA_API_KEYS`` / ``POLLAMA_API_KEYS_FILE``) against a real ``pollama serve``: who
gets in, the 401 shape of each API family, reloading the keys file, the SDKs, the CLI, and the
warning of a server open to the network without keys."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from pollama.config import Settings
from pollama.errors import ConfigError
from pollama.server.auth import KeyRing
from tests.conftest import ServerProcess, free_port

StartServer = Callable[..., ServerProcess]

KEY_A = "sk-pollama-alpha-0123456789"
KEY_B = "sk-pollama-bravo-9876543210"
OLLAMA_401 = {"error": "unauthorized"}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wait_for(check: Callable[[], bool], timeout: float = 4.0) -> float:
    """Seconds until ``check()`` held (polling every 50 ms); fails after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"condition not met within {timeout} s")


def test_settings_parse_keys_and_fail_fast_on_an_unreadable_file(tmp_path: Path) -> None:
    settings = Settings.from_env({"POLLAMA_API_KEYS": f" {KEY_A} , ,{KEY_B} "})
    assert settings.api_keys == (KEY_A, KEY_B)
    assert settings.auth_required
    assert KEY_A not in str(settings.describe())
    assert not Settings.from_env({}).auth_required
    with pytest.raises(ConfigError, match=r"^POLLAMA_API_KEYS: no key"):
        Settings.from_env({"POLLAMA_API_KEYS": " , "})
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"POLLAMA_API_KEYS_FILE": str(missing)})
    assert str(info.value) == f"POLLAMA_API_KEYS_FILE: cannot read {missing}: No such file or directory"
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# team keys\n\n  {KEY_A}  \n#{KEY_B}\n{KEY_B}\n")
    ring = KeyRing((), Settings.from_env({"POLLAMA_API_KEYS_FILE": str(keys_file)}).api_keys_file)
    assert ring.keys == (KEY_A.encode(), KEY_B.encode())
    assert ring.accepts(KEY_B) and not ring.accepts("#" + KEY_B) and not ring.accepts("")


def test_env_keys_guard_every_api_family_with_its_own_401(start_server: StartServer) -> None:
    srv = start_server(POLLAMA_API_KEYS=f"{KEY_A},{KEY_B}")
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        # open without a key: liveness, and CORS preflights
        assert c.get("/").status_code == 200
        assert c.head("/").status_code == 200
        pre = c.options("/api/tags", headers={"Origin": "http://localhost", "Access-Control-Request-Method": "GET"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "http://localhost"
        # Ollama routes
        for method, path in (("GET", "/api/tags"), ("GET", "/api/version"), ("POST", "/api/chat"), ("POST", "/")):
            r = c.request(method, path)
            assert (r.status_code, r.json()) == (401, OLLAMA_401), (method, path)
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/api/tags", headers=_bearer("sk-wrong")).json() == OLLAMA_401
        assert c.get("/api/tags", headers={"Authorization": KEY_A}).status_code == 401  # no Bearer scheme
        # both keys work, by Bearer or by x-api-key
        assert c.get("/api/tags", headers=_bearer(KEY_A)).json() == {"models": []}
        assert c.get("/api/tags", headers={"Authorization": f"bearer {KEY_B}"}).status_code == 200
        assert c.get("/api/tags", headers={"x-api-key": KEY_B}).status_code == 200
        # OpenAI's shape
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.json()["error"]["message"].startswith("You didn't provide an API key.")
        r = c.get("/v1/models", headers=_bearer("sk-wrong"))
        assert r.json() == {
            "error": {
                "message": "Incorrect API key provided.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
        assert c.get("/v1/models", headers=_bearer(KEY_A)).json()["object"] == "list"
        # Anthropic's shape
        r = c.post("/v1/messages", json={})
        assert (r.status_code, r.json()) == (
            401,
            {"type": "error", "error": {"type": "authentication_error", "message": "x-api-key header is required"}},
        )
        r = c.post("/v1/messages", json={}, headers={"x-api-key": "sk-wrong"})
        assert r.json()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
        # a browser can read the 401 (CORS headers on it)
        r = c.get("/api/tags", headers={"Origin": "http://localhost"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://localhost"
    log = srv.log.read_text()
    assert KEY_A not in log and KEY_B not in log


def test_a_server_without_keys_is_unchanged(server: ServerProcess) -> None:
    with server.client() as c:
        assert c.get("/api/tags").json() == {"models": []}
        assert c.get("/api/tags", headers=_bearer("anything")).status_code == 200


def test_keys_file_reloads_on_change_and_on_sighup(start_server: StartServer, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# keys\n{KEY_A}\n")
    srv = start_server(POLLAMA_API_KEYS_FILE=str(keys_file))

    def status(key: str) -> int:
        return httpx.get(srv.url + "/api/tags", headers=_bearer(key), timeout=10).status_code

    assert (status(KEY_A), status(KEY_B)) == (200, 401)
    # changed on disk: picked up by the watcher within ~2 s
    keys_file.write_text(f"{KEY_B}\n")
    waited = _wait_for(lambda: status(KEY_B) == 200)
    assert waited < 2.5
    assert status(KEY_A) == 401
    # same size, same mtime: only SIGHUP can make the server see it
    before = keys_file.stat()
    with keys_file.open("r+") as fh:
        fh.write(KEY_A[: len(KEY_B)])
    os.utime(keys_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    time.sleep(1.5)  # two watcher rounds: the unchanged stat must not trigger a reload
    assert (status(KEY_A), status(KEY_B)) == (401, 200)
    assert srv.process is not None
    os.kill(srv.process.pid, signal.SIGHUP)
    _wait_for(lambda: status(KEY_A) == 200, timeout=2.0)
    assert status(KEY_B) == 401
    assert srv.process.poll() is None


def test_sdk_clients_pass_with_the_key_and_fail_without(start_server: StartServer) -> None:
    srv = start_server(POLLAMA_API_KEYS=KEY_A)
    # openai: Bearer
    good = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY_A, max_retries=0)
    assert list(good.models.list()) == []
    with pytest.raises(openai.AuthenticationError) as oa:
        openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert oa.value.status_code == 401 and oa.value.code == "invalid_api_key"
    # anthropic: x-api-key; a good key reaches the route (unknown model → 404), a bad one stops at 401
    args = {"model": "no-such-model", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(anthropic.NotFoundError):
        anthropic.Anthropic(base_url=srv.url, api_key=KEY_A, max_retries=0).messages.create(**args)  # type: ignore[call-overload]
    with pytest.raises(anthropic.AuthenticationError) as an:
        anthropic.Anthropic(base_url=srv.url, api_key="sk-wrong", max_retries=0).messages.create(**args)  # type: ignore[call-overload]
    assert an.value.status_code == 401
    assert an.value.body == {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    # ollama: headers=
    assert ollama.Client(host=srv.url, headers=_bearer(KEY_A)).list().models == []
    with pytest.raises(ollama.ResponseError) as ol:
        ollama.Client(host=srv.url, headers=_bearer("sk-wrong")).list()
    assert (ol.value.status_code, ol.value.error) == (401, "unauthorized")


def test_cli_sends_pollama_api_key(start_server: StartServer) -> None:
    srv = start_server(POLLAMA_API_KEYS=KEY_A)
    ok = srv.cli("list", env={"POLLAMA_API_KEY": KEY_A})
    assert (ok.returncode, ok.stdout.split()) == (0, ["NAME", "ID", "SIZE", "MODIFIED"])
    refused = srv.cli("list", env={"POLLAMA_API_KEY": "sk-wrong"})
    assert (refused.returncode, refused.stderr) == (1, "Error: unauthorized\n")
    env = {k: v for k, v in srv.env.items() if k != "POLLAMA_API_KEY"}
    bare = subprocess.run(
        [sys.executable, "-m", "pollama", "list"], capture_output=True, text=True, timeout=60, env=env
    )
    assert (bare.returncode, bare.stderr) == (1, "Error: unauthorized\n")


def _first_stderr_line(env: dict[str, str], timeout: float = 30.0) -> str:
    """Start ``pollama serve`` with ``env``, return the first line it writes to stderr, and stop it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pollama", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        ready, _, _ = select.select([process.stderr], [], [], timeout)
        assert ready, "serve wrote nothing on stderr"
        return process.stderr.readline().decode()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_serve_warns_when_open_to_the_network_without_keys(isolated_env: Path) -> None:
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"0.0.0.0:{port}"}
    env.pop("POLLAMA_API_KEYS", None)
    env.pop("POLLAMA_API_KEYS_FILE", None)
    line = _first_stderr_line(env)
    assert line == (
        f"Warning: listening on 0.0.0.0:{port} beyond this machine with no API key: anyone who can reach it "
        "can use it (set POLLAMA_API_KEYS or POLLAMA_API_KEYS_FILE)\n"
    )
    with_keys = _first_stderr_line({**env, "OLLAMA_HOST": f"0.0.0.0:{free_port()}", "POLLAMA_API_KEYS": KEY_A})
    assert with_keys.startswith("time=") and "Warning" not in with_keys
