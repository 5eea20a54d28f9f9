"""Faults (issue 14 item 5): a runner killed mid-stream, the server killed mid-upload, mid-create and
mid-pull, and a client going away in the middle of every kind of stream.

Already covered elsewhere and not repeated here: a non-streamed request whose client leaves
(``tests/server/test_disconnect.py``), SIGTERM with streams in flight (``tests/server/test_shutdown.py``),
the runner seam's own kill and disconnect cases (``tests/runner/test_process.py``), an interrupted
blob write inside one process (``tests/store/test_store.py``). Here it is always a real ``pollama
serve``, a real client, and for the pull a real registry (Debian's ``docker-registry``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CHATML_TEMPLATE, ServerProcess, create_from_gguf, file_digest
from tests.registry.conftest import CountingProxy, DockerRegistry, write_gguf

# Ollama's message for a runner that died under a request (``llm/server.go``).
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal "
    "error, check ollama server logs for details"
)
LONG = 100_000  # tokens: minutes of generation unless something stops it
PROMPT = "Write a very long story about a dragon."


def _store_leftovers(models: Path) -> list[str]:
    """Files of the store that are neither a finished blob nor a manifest (temporaries)."""
    return sorted(p.name for p in models.rglob(".tmp-*"))


def _sigkill(server: ServerProcess) -> None:
    """SIGKILL the server process itself (not its group: a crash does not signal the runners)."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)


def _restart(server: ServerProcess) -> ServerProcess:
    """A new server on the same home and models folder (and so the same start-up housekeeping)."""
    return ServerProcess(server.home, {k: v for k, v in server.env.items() if k != "OLLAMA_HOST"}).start()


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _names(server: ServerProcess) -> list[str]:
    with server.client() as c:
        return sorted(m["name"] for m in c.get("/api/tags").json()["models"])


# --- the runner dies mid-stream ---------------------------------------------------------------------


def test_runner_killed_mid_stream_gives_an_error_line_and_the_next_request_reloads(
    one_slot_server: ServerProcess,
) -> None:
    body = {"model": "smollm2", "prompt": PROMPT, "options": {"num_predict": LONG}}
    lines: list[dict[str, Any]] = []
    with one_slot_server.client() as c, c.stream("POST", "/api/generate", json=body) as s:
        assert s.status_code == 200
        killed: list[int] = []
        for raw in s.iter_lines():
            if not raw:
                continue
            lines.append(json.loads(raw))
            if not killed:
                killed = one_slot_server.runner_pids()
                assert len(killed) == 1
                os.kill(killed[0], signal.SIGKILL)
    # The stream ends with Ollama's error line, after the tokens it had sent, and never says done.
    assert lines[-1] == {"error": RUNNER_STOPPED}
    assert all("response" in line and not line.get("done") for line in lines[:-1])
    with one_slot_server.client() as c:
        r = c.post(
            "/api/generate",
            json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 3, "temperature": 0}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["done"] is True and r.json()["eval_count"] == 3
    (pid,) = one_slot_server.runner_pids()
    assert pid != killed[0]


# --- a client that goes away mid-stream frees its slot ---------------------------------------------

STREAMS: dict[str, dict[str, Any]] = {
    "/api/generate": {"model": "smollm2", "prompt": PROMPT, "options": {"num_predict": LONG}},
    "/api/chat": {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "options": {"num_predict": LONG},
    },
    "/v1/chat/completions": {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": LONG,
        "stream": True,
    },
    "/v1/completions": {"model": "smollm2", "prompt": PROMPT, "max_tokens": LONG, "stream": True},
    "/v1/messages": {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": LONG,
        "stream": True,
    },
}


