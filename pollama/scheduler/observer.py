"""What the scheduler tells an observer (metrics, for one): queue waits, loads, failed loads and
runners that exit on their own. Plain calls, no metrics library: the server layer implements it."""

from __future__ import annotations

from typing import Protocol


class SchedulerObserver(Protocol):
    """Told about the events only the scheduler sees; every method must be cheap and never raise."""

    def queue_waited(self, model: str, seconds: float) -> None:
        """A request waited ``seconds`` in the load queue before getting a runner (0 on the fast path)."""

    def model_loaded(self, model: str, seconds: float) -> None:
        """A runner for ``model`` started and loaded in ``seconds``."""

    def load_failed(self, model: str) -> None:
        """Starting a runner for ``model`` failed."""

    def runner_exited(self, model: str) -> None:
        """The runner for ``model`` exited without being asked to."""


class NoObserver:
    """The observer used when nobody listens."""

    def queue_waited(self, model: str, seconds: float) -> None:
        """Ignored."""

    def model_loaded(self, model: str, seconds: float) -> None:
        """Ignored."""

    def load_failed(self, model: str) -> None:
        """Ignored."""

    def runner_exited(self, model: str) -> None:
        """Ignored."""
