"""The frontend's side of a runner actor: ``ActorRunner`` wraps an actor handle as a ``ModelRunner``.

Every call goes to the actor (``pollama.cluster.actor.RunnerActor``) and its reply is read as the
runner's wire events are locally (``completion_event``, ``event_error``). When the actor or its node
dies, a call in flight fails with Ollama's runner-stopped error and the runner counts as dead at
once, so the scheduler places the next request afresh. A long-running ``wait_exit`` call on the
actor is how the frontend notices a death it did not cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

import ray
import ray.exceptions

from pollama.errors import PollamaError, RunnerError
from pollama.runner.client import RUNNER_STOPPED, CompletionEvent, CompletionParams, Finished, RunnerOps
from pollama.runner.client import completion_event as typed_event
from pollama.runner.protocol import event_error
from pollama.scheduler.spec import LoadSpec

log = logging.getLogger(__name__)

_STOP_TIMEOUT = 10.0


def actor_error(exc: BaseException) -> PollamaError:
    """The domain error a failed actor call stands for: the actor's own error if it raised one,
    Ollama's runner-stopped error when the actor, its worker or its node is gone."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, PollamaError):
            return cause
        return RunnerError(str(cause or exc))
    return RunnerError(RUNNER_STOPPED)


class ActorRunner(RunnerOps):
    """A loaded runner actor (see the module docstring)."""

    def __init__(
        self,
        handle: Any,
        spec: LoadSpec,
        described: dict[str, Any],
        name: str,
        *,
        on_stop: Callable[[str], None] | None = None,
    ) -> None:
        self.handle = handle
        self._on_stop = on_stop
        self.spec = spec
        self.name = name
        self.node = str(described.get("node", ""))
        self.node_id = str(described.get("node_id", ""))
        self.info: dict[str, Any] = dict(described.get("info") or {})
        self._dead = False
        self._exit: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._wait_actor())

    async def _wait_actor(self) -> None:
        try:
            await self.handle.wait_exit.remote()
        except Exception as exc:  # noqa: BLE001 - any failure means the actor is gone
            log.info("runner actor %s on %s ended: %s", self.name, self.node, type(exc).__name__)
        finally:
            self._dead = True

    # --- Runner (scheduler) -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """False as soon as a call or the exit watch saw the actor gone."""
        return not self._dead

    @property
    def memory(self) -> int:
        """The estimate the actor was placed with (else what the runner reported)."""
        return self.spec.estimated_memory or int(self.info.get("model_size", 0))

    async def wait_exit(self) -> None:
        """Return when the actor's runner exits or the actor dies."""
        await asyncio.shield(self._exit)

    async def stop(self) -> None:
        """Stop the runner on its node, then the actor."""
        if not self._dead:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.handle.stop.remote(), timeout=_STOP_TIMEOUT)
        with contextlib.suppress(Exception):
            ray.kill(self.handle, no_restart=True)
        self._dead = True
        if self._on_stop is not None:
            self._on_stop(self.name)
        self._exit.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._exit

    # --- requests ---------------------------------------------------------------------------------

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request with a single reply."""
        if self._dead:
            raise RunnerError(RUNNER_STOPPED)
        try:
            reply: dict[str, Any] = await self.handle.call.remote(request)
        except ray.exceptions.RayError as exc:
            self._dead = self._dead or not isinstance(exc, ray.exceptions.RayTaskError)
            raise actor_error(exc) from None
        if "error" in reply:
            raise event_error(reply)
        return reply

    async def complete(self, params: CompletionParams) -> AsyncGenerator[CompletionEvent, None]:
        """One generation relayed from the actor's stream; closing it cancels the remote task."""
        if self._dead:
            raise RunnerError(RUNNER_STOPPED)
        stream = self.handle.stream.options(num_returns="streaming").remote(params.wire())
        finished = False
        try:
            async for ref in stream:
                try:
                    event: dict[str, Any] = await ref
                except ray.exceptions.RayError as exc:
                    self._dead = self._dead or not isinstance(exc, ray.exceptions.RayTaskError)
                    raise actor_error(exc) from None
                if "error" in event:
                    finished = True
                    raise event_error(event)
                typed = typed_event(event)
                if typed is not None:
                    yield typed
                if isinstance(typed, Finished):
                    finished = True
                    return
            finished = True
            raise RunnerError(RUNNER_STOPPED)
        except ray.exceptions.RayError as exc:
            self._dead = self._dead or not isinstance(exc, ray.exceptions.RayTaskError)
            raise actor_error(exc) from None
        finally:
            if not finished:
                with contextlib.suppress(Exception):
                    ray.cancel(stream)
