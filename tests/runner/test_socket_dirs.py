"""Runner socket folders (``<tmp>/pollama-runner-*``) never outlive their runner: removed when the
runner is killed, when the server is killed, and (stale ones) the next time a server launches a runner."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pollama.runner.client import RUNNER_DIR_PREFIX, remove_stale_runner_dirs
from tests.conftest import ServerProcess, create_from_gguf


def _owned_by(pid: int) -> list[Path]:
    """The runner socket folders whose owner file names ``pid``."""
    found = []
    for path in Path(tempfile.gettempdir()).glob(RUNNER_DIR_PREFIX + "*"):
        try:
            if int((path / "owner").read_text().strip()) == pid:
                found.append(path)
        except (OSError, ValueError):
            continue
    return found


def _until(condition: Callable[[], bool], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _loaded_server(start_server: Any, smollm2_gguf: Path) -> tuple[ServerProcess, Path, int]:
    srv: ServerProcess = start_server(OLLAMA_CONTEXT_LENGTH="256")
    with srv.client() as c:
        create_from_gguf(c, "smollm2", smollm2_gguf)
        assert c.post("/api/generate", json={"model": "smollm2"}).json()["done_reason"] == "load"
    assert srv.process is not None
    [folder] = _owned_by(srv.process.pid)
    [runner] = srv.runner_pids()
    assert (folder / "sock").exists()
    return srv, folder, runner


def test_a_killed_runner_loses_its_socket_folder(start_server: Any, smollm2_gguf: Path) -> None:
    srv, folder, runner = _loaded_server(start_server, smollm2_gguf)
    os.kill(runner, signal.SIGKILL)
    assert _until(lambda: not folder.exists()), f"{folder} still there after its runner was killed"
    with srv.client() as c:  # the next request loads a new runner, in a new folder
        r = c.post(
            "/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
        )
        assert r.status_code == 200, r.text
    assert srv.process is not None and len(_owned_by(srv.process.pid)) == 1


def test_a_killed_server_loses_its_runners_socket_folders(start_server: Any, smollm2_gguf: Path) -> None:
    srv, folder, runner = _loaded_server(start_server, smollm2_gguf)
    assert srv.process is not None
    srv.process.send_signal(signal.SIGKILL)  # the server only: its runner sees its stdin close
    srv.process.wait()
    assert _until(lambda: not Path(f"/proc/{runner}").exists() or b"Z" in _state(runner)), "runner outlived its server"
    assert _until(lambda: not folder.exists()), f"{folder} still there after its server was killed"


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"Z"


def test_stale_folders_are_removed_when_a_server_next_launches_a_runner(start_server: Any, smollm2_gguf: Path) -> None:
    stale = Path(tempfile.mkdtemp(prefix=RUNNER_DIR_PREFIX))
    (stale / "owner").write_text(f"{_dead_pid()}\n")
    (stale / "sock").write_bytes(b"")
    live = Path(tempfile.mkdtemp(prefix=RUNNER_DIR_PREFIX))
    (live / "owner").write_text(f"{os.getpid()}\n")  # this test process: still running
    try:
        srv: ServerProcess = start_server(OLLAMA_CONTEXT_LENGTH="256")
        with srv.client() as c:
            create_from_gguf(c, "smollm2", smollm2_gguf)
            assert c.post("/api/generate", json={"model": "smollm2"}).json()["done_reason"] == "load"
        assert not stale.exists()
        assert live.is_dir()
    finally:
        for path in (stale, live):
            if path.exists():
                for child in path.iterdir():
                    child.unlink()
                path.rmdir()


def test_remove_stale_runner_dirs(tmp_path: Path) -> None:
    tmp_path = tmp_path / "tmp"
    tmp_path.mkdir()
    dead = tmp_path / (RUNNER_DIR_PREFIX + "dead")
    dead.mkdir()
    (dead / "owner").write_text(f"{_dead_pid()}\n")
    alive = tmp_path / (RUNNER_DIR_PREFIX + "alive")
    alive.mkdir()
    (alive / "owner").write_text(f"{os.getpid()}\n")
    fresh = tmp_path / (RUNNER_DIR_PREFIX + "fresh")  # no owner yet: may be being created right now
    fresh.mkdir()
    legacy = tmp_path / (RUNNER_DIR_PREFIX + "legacy")  # from before owner files, nobody listening
    legacy.mkdir()
    os.utime(legacy, (time.time() - 3600, time.time() - 3600))
    other = tmp_path / "something-else"
    other.mkdir()
    assert sorted(remove_stale_runner_dirs(str(tmp_path))) == sorted([str(dead), str(legacy)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, fresh.name, other.name])


def test_a_runner_folder_names_its_owner_and_stop_removes_it(smollm2_gguf: Path) -> None:
    import asyncio

    from pollama.runner.client import RunnerProcess
    from pollama.scheduler import LoadSpec

    async def main() -> None:
        runner = await RunnerProcess.start(LoadSpec(name="smollm2", model_path=smollm2_gguf, num_ctx=256))
        folder = Path(runner.socket_path).parent
        assert int((folder / "owner").read_text()) == os.getpid()
        await runner.stop()
        assert not folder.exists()

    asyncio.run(main())
