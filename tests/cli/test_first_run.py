"""What a new user meets first: ``serve`` failures as one ``Error:`` line, the background server, an
offline ``pull``, ``run --format`` mistakes and ``serve --help``; real CLI, real servers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pollama.config import SERVER_VARIABLES
from tests.conftest import ServerProcess, free_port


def _pollama(*args: str, env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pollama", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def _serve_fails(env: dict[str, str]) -> str:
    """Run ``serve`` expecting it to stop at once; returns its only stderr line."""
    done = _pollama("serve", env={"OLLAMA_HOST": f"127.0.0.1:{free_port()}", **env})
    assert done.returncode == 1, done.stderr
    assert "Listening on" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_serve_on_a_port_in_use(isolated_env: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert _serve_fails({"OLLAMA_HOST": f"127.0.0.1:{port}"}) == (
            f"Error: listen tcp 127.0.0.1:{port}: bind: address already in use"
        )


def test_serve_with_models_not_a_directory(isolated_env: Path) -> None:
    models = isolated_env / "models-file"
    models.write_text("not a folder")
    assert _serve_fails({"OLLAMA_MODELS": str(models)}) == f"Error: OLLAMA_MODELS: {models} is not a directory"


def test_serve_with_an_unusable_home(isolated_env: Path) -> None:
    home = isolated_env / "home-file"
    home.write_text("not a folder")
    assert _serve_fails({"HOME": str(home), "OLLAMA_MODELS": str(isolated_env / "m")}) == (
        f"Error: HOME: cannot create {home}/.ollama: Not a directory"
    )


def test_background_server_says_how_to_stop_it(isolated_env: Path) -> None:
    port = free_port()
    env = {"OLLAMA_HOST": f"127.0.0.1:{port}"}
    done = _pollama("list", env=env)
    match = re.fullmatch(
        r"Started pollama server in the background \(logs: ~/\.ollama/logs/server\.log; "
        r"stop it with: kill (\d+)\)\n",
        done.stderr,
    )
    assert match, done.stderr
    pid = int(match.group(1))
    try:
        assert done.returncode == 0 and done.stdout.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        os.kill(pid, signal.SIGTERM)  # the advice works
        deadline = time.monotonic() + 20
        while _answers(port):
            assert time.monotonic() < deadline, "the background server is still running"
            time.sleep(0.1)
    finally:
        if _answers(port):
            os.kill(pid, signal.SIGKILL)


def _answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
    except httpx.TransportError:
        return False
    return True


def test_offline_pull_lists_the_catalog(start_server: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server: ServerProcess = start_server(
        HTTPS_PROXY=dead, HTTP_PROXY=dead, NO_PROXY="", https_proxy=dead, http_proxy=dead, no_proxy=""
    )
    done = server.cli("pull", "llama3.2", input="", timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == "pulling manifest"
    error = done.stderr.splitlines()[-1]
    assert error.startswith("Error: pull model manifest: ")
    assert error.endswith("(no registry could be reached; offline, pollama can install smollm2:135m, gemma3:270m-base)")
    # The catalog's model installs offline with defaults that keep a first answer short.
    pulled = server.cli("pull", "smollm2:135m", input="", timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stderr.splitlines()[-1] == "success"
    parameters = server.cli("show", "smollm2:135m", "--parameters", input="").stdout
    assert sorted(parameters.splitlines()) == [
        "num_predict                    256",
        "repeat_penalty                 1.1",
        'stop                           "<|im_end|>"',
        'stop                           "<|im_start|>"',
        "temperature                    0.2",
        "top_p                          0.9",
    ]


@pytest.mark.parametrize("value", ["xml", "42", '["json"]'])
def test_run_format_names_what_is_accepted(smollm2_server: ServerProcess, value: str) -> None:
    done = smollm2_server.cli("run", "smollm2", "--format", value, "hi", input="")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f'Error: invalid format: "{value}"; expected "json" or a valid JSON Schema object\n'


def test_serve_help_lists_the_environment_variables(isolated_env: Path) -> None:
    done = _pollama("serve", "--help", env={})
    assert done.returncode == 0
    block = done.stdout.split("Environment Variables:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in block] == [name for name, _, _ in SERVER_VARIABLES]
    assert (
        "      OLLAMA_HOST                Address to listen on (':port' = all interfaces) (default "
        "127.0.0.1:11434)" in block
    )
    assert any(line.startswith("      OLLAMA_KEEP_ALIVE") and line.endswith("(default 5m)") for line in block)
