"""A model served by several runners: ``ReplicaSet`` is one ``ModelRunner`` to the scheduler, holding
up to ``max_replicas`` runners of one ``LoadSpec`` that a factory starts (on a Ray cluster, one actor
each; see ``pollama.cluster``).

The scheduler's keep-alive, eviction and ``/api/ps`` see the set as one runner. Inside it, each
generation goes to a replica chosen by ``PrefixRouter`` (power of two choices on requests in flight,
the prompt's cache holder when load is balanced); a request that finds every replica's slots taken
starts one more replica in the background (up to ``max_replicas``), and an extra replica idle for
``idle_timeout`` seconds is stopped. A replica whose runner dies leaves the set; the set is gone
(``wait_exit`` returns) when its last replica is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pollama.errors import RunnerError
from pollama.runner.client import RUNNER_STOPPED, CompletionEvent, CompletionParams, Embeddings, ModelRunner
from pollama.scheduler.routing import PrefixRouter
from pollama.scheduler.spec import LoadSpec

log = logging.getLogger(__name__)

ReplicaFactory = Callable[[LoadSpec, int], Awaitable[ModelRunner]]
"""Starts replica number ``n`` (0 for the first) of a spec."""


@dataclass
class _Replica:
    replica_id: str
    runner: ModelRunner
    in_flight: int = 0
    served: int = 0
    last_used: float = field(default_factory=time.monotonic)
    watcher: asyncio.Task[None] | None = None

    @property
    def node(self) -> str:
        return str(getattr(self.runner, "node", "") or "")


class ReplicaSet:
    """Runners of one spec behind the ``ModelRunner`` interface (see the module docstring)."""

    def __init__(
        self,
        spec: LoadSpec,
        factory: ReplicaFactory,
        *,
        max_replicas: int,
        idle_timeout: float,
        router: PrefixRouter | None = None,
    ) -> None:
        self.spec = spec
        self._factory = factory
        self.max_replicas = max(1, max_replicas)
        self.idle_timeout = idle_timeout
        # the prompt's cache holder wins while it still has a free slot and is no busier than that
        self.router = router or PrefixRouter(slack=max(spec.num_parallel - 1, 0))
        self._replicas: list[_Replica] = []
        self._next_index = 0
        self._growing = 0
        self._gone = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._stopped = False

    @classmethod
    async def start(
        cls, spec: LoadSpec, factory: ReplicaFactory, *, max_replicas: int, idle_timeout: float
    ) -> ReplicaSet:
        """A set with its first replica started (errors starting it propagate)."""
        replicas = cls(spec, factory, max_replicas=max_replicas, idle_timeout=idle_timeout)
        await replicas._add()
        replicas._reaper = asyncio.get_running_loop().create_task(replicas._reap())
        return replicas

    # --- what the scheduler reads ----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether any replica still runs."""
        return any(r.runner.alive for r in self._replicas)

    @property
    def memory(self) -> int:
        """Memory of every replica together."""
        return sum(r.runner.memory for r in self._replicas)

    @property
    def replica_count(self) -> int:
        """Replicas running now (the scheduler multiplies a runner's slots by it)."""
        return max(1, len(self._replicas))

    @property
    def node(self) -> str:
        """The node of the first replica (``/api/ps``'s ``node``)."""
        return self._replicas[0].node if self._replicas else ""

    def describe(self) -> list[dict[str, Any]]:
        """Each replica's id, node, requests in flight and requests served (``/api/ps``'s ``replicas``)."""
        return [
            {"id": r.replica_id, "node": r.node, "in_flight": r.in_flight, "served": r.served} for r in self._replicas
        ]

    async def wait_exit(self) -> None:
        """Return when the last replica is gone."""
        await self._gone.wait()

    async def stop(self) -> None:
        """Stop every replica."""
        self._stopped = True
        if self._reaper is not None:
            self._reaper.cancel()
        for task in list(self._tasks):
            task.cancel()
        replicas, self._replicas = self._replicas, []
        await asyncio.gather(*(self._stop_replica(r) for r in replicas), return_exceptions=True)
        self._gone.set()

    # --- replicas --------------------------------------------------------------------------------

    async def _add(self) -> _Replica:
        index = self._next_index
        self._next_index += 1
        runner = await self._factory(self.spec, index)
        replica = _Replica(f"{index}", runner)
        if self._stopped:
            await runner.stop()
            raise RunnerError("server is shutting down")
        self._replicas.append(replica)
        replica.watcher = asyncio.get_running_loop().create_task(self._watch(replica))
        return replica

    async def _watch(self, replica: _Replica) -> None:
        await replica.runner.wait_exit()
        if replica in self._replicas:
            log.warning("replica %s of %s on %s exited", replica.replica_id, self.spec.name, replica.node or "?")
            self._drop(replica)
            with contextlib.suppress(Exception):
                await replica.runner.stop()

    def _drop(self, replica: _Replica) -> None:
        with contextlib.suppress(ValueError):
            self._replicas.remove(replica)
        self.router.forget(replica.replica_id)
        if not self._replicas and not self._growing:
            self._gone.set()

    async def _stop_replica(self, replica: _Replica) -> None:
        if replica.watcher is not None and replica.watcher is not asyncio.current_task():
            replica.watcher.cancel()
        try:
            await replica.runner.stop()
        except Exception as exc:  # noqa: BLE001 - a replica that fails to stop is gone anyway
            log.warning("stopping replica %s of %s: %s", replica.replica_id, self.spec.name, exc)

    def _maybe_grow(self) -> None:
        """Start one more replica when every running one has all its slots taken."""
        if self._stopped or len(self._replicas) + self._growing >= self.max_replicas:
            return
        if any(r.in_flight < self.spec.num_parallel for r in self._replicas if r.runner.alive):
            return
        self._growing += 1
        task = asyncio.get_running_loop().create_task(self._grow())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _grow(self) -> None:
        try:
            replica = await self._add()
            log.info("replica %s of %s started on %s", replica.replica_id, self.spec.name, replica.node or "?")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the set keeps serving with what it has
            log.warning("could not start another replica of %s: %s", self.spec.name, exc)
        finally:
            self._growing -= 1
            if not self._replicas and not self._growing:
                self._gone.set()

    async def _reap(self) -> None:
        """Stop extra replicas idle for longer than ``idle_timeout`` (the first one is the scheduler's)."""
        period = min(max(self.idle_timeout / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for replica in list(self._replicas[1:]):
                if replica.in_flight == 0 and now - replica.last_used > self.idle_timeout:
                    log.info("releasing idle replica %s of %s", replica.replica_id, self.spec.name)
                    self._drop(replica)
                    await self._stop_replica(replica)

    def _choose(self, prompt: str = "") -> _Replica:
        candidates = [r for r in self._replicas if r.runner.alive]
        if not candidates:
            raise RunnerError(RUNNER_STOPPED)
        replica = self.router.choose(candidates, prompt)
        if replica.in_flight >= self.spec.num_parallel:
            self._maybe_grow()
        return replica

    def _least_loaded(self) -> _Replica:
        candidates = [r for r in self._replicas if r.runner.alive]
        if not candidates:
            raise RunnerError(RUNNER_STOPPED)
        return min(candidates, key=lambda r: r.in_flight)

    # --- ModelRunner ----------------------------------------------------------------------------

    async def complete(self, params: CompletionParams) -> AsyncGenerator[CompletionEvent, None]:
        """One generation on the replica the router picks for its prompt."""
        replica = self._choose(params.prompt)
        replica.in_flight += 1
        try:
            stream = replica.runner.complete(params)
            try:
                async for event in stream:
                    yield event
            finally:
                await stream.aclose()
        finally:
            replica.in_flight -= 1
            replica.served += 1
            replica.last_used = time.monotonic()

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """``text``'s tokens (any replica: they share the weights)."""
        return await self._least_loaded().runner.tokenize(text, add_special=add_special)

    async def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens``."""
        return await self._least_loaded().runner.detokenize(tokens)

    async def count(self, texts: list[str]) -> list[int]:
        """How many tokens each text is."""
        return await self._least_loaded().runner.count(texts)

    async def embed(self, inputs: list[list[int]]) -> Embeddings:
        """Embeddings on the least loaded replica."""
        replica = self._least_loaded()
        replica.in_flight += 1
        try:
            return await replica.runner.embed(inputs)
        finally:
            replica.in_flight -= 1
            replica.served += 1
            replica.last_used = time.monotonic()
