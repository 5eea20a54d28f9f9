"""The one place where domain errors become HTTP status codes and Ollama's ``{"error": ...}`` bodies.

Handlers raise the errors of ``pollama.errors``; ``status_for`` looks the class up in a single table
and ``install_error_handlers`` renders them. Starlette's own 404/405 answers become Ollama's plain
texts (``404 page not found``, ``405 method not allowed``, the latter with an ``Allow`` header).

A 503 for a full queue (``ServerBusy``) carries ``Retry-After``: a slot frees as soon as any
queued request finishes, which takes seconds on a loaded model, so one second tells clients (the
OpenAI and Anthropic SDKs honour the header) to come back soon without hammering the server.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pollama.errors import (
    IncompatibleDraftModel,
    InvalidRequest,
    NotFound,
    PollamaError,
    RequestCanceled,
    ServerBusy,
    Unauthorized,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1

# Order of the methods in an ``Allow`` header.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# First match wins, so subclasses come before their bases.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (RequestCanceled, 499),
    (IncompatibleDraftModel, 500),  # a model that cannot load, as Ollama answers one
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


def error_headers(exc: BaseException) -> dict[str, str]:
    """Headers an error response for ``exc`` carries (``Retry-After`` when the server is busy)."""
    if isinstance(exc, ServerBusy):
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return {}


def error_response(exc: BaseException) -> JSONResponse:
    """A complete JSON error response for ``exc``."""
    status = status_for(exc)
    if status >= 500:
        log.error("request failed: %s", exc, exc_info=not isinstance(exc, PollamaError))
    return JSONResponse(error_body(exc), status_code=status, headers=error_headers(exc))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app accepts on ``request``'s path (for ``Allow``)."""
    methods: set[str] = set()
    for route in _routes(request.app.router.routes):
        route_methods = getattr(route, "methods", None)
        # A route whose path matches answers PARTIAL (wrong method) or FULL; NONE when the path differs.
        if route_methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route_methods)
    return [m for m in _METHODS if m in methods] + sorted(methods - set(_METHODS))


def _routes(routes: list[Any]) -> Iterator[Any]:
    """Every route, looking into included routers (which pollama includes without a prefix)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)
        else:
            yield route


class UnexpectedErrors:
    """ASGI middleware, the innermost: an exception no handler took becomes the 500 ``{"error":
    ...}`` here. (Starlette's own handler for ``Exception`` answers and then re-raises, and uvicorn
    then closes the connection: a keep-alive client's next request on it was reset.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception as exc:
            if started:
                raise  # a response under way can only be ended by closing the connection
            await error_response(exc)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Render domain errors and routing errors the way Ollama does (install it before any other
    middleware, so that ``UnexpectedErrors`` is the innermost)."""

    app.add_middleware(UnexpectedErrors)

    @app.exception_handler(PollamaError)
    async def _domain_error(_: Request, exc: PollamaError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return PlainTextResponse("404 page not found", status_code=404)
        if exc.status_code == 405:
            return PlainTextResponse(
                "405 method not allowed", status_code=405, headers={"Allow": ", ".join(allowed_methods(request))}
            )
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
