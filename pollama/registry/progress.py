"""Running a long blob copy in a thread while the caller's generator reports its progress.

Pull, push, the offline catalog and OCI export/import all move big blobs inside a generator that
yields ``Progress`` lines; ``in_background`` runs the copy on a worker thread and yields a line for
it every ``interval`` seconds until it is done, then returns its result (or raises its error).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import Generic, TypeVar

from pollama.store.progress import Progress

T = TypeVar("T")


class ByteCounter:
    """Bytes moved so far, updated by worker threads and read by the reporting generator."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        """Count ``n`` more bytes (negative to take some back)."""
        with self._lock:
            self.value += n


class _Outcome(Generic[T]):
    def __init__(self) -> None:
        self.value: T | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


def in_background(
    work: Callable[[ByteCounter], T], label: str, digest: str, total: int, *, interval: float = 0.06
) -> Generator[Progress, None, T]:
    """Run ``work(counter)`` on a thread, yielding ``Progress(label, digest, total, counter)`` lines."""
    counter = ByteCounter()
    outcome: _Outcome[T] = _Outcome()

    def run() -> None:
        try:
            outcome.value = work(counter)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome.error = exc
        finally:
            outcome.done.set()

    thread = threading.Thread(target=run, name=label, daemon=True)
    thread.start()
    while not outcome.done.wait(interval):
        yield Progress(label, digest, total, min(counter.value, total))
    thread.join()
    if outcome.error is not None:
        raise outcome.error
    yield Progress(label, digest, total, total)
    return outcome.value  # type: ignore[return-value]
