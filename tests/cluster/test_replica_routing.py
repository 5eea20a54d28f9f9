"""Routing and replicas without Ray: ``PrefixRouter`` (power of two choices, prefix affinity) and
``ReplicaSet`` over a fake runner factory (the seam Ray's placement plugs into)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pollama.errors import RunnerError
from pollama.runner.client import RUNNER_STOPPED, CompletionEvent, CompletionParams, Embeddings, Finished, Piece
from pollama.scheduler.replicas import ReplicaSet
from pollama.scheduler.routing import PrefixRouter, prefix_hashes
from pollama.scheduler.spec import LoadSpec


@dataclass
class _Load:
    replica_id: str
    in_flight: int = 0


def test_prefix_hashes_chain_whole_blocks() -> None:
    a = prefix_hashes("x" * 64 + "y" * 64 + "z" * 10, block=64)
    b = prefix_hashes("x" * 64 + "y" * 64 + "w" * 70, block=64)
    assert len(a) == 2 and len(b) == 3
    assert a == b[:2]
    assert prefix_hashes("y" * 64 + "x" * 64, block=64)[1] != a[1]  # a block's hash depends on what precedes it
    assert prefix_hashes("short", block=64) == []


def test_power_of_two_choices_takes_the_less_loaded() -> None:
    router = PrefixRouter(rng=random.Random(1))
    busy, idle = _Load("busy", 3), _Load("idle", 0)
    assert all(router.choose([busy, idle]) is idle for _ in range(20))
    assert router.choose([busy]) is busy
    with pytest.raises(ValueError):
        router.choose([])


def test_the_prefix_holder_wins_when_load_is_balanced() -> None:
    router = PrefixRouter(rng=random.Random(2))
    replicas = [_Load(str(i)) for i in range(4)]
    system = "You are a terse assistant. " * 8
    first = router.choose(replicas, system + "Hi")
    for turn in range(5):
        assert router.choose(replicas, system + "Hi" + " and more" * turn) is first
    first.in_flight = 1  # now busier than the others: load counts first
    assert router.choose(replicas, system + "Hi again") is not first
    lenient = PrefixRouter(slack=1, rng=random.Random(2))
    holder = lenient.choose(replicas, system)
    holder.in_flight = 1
    others = [r for r in replicas if r is not holder]
    for r in others:
        r.in_flight = 0
    assert lenient.choose(replicas, system + "next") is holder


def test_forgetting_a_replica_drops_its_prefixes() -> None:
    router = PrefixRouter(rng=random.Random(3))
    a, b = _Load("a"), _Load("b")
    prompt = "p" * 200
    owner = router.choose([a, b], prompt)
    router.forget(owner.replica_id)
    counts = {"a": 0, "b": 0}
    for _ in range(40):
        fresh = PrefixRouter(rng=random.Random(_))
        counts[fresh.choose([a, b], prompt).replica_id] += 1
    assert counts["a"] > 0 and counts["b"] > 0  # with nothing remembered the pick is random


class _FakeRunner:
    """A runner at the factory seam: each completion waits for ``release`` before it finishes."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.node = f"node{n}"
        self.release = asyncio.Event()
        self.exited = asyncio.Event()
        self.stopped = False

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    @property
    def memory(self) -> int:
        return 100

    async def wait_exit(self) -> None:
        await self.exited.wait()

    async def stop(self) -> None:
        self.stopped = True
        self.exited.set()

    async def complete(self, params: CompletionParams) -> AsyncGenerator[CompletionEvent, None]:
        if not self.alive:
            raise RunnerError(RUNNER_STOPPED)
        yield Piece(f"from {self.n}")
        await self.release.wait()
        yield Finished()

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        return [len(text)]

    async def detokenize(self, tokens: list[int]) -> str:
        return ""

    async def count(self, texts: list[str]) -> list[int]:
        return [len(t) for t in texts]

    async def embed(self, inputs: list[list[int]]) -> Embeddings:
        return Embeddings([[1.0]])


async def _collect(replicas: ReplicaSet, prompt: str) -> list[CompletionEvent]:
    return [e async for e in replicas.complete(CompletionParams(prompt))]


async def _until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(500):  # a 5 s deadline
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_replica_set_grows_under_load_and_releases_idle_replicas(tmp_path: Path) -> None:
    async def scenario() -> None:
        made: list[_FakeRunner] = []

        async def factory(spec: LoadSpec, n: int) -> _FakeRunner:
            runner = _FakeRunner(n)
            made.append(runner)
            return runner

        spec = LoadSpec("m", tmp_path / "sha256-00", num_parallel=1)
        replicas = await ReplicaSet.start(spec, factory, max_replicas=2, idle_timeout=0.2)  # type: ignore[arg-type]
        assert replicas.replica_count == 1 and replicas.node == "node0"
        first = asyncio.create_task(_collect(replicas, "a" * 100))
        await _until(lambda: replicas.describe()[0]["in_flight"] == 1, "the first request")
        second = asyncio.create_task(_collect(replicas, "b" * 100))  # every slot taken: grow
        await _until(lambda: replicas.replica_count == 2, "a second replica")
        assert len(made) == 2 and replicas.memory == 200
        made[0].release.set()
        made[1].release.set()
        await asyncio.gather(first, second)
        third = await _collect(replicas, "c" * 100)  # both idle now: either may take it
        assert isinstance(third[-1], Finished)
        assert sum(r["served"] for r in replicas.describe()) == 3
        await _until(lambda: replicas.replica_count == 1, "the idle replica's release")
        assert made[1].stopped and not made[0].stopped
        made[0].exited.set()  # the last replica dies: the set is gone
        async with asyncio.timeout(5):
            await replicas.wait_exit()
        assert not replicas.alive
        with pytest.raises(RunnerError, match="unexpectedly stopped"):
            await _collect(replicas, "d")
        await replicas.stop()

    asyncio.run(scenario())
