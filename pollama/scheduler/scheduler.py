"""Which models are loaded: one runner per model, keep-alive timers, a bounded FIFO of requests
waiting for a model to load, eviction of idle runners, and noticing runners that die.

A request asks for a ``LoadSpec`` with ``acquire``; if a runner for it is loaded and needs no reload
it gets a ``Lease`` at once (Ollama's fast path), otherwise it waits in a queue of at most
``OLLAMA_MAX_QUEUE`` entries that one loop serves in order, loading one model at a time. Releasing
the lease starts the runner's idle timer (its keep-alive); when the timer fires the runner stops.

``OLLAMA_MAX_QUEUE`` also bounds each loaded runner: it holds at most ``num_parallel`` requests in
flight plus ``OLLAMA_MAX_QUEUE`` waiting for a slot; one more is refused with ``ServerBusy`` at once
(Ollama lets every request through the fast path and queues them all inside the runner, its issue
#7758). Time comes from an injectable ``Clock`` so tests can drive keep-alive without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from pollama.errors import RequestCanceled, RunnerError, ServerBusy
from pollama.scheduler.memory import MemoryInfo, system_memory
from pollama.scheduler.observer import NoObserver, SchedulerObserver
from pollama.scheduler.spec import LoadSpec, RunningModel

log = logging.getLogger(__name__)

FOREVER = math.inf


class Runner(Protocol):
    """What the scheduler needs from a loaded model's runner."""

    @property
    def alive(self) -> bool: ...

    @property
    def memory(self) -> int: ...

    async def wait_exit(self) -> None: ...

    async def stop(self) -> None: ...


Launcher = Callable[[LoadSpec], Awaitable[Runner]]


class Timer(Protocol):
    """A scheduled callback that can be called off."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Where the scheduler gets the time and its keep-alive timers from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the event loop after ``delay`` seconds."""
        ...


class LoopClock:
    """The real clock: ``time.monotonic`` and the running event loop's timers."""

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)


@dataclass
class Loaded:
    """A runner in the table, with its bookkeeping."""

    spec: LoadSpec
    runner: Runner
    keep_alive: float
    refs: int = 0
    expires_at: float = 0.0
    last_used: float = field(default_factory=time.monotonic)
    expiring: bool = False
    timer: Timer | None = None
    watcher: asyncio.Task[None] | None = None
    unloaded: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def size(self) -> int:
        """Memory the runner uses (what it reports, else the estimate)."""
        return self.runner.memory or self.spec.estimated_memory


class Lease:
    """A request's hold on a loaded runner; ``release()`` exactly once when the request ends."""

    def __init__(self, scheduler: Scheduler, entry: Loaded, load_duration: float) -> None:
        self._scheduler = scheduler
        self._entry = entry
        self.load_duration = load_duration
        self._released = False

    @property
    def runner(self) -> Runner:
        """The runner to send work to."""
        return self._entry.runner

    @property
    def spec(self) -> LoadSpec:
        """What was loaded."""
        return self._entry.spec

    def release(self) -> None:
        """End the request's hold; the runner's idle timer starts when no request holds it."""
        if not self._released:
            self._released = True
            self._scheduler._release(self._entry)


@dataclass
class _Pending:
    spec: LoadSpec
    keep_alive: float | None
    future: asyncio.Future[Lease]
    enqueued: float = field(default_factory=time.monotonic)


