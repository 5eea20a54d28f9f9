"""``/``, ``/api/version`` and ``/health``: the endpoints clients and probes use to see that a server is up."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from pollama import OLLAMA_VERSION
from pollama.server.shutdown import SHUTTING_DOWN

router = APIRouter(tags=["misc"])


@router.head("/", summary="Liveness (headers only)", operation_id="root_head")
@router.get("/", summary="Liveness", operation_id="root_get")
async def root() -> PlainTextResponse:
    return PlainTextResponse("Ollama is running")


@router.head("/api/version", summary="Server version (headers only)", operation_id="version_head")
@router.get("/api/version", summary="Server version", operation_id="version_get")
async def version() -> JSONResponse:
    return JSONResponse({"version": OLLAMA_VERSION})


@router.get(
    "/health",
    summary="Readiness: 200 while serving, 503 while shutting down",
    operation_id="health_get",
    responses={
        200: {"description": "Serving", "content": {"application/json": {"example": {"status": "ok"}}}},
        503: {"description": "Shutting down", "content": {"application/json": {"example": {"status": SHUTTING_DOWN}}}},
    },
)
async def health(request: Request) -> JSONResponse:
    """``{"status": "ok"}``, or 503 ``{"status": "shutting down"}`` once a shutdown has begun."""
    shutdown = getattr(request.app.state, "shutdown", None)
    if shutdown is not None and shutdown.draining:
        return JSONResponse({"status": "shutting down"}, status_code=503)
    return JSONResponse({"status": "ok"})
