"""The models directory's lock: manifest writes and garbage collection, one at a time, across processes.

``StoreLock`` combines a thread lock (for the threads of one process) with ``fcntl.flock`` on a lock
file in the models directory (for other processes: a CLI ``import`` or ``export`` next to a running
server). Holders keep it only for short critical sections — re-checking that blobs exist and writing
a manifest, or deciding which blobs to delete — never across a ``yield`` or an ``await``: a generator
resumed on another worker thread could otherwise never release it, and every later writer would
wait forever.

It is reentrant within one thread (``delete`` collects garbage while holding it). Acquiring gives
up after ``timeout`` seconds with ``StoreLocked`` instead of blocking a worker thread for good.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from pollama.errors import StoreError, StoreLocked

LOCK_FILE = ".pollama.lock"
DEFAULT_TIMEOUT = 60.0


class StoreLock:
    """An exclusive, reentrant lock over one models directory, shared by threads and processes."""

    def __init__(self, path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._threads = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting at most ``timeout`` seconds (default: the lock's own)."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        if not self._threads.acquire(timeout=limit):
            raise StoreLocked(f"the models directory is busy: could not lock {self.path} within {limit:g}s")
        try:
            if self._depth == 0:
                self._fd = self._lock_file(deadline, limit)
            self._depth += 1
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        """Give the lock back (the file lock goes when the outermost holder releases)."""
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fd, self._fd = self._fd, None
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)
        finally:
            self._threads.release()

    @property
    def held(self) -> bool:
        """True if some thread of this process holds the lock right now."""
        return self._depth > 0

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def _lock_file(self, deadline: float, limit: float) -> int:
        fd = _open_lock_file(self.path)
        delay = 0.001
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise StoreLocked(
                            f"the models directory is busy: {self.path} is locked by another "
                            f"process (waited {limit:g}s)"
                        ) from None
                    # Another process holds it; flock has no timed wait, so poll, backing off to 50 ms.
                    time.sleep(min(delay, remaining))
                    delay = min(delay * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise


def _open_lock_file(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # flock works on a read-only descriptor too
        except OSError as exc:
            raise StoreError(f"cannot lock the models directory ({path}): {exc.strerror or exc}") from None
    except OSError as exc:
        raise StoreError(f"cannot lock the models directory ({path}): {exc.strerror or exc}") from None
