"""The one place where domain errors become HTTP status codes and Ollama's ``{"error": ...}`` bodies.

Handlers raise the errors of ``pollama.errors``; ``status_for`` looks the class up in a single table
and ``install_error_handlers`` renders them. Starlette's own 404/405 answers become Ollama's plain
texts (``404 page not found``, ``405 method not allowed``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pollama.errors import (
    InvalidRequest,
    NotFound,
    PollamaError,
    RequestCanceled,
    ServerBusy,
    Unauthorized,
)

log = logging.getLogger(__name__)

# First match wins, so subclasses come before their bases.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (RequestCanceled, 499),
    (ServerBusy, 503),
    (Unauthorized, 401),
    (NotFound, 404),
    (InvalidRequest, 400),
)


def status_for(exc: BaseException) -> int:
    """The HTTP status Ollama answers for ``exc`` (500 for anything not in the table)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(exc: BaseException) -> dict[str, str]:
    """``{"error": message}`` for ``exc``."""
    return {"error": str(exc) or exc.__class__.__name__}


def error_response(exc: BaseException) -> JSONResponse:
    """A complete JSON error response for ``exc``."""
    status = status_for(exc)
    if status >= 500:
        log.error("request failed: %s", exc, exc_info=not isinstance(exc, PollamaError))
    return JSONResponse(error_body(exc), status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Render domain errors and routing errors the way Ollama does."""

    @app.exception_handler(PollamaError)
    async def _domain_error(_: Request, exc: PollamaError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return PlainTextResponse("404 page not found", status_code=404)
        if exc.status_code == 405:
            return PlainTextResponse("405 method not allowed", status_code=405)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
