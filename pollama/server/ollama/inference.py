"""Ollama's inference endpoints: ``/api/generate``, ``/api/chat``, ``/api/embed``, ``/api/embeddings``
and ``/api/ps``.

Each handler translates Ollama's body into the internal request model, calls the inference service
and renders its chunks as Ollama's NDJSON lines (or one object when ``stream`` is false).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pollama.duration import keep_alive_seconds
from pollama.errors import InvalidRequest, PollamaError
from pollama.inference import Chunk, CompletionRequest, EmbedRequest
from pollama.names import parse_name
from pollama.scheduler import RunningModel
from pollama.server.common import collect, parse_format, service
from pollama.server.context import body_schema, context
from pollama.server.ollama.models import model_details
from pollama.server.ollama_types import ChatRequest, CompletionBody, EmbeddingsRequest, GenerateRequest
from pollama.server.ollama_types import EmbedRequest as EmbedBody
from pollama.server.wire import local_time, read_json, stream_or_collect, unless_disconnected, utc_now
from pollama.store import ModelStore

router = APIRouter(tags=["inference"])


def parse_think(value: Any) -> bool | str | None:
    """``think``: a bool or a level (spec §2.0)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in ("high", "medium", "low", "max"):
            return value
        raise InvalidRequest(f'invalid think value: "{value}" (must be "high", "medium", "low", "max", true, or false)')
    raise InvalidRequest('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


def _check_logprobs(top_logprobs: int) -> None:
    if top_logprobs < 0 or top_logprobs > 20:
        raise InvalidRequest("top_logprobs must be between 0 and 20")


def _stats(chunk: Chunk, out: dict[str, Any]) -> dict[str, Any]:
    if chunk.stats is not None:
        s = chunk.stats
        out["total_duration"] = s.total_duration
        out["load_duration"] = s.load_duration
        for key in ("prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"):
            value = getattr(s, key)
            if value:
                out[key] = value
    return out


def render_generate(chunk: Chunk) -> dict[str, Any]:
    """One ``/api/generate`` line."""
    out: dict[str, Any] = {"model": chunk.model, "created_at": utc_now(), "response": chunk.content}
    if chunk.thinking:
        out["thinking"] = chunk.thinking
    if chunk.tool_calls:
        out["tool_calls"] = chunk.tool_calls
    out["done"] = chunk.done
    if chunk.done_reason:
        out["done_reason"] = chunk.done_reason
    if chunk.context is not None:
        out["context"] = chunk.context
    if chunk.logprobs:
        out["logprobs"] = chunk.logprobs
    if chunk.debug_info is not None:
        out["_debug_info"] = chunk.debug_info
    return _stats(chunk, out)


def render_chat(chunk: Chunk) -> dict[str, Any]:
    """One ``/api/chat`` line."""
    message: dict[str, Any] = {"role": "assistant", "content": chunk.content}
    if chunk.thinking:
        message["thinking"] = chunk.thinking
    if chunk.tool_calls:
        message["tool_calls"] = chunk.tool_calls
    out: dict[str, Any] = {"model": chunk.model, "created_at": utc_now(), "message": message, "done": chunk.done}
    if chunk.done_reason:
        out["done_reason"] = chunk.done_reason
    if chunk.logprobs:
        out["logprobs"] = chunk.logprobs
    if chunk.debug_info is not None:
        out["_debug_info"] = chunk.debug_info
    return _stats(chunk, out)


def _completion_fields(body: CompletionBody) -> dict[str, Any]:
    """The internal request's fields that come the same way from a generate or a chat body."""
    _check_logprobs(body.top_logprobs)
    return {
        "model": body.model,
        "format": parse_format(body.format),
        "options": dict(body.options or {}),
        "think": parse_think(body.think),
        "keep_alive": keep_alive_seconds(body.keep_alive),
        "truncate": body.truncate is not False,
        "shift": body.shift is not False,
        "logprobs": body.logprobs,
        "top_logprobs": body.top_logprobs,
        "debug_render_only": body.debug_render_only,
    }


async def _complete(
    request: Request, req: CompletionRequest, stream: bool | None, render: Callable[[Chunk], dict[str, Any]]
) -> Response:
    chunks = service(request).complete(req)
    if stream is False or req.is_empty or req.debug_render_only:
        return JSONResponse(render(await unless_disconnected(request, collect(chunks), chunks)))
    return await stream_or_collect(_rendered(chunks, render), stream=True, request=request)


async def _rendered(
    chunks: AsyncGenerator[Chunk, None], render: Callable[[Chunk], dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    async with aclosing(chunks):
        async for chunk in chunks:
            yield render(chunk)


@router.post("/api/generate", summary="Generate a completion", openapi_extra=body_schema(GenerateRequest))
async def generate(request: Request) -> Response:
    body = await read_json(request, GenerateRequest)
    req = CompletionRequest(
        endpoint="generate",
        prompt=body.prompt,
        suffix=body.suffix,
        system=body.system or None,
        template=body.template or None,
        raw=body.raw,
        context=body.context,
        images=list(body.images or []),
        **_completion_fields(body),
    )
    return await _complete(request, req, body.stream, render_generate)


@router.post("/api/chat", summary="Chat with a model", openapi_extra=body_schema(ChatRequest))
async def chat(request: Request) -> Response:
    body = await read_json(request, ChatRequest)
    fields = _completion_fields(body)
    messages = []
    for m in body.messages or []:
        msg = m.model_dump(exclude_none=True)
        msg["role"] = msg.get("role", "").lower()
        messages.append(msg)
    req = CompletionRequest(
        endpoint="chat",
        messages=messages,
        tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None,
        **fields,
    )
    if not req.model:
        raise InvalidRequest("model is required")
    return await _complete(request, req, body.stream, render_chat)


@router.post("/api/embed", summary="Embed text", openapi_extra=body_schema(EmbedBody))
async def embed(request: Request) -> JSONResponse:
    body = await read_json(request, EmbedBody)
    if body.input is None:
        inputs: list[str] = []
    elif isinstance(body.input, str):
        inputs = [body.input]
    else:
        inputs = list(body.input)
    if isinstance(body.input, list) and not body.input:
        inputs = []
    if body.dimensions is not None and body.dimensions < 0:
        raise InvalidRequest("dimensions must be a positive number")
    result = await service(request).embed(
        EmbedRequest(
            model=body.model,
            inputs=inputs,
            truncate=body.truncate is not False,
            dimensions=body.dimensions,
            options=dict(body.options or {}),
            keep_alive=keep_alive_seconds(body.keep_alive),
        )
    )
    out: dict[str, Any] = {"model": result.model, "embeddings": result.embeddings}
    if inputs:
        out.update(
            total_duration=result.total_duration,
            load_duration=result.load_duration,
            prompt_eval_count=result.prompt_eval_count,
        )
    return JSONResponse(out)


@router.post("/api/embeddings", summary="Embed text (legacy)", openapi_extra=body_schema(EmbeddingsRequest))
async def embeddings(request: Request) -> JSONResponse:
    body = await read_json(request, EmbeddingsRequest)
    inputs = [body.prompt] if body.prompt else []
    result = await service(request).embed(
        EmbedRequest(
            model=body.model,
            inputs=inputs,
            truncate=True,
            options=dict(body.options or {}),
            keep_alive=keep_alive_seconds(body.keep_alive),
            normalize=False,
        )
    )
    return JSONResponse({"embedding": result.embeddings[0] if result.embeddings else []})


@router.get("/api/ps", summary="List running models")
async def running(request: Request) -> JSONResponse:
    store = context(request).store
    models = []
    for entry in service(request).running():
        models.append(await run_in_threadpool(_running_model, store, entry))
    return JSONResponse({"models": models})


def _running_model(store: ModelStore, entry: RunningModel) -> dict[str, Any]:
    """One ``/api/ps`` entry; the details come from the store (read off the event loop)."""
    details: dict[str, Any] = {}
    digest = entry.digest
    try:
        stored = store.load(parse_name(entry.name))
    except (PollamaError, OSError, ValueError):
        stored = None  # a model deleted (or renamed) while loaded still shows
    if stored is not None:
        details = {**model_details(stored), "parent_model": ""}
        digest = stored.digest
    expires = entry.expires_at
    cluster: dict[str, Any] = {"node": entry.node, "replicas": list(entry.replicas)} if entry.node else {}
    return {
        "name": entry.name,
        "model": entry.model,
        "size": entry.size,
        "digest": digest,
        "details": details,
        "expires_at": local_time(expires) if expires != float("inf") else "2318-03-31T00:00:00Z",
        "size_vram": entry.size_vram,
        "context_length": entry.context_length,
        **cluster,  # pollama on a Ray cluster: where the runner is (absent otherwise)
    }
