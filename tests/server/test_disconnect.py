"""A non-streamed request whose client goes away is cancelled like a streamed one (issue 10 item 3): the
runner stops generating at once instead of finishing the answer nobody will read. Checked on every
API through a real server, asking the runner itself (its ``health`` op) whether it is still busy."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess

LONG = 100_000  # tokens: minutes of generation, were it not cancelled
PROMPT = "Write a very long story about a dragon."
BODIES: dict[str, dict[str, Any]] = {
    "/api/generate": {"model": "smollm2", "prompt": PROMPT, "stream": False, "options": {"num_predict": LONG}},
    "/api/chat": {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": False,
        "options": {"num_predict": LONG},
    },
    "/v1/chat/completions": {"model": "smollm2", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": LONG},
    "/v1/completions": {"model": "smollm2", "prompt": PROMPT, "max_tokens": LONG},
    "/v1/messages": {"model": "smollm2", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": LONG},
}


def _runner_socket(server: ServerProcess) -> str:
    """The Unix socket of the server's (only) runner, read from the runner's command line."""
    assert server.process is not None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if "pollama.runner" in argv and parent == server.process.pid:
            return argv[argv.index("--socket") + 1]
    raise AssertionError("no runner is running")


def _busy(socket_path: str) -> int:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(socket_path)
        sock.sendall(b'{"op":"health"}\n')
        reply = sock.makefile("rb").readline()
    return int(json.loads(reply)["busy"])


def _wait_busy(socket_path: str, expected: int, timeout: float) -> float:
    """Poll the runner until it reports ``expected`` busy slots; the time it took."""
    started = time.monotonic()
    while (busy := _busy(socket_path)) != expected:
        assert time.monotonic() - started < timeout, f"runner still has {busy} busy slot(s) after {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("path", list(BODIES))
def test_disconnect_cancels_non_streamed_generation(one_slot_server: ServerProcess, path: str) -> None:
    runner = _runner_socket(one_slot_server)
    assert _busy(runner) == 0
    body = json.dumps(BODIES[path]).encode()
    client = socket.create_connection(("127.0.0.1", one_slot_server.port), timeout=10)
    try:
        client.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        _wait_busy(runner, 1, timeout=30)  # generating
    finally:
        client.close()  # the client goes away without reading an answer
    assert _wait_busy(runner, 0, timeout=5) < 5
    # The slot is free: the next request runs at once instead of queueing behind the abandoned one.
    with one_slot_server.client(timeout=30) as c:
        started = time.monotonic()
        r = c.post(
            "/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
        )
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 10
