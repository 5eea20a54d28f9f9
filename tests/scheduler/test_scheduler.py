"""The scheduler's rules, with runners faked at the ``Runner`` seam and time driven by a fake clock
(the real runner is tested in ``tests/runner`` and end to end in ``tests/server``)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from pollama.errors import RequestCanceled, RunnerError, ServerBusy
from pollama.scheduler import LoadSpec, Scheduler
from pollama.scheduler.memory import MemoryInfo

GB = 1 << 30
BUSY = "^server busy, please try again.  maximum pending requests exceeded$"


class FakeRunner:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.stopped = False
        self._exit = asyncio.Event()

    @property
    def alive(self) -> bool:
        return not self._exit.is_set()

    @property
    def memory(self) -> int:
        return self.spec.estimated_memory

    async def wait_exit(self) -> None:
        await self._exit.wait()

    async def stop(self) -> None:
        self.stopped = True
        self._exit.set()

    def crash(self) -> None:
        self._exit.set()


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[FakeTimer] = []

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move time on and fire the timers that are due."""
        self.now += seconds
        due = sorted((t for t in self.timers if t.when <= self.now and not t.cancelled), key=lambda t: t.when)
        self.timers = [t for t in self.timers if t not in due]
        for timer in due:
            timer.callback()

    @property
    def pending(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled]


class Harness:
    def __init__(
        self, *, max_loaded: int = 3, max_queue: int = 8, total: int = 64 * GB, keep_alive: float = 300
    ) -> None:
        self.launched: list[FakeRunner] = []
        self.memory = MemoryInfo(total, total)
        self.gate: asyncio.Event | None = None
        self.launching = asyncio.Event()
        self.clock = FakeClock()
        self.scheduler = Scheduler(
            self.launch,
            default_keep_alive=keep_alive,
            max_loaded=max_loaded,
            max_queue=max_queue,
            memory_probe=lambda: self.memory,
            clock=self.clock,
        )

    async def launch(self, spec: LoadSpec) -> FakeRunner:
        self.launching.set()
        if self.gate is not None:
            await self.gate.wait()
        runner = FakeRunner(spec)
        self.launched.append(runner)
        return runner

    async def queued(self, n: int) -> None:
        """Let other tasks run until ``n`` requests wait in the load queue (no wall-clock sleep)."""
        for _ in range(1000):
            if self.scheduler.queued == n:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"{self.scheduler.queued} queued, expected {n}")


def spec(name: str, *, size: int = GB, **kw: Any) -> LoadSpec:
    return LoadSpec(name=name, model_path=Path(f"/blobs/{name}"), estimated_memory=size, **kw)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def test_fast_path_shares_one_runner() -> None:
    async def main() -> None:
        h = Harness()
        h.scheduler.start()
        a = await h.scheduler.acquire(spec("m"))
        b = await h.scheduler.acquire(spec("m"))
        assert a.runner is b.runner and len(h.launched) == 1
        assert a.load_duration >= 0 and b.load_duration == 0
        entry = h.scheduler.loaded()[0]
        assert entry.refs == 2
        a.release()
        b.release()
        assert entry.refs == 0 and entry.timer is not None
        await h.scheduler.close()
        assert h.launched[0].stopped

    run(main())


def test_keep_alive_expires_on_the_clock_and_latest_value_sticks() -> None:
    async def main() -> None:
        h = Harness()
        h.scheduler.start()
        lease = await h.scheduler.acquire(spec("m"), keep_alive=math.inf)
        assert math.isinf(h.scheduler.loaded()[0].expires_at)
        lease.release()
        assert h.clock.pending == []  # forever: no timer at all
        lease = await h.scheduler.acquire(spec("m"), keep_alive=5)
        entry = h.scheduler.loaded()[0]
        lease.release()
        h.clock.advance(4.9)
        assert h.scheduler.loaded() == [entry] and not h.launched[0].stopped
        h.clock.advance(0.2)
        await entry.unloaded.wait()
        assert h.scheduler.loaded() == [] and h.launched[0].stopped
        lease = await h.scheduler.acquire(spec("m"), keep_alive=0)
        entry = h.scheduler.loaded()[0]
        lease.release()
        await entry.unloaded.wait()
        assert h.scheduler.loaded() == [] and len(h.launched) == 2 and h.launched[1].stopped
        await h.scheduler.close()

    run(main())


def test_a_new_request_stops_the_idle_timer() -> None:
    async def main() -> None:
        h = Harness(keep_alive=10)
        h.scheduler.start()
        (await h.scheduler.acquire(spec("m"))).release()
        h.clock.advance(9)
        lease = await h.scheduler.acquire(spec("m"))  # keeps the default keep-alive, timer stopped
        h.clock.advance(5)
        assert not h.launched[0].stopped
        lease.release()
        h.clock.advance(9.9)
        assert not h.launched[0].stopped
        entry = h.scheduler.loaded()[0]
        h.clock.advance(0.2)
        await entry.unloaded.wait()
        assert h.launched[0].stopped
        await h.scheduler.close()

    run(main())


def test_unload_waits_for_inflight_requests() -> None:
    async def main() -> None:
        h = Harness()
        h.scheduler.start()
        lease = await h.scheduler.acquire(spec("m"))
        entry = h.scheduler.loaded()[0]
        assert await h.scheduler.unload(spec("m").key)
        assert not h.launched[0].stopped
        lease.release()
        await entry.unloaded.wait()
        assert h.launched[0].stopped
        assert not await h.scheduler.unload(spec("m").key)
        await h.scheduler.close()

    run(main())