class Scheduler:
    """Owns every runner of one server."""

    def __init__(
        self,
        launcher: Launcher,
        *,
        default_keep_alive: float,
        max_loaded: int,
        max_queue: int,
        memory_probe: Callable[[], MemoryInfo] = system_memory,
        clock: Clock | None = None,
        observer: SchedulerObserver | None = None,
    ) -> None:
        self._launch = launcher
        self.default_keep_alive = default_keep_alive
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self._memory_probe = memory_probe
        self._clock: Clock = clock or LoopClock()
        self.observer: SchedulerObserver = observer or NoObserver()
        """Told about queue waits, loads and runner exits; may be replaced before ``start``."""
        self._loaded: dict[str, Loaded] = {}
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # unloads and watchers, awaited by close()
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving the queue (call from the event loop)."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._serve_queue())

    async def close(self) -> None:
        """Stop every runner, fail every waiting request, and wait for the scheduler's own tasks."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RunnerError("server is shutting down"))
        await asyncio.gather(*(self._unload(entry) for entry in list(self._loaded.values())), return_exceptions=True)
        while self._tasks:  # unloads already under way finish; watchers of stopped runners end
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task the scheduler keeps (so it is never garbage-collected midway and
        ``close`` can wait for it)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- requests ------------------------------------------------------------------------------

    async def acquire(self, spec: LoadSpec, keep_alive: float | None = None) -> Lease:
        """A lease on a runner for ``spec``, loading it if needed.

        ``keep_alive`` (seconds, ``math.inf`` = forever, ``None`` = keep the current value) becomes
        the runner's session duration. Raises ``ServerBusy`` when the queue is full or the runner
        already holds ``num_parallel`` requests plus ``max_queue`` waiting ones, and
        ``RequestCanceled`` if the caller is cancelled while waiting.
        """
        entry = self._loaded.get(spec.key)
        if entry is not None and not entry.expiring and entry.runner.alive and not entry.spec.needs_reload(spec):
            self._attach_or_refuse(entry, keep_alive)
            self.observer.queue_waited(spec.name, 0.0)
            return Lease(self, entry, 0.0)
        if self._closed:
            raise RunnerError("server is shutting down")
        if self._queue.qsize() >= self.max_queue:
            raise ServerBusy()
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        pending = _Pending(spec, keep_alive, future)
        self._queue.put_nowait(pending)
        try:
            lease = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().release()
            raise RequestCanceled() from None
        self.observer.queue_waited(spec.name, time.monotonic() - pending.enqueued)
        return lease

    def _attach_or_refuse(self, entry: Loaded, keep_alive: float | None) -> None:
        """Attach a request to a loaded runner unless its slots and its waiting line are all taken."""
        replicas = int(getattr(entry.runner, "replica_count", 1))  # a ReplicaSet has more slots
        if entry.refs >= entry.spec.num_parallel * replicas + self.max_queue:
            raise ServerBusy()
        self._attach(entry, keep_alive)

    def _attach(self, entry: Loaded, keep_alive: float | None) -> None:
        entry.refs += 1
        entry.last_used = self._clock.monotonic()
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.expires_at = _deadline(entry.keep_alive)

    def _release(self, entry: Loaded) -> None:
        entry.refs = max(entry.refs - 1, 0)
        entry.last_used = self._clock.monotonic()
        if entry.refs > 0 or entry.unloaded.is_set():
            return
        if entry.expiring or entry.keep_alive <= 0:
            self._spawn(self._unload(entry))
            return
        entry.expires_at = _deadline(entry.keep_alive)
        if not math.isinf(entry.keep_alive):
            entry.timer = self._clock.call_later(entry.keep_alive, lambda: self._on_timer(entry))

    def _on_timer(self, entry: Loaded) -> None:
        if not self._closed:
            self._spawn(self._expire(entry))

    async def _expire(self, entry: Loaded) -> None:
        entry.timer = None
        if entry.refs == 0:
            await self._unload(entry)

    async def unload(self, key: str) -> bool:
        """Stop the runner for ``key`` now if idle, or as soon as its requests finish.

        Returns ``False`` if nothing with that key is loaded.
        """
        entry = self._loaded.get(key)
        if entry is None:
            return False
        entry.expiring = True
        entry.keep_alive = 0
        if entry.refs == 0:
            await self._unload(entry)
        return True

    @property
    def queued(self) -> int:
        """Requests waiting in the load queue."""
        return self._queue.qsize()

    def loaded(self) -> list[Loaded]:
        """Every loaded runner."""
        return [e for e in self._loaded.values() if not e.unloaded.is_set()]

    def running(self) -> list[RunningModel]:
        """Every loaded model, most recently used first (for ``/api/ps``)."""
        entries = sorted(self.loaded(), key=lambda e: e.last_used, reverse=True)
        return [
            RunningModel(
                name=e.spec.name,
                model=e.spec.name,
                digest=e.spec.digest,
                size=e.size,
                size_vram=0,
                context_length=e.spec.num_ctx,
                expires_at=e.expires_at,
                node=str(getattr(e.runner, "node", "") or ""),
                replicas=_replicas_of(e.runner),
            )
            for e in entries
        ]

    # --- the queue ------------------------------------------------------------------------------

    async def _serve_queue(self) -> None:
        while True:
            pending = await self._queue.get()
            if pending.future.done():
                continue
            try:
                lease = await self._satisfy(pending)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the waiting request gets the error
                if not pending.future.done():
                    pending.future.set_exception(exc)
                continue
            if pending.future.done():
                lease.release()
            else:
                pending.future.set_result(lease)

    async def _satisfy(self, pending: _Pending) -> Lease:
        spec = pending.spec
        while True:
            if pending.future.done():
                raise RequestCanceled()
            entry = self._loaded.get(spec.key)
            if entry is not None:
                if entry.runner.alive and not entry.expiring and not entry.spec.needs_reload(spec):
                    self._attach_or_refuse(entry, pending.keep_alive)
                    return Lease(self, entry, 0.0)
                await self._evict(entry)
                continue
            if len(self.loaded()) >= self.max_loaded:
                await self._evict(self._victim())
                continue
            if self.loaded() and spec.estimated_memory > 0.8 * self._free_memory():
                await self._evict(self._victim())
                continue
            return await self._load(pending)

    def _free_memory(self) -> int:
        """Memory a new runner may use: what the system reports as available, but never more than
        the total minus what loaded runners hold (their mapped weights count as "available")."""
        info = self._memory_probe()
        held = sum(entry.size for entry in self.loaded())
        return max(min(info.available, info.total - held), 0)

    def _victim(self) -> Loaded:
        """The runner to unload next: idle ones first, least recently used first."""
        candidates = sorted(self.loaded(), key=lambda e: (e.refs > 0, e.last_used))
        return candidates[0]

    async def _evict(self, entry: Loaded) -> None:
        """Unload ``entry`` once its requests finish, and wait for that."""
        log.info("unloading %s to make room", entry.spec.name)
        entry.expiring = True
        entry.keep_alive = 0
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.refs == 0 or not entry.runner.alive:
            await self._unload(entry)
        await entry.unloaded.wait()

    async def _load(self, pending: _Pending) -> Lease:
        spec = pending.spec
        started = self._clock.monotonic()
        log.info("loading %s (ctx %d × %d)", spec.name, spec.num_ctx, spec.num_parallel)
        try:
            runner = await self._launch(spec)
        except Exception:
            self.observer.load_failed(spec.name)
            raise
        keep_alive = self.default_keep_alive if pending.keep_alive is None else pending.keep_alive
        entry = Loaded(spec, runner, keep_alive, last_used=self._clock.monotonic())
        self._loaded[spec.key] = entry
        entry.watcher = self._spawn(self._watch(entry))
        self._attach(entry, None)
        load_duration = self._clock.monotonic() - started
        self.observer.model_loaded(spec.name, load_duration)
        return Lease(self, entry, load_duration)

    async def _watch(self, entry: Loaded) -> None:
        """Notice a runner that exits on its own and forget it, so the next request reloads."""
        await entry.runner.wait_exit()
        if not entry.unloaded.is_set():
            log.warning("runner for %s exited unexpectedly", entry.spec.name)
            self.observer.runner_exited(entry.spec.name)
            self._forget(entry)
            try:
                await entry.runner.stop()  # a dead runner still has things to clean up (its socket folder)
            except Exception as exc:  # noqa: BLE001 - it is gone anyway
                log.warning("cleaning up after runner for %s: %s", entry.spec.name, exc)

    async def _unload(self, entry: Loaded) -> None:
        if entry.unloaded.is_set():
            return
        self._forget(entry)
        try:
            await entry.runner.stop()
        except Exception as exc:  # noqa: BLE001 - a runner that fails to stop is gone anyway
            log.warning("stopping runner for %s: %s", entry.spec.name, exc)

    def _forget(self, entry: Loaded) -> None:
        if self._loaded.get(entry.spec.key) is entry:
            del self._loaded[entry.spec.key]
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.watcher is not None and entry.watcher is not asyncio.current_task():
            entry.watcher.cancel()
        entry.unloaded.set()


def _replicas_of(runner: Runner) -> tuple[dict[str, Any], ...]:
    """What a runner with replicas (``ReplicaSet.describe``) says about them; nothing for a plain runner."""
    describe = getattr(runner, "describe", None)
    return tuple(describe()) if callable(describe) else ()


def _deadline(keep_alive: float) -> float:
    """Wall-clock expiry for a session duration (``inf`` stays ``inf``)."""
    return math.inf if math.isinf(keep_alive) else time.time() + max(keep_alive, 0)
