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
    """``openapi_extra`` describing a JSON request body that a handler decodes itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema(by_alias=True)}},
        }
    }
