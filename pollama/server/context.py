"""What every request handler shares: the ``ServerContext`` kept on ``app.state``.

Handlers reach it with ``context(request)``; nothing lives in module globals, so several apps (one
per test, say) can run in one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
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

    Pydantic puts nested models under ``$defs`` and points at them with ``#/$defs/...``, which would
    not resolve inside the OpenAPI document; they are inlined instead (a recursive reference, which
    could not be inlined, becomes ``{}``: any value).
    """
    schema = model.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})
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
        name = ref[len("#/$defs/"):]
        siblings = {k: _inline_refs(v, defs, seen) for k, v in node.items() if k != "$ref"}
        if name in seen or name not in defs:
            return siblings
        return {**_inline_refs(defs[name], defs, (*seen, name)), **siblings}
    return {k: _inline_refs(v, defs, seen) for k, v in node.items()}
