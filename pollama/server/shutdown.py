"""Graceful shutdown: once ``begin()`` is called (SIGTERM), ``/health`` answers 503 and requests
in flight get ``grace`` seconds to finish; then each is ended where it stands (``ends()`` scopes are
cancelled) and answered with ``server shutting down`` in its API's shape."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import anyio

SHUTTING_DOWN = "server shutting down"


class Shutdown:
    """The server's shutdown state: draining (after ``begin``), then expired (after the grace)."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.draining = False
        self.expired = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scopes: set[anyio.CancelScope] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop requests run on (called at start-up, so ``begin`` may come from a signal handler)."""
        self._loop = loop

    def begin(self) -> None:
        """Start draining: safe from a signal handler or any thread; later calls do nothing."""
        if self.draining:
            return
        self.draining = True
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        assert self._loop is not None
        self._loop.call_later(self.grace, self.expire)

    def expire(self) -> None:
        """End the grace period now: every request still running is cut short."""
        self.expired = True
        for scope in list(self._scopes):
            scope.cancel()

    @contextlib.contextmanager
    def ends(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope around one request that ``expire`` cancels (at once if already expired)."""
        scope = anyio.CancelScope()
        if self.expired:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)
