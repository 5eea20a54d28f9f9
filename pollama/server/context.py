"""What every request handler shares: the ``ServerContext`` kept on ``app.state``.

Handlers reach it with ``context(request)``; nothing lives in module globals, so several apps (one
per test, say) can run in one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel

from pollama.config import Settings
from pollama.store import ModelStore, StoredModel
from pollama.store.capabilities import model_capabilities, read_model_gguf


@dataclass
class ServerContext:
    """The settings and services of one running server."""

    settings: Settings
    store: ModelStore
    services: dict[str, Any] = field(default_factory=dict)
    # Capabilities per manifest digest: working them out reads the GGUF header and parses templates.
    capabilities: dict[str, list[str]] = field(default_factory=dict)

    def model_capabilities(self, model: StoredModel) -> list[str]:
        """``model``'s capabilities, computed once per manifest digest."""
        cached = self.capabilities.get(model.digest)
        if cached is None:
            cached = model_capabilities(model, read_model_gguf(model))
            if len(self.capabilities) > 1024:
                self.capabilities.clear()
            self.capabilities[model.digest] = cached
        return list(cached)


def context(request: Request) -> ServerContext:
    """The ``ServerContext`` of the app serving ``request``."""
    ctx: ServerContext = request.app.state.ctx
    return ctx


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` describing a JSON request body that a handler decodes itself.

    A body with a ``model`` field is documented as requiring it (or the older ``name``).

    Pydantic puts nested models under ``$defs`` and points at them with ``#/$defs/...``, which would
    not resolve inside the OpenAPI document; they are inlined instead (a recursive reference, which
    could not be inlined, becomes ``{}``: any value).
    """
    schema = model.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})
    properties = schema.get("properties", {})
    if "model" in properties and "required" not in schema and "anyOf" not in schema:
        # Defaults let the handlers answer Ollama's ``model is required``; the document still says that a
        # request names its model (older clients in ``name``, where Ollama still reads it).
        if "name" in properties:
            schema["anyOf"] = [{"required": ["model"]}, {"required": ["name"]}]
        else:
            schema["required"] = ["model"]
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_refs(schema, defs, ())}},
        }
    }


def _inline_refs(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline_refs(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref[len("#/$defs/") :]
        siblings = {k: _inline_refs(v, defs, seen) for k, v in node.items() if k != "$ref"}
        if name in seen or name not in defs:
            return siblings
        return {**_inline_refs(defs[name], defs, (*seen, name)), **siblings}
    return {k: _inline_refs(v, defs, seen) for k, v in node.items()}


# The error answers of Ollama's native routes: (path, method) → the statuses it gives besides 200.
# Every one has the ``{"error": "..."}`` body (``ERROR_SCHEMA``).
_INFERENCE_ERRORS = (400, 404, 500, 503)
_NATIVE_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("/api/generate", "post"): _INFERENCE_ERRORS,
    ("/api/chat", "post"): _INFERENCE_ERRORS,
    ("/api/embed", "post"): _INFERENCE_ERRORS,
    ("/api/embeddings", "post"): _INFERENCE_ERRORS,
    ("/api/show", "post"): (400, 404),
    ("/api/copy", "post"): (400, 404),
    ("/api/delete", "delete"): (400, 404),
    ("/api/create", "post"): (400, 404, 500),
    ("/api/pull", "post"): (400, 500),
    ("/api/push", "post"): (400, 404, 500),
    ("/api/blobs/{digest}", "head"): (400, 404),
    ("/api/blobs/{digest}", "post"): (400, 500),
}
_ERROR_DESCRIPTIONS = {
    400: "Invalid request",
    404: "Model not found",
    500: "Server error",
    503: "Server busy: too many queued requests (with `Retry-After`)",
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "required": ["error"],
    "properties": {"error": {"type": "string", "title": "Error"}},
}


def document_errors(app: FastAPI) -> None:
    """Make ``app``'s ``/openapi.json`` list the error answers of the native routes (``_NATIVE_ERRORS``).

    The compatibility routers document their own error shapes through ``responses=``.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        for (path, method), statuses in _NATIVE_ERRORS.items():
            operation = document.get("paths", {}).get(path, {}).get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status in statuses:
                responses.setdefault(
                    str(status),
                    {
                        "description": _ERROR_DESCRIPTIONS[status],
                        "content": {"application/json": {"schema": ERROR_SCHEMA}},
                    },
                )
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
