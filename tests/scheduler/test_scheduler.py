"""The scheduler's rules, with runners faked at the ``Runner`` seam (the real runner is tested in
``tests/runner`` and end to end in ``tests/server``)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from pollama.errors import RequestCanceled, ServerBusy
from pollama.scheduler import LoadSpec, Scheduler
from pollama.scheduler.memory import MemoryInfo

GB = 1 << 30


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


class Harness:
    def __init__(self, *, max_loaded: int = 3, max_queue: int = 8, total: int = 64 * GB,
                 keep_alive: float = 300, load_delay: float = 0.0) -> None:
        self.launched: list[FakeRunner] = []
        self.load_delay = load_delay
        self.memory = MemoryInfo(total, total)
        self.gate: asyncio.Event | None = None
        self.scheduler = Scheduler(self.launch, default_keep_alive=keep_alive, max_loaded=max_loaded,
                                   max_queue=max_queue, memory_probe=lambda: self.memory)

    async def launch(self, spec: LoadSpec) -> FakeRunner:
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.load_delay)
        runner = FakeRunner(spec)
        self.launched.append(runner)
        return runner


def spec(name: str, *, size: int = GB, **kw: object) -> LoadSpec:
    return LoadSpec(name=name, model_path=Path(f"/blobs/{name}"), estimated_memory=size, **kw)  # type: ignore[arg-type]


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


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


def test_keep_alive_zero_unloads_after_release_and_latest_value_sticks() -> None:
    async def main() -> None:
        h = Harness()
        h.scheduler.start()
        lease = await h.scheduler.acquire(spec("m"), keep_alive=math.inf)
        assert math.isinf(h.scheduler.loaded()[0].expires_at)
        lease.release()
        lease = await h.scheduler.acquire(spec("m"), keep_alive=0.05)
        lease.release()
        await asyncio.sleep(0.2)
        assert h.scheduler.loaded() == [] and h.launched[0].stopped
        lease = await h.scheduler.acquire(spec("m"), keep_alive=0)
        lease.release()
        await asyncio.sleep(0.01)
        assert h.scheduler.loaded() == [] and len(h.launched) == 2
        await h.scheduler.close()
    run(main())


def test_unload_waits_for_inflight_requests() -> None:
    async def main() -> None:
        h = Harness()
        h.scheduler.start()
        lease = await h.scheduler.acquire(spec("m"))
        assert await h.scheduler.unload(spec("m").key)
        assert not h.launched[0].stopped
        lease.release()
        await asyncio.sleep(0.01)
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
            await asyncio.sleep(0.01)
        (await h.scheduler.acquire(spec("a"))).release()  # a is now the most recently used
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
        await asyncio.sleep(0.01)  # being loaded: out of the queue
        second = asyncio.create_task(h.scheduler.acquire(spec("b")))
        await asyncio.sleep(0.01)
        with pytest.raises(ServerBusy, match="^server busy, please try again.  maximum pending requests exceeded$"):
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


def test_dead_runner_is_forgotten_and_reloaded() -> None:
    async def main() -> None:
        h = Harness()
        h.scheduler.start()
        lease = await h.scheduler.acquire(spec("m"))
        h.launched[0].crash()
        await asyncio.sleep(0.01)
        assert h.scheduler.loaded() == []
        lease.release()
        (await h.scheduler.acquire(spec("m"))).release()
        assert len(h.launched) == 2
        await h.scheduler.close()
    run(main())
