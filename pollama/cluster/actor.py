"""The Ray actor that hosts one runner on its node: ``RunnerActor``.

It brings the model's blobs into the node's models directory (``sync.localize``), starts the normal
runner subprocess there (``pollama.runner.client.RunnerProcess``, used as a library) and relays its
replies: single replies with ``call``, a completion stream with ``stream`` (a Ray streaming
generator of the runner's wire events). Failures travel as the runner's own error events
(``{"error", "kind"}``), so the frontend turns them into the same domain errors as a local runner.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncGenerator
from typing import Any

import ray

from pollama.cluster.sync import BlobRef, BlobSource, localize
from pollama.errors import PollamaError
from pollama.runner.client import RunnerProcess, remove_stale_runner_dirs
from pollama.runner.protocol import error_event
from pollama.scheduler.spec import LoadSpec


def node_name() -> str:
    """How this node is shown in ``/api/ps``: ``POLLAMA_NODE_NAME``, else the host name."""
    return os.environ.get("POLLAMA_NODE_NAME", "").strip() or socket.gethostname()


class RunnerActor:
    """One runner subprocess on this actor's node (create it with ``ray.remote``; see ``placement``)."""

    def __init__(
        self, spec: LoadSpec, blobs: list[BlobRef], source: BlobSource, load_timeout: float, debug: bool
    ) -> None:
        self._spec = spec
        self._blobs = blobs
        self._source = source
        self._load_timeout = load_timeout
        self._debug = debug
        self._runner: RunnerProcess | None = None
        self._lock = asyncio.Lock()

    async def load(self) -> dict[str, Any]:
        """Pull what is missing and start the runner (once); what the frontend shows about it."""
        async with self._lock:
            if self._runner is None:
                local = await asyncio.to_thread(localize, self._spec, self._blobs, self._source)
                await asyncio.to_thread(remove_stale_runner_dirs)
                self._runner = await RunnerProcess.start(local, load_timeout=self._load_timeout, debug=self._debug)
        return self.describe()

    def describe(self) -> dict[str, Any]:
        """The node, the runner's pid and load info, and the spec it was started for."""
        context = ray.get_runtime_context()
        runner = self._runner
        return {
            "node": node_name(),
            "node_id": context.get_node_id(),
            "pid": runner.pid if runner is not None else 0,
            "alive": runner is not None and runner.alive,
            "info": dict(runner.info) if runner is not None else {},
            "spec": self._spec,
        }

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request with a single reply (an error event on failure)."""
        try:
            return await self._loaded().call(request)
        except PollamaError as exc:
            return error_event(exc)

    async def stream(self, request: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The runner's events for one completion; cancelling the task closes the runner's connection."""
        try:
            async for event in self._loaded().stream(request):
                yield event
        except PollamaError as exc:
            yield error_event(exc)

    async def wait_exit(self) -> int:
        """Return when the runner process exits."""
        await self._loaded().wait_exit()
        return 0

    async def stop(self) -> None:
        """Stop the runner process (the frontend then kills this actor)."""
        if self._runner is not None:
            await self._runner.stop()

    def _loaded(self) -> RunnerProcess:
        if self._runner is None:
            raise PollamaError("runner not loaded")
        return self._runner
