"""``/`` and ``/api/version``: the endpoints clients use to see that a server is up."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from pollama import OLLAMA_VERSION

router = APIRouter(tags=["misc"])


@router.head("/", summary="Liveness (headers only)", operation_id="root_head")
@router.get("/", summary="Liveness", operation_id="root_get")
async def root() -> PlainTextResponse:
    return PlainTextResponse("Ollama is running")


@router.head("/api/version", summary="Server version (headers only)", operation_id="version_head")
@router.get("/api/version", summary="Server version", operation_id="version_get")
async def version() -> JSONResponse:
    return JSONResponse({"version": OLLAMA_VERSION})
