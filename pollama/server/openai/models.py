"""``GET /v1/models`` and ``GET /v1/models/{model}``: installed models as OpenAI model objects."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pollama.errors import InvalidRequest, ModelNotFound
from pollama.names import parse_name
from pollama.server.context import context
from pollama.server.openai.errors import OpenAIRoute
from pollama.server.openai.types import ModelList, ModelObject, documented
from pollama.store import StoredModel

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)


def _model(model_id: str, model: StoredModel) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": int(model.modified_at), "owned_by": model.name.namespace}


@router.get("/v1/models", summary="OpenAI: list models", responses=documented(ModelList, not_found=False))
async def list_models(request: Request) -> JSONResponse:
    models = await run_in_threadpool(context(request).store.list_models)
    data = [_model(m.name.display, m) for m in models]
    return JSONResponse({"object": "list", "data": data or None})


@router.get("/v1/models/{model:path}", summary="OpenAI: retrieve a model", responses=documented(ModelObject))
async def retrieve_model(request: Request, model: str) -> JSONResponse:
    if not model:
        raise InvalidRequest("model is required")
    name = parse_name(model)
    try:
        stored = await run_in_threadpool(context(request).store.load, name)
    except ModelNotFound:
        raise ModelNotFound(f"model '{model}' not found") from None
    return JSONResponse(_model(model, stored))
