"""Pydantic models of the Anthropic Messages API bodies, as Ollama's ``anthropic`` package decodes them.

``system`` and message ``content`` are ``Any`` (a string or content blocks, inspected by hand so that
errors carry Ollama's messages); ``WithJsonSchema`` documents what they accept. The response models
only document what the handler writes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

_BLOCK = {
    "type": "object",
    "description": "A content block: `text`, `image` (base64 `source`), `tool_use`, `tool_result` or `thinking`.",
    "properties": {
        "type": {"type": "string"},
        "text": {"type": "string"},
        "source": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "media_type": {"type": "string"}, "data": {"type": "string"}},
        },
        "id": {"type": "string"},
        "name": {"type": "string"},
        "input": {"type": "object"},
        "tool_use_id": {"type": "string"},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "is_error": {"type": "boolean"},
        "thinking": {"type": "string"},
        "signature": {"type": "string"},
    },
    "required": ["type"],
}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _BLOCK}]}
_SYSTEM = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "array",
            "items": {"type": "object", "properties": {"type": {"type": "string"}, "text": {"type": "string"}}},
        },
        {"type": "null"},
    ]
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)


class MessageParam(_Body):
    role: str = ""
    content: Annotated[Any, WithJsonSchema(_CONTENT)] = None


class ToolParam(_Body):
    type: str | None = None
    name: str = ""
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ThinkingConfig(_Body):
    type: str = Field(default="", description="`enabled` or `disabled` (`budget_tokens` is ignored).")
    budget_tokens: int | None = None


class OutputConfig(_Body):
    effort: str | None = None


class MessagesRequest(_Body):
    """``POST /v1/messages``."""

    model: str = ""
    max_tokens: int = 0
    messages: list[MessageParam] | None = None
    system: Annotated[Any, WithJsonSchema(_SYSTEM)] = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: Annotated[Any, WithJsonSchema({})] = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    metadata: Annotated[Any, WithJsonSchema({})] = None


# --- responses (documentation only) -------------------------------------------------------------


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error shape."""

    type: str
    error: AnthropicErrorDetail
    request_id: str


class AnthropicUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class MessagesResponse(BaseModel):
    """A non-streamed message (``stream: true`` sends Anthropic's SSE event sequence instead)."""

    id: str
    type: str
    role: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    stop_sequence: str | None
    usage: AnthropicUsage


def documented() -> dict[Any, Any]:
    """``responses=`` for ``/v1/messages``."""
    error = {"model": AnthropicError}
    return {
        200: {
            "model": MessagesResponse,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "A message, or with `stream: true` a stream of Server-Sent Events",
        },
        400: {**error, "description": "Invalid request"},
        404: {**error, "description": "Model not found"},
        500: {**error, "description": "Server error"},
        503: {**error, "description": "Server busy: too many queued requests"},
    }
