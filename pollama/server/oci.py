"""The store, read-only, over the OCI distribution API: ``GET``/``HEAD`` ``/v2/``,
``/v2/<name>/manifests/<reference>`` and ``/v2/<name>/blobs/<digest>``.

This is how the nodes of a Ray cluster pull a model's blobs from the frontend (``pollama.cluster.sync``),
and how any pollama, Ollama or registry mirror on a LAN pulls from a pollama
(``pollama pull --insecure host:11434/library/smollm2:135m``). Manifests are served as the bytes in
the store (so their digest is the one the model shows), blobs as files with ``Range`` support. A
``<name>`` of one part means ``library/<name>``; a model installed under another registry host is
found by its namespace, model and tag. API keys, when set, guard these paths like every other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pollama.names import ModelName, parse_name
from pollama.server.context import context
from pollama.store import ModelStore

router = APIRouter(tags=["registry"])

_API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def _oci_error(status: int, code: str, message: str) -> JSONResponse:
    """An error in the distribution API's shape."""
    return JSONResponse(
        {"errors": [{"code": code, "message": message, "detail": None}]}, status_code=status, headers=_API_VERSION
    )


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["errors"],
    "properties": {"errors": {"type": "array", "items": {"type": "object"}}},
}
_MANIFEST_TYPES = (_MANIFEST_TYPE, "application/vnd.oci.image.manifest.v1+json")
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "Not in the store", "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
}
_MANIFEST_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The manifest as stored",
        "content": {t: {"schema": {"type": "object"}} for t in _MANIFEST_TYPES},
    },
    **_NOT_FOUND,
}
_BLOB_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "The blob", "content": {"application/octet-stream": {"schema": {"type": "string"}}}},
    **_NOT_FOUND,
}
_HEAD_ANSWERS: dict[int | str, dict[str, Any]] = {200: {"description": "Found (headers only)"}, **_NOT_FOUND}


@router.head("/v2/", summary="OCI distribution API version check (headers only)", operation_id="oci_version_head")
@router.get("/v2/", summary="OCI distribution API version check", operation_id="oci_version_get")
@router.api_route("/v2", methods=["GET", "HEAD"], include_in_schema=False)
async def api_version() -> JSONResponse:
    return JSONResponse({}, headers=_API_VERSION)


@router.head(
    "/v2/{name:path}/manifests/{reference}",
    summary="Check a manifest",
    operation_id="oci_manifest_head",
    responses=_HEAD_ANSWERS,
    response_class=Response,
)
@router.get(
    "/v2/{name:path}/manifests/{reference}",
    summary="Read a manifest",
    operation_id="oci_manifest_get",
    responses=_MANIFEST_ANSWERS,
    response_class=Response,
)
async def manifest(request: Request, name: str, reference: str) -> Response:
    store = context(request).store
    found = await run_in_threadpool(_find_manifest, store, name, reference)
    if found is None:
        return _oci_error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {name}:{reference}")
    raw, media_type = found
    headers = {
        **_API_VERSION,
        "Docker-Content-Digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
        "Content-Length": str(len(raw)),
    }
    body = b"" if request.method == "HEAD" else raw
    return Response(body, media_type=media_type, headers=headers)


@router.head(
    "/v2/{name:path}/blobs/{digest}",
    summary="Check a blob",
    operation_id="oci_blob_head",
    responses=_HEAD_ANSWERS,
    response_class=Response,
)
@router.get(
    "/v2/{name:path}/blobs/{digest}",
    summary="Read a blob",
    operation_id="oci_blob_get",
    responses=_BLOB_ANSWERS,
    response_class=Response,
)
async def blob(request: Request, name: str, digest: str) -> Response:
    store = context(request).store
    path = await run_in_threadpool(_find_blob, store, digest)
    if path is None:
        return _oci_error(404, "BLOB_UNKNOWN", f"blob unknown to registry: {digest}")
    headers = {**_API_VERSION, "Docker-Content-Digest": digest}
    return FileResponse(path, media_type="application/octet-stream", headers=headers)


def _find_blob(store: ModelStore, digest: str) -> Path | None:
    """The blob file for ``digest`` if the store has it (a malformed digest has none)."""
    try:
        if store.blobs.exists(digest):
            return store.blobs.path(digest)
    except ValueError:
        return None
    return None


def _repository(name: str) -> tuple[str, str] | None:
    """``(namespace, model)`` of a repository path (``smollm2`` is ``library/smollm2``)."""
    parts = name.strip("/").split("/")
    if len(parts) == 1:
        return "library", parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    return None


def _find_manifest(store: ModelStore, name: str, reference: str) -> tuple[bytes, str] | None:
    """The stored bytes and media type of ``name``'s manifest tagged (or digested) ``reference``."""
    repo = _repository(name)
    if repo is None:
        return None
    namespace, model = repo
    for candidate in _candidates(store, namespace, model, reference):
        try:
            raw = store.manifest_path(candidate).read_bytes()
        except OSError:
            continue
        if reference.startswith("sha256:") and "sha256:" + hashlib.sha256(raw).hexdigest() != reference:
            continue
        return raw, _media_type(raw)
    return None


def _candidates(store: ModelStore, namespace: str, model: str, reference: str) -> list[ModelName]:
    """Installed names that ``namespace/model:reference`` may mean: the default registry's first."""
    out: list[ModelName] = []
    if not reference.startswith("sha256:"):
        try:
            found = store.resolve(parse_name(f"{namespace}/{model}:{reference}"))
        except ValueError:
            found = None
        if found is not None:
            out.append(found)
    for entry in store.entries():
        same_repo = entry.name.namespace.lower() == namespace.lower() and entry.name.model.lower() == model.lower()
        same_tag = reference.startswith("sha256:") or entry.name.tag.lower() == reference.lower()
        if same_repo and same_tag and entry.name not in out:
            out.append(entry.name)
    return out


def _media_type(raw: bytes) -> str:
    """The manifest's own ``mediaType`` (Docker's v2 schema 2 when it names none)."""
    try:
        data: Any = json.loads(raw)
    except ValueError:
        return _MANIFEST_TYPE
    media_type = data.get("mediaType") if isinstance(data, dict) else None
    return str(media_type) if media_type else _MANIFEST_TYPE