def _slots_busy(server: ServerProcess) -> float:
    """``pollama_slots_busy`` of smollm2 (0 when no runner is loaded)."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    match = re.search(r'^pollama_slots_busy\{model="smollm2(?::latest)?"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("path", list(STREAMS))
def test_a_client_leaving_a_stream_frees_the_slot(one_slot_server: ServerProcess, path: str) -> None:
    with one_slot_server.client() as c, c.stream("POST", path, json=STREAMS[path]) as s:
        assert s.status_code == 200
        content = s.headers["content-type"]
        assert content.startswith("application/x-ndjson" if path.startswith("/api/") else "text/event-stream")
        # Keep the iterator alive: closing it (a ``break`` out of a ``for``) would close the connection.
        lines = s.iter_lines()
        assert [line for line in (next(lines) for _ in range(6)) if line], "tokens are flowing"
        assert _slots_busy(one_slot_server) == 1
        # Leaving the ``with`` closed the connection without reading the rest.
    _wait_for(lambda: _slots_busy(one_slot_server) == 0, 15, f"the slot of {path} to be freed")
    # With one slot, this only answers if the abandoned generation is no longer running.
    with one_slot_server.client(timeout=60) as c:
        r = c.post(
            "/api/generate",
            json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 2, "temperature": 0}},
        )
    assert r.status_code == 200, r.text
    assert r.json()["eval_count"] == 2


# --- the server dies mid-upload and mid-create --------------------------------------------------------


def test_server_killed_mid_upload_leaves_no_blob_and_its_temporary_goes_at_the_next_start(
    start_server: Any, smollm2_gguf: Path
) -> None:
    server: ServerProcess = start_server()
    digest = file_digest(smollm2_gguf)
    data = smollm2_gguf.read_bytes()
    half_sent = threading.Event()
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield data[: len(data) // 2]
        half_sent.set()
        release.wait(60)
        yield data[len(data) // 2 :]

    failure: list[BaseException] = []

    def upload() -> None:
        try:
            httpx.post(f"{server.url}/api/blobs/{digest}", content=body(), timeout=60)
        except httpx.HTTPError as exc:
            failure.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    try:
        assert half_sent.wait(60)
        blobs = server.models / "blobs"
        _wait_for(lambda: bool(_store_leftovers(server.models)), 30, "the upload's temporary file")
        _wait_for(lambda: any(p.stat().st_size > 0 for p in blobs.glob(".tmp-*")), 30, "upload bytes on disk")
        _sigkill(server)
    finally:
        release.set()
        thread.join(60)
    assert failure, "the upload cannot have succeeded"
    assert _store_leftovers(server.models)  # the crash left the temporary behind
    restarted = _restart(server)
    try:
        assert _store_leftovers(restarted.models) == []
        assert not (restarted.models / "blobs" / digest.replace(":", "-")).exists()
        with restarted.client() as c:
            assert c.head(f"/api/blobs/{digest}").status_code == 404
            # The same upload now succeeds from scratch.
            assert c.post(f"/api/blobs/{digest}", content=data).status_code == 201
    finally:
        restarted.stop()


def test_server_killed_mid_create_lists_no_half_model(start_server: Any, smollm2_gguf: Path) -> None:
    server: ServerProcess = start_server()
    digest = file_digest(smollm2_gguf)
    with server.client() as c:
        assert c.post(f"/api/blobs/{digest}", content=smollm2_gguf.read_bytes()).status_code == 201
        body = {
            "model": "crashed",
            "files": {smollm2_gguf.name: digest},
            "template": CHATML_TEMPLATE,
            "system": "You are terse.",
            "parameters": {"temperature": 0, "stop": ["<|im_end|>"]},
        }
        with c.stream("POST", "/api/create", json=body) as s:
            assert s.status_code == 200
            first = json.loads(next(s.iter_lines()))
            assert "status" in first
            _sigkill(server)
    restarted = _restart(server)
    try:
        assert _store_leftovers(restarted.models) == []
        names = _names(restarted)
        with restarted.client() as c:
            if names:
                # The crash came after the manifest's rename: then the model is complete.
                assert names == ["crashed:latest"]
                shown = c.post("/api/show", json={"model": "crashed"}).json()
                assert shown["system"] == "You are terse." and shown["template"] == CHATML_TEMPLATE
            else:
                assert c.post("/api/show", json={"model": "crashed"}).status_code == 404
            # The weights blob is still there for a create that tries again.
            assert c.head(f"/api/blobs/{digest}").status_code == 200
            assert c.post("/api/create", json={**body, "stream": False}).json() == {"status": "success"}
        assert _names(restarted) == ["crashed:latest"]
    finally:
        restarted.stop()


# --- the server dies mid-pull, and a client leaves a pull -----------------------------------------------


@pytest.fixture
def pushed(tmp_path: Path, start_server: Any) -> Iterator[tuple[CountingProxy, str, str]]:
    """A registry holding ``<registry>/test/big:latest`` (a 24 MiB GGUF), behind a proxy that sends blobs
    at 2 MiB/s; yields the proxy, the name to pull through it and the weights digest."""
    registry = DockerRegistry(tmp_path / "registry").start()
    proxy = CountingProxy(registry.host)
    try:
        gguf = write_gguf(tmp_path / "big.gguf", payload_bytes=24 << 20, seed=14)
        source: ServerProcess = start_server()
        with source.client() as c:
            create_from_gguf(c, f"{registry.host}/test/big", gguf)
            r = c.post("/api/push", json={"model": f"{registry.host}/test/big", "insecure": True, "stream": False})
            assert r.status_code == 200, r.text
        source.stop()
        proxy.delay_per_mb = 0.5
        yield proxy, f"{proxy.host}/test/big", file_digest(gguf)
    finally:
        proxy.close()
        registry.stop()


def _pull_until_bytes(server: ServerProcess, name: str, then: Any) -> None:
    """Stream a pull and call ``then(response)`` once the weights layer has some bytes."""
    with server.client() as c, c.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as s:
        assert s.status_code == 200
        for raw in s.iter_lines():
            line = json.loads(raw)
            assert "error" not in line, line
            if line.get("completed") and line.get("total", 0) > (1 << 20) and line["completed"] < line["total"]:
                then(s)
                return
    raise AssertionError("the pull finished before it could be interrupted")


def test_server_killed_mid_pull_lists_no_half_model_and_the_pull_resumes(
    start_server: Any, pushed: tuple[CountingProxy, str, str], isolated_env: Path
) -> None:
    proxy, name, weights = pushed
    # A models folder of its own: the pushing server's store holds the model already.
    models = isolated_env / "pulled"
    server: ServerProcess = start_server(OLLAMA_MODELS=str(models))
    server.models = models
    partial = models / "blobs" / (weights.replace(":", "-") + "-partial")
    state = Path(f"{partial}-0")  # the part's resume state: {"N", "Offset", "Size", "Completed"}

    def saved() -> int:
        try:
            return int(json.loads(state.read_text())["Completed"])
        except (OSError, ValueError, KeyError):
            return 0

    def kill_once_progress_is_saved(_: httpx.Response) -> None:
        _wait_for(lambda: saved() > 0, 30, "the pull to save its progress")
        _sigkill(server)

    _pull_until_bytes(server, name, kill_once_progress_is_saved)
    completed = saved()
    assert 0 < completed < 24 << 20
    restarted = _restart(server)
    restarted.models = models
    try:
        assert _names(restarted) == []
        assert _store_leftovers(models) == []
        # Resumable download state is kept (as Ollama keeps it), so the next pull continues from it.
        assert partial.exists() and saved() == completed
        proxy.reset()
        proxy.delay_per_mb = 0
        with restarted.client() as c:
            r = c.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
        assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
        total = (models / "blobs" / weights.replace(":", "-")).stat().st_size
        assert proxy.blob_bytes(weights) == total - completed
        assert _names(restarted) == [name + ":latest"]
        assert sorted(p.name for p in (models / "blobs").iterdir() if "-partial" in p.name) == []
        assert _store_leftovers(models) == []
    finally:
        restarted.stop()


def test_a_client_leaving_a_pull_stream_does_not_hold_up_the_next_pull(
    start_server: Any, pushed: tuple[CountingProxy, str, str], isolated_env: Path
) -> None:
    proxy, name, _ = pushed
    models = isolated_env / "pulled"
    server: ServerProcess = start_server(OLLAMA_MODELS=str(models))
    server.models = models
    _pull_until_bytes(server, name, lambda s: s.close())
    proxy.delay_per_mb = 0
    with server.client(timeout=60) as c:
        r = c.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
        assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
        assert _names(server) == [name + ":latest"]
        r = c.post("/api/show", json={"model": name})
        assert r.status_code == 200, r.text
    _wait_for(lambda: not [p for p in (models / "blobs").iterdir() if "-partial" in p.name], 30, "partial files")
    assert _store_leftovers(models) == []
