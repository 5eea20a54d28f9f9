"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}`` with the native status.

Every route of the OpenAI routers uses ``OpenAIRoute``, which turns any error a handler raises into
this shape; the status comes from the one table in ``pollama.server.errors``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse

from pollama.server.common import ErrorShapedRoute, failure_status
from pollama.server.errors import error_headers, status_for


def error_type(status: int) -> str:
    """OpenAI's ``type`` for an HTTP status."""
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


def error_body(message: str, status: int) -> dict[str, Any]:
    """The error object for ``message`` answered with ``status``."""
    return {"error": {"message": message, "type": error_type(status), "param": None, "code": None}}


def error_for(exc: BaseException) -> dict[str, Any]:
    """The error object for an exception (status as the native API would answer it)."""
    return error_body(str(exc) or exc.__class__.__name__, status_for(exc))


def error_response(exc: BaseException) -> JSONResponse:
    """A complete OpenAI-shaped error response for ``exc``."""
    return JSONResponse(error_for(exc), status_code=failure_status(exc), headers=error_headers(exc))


class OpenAIRoute(ErrorShapedRoute):
    """A route whose errors are answered in OpenAI's shape instead of Ollama's ``{"error": "..."}``."""

    @staticmethod
    def render_error(exc: BaseException) -> Response:
        """OpenAI's error response for ``exc``."""
        return error_response(exc)
