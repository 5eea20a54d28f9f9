"""``POST /v1/embeddings``: OpenAI's embeddings over the internal embed request (spec §3.1): vectors
L2-normalised as ``/api/embed`` makes them, as floats or as base64 of little-endian float32 bytes."""

from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pollama.errors import InvalidRequest
from pollama.inference import EmbedRequest
from pollama.server.common import service
from pollama.server.context import body_schema
from pollama.server.openai.errors import OpenAIRoute
from pollama.server.openai.types import EmbeddingList, EmbeddingRequest, documented
from pollama.server.wire import read_json

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)


def _inputs(value: Any) -> list[str]:
    if value == "":
        return [""]
    if value is None or value == []:
        raise InvalidRequest("invalid input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise InvalidRequest("invalid input type")


def float32_base64(vector: list[float]) -> str:
    """``vector`` as base64 of its little-endian float32 bytes (OpenAI's ``encoding_format: base64``)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post(
    "/v1/embeddings",
    summary="OpenAI: create embeddings",
    openapi_extra=body_schema(EmbeddingRequest),
    responses=documented(EmbeddingList),
)
async def embeddings(request: Request) -> JSONResponse:
    body = await read_json(request, EmbeddingRequest)
    encoding = body.encoding_format or "float"
    if encoding.lower() not in ("float", "base64"):
        raise InvalidRequest(
            f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64']."
        )
    inputs = _inputs(body.input)
    if body.dimensions is not None and body.dimensions < 0:
        raise InvalidRequest("dimensions must be a positive number")
    result = await service(request).embed(EmbedRequest(model=body.model, inputs=inputs, dimensions=body.dimensions))
    as_base64 = encoding.lower() == "base64"
    data = [
        {"object": "embedding", "embedding": float32_base64(vector) if as_base64 else vector, "index": i}
        for i, vector in enumerate(result.embeddings)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": result.prompt_eval_count, "total_tokens": result.prompt_eval_count},
        }
    )
