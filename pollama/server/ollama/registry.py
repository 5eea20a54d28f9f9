"""Ollama's registry endpoints: ``POST /api/pull`` and ``POST /api/push``.

HTTP only: the request is decoded, the name checked, and the work (``pollama.registry``) runs in a
worker thread while its status lines are streamed as NDJSON (or folded into one object with
``stream: false``). Downloads in progress are shared between requests through one ``BlobTransfers``
kept in the server context.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from pollama.errors import InvalidModelName, InvalidRequest
from pollama.names import parse_name
from pollama.registry import BlobTransfers, PullOptions, PushOptions, offline_source, pull_model, push_model
from pollama.server.context import ServerContext, body_schema, context
from pollama.server.wire import read_json, stream_or_collect
from pollama.store.progress import Progress

router = APIRouter(tags=["registry"])


class PullRequest(BaseModel):
    """The body of ``/api/pull`` (``username``/``password`` are accepted and ignored, as in Ollama)."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    name: str = ""
    insecure: bool = False
    username: str = ""
    password: str = ""
    stream: bool | None = None


class PushRequest(PullRequest):
    """The body of ``/api/push``."""


def _transfers(ctx: ServerContext) -> BlobTransfers:
    transfers = ctx.services.get("registry.transfers")
    if not isinstance(transfers, BlobTransfers):
        transfers = ctx.services.setdefault("registry.transfers", BlobTransfers())
    return transfers


@router.post("/api/pull", summary="Pull a model from a registry", openapi_extra=body_schema(PullRequest))
async def pull(request: Request) -> Response:
    ctx = context(request)
    req = await read_json(request, PullRequest)
    try:
        name = parse_name(req.model or req.name)
    except InvalidModelName:
        raise InvalidModelName("invalid model name") from None
    name = await run_in_threadpool(ctx.store.canonical, name)  # reads the manifests folder
    options = PullOptions(key_home=ctx.settings.home, insecure=req.insecure)
    work = pull_model(ctx.store, name, options, transfers=_transfers(ctx), offline=offline_source(ctx.store))
    work = request.app.state.metrics.count_transfer(work, "pull")
    return await stream_or_collect(_lines(work), stream=req.stream is not False)


@router.post("/api/push", summary="Push a model to a registry", openapi_extra=body_schema(PushRequest))
async def push(request: Request) -> Response:
    ctx = context(request)
    req = await read_json(request, PushRequest)
    requested = req.model or req.name
    if not requested:
        raise InvalidRequest("model is required")
    try:
        name = parse_name(requested)
    except InvalidModelName:
        raise InvalidModelName("invalid model name") from None
    name = await run_in_threadpool(ctx.store.canonical, name)  # reads the manifests folder
    options = PushOptions(key_home=ctx.settings.home, insecure=req.insecure)
    work = request.app.state.metrics.count_transfer(push_model(ctx.store, name, options), "push")
    return await stream_or_collect(_lines(work), stream=req.stream is not False)


async def _lines(work: Iterator[Progress]) -> AsyncIterator[dict[str, Any]]:
    """Run ``work`` in the thread pool, one status line at a time; close it if the client goes."""
    try:
        async for item in iterate_in_threadpool(work):
            yield item.to_json()
    finally:
        with contextlib.suppress(ValueError):  # still running in its thread: it is closed when collected
            await run_in_threadpool(_close, work)


def _close(work: Iterator[Progress]) -> None:
    close = getattr(work, "close", None)
    if close is not None:
        close()
