"""The runner wire protocol's error convention, shared by both ends of the socket.

A failure travels as ``{"error": "<message>", "kind": "<kind>"}``; the kind names a domain error,
never an HTTP status (statuses are the server's business). ``error_event`` builds the event on the
runner's side, ``event_error`` turns it back into the domain error on the server's side. An event
without a kind (or with one this side does not know) is an internal error.
"""

from __future__ import annotations

from typing import Any

from pollama.errors import InvalidRequest, PollamaError, RequestCanceled, RunnerError, ServerBusy

INVALID_REQUEST = "invalid_request"
BUSY = "busy"
CANCELED = "canceled"
INTERNAL = "internal"


def error_event(exc: BaseException) -> dict[str, str]:
    """The error event the runner sends for ``exc``."""
    if isinstance(exc, InvalidRequest):
        kind = INVALID_REQUEST
    elif isinstance(exc, ServerBusy):
        kind = BUSY
    elif isinstance(exc, RequestCanceled):
        kind = CANCELED
    else:
        kind = INTERNAL
    return {"error": str(exc) or type(exc).__name__, "kind": kind}


def event_error(event: dict[str, Any]) -> PollamaError:
    """The domain error an error event from the runner stands for."""
    kind = event.get("kind")
    message = str(event.get("error") or "")
    if kind == INVALID_REQUEST:
        return InvalidRequest(message)
    if kind == BUSY:
        return ServerBusy()
    if kind == CANCELED:
        return RequestCanceled()
    return RunnerError(message)
