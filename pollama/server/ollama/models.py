"""Ollama's model-management endpoints: ``/api/tags``, ``/api/show``, ``/api/copy``,
``/api/delete``, ``/api/create`` and ``/api/blobs/:digest``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Generator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from pollama.errors import InvalidModelName, InvalidRequest, ModelNotFound
from pollama.gguf import model_info, projector_info, read_gguf, tensor_list
from pollama.names import parse_name
from pollama.server.context import body_schema, context
from pollama.server.ollama_types import CopyRequest, CreateRequest, DeleteRequest, ShowRequest
from pollama.server.wire import local_time, read_json, stream_or_collect
from pollama.store import ModelStore, StoredModel, parse_digest
from pollama.store.capabilities import model_capabilities
from pollama.store.create import CreateRequest as CreateJob
from pollama.store.create import create_model
from pollama.store.progress import Progress

router = APIRouter(tags=["models"])


def model_details(model: StoredModel) -> dict[str, Any]:
    """The ``details`` object of ``/api/tags`` and ``/api/show``."""
    config = model.config
    details: dict[str, Any] = {
        "parent_model": model.parent_model,
        "format": config.model_format,
        "family": config.model_family,
        "families": config.model_families,
        "parameter_size": config.model_type,
        "quantization_level": config.file_type,
    }
    return details


def list_entry(model: StoredModel, capabilities: list[str]) -> dict[str, Any]:
    """One model of ``/api/tags``."""
    entry: dict[str, Any] = {
        "name": model.name.display,
        "model": model.name.display,
        "modified_at": local_time(model.modified_at),
        "size": model.size,
        "digest": model.digest,
        "details": {**model_details(model), "parent_model": ""},
    }
    if model.config.remote_host:
        entry["remote_model"] = model.config.remote_model
        entry["remote_host"] = model.config.remote_host
    if model.config.context_length:
        entry["details"]["context_length"] = model.config.context_length
    if model.config.embedding_length:
        entry["details"]["embedding_length"] = model.config.embedding_length
    if capabilities:
        entry["capabilities"] = capabilities
    return entry


@router.head("/api/tags", summary="List installed models (headers only)", operation_id="list_models_head")
@router.get("/api/tags", summary="List installed models", operation_id="list_models_get")
async def list_models(request: Request) -> JSONResponse:
    ctx = context(request)

    def build() -> list[dict[str, Any]]:
        return [list_entry(m, ctx.model_capabilities(m)) for m in ctx.store.list_models()]

    return JSONResponse({"models": await run_in_threadpool(build)})


@router.post("/api/show", summary="Show a model's details", openapi_extra=body_schema(ShowRequest))
async def show_model(request: Request) -> JSONResponse:
    ctx = context(request)
    req = await read_json(request, ShowRequest)
    requested = req.model or req.name
    if not requested:
        raise InvalidRequest("model is required")
    name = parse_name(requested)
    try:
        model = await run_in_threadpool(ctx.store.load, name)
    except ModelNotFound:
        raise ModelNotFound(f"model '{requested}' not found") from None
    return JSONResponse(await run_in_threadpool(describe_model, model, req))


def describe_model(model: StoredModel, req: ShowRequest) -> dict[str, Any]:
    """The whole ``/api/show`` response for ``model``."""
    from pollama.modelfile import render_parameters, render_show_modelfile

    gguf = None
    if model.model_path is not None and model.model_path.is_file():
        gguf = read_gguf(model.model_path, arrays="all" if req.verbose else "small")
    capabilities = model_capabilities(model, gguf)
    system = req.system or model.system
    template = model.template
    chat_template = gguf.metadata.get("tokenizer.chat_template") if gguf is not None else None
    native = template is None and isinstance(chat_template, str) and bool(chat_template)
    if template is None:
        template = chat_template if native else "{{ .Prompt }}"
    params = dict(model.params)
    shown_params = dict(params)
    if req.options:
        params.update(req.options)
    resp: dict[str, Any] = {
        "license": "\n".join(model.licenses),
        "modelfile": render_show_modelfile(
            short_name=model.name.display,
            model_path=str(model.model_path) if model.model_path else "",
            adapters=[str(p) for p in model.adapters],
            projectors=[str(p) for p in model.projectors],
            template=model.template,
            system=system,
            parameters=params,
            licenses=model.licenses,
            messages=model.messages,
            renderer=model.config.renderer,
            parser=model.config.parser,
            requires=model.config.requires,
            draft=str(model.draft) if model.draft is not None else "",
            jinja_template=native,
        ),
        "parameters": render_parameters(shown_params),
        "template": template,
        "system": system,
        "details": model_details(model),
        "model_info": model_info(gguf, verbose=req.verbose) if gguf is not None else {},
        "capabilities": capabilities,
        "modified_at": local_time(model.modified_at),
    }
    if model.config.renderer:
        resp["renderer"] = model.config.renderer
    if model.config.parser:
        resp["parser"] = model.config.parser
    if model.config.requires:
        resp["requires"] = model.config.requires
    if model.messages:
        resp["messages"] = [{"role": m.get("role", ""), "content": m.get("content", "")} for m in model.messages]
    if model.projectors:  # the first projector's metadata, as Ollama shows it (general.name kept)
        try:
            projector = read_gguf(model.projectors[0], arrays="all" if req.verbose else "small")
            resp["projector_info"] = projector_info(projector, verbose=req.verbose)
        except (OSError, ValueError):
            pass
    if req.verbose and gguf is not None:
        resp["tensors"] = tensor_list(gguf)
    return resp


@router.post("/api/copy", summary="Copy a model", openapi_extra=body_schema(CopyRequest))
async def copy_model(request: Request) -> Response:
    ctx = context(request)
    req = await read_json(request, CopyRequest)
    source = parse_name(req.source, error=f'source "{req.source}" is invalid')
    destination = parse_name(req.destination, error=f'destination "{req.destination}" is invalid')
    try:
        await run_in_threadpool(ctx.store.copy, source, destination)
    except ModelNotFound:
        raise ModelNotFound(f'model "{req.source}" not found') from None
    return Response(status_code=200)


@router.delete("/api/delete", summary="Delete a model", openapi_extra=body_schema(DeleteRequest))
async def delete_model(request: Request) -> Response:
    ctx = context(request)
    req = await read_json(request, DeleteRequest)
    requested = req.model or req.name
    if not requested:
        raise InvalidRequest("model is required")
    name = parse_name(requested, error=f'name "{requested}" is invalid')
    try:
        await run_in_threadpool(ctx.store.delete, name)
    except ModelNotFound:
        raise ModelNotFound(f"model '{requested}' not found") from None
    return Response(status_code=200)


@router.post("/api/create", summary="Create a model", openapi_extra=body_schema(CreateRequest))
async def create(request: Request) -> Response:
    ctx = context(request)
    req = await read_json(request, CreateRequest)
    job = await run_in_threadpool(create_job, ctx.store, req)  # name lookup reads the manifests folder
    return await stream_or_collect(_progress_lines(create_model(ctx.store, job)), stream=req.stream is not False)


def create_job(store: ModelStore, req: CreateRequest) -> CreateJob:
    """Validate a create request and turn it into the store's job description."""
    requested = req.model or req.name
    try:
        name = parse_name(requested)
    except InvalidModelName:
        raise InvalidModelName("invalid model name") from None
    name = store.canonical(name)
    if req.from_:
        try:
            parse_name(req.from_)
        except InvalidModelName:
            raise InvalidModelName("invalid model name") from None
    licenses = [req.license] if isinstance(req.license, str) else list(req.license or [])
    return CreateJob(
        name=name,
        from_=req.from_,
        files=dict(req.files or {}),
        adapters=dict(req.adapters or {}),
        draft_files=dict(req.draft_files or {}),
        draft_quantize=req.draft_quantize,
        template=req.template or None,
        system=req.system or None,
        licenses=licenses,
        parameters=dict(req.parameters or {}),
        messages=[m.model_dump(exclude_none=True) for m in req.messages or []],
        quantize=req.quantize or req.quantization,
        renderer=req.renderer,
        parser=req.parser,
        requires=req.requires,
    )