def test_max_loaded_evicts_least_recently_used_idle() -> None:
    async def main() -> None:
        h = Harness(max_loaded=2)
        h.scheduler.start()
        for name in ("a", "b"):
            (await h.scheduler.acquire(spec(name))).release()
            h.clock.advance(1)
        (await h.scheduler.acquire(spec("a"))).release()  # a is now the most recently used
        h.clock.advance(1)
        (await h.scheduler.acquire(spec("c"))).release()
        names = sorted(e.spec.name for e in h.scheduler.loaded())
        assert names == ["a", "c"]
        assert [r.spec.name for r in h.launched if r.stopped] == ["b"]
        await h.scheduler.close()

    run(main())


def test_memory_pressure_evicts() -> None:
    async def main() -> None:
        h = Harness(total=10 * GB)
        h.scheduler.start()
        (await h.scheduler.acquire(spec("big", size=6 * GB))).release()
        h.clock.advance(1)
        (await h.scheduler.acquire(spec("small", size=GB))).release()
        assert len(h.scheduler.loaded()) == 2
        (await h.scheduler.acquire(spec("other", size=5 * GB))).release()
        # 5 GB does not fit in 80% of the 3 GB left: the least recently used ("big") goes, then it fits.
        assert sorted(e.spec.name for e in h.scheduler.loaded()) == ["other", "small"]
        assert [r.spec.name for r in h.launched if r.stopped] == ["big"]
        await h.scheduler.close()

    run(main())


def test_reload_when_load_options_change() -> None:
    async def main() -> None:
        h = Harness()
        h.scheduler.start()
        (await h.scheduler.acquire(spec("m", num_ctx=2048))).release()
        (await h.scheduler.acquire(spec("m", num_ctx=2048, num_gpu=-1))).release()
        assert len(h.launched) == 1
        (await h.scheduler.acquire(spec("m", num_ctx=4096))).release()
        assert len(h.launched) == 2 and h.launched[0].stopped
        assert h.scheduler.loaded()[0].spec.num_ctx == 4096
        await h.scheduler.close()

    run(main())


def test_queue_full_is_server_busy_and_cancel_while_queued() -> None:
    async def main() -> None:
        h = Harness(max_queue=1)
        h.gate = asyncio.Event()
        h.scheduler.start()
        first = asyncio.create_task(h.scheduler.acquire(spec("a")))
        await h.launching.wait()  # being loaded: out of the queue
        second = asyncio.create_task(h.scheduler.acquire(spec("b")))
        await h.queued(1)
        with pytest.raises(ServerBusy, match=BUSY):
            await h.scheduler.acquire(spec("c"))
        second.cancel()
        with pytest.raises(RequestCanceled, match="^request canceled$"):
            await second
        h.gate.set()
        (await first).release()
        third = await h.scheduler.acquire(spec("d"))
        third.release()
        assert [r.spec.name for r in h.launched] == ["a", "d"]
        await h.scheduler.close()

    run(main())


def test_a_loaded_runner_takes_its_slots_plus_max_queue_then_server_busy() -> None:
    async def main() -> None:
        h = Harness(max_queue=3)
        h.scheduler.start()
        m = spec("m", num_parallel=2)
        leases = [await h.scheduler.acquire(m) for _ in range(2 + 3)]  # 2 in flight, 3 waiting for a slot
        for _ in range(3):
            with pytest.raises(ServerBusy, match=BUSY):
                await h.scheduler.acquire(m)
        assert h.scheduler.loaded()[0].refs == 5 and len(h.launched) == 1
        leases.pop().release()
        leases.append(await h.scheduler.acquire(m))  # room again
        with pytest.raises(ServerBusy, match=BUSY):
            await h.scheduler.acquire(m)
        for lease in leases:
            lease.release()
        assert h.scheduler.loaded()[0].refs == 0
        await h.scheduler.close()

    run(main())


def test_requests_queued_for_a_load_are_refused_past_the_runner_limit() -> None:
    async def main() -> None:
        h = Harness(max_queue=2)
        h.gate = asyncio.Event()
        h.scheduler.start()
        m = spec("m")  # one slot: 1 in flight + 2 waiting
        first = asyncio.create_task(h.scheduler.acquire(m))
        await h.launching.wait()
        waiting = [asyncio.create_task(h.scheduler.acquire(m)) for _ in range(2)]
        await h.queued(2)
        h.gate.set()
        leases = [await first] + [await w for w in waiting]
        assert h.scheduler.loaded()[0].refs == 3
        with pytest.raises(ServerBusy, match=BUSY):
            await h.scheduler.acquire(m)
        for lease in leases:
            lease.release()
        await h.scheduler.close()

    run(main())


def test_dead_runner_is_forgotten_cleaned_up_and_reloaded() -> None:
    async def main() -> None:
        h = Harness()
        h.scheduler.start()
        lease = await h.scheduler.acquire(spec("m"))
        entry = h.scheduler.loaded()[0]
        h.launched[0].crash()
        await entry.unloaded.wait()
        assert h.scheduler.loaded() == []
        lease.release()
        (await h.scheduler.acquire(spec("m"))).release()
        assert len(h.launched) == 2
        await h.scheduler.close()
        assert h.launched[0].stopped  # stop() ran for the dead one too (it removes the socket folder)

    run(main())


def test_close_waits_for_every_task_and_refuses_new_requests() -> None:
    async def main() -> None:
        before = asyncio.all_tasks()
        h = Harness()
        h.scheduler.start()
        (await h.scheduler.acquire(spec("a"), keep_alive=0)).release()  # an unload task under way
        (await h.scheduler.acquire(spec("b"))).release()
        await h.scheduler.close()
        assert all(r.stopped for r in h.launched)
        assert asyncio.all_tasks() == before  # no watcher, timer task or unload left behind
        with pytest.raises(RunnerError, match="^server is shutting down$"):
            await h.scheduler.acquire(spec("c"))

    run(main())
