"""``POST /v1/completions``: OpenAI's legacy text completions over the internal generate request
(spec §3.1): ``prompt`` and ``suffix`` are templated like ``/api/generate``; each native chunk becomes
one ``text_completion`` object (as SSE when streaming)."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pollama.errors import InvalidRequest
from pollama.inference import Chunk, CompletionRequest, Stats
from pollama.server.common import collect, converted, first_chunk, go_type, service, sse, sse_response
from pollama.server.context import body_schema
from pollama.server.openai.chat import check_top_logprobs, usage
from pollama.server.openai.errors import OpenAIRoute, error_for
from pollama.server.openai.types import Completion, documented
from pollama.server.openai.types import CompletionRequest as CompletionBody
from pollama.server.wire import read_json, unless_disconnected

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)


def _options(body: CompletionBody) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if isinstance(body.stop, str):
        options["stop"] = [body.stop]
    elif isinstance(body.stop, list):
        for item in body.stop:
            if not isinstance(item, str):
                raise InvalidRequest(f"invalid type for 'stop' field: {go_type(item)}")
        options["stop"] = list(body.stop)
    if body.max_tokens is not None:
        options["num_predict"] = body.max_tokens
    options["temperature"] = body.temperature if body.temperature is not None else 1.0
    if body.seed is not None:
        options["seed"] = body.seed
    options["frequency_penalty"] = body.frequency_penalty or 0.0
    options["presence_penalty"] = body.presence_penalty or 0.0
    options["top_p"] = body.top_p if body.top_p else 1.0
    return options


def _legacy_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Native per-token log probabilities in the legacy completions form: parallel lists of tokens,
    their log probabilities, ``{token: logprob}`` alternatives and character offsets into the text."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.get("token", ""))
    return {
        "tokens": [e.get("token", "") for e in entries],
        "token_logprobs": [e.get("logprob") for e in entries],
        "top_logprobs": [{t.get("token", ""): t.get("logprob") for t in e.get("top_logprobs") or []} for e in entries],
        "text_offset": offsets,
    }


def _choice(text: str, reason: str | None, logprobs: list[dict[str, Any]], offset: int = 0) -> dict[str, Any]:
    choice: dict[str, Any] = {"text": text, "index": 0, "finish_reason": reason or None}
    if logprobs:
        choice["logprobs"] = _legacy_logprobs(logprobs, offset)
    return choice


@router.post(
    "/v1/completions",
    summary="OpenAI: create a text completion",
    openapi_extra=body_schema(CompletionBody),
    responses=documented(Completion, stream=True),
)
async def completions(request: Request) -> Response:
    body = await read_json(request, CompletionBody)
    top = body.logprobs if body.logprobs is not None and body.logprobs > 0 else 0
    req = CompletionRequest(
        model=body.model,
        endpoint="generate",
        prompt=body.prompt,
        suffix=body.suffix,
        options=_options(body),
        logprobs=top > 0,
        top_logprobs=check_top_logprobs(top),
    )
    chunks = service(request).complete(req)
    completion_id = f"cmpl-{random.randrange(999)}"
    if not body.stream:
        answer = await unless_disconnected(request, collect(chunks), chunks)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "text_completion",
                "created": int(time.time()),
                "model": answer.model or body.model,
                "system_fingerprint": "fp_ollama",
                "choices": [_choice(answer.content, answer.done_reason, answer.logprobs)],
                "usage": usage(answer.stats or Stats()),
            }
        )
    first = await first_chunk(chunks)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return sse_response(_events(completion_id, body.model, include_usage, first, chunks))


async def _events(
    completion_id: str, model: str, include_usage: bool, first: Chunk | None, chunks: AsyncIterator[Chunk]
) -> AsyncIterator[bytes]:
    offset = 0

    def event(chunk: Chunk) -> list[bytes]:
        nonlocal offset
        obj: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": int(time.time()),
            "choices": [_choice(chunk.content, chunk.done_reason, chunk.logprobs, offset)],
            "model": chunk.model or model,
            "system_fingerprint": "fp_ollama",
        }
        if include_usage:
            obj["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        offset += len(chunk.content)
        out = [sse(obj)]
        if chunk.done and include_usage:
            out.append(
                sse(
                    {
                        "id": completion_id,
                        "object": "text_completion",
                        "created": int(time.time()),
                        "choices": [],
                        "model": chunk.model or model,
                        "system_fingerprint": "fp_ollama",
                        "usage": usage(chunk.stats or Stats()),
                    }
                )
            )
        return out

    async for item in converted(first, chunks, event, lambda exc: [sse(error_for(exc))]):
        yield item
    yield sse("[DONE]")
