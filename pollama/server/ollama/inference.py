"""Ollama's inference endpoints: ``/api/generate``, ``/api/chat``, ``/api/embed``, ``/api/embeddings``
and ``/api/ps``.

Each handler translates Ollama's body into the internal request model, calls the inference service
and renders its chunks as Ollama's NDJSON lines (or one object when ``stream`` is false).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pollama.duration import keep_alive_seconds
from pollama.errors import InvalidRequest
from pollama.inference import Chunk, CompletionRequest, EmbedRequest
from pollama.inference.service import InferenceService
from pollama.server.context import body_schema, context
from pollama.server.ollama.models import model_details
from pollama.server.ollama_types import ChatRequest, EmbeddingsRequest, GenerateRequest, CompletionBody
from pollama.server.ollama_types import EmbedRequest as EmbedBody
from pollama.server.wire import local_time, read_json, stream_or_collect, utc_now

router = APIRouter(tags=["inference"])


def service(request: Request) -> InferenceService:
    """The app's inference service."""
    svc: InferenceService = context(request).services["inference"]
    return svc


def parse_format(value: Any) -> Any:
    """``format``: ``"json"``, a JSON-schema object, or nothing (spec §9.3)."""
    if value is None or value == "":
        return None
    if value == "json" or isinstance(value, dict):
        return value
    raw = json.dumps(value, separators=(",", ":"))
    raise InvalidRequest(f'invalid format: {raw}; expected "json" or a valid JSON Schema object')


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


def _collect_generate(items: list[dict[str, Any]]) -> dict[str, Any]:
    final = dict(items[-1])
    final["response"] = "".join(i.get("response", "") for i in items)
    thinking = "".join(i.get("thinking", "") for i in items)
    if thinking:
        final["thinking"] = thinking
    calls = [c for i in items for c in i.get("tool_calls", [])]
    if calls:
        final["tool_calls"] = calls
    logprobs = [p for i in items for p in i.get("logprobs", [])]
    if logprobs:
        final["logprobs"] = logprobs
    return final


def _collect_chat(items: list[dict[str, Any]]) -> dict[str, Any]:
    final = dict(items[-1])
    message = dict(final["message"])
    message["content"] = "".join(i["message"].get("content", "") for i in items)
    thinking = "".join(i["message"].get("thinking", "") for i in items)
    if thinking:
        message["thinking"] = thinking
    calls = [c for i in items for c in i["message"].get("tool_calls", [])]
    if calls:
        message["tool_calls"] = calls
    final["message"] = message
    logprobs = [p for i in items for p in i.get("logprobs", [])]
    if logprobs:
        final["logprobs"] = logprobs
    return final


def _completion_fields(body: CompletionBody) -> dict[str, Any]:
    """The internal request's fields that come the same way from a generate or a chat body."""
    _check_logprobs(body.top_logprobs)
    return {"model": body.model, "format": parse_format(body.format), "options": dict(body.options or {}),
            "think": parse_think(body.think), "keep_alive": keep_alive_seconds(body.keep_alive),
            "truncate": body.truncate is not False, "shift": body.shift is not False,
            "logprobs": body.logprobs, "top_logprobs": body.top_logprobs,
            "debug_render_only": body.debug_render_only}


async def _complete(request: Request, req: CompletionRequest, stream: bool | None, render: Any,
                    collect: Any) -> Response:
    chunks = service(request).complete(req)
    streaming = stream is not False and not req.is_empty and not req.debug_render_only
    return await stream_or_collect(_rendered(chunks, render), stream=streaming, collect=collect, request=request)


async def _rendered(chunks: AsyncIterator[Chunk], render: Any) -> AsyncIterator[dict[str, Any]]:
    async for chunk in chunks:
        yield render(chunk)


@router.post("/api/generate", summary="Generate a completion", openapi_extra=body_schema(GenerateRequest))
async def generate(request: Request) -> Response:
    body = await read_json(request, GenerateRequest)
    req = CompletionRequest(
        endpoint="generate", prompt=body.prompt, suffix=body.suffix, system=body.system or None,
        template=body.template or None, raw=body.raw, context=body.context, images=list(body.images or []),
        **_completion_fields(body))
    return await _complete(request, req, body.stream, render_generate, _collect_generate)


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
        endpoint="chat", messages=messages,
        tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None, **fields)
    if not req.model:
        raise InvalidRequest("model is required")
    return await _complete(request, req, body.stream, render_chat, _collect_chat)


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
    result = await service(request).embed(EmbedRequest(
        model=body.model, inputs=inputs, truncate=body.truncate is not False, dimensions=body.dimensions,
        options=dict(body.options or {}), keep_alive=keep_alive_seconds(body.keep_alive)))
    out: dict[str, Any] = {"model": result.model, "embeddings": result.embeddings}
    if inputs:
        out.update(total_duration=result.total_duration, load_duration=result.load_duration,
                   prompt_eval_count=result.prompt_eval_count)
    return JSONResponse(out)


@router.post("/api/embeddings", summary="Embed text (legacy)", openapi_extra=body_schema(EmbeddingsRequest))
async def embeddings(request: Request) -> JSONResponse:
    body = await read_json(request, EmbeddingsRequest)
    inputs = [body.prompt] if body.prompt else []
    result = await service(request).embed(EmbedRequest(
        model=body.model, inputs=inputs, truncate=True, options=dict(body.options or {}),
        keep_alive=keep_alive_seconds(body.keep_alive), normalize=False))
    return JSONResponse({"embedding": result.embeddings[0] if result.embeddings else []})


@router.get("/api/ps", summary="List running models")
async def running(request: Request) -> JSONResponse:
    ctx = context(request)
    models = []
    for entry in service(request).running():
        spec = entry.spec
        details: dict[str, Any] = {}
        digest = spec.digest
        try:
            from pollama.names import parse_name

            stored = ctx.store.load(parse_name(spec.name))
            details = {**model_details(stored), "parent_model": ""}
            digest = stored.digest
        except Exception:  # noqa: BLE001 - a model deleted while loaded still shows
            pass
        expires = entry.expires_at
        models.append({
            "name": spec.name,
            "model": spec.name,
            "size": entry.size,
            "digest": digest,
            "details": details,
            "expires_at": local_time(expires) if expires != float("inf") else "2318-03-31T00:00:00Z",
            "size_vram": 0,
            "context_length": spec.num_ctx,
        })
    return JSONResponse({"models": models})