async def _progress_lines(work: Generator[Progress, None, None]) -> AsyncIterator[dict[str, Any]]:
    """Run ``work`` in the thread pool one step at a time; if the client goes, close it there too
    (closing releases its blob reservations, which may finish a garbage collection: disk work)."""
    try:
        async for item in iterate_in_threadpool(work):
            yield item.to_json()
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(ValueError):  # ValueError: still running
            await run_in_threadpool(work.close)


@router.head("/api/blobs/{digest:path}", summary="Check whether a blob exists")
async def blob_exists(request: Request, digest: str) -> Response:
    ctx = context(request)
    canonical = parse_digest(digest)
    if not await run_in_threadpool(ctx.store.blobs.exists, canonical):
        return JSONResponse({"error": f'blob "{digest}" not found'}, status_code=404)
    return Response(status_code=200)


@router.post(
    "/api/blobs/{digest:path}",
    summary="Upload a blob",
    openapi_extra={
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def upload_blob(request: Request, digest: str) -> Response:
    ctx = context(request)
    canonical = parse_digest(digest)
    if await run_in_threadpool(ctx.store.blobs.refresh, canonical):
        return Response(status_code=200)
    # The loop only gathers the body's chunks; hashing, writing and fsync run in worker threads.
    await ctx.store.blobs.write_async(request.stream(), canonical)
    return Response(status_code=201)
