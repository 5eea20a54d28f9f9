"""What FastAPI cannot work out for ``/openapi.json``: the native routes' success answers, the shape of
server-sent events, and the plain-text 404 of a path no route matches.

The native handlers build their answers by hand (``JSONResponse`` of a dict, an NDJSON stream, an
empty body), so FastAPI can only guess ``application/json`` with an empty schema. ``document_native``
replaces that guess with what the handlers really send: ``text/plain`` for ``/``, the JSON object of
a non-streamed answer and ``application/x-ndjson`` (one such object a line) for a streamed one, no
body at all for copy, delete and the blob routes (whose upload answers 201 when it stored a blob).

The schemas name the fields every answer carries and type the optional ones; other fields are
allowed, as a client decoding Ollama's answers ignores fields it does not know.

A ``text/event-stream`` answer (the OpenAI and Anthropic streams) is documented event by event, as
OpenAPI 3.1 reads the schema of an event stream: an object with the event's ``data`` (and
``event``, ``id``, ``retry``), not a string. A route with a path parameter also answers Ollama's
plain ``404 page not found`` when the parameter cannot match (a newline in it, say), so its 404
lists ``text/plain`` beside the JSON error.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

_STRING: dict[str, Any] = {"type": "string"}
_INTEGER: dict[str, Any] = {"type": "integer"}
_BOOLEAN: dict[str, Any] = {"type": "boolean"}
_OBJECT: dict[str, Any] = {"type": "object"}
_VECTOR: dict[str, Any] = {"type": "array", "items": {"type": "number"}}
_STRINGS: dict[str, Any] = {"type": "array", "items": _STRING}

_DETAILS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "parent_model": _STRING,
        "format": _STRING,
        "family": _STRING,
        "families": {"type": ["array", "null"], "items": _STRING},
        "parameter_size": _STRING,
        "quantization_level": _STRING,
    },
}

_MODEL_ENTRY: dict[str, Any] = {
    "type": "object",
    "required": ["name", "model", "size", "digest", "details"],
    "properties": {
        "name": _STRING,
        "model": _STRING,
        "size": _INTEGER,
        "digest": _STRING,
        "details": _DETAILS,
    },
}

_TIMINGS: dict[str, Any] = {
    "total_duration": _INTEGER,
    "load_duration": _INTEGER,
    "prompt_eval_count": _INTEGER,
    "prompt_eval_duration": _INTEGER,
    "eval_count": _INTEGER,
    "eval_duration": _INTEGER,
}

_TOOL_CALLS: dict[str, Any] = {"type": "array", "items": _OBJECT}

_GENERATE: dict[str, Any] = {
    "type": "object",
    "title": "GenerateResponse",
    "required": ["model", "created_at"],
    "properties": {
        "model": _STRING,
        "created_at": _STRING,
        "response": _STRING,
        "thinking": _STRING,
        "done": _BOOLEAN,
        "done_reason": _STRING,
        "context": {"type": "array", "items": _INTEGER},
        "logprobs": {"type": "array", "items": _OBJECT},
        "tool_calls": _TOOL_CALLS,
        **_TIMINGS,
    },
}

_CHAT: dict[str, Any] = {
    "type": "object",
    "title": "ChatResponse",
    "required": ["model", "created_at"],
    "properties": {
        "model": _STRING,
        "created_at": _STRING,
        "message": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {"role": _STRING, "content": _STRING, "thinking": _STRING, "tool_calls": _TOOL_CALLS},
        },
        "done": _BOOLEAN,
        "done_reason": _STRING,
        "logprobs": {"type": "array", "items": _OBJECT},
        **_TIMINGS,
    },
}

_PROGRESS: dict[str, Any] = {
    "type": "object",
    "title": "ProgressResponse",
    "properties": {"status": _STRING, "digest": _STRING, "total": _INTEGER, "completed": _INTEGER, "error": _STRING},
}

_SCHEMAS: dict[str, dict[str, Any]] = {
    "version": {
        "type": "object",
        "title": "VersionResponse",
        "required": ["version"],
        "properties": {"version": _STRING},
    },
    "tags": {
        "type": "object",
        "title": "ListResponse",
        "required": ["models"],
        "properties": {
            "models": {
                "type": "array",
                "items": {
                    **_MODEL_ENTRY,
                    "required": [*_MODEL_ENTRY["required"], "modified_at"],
                    "properties": {**_MODEL_ENTRY["properties"], "modified_at": _STRING},
                },
            }
        },
    },
    "ps": {
        "type": "object",
        "title": "ProcessResponse",
        "required": ["models"],
        "properties": {
            "models": {
                "type": "array",
                "items": {
                    **_MODEL_ENTRY,
                    "required": [*_MODEL_ENTRY["required"], "expires_at", "size_vram"],
                    "properties": {
                        **_MODEL_ENTRY["properties"],
                        "expires_at": _STRING,
                        "size_vram": _INTEGER,
                        "context_length": _INTEGER,
                    },
                },
            }
        },
    },
    "show": {
        "type": "object",
        "title": "ShowResponse",
        "properties": {
            "license": _STRING,
            "modelfile": _STRING,
            "parameters": _STRING,
            "template": _STRING,
            "system": _STRING,
            "details": _DETAILS,
            "model_info": _OBJECT,
            "projector_info": _OBJECT,
            "capabilities": _STRINGS,
            "modified_at": _STRING,
            "messages": {"type": "array", "items": _OBJECT},
        },
    },
    "embed": {
        "type": "object",
        "title": "EmbedResponse",
        "required": ["model", "embeddings"],
        "properties": {
            "model": _STRING,
            "embeddings": {"type": "array", "items": _VECTOR},
            "total_duration": _INTEGER,
            "load_duration": _INTEGER,
            "prompt_eval_count": _INTEGER,
        },
    },
    "embeddings": {
        "type": "object",
        "title": "EmbeddingResponse",
        "required": ["embedding"],
        "properties": {"embedding": _VECTOR},
    },
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_or_stream(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description + " (`stream: false`), or one such object a line (streamed, the default)",
        "content": {"application/json": {"schema": schema}, "application/x-ndjson": {"schema": schema}},
    }


_EMPTY: dict[str, Any] = {"description": "Done (no body)"}

# (path, method) → the success answers that replace FastAPI's guess.
_NATIVE: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("/", "get"): {"200": {"description": "`Ollama is running`", "content": {"text/plain": {"schema": _STRING}}}},
    ("/", "head"): {"200": {"description": "Running (headers only)"}},
    ("/api/version", "get"): {"200": _json("The version", _SCHEMAS["version"])},
    ("/api/version", "head"): {"200": {"description": "Running (headers only)"}},
    ("/api/tags", "get"): {"200": _json("Installed models", _SCHEMAS["tags"])},
    ("/api/tags", "head"): {"200": {"description": "Installed models (headers only)"}},
    ("/api/ps", "get"): {"200": _json("Loaded models", _SCHEMAS["ps"])},
    ("/api/show", "post"): {"200": _json("The model's details", _SCHEMAS["show"])},
    ("/api/copy", "post"): {"200": _EMPTY},
    ("/api/delete", "delete"): {"200": _EMPTY},
    ("/api/generate", "post"): {"200": _json_or_stream("The completion", _GENERATE)},
    ("/api/chat", "post"): {"200": _json_or_stream("The reply", _CHAT)},
    ("/api/embed", "post"): {"200": _json("The embeddings", _SCHEMAS["embed"])},
    ("/api/embeddings", "post"): {"200": _json("The embedding", _SCHEMAS["embeddings"])},
    ("/api/create", "post"): {"200": _json_or_stream("Progress", _PROGRESS)},
    ("/api/pull", "post"): {"200": _json_or_stream("Progress", _PROGRESS)},
    ("/api/push", "post"): {"200": _json_or_stream("Progress", _PROGRESS)},
    ("/api/blobs/{digest}", "head"): {"200": {"description": "The blob exists (no body)"}},
    ("/api/blobs/{digest}", "post"): {
        "200": {"description": "The blob was already there (no body)"},
        "201": {"description": "The blob was stored (no body)"},
    },
}


def document_native(document: dict[str, Any]) -> None:
    """Replace the guessed success answers of the native routes in ``document`` (``_NATIVE``).

    FastAPI's 422 (request validation) is dropped from them too: the native routes decode their own
    bodies, and a path parameter that does not parse is Ollama's 400, so no native route answers 422.
    """
    paths = document.get("paths", {})
    for (path, method), answers in _NATIVE.items():
        operation = paths.get(path, {}).get(method)
        if operation is None:
            continue
        responses = operation.setdefault("responses", {})
        responses.pop("422", None)
        responses.update(answers)


SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "ServerSentEvent",
    "required": ["data"],
    "properties": {"event": _STRING, "data": _STRING, "id": _STRING, "retry": _INTEGER},
}


def document_events(document: dict[str, Any]) -> None:
    """Describe every ``text/event-stream`` answer of ``document`` event by event (``SSE_EVENT_SCHEMA``)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                stream = response.get("content", {}).get("text/event-stream")
                if stream is not None:
                    stream["schema"] = SSE_EVENT_SCHEMA


def document_unmatched(document: dict[str, Any]) -> None:
    """Add the plain-text ``404 page not found`` to the 404 of every operation with a path parameter."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not any(p.get("in") == "path" for p in operation.get("parameters", [])):
                continue
            missing = operation.setdefault("responses", {}).setdefault("404", {"description": "No route matches"})
            missing.setdefault("content", {})["text/plain"] = {"schema": _STRING}


def install_openapi_docs(app: FastAPI) -> None:
    """Make ``app.openapi()`` pass its document through ``document_native``, ``document_events`` and
    ``document_unmatched`` once, when it is first built."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        document_native(document)
        document_events(document)
        document_unmatched(document)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
