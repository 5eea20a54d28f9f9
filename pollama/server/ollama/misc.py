"""``/`` and ``/api/version``: the endpoints clients use to see that a server is up."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from pollama import OLLAMA_VERSION

router = APIRouter(tags=["misc"])


@router.api_route("/", methods=["GET", "HEAD"], summary="Liveness")
async def root() -> PlainTextResponse:
    return PlainTextResponse("Ollama is running")


@router.api_route("/api/version", methods=["GET", "HEAD"], summary="Server version")
async def version() -> JSONResponse:
    return JSONResponse({"version": OLLAMA_VERSION})
