"""Pydantic models of the OpenAI-compatible bodies, as Ollama's ``openai`` package decodes them.

Requests are validated with Go-like strictness (a string where a number belongs is a 400) and
unknown fields are ignored. Fields that Ollama decodes as ``any`` and inspects by hand (``content``,
``stop``, ``input``, ...) are ``Any`` here too, so that the handlers can answer with Ollama's own
messages; ``WithJsonSchema`` still documents what they accept. The response models only document
what the handlers write (they build plain dicts, as Ollama does), for a truthful ``/openapi.json``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from pollama.server.ollama_types import Tool

_STRING_OR_STRINGS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_NULLABLE_OBJECT = {"anyOf": [{"type": "object"}, {"type": "null"}]}
_JSON: dict[str, Any] = {}  # any JSON value

_CONTENT_PART = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["text", "image_url", "input_audio"]},
        "text": {"type": "string"},
        "image_url": {
            "anyOf": [
                {"type": "string"},
                {"type": "object", "properties": {"url": {"type": "string"}, "detail": {"type": "string"}}},
            ]
        },
        "input_audio": {"type": "object", "properties": {"data": {"type": "string"}, "format": {"type": "string"}}},
    },
    "required": ["type"],
}
_MESSAGE_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}, {"type": "null"}]}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)


# --- chat completions ---------------------------------------------------------------------------


class FunctionCall(_Body):
    name: str = ""
    arguments: str = Field(default="", description="The arguments as a JSON object in a string.")


class ToolCall(_Body):
    id: str = ""
    index: int | None = None
    type: str = "function"
    function: FunctionCall = Field(default_factory=FunctionCall)


class ChatMessage(_Body):
    """A message: ``content`` is a string or a list of parts (text, images as data URIs or http(s) URLs
    the server fetches, base64 audio)."""

    role: str = ""
    content: Annotated[Any, WithJsonSchema(_MESSAGE_CONTENT)] = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None
    tool_call_id: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaFormat(_Body):
    name: str | None = None
    description: str | None = None
    schema_: Annotated[Any, WithJsonSchema(_JSON)] = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: str = Field(default="", description="`text`, `json_object` or `json_schema` (case-insensitive).")
    json_schema: JsonSchemaFormat | None = None


class Reasoning(_Body):
    effort: str | None = None


class ChatCompletionRequest(_Body):
    """``POST /v1/chat/completions``."""

    model: str = ""
    messages: list[ChatMessage] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: Annotated[Any, WithJsonSchema({"anyOf": [*_STRING_OR_STRINGS["anyOf"], {"type": "null"}]})] = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Annotated[
        Any,
        WithJsonSchema(
            {"anyOf": [{"type": "string", "enum": ["none", "auto", "required"]}, {"type": "object"}, {"type": "null"}]}
        ),
    ] = None
    reasoning: Reasoning | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


# --- completions --------------------------------------------------------------------------------


class CompletionRequest(_Body):
    """``POST /v1/completions`` (``prompt`` must be a string)."""

    model: str = ""
    prompt: str = ""
    suffix: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: Annotated[Any, WithJsonSchema({"anyOf": [*_STRING_OR_STRINGS["anyOf"], {"type": "null"}]})] = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, description="Return log probabilities of the N most likely tokens.")


# --- embeddings ---------------------------------------------------------------------------------


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``."""

    model: str = ""
    input: Annotated[Any, WithJsonSchema(_STRING_OR_STRINGS)] = None
    dimensions: int | None = None
    encoding_format: str | None = Field(default=None, description="`float` (default) or `base64`.")


# --- responses ----------------------------------------------------------------------------------


_RESPONSES_INPUT = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "array",
            "items": {
                "type": "object",
                "description": "A `message` (role + content string or parts `input_text`, `output_text`, "
                "`input_image`), `function_call`, `function_call_output` or `reasoning` item.",
                "properties": {
                    "type": {
                        "type": "string",
                        "enum": ["message", "function_call", "function_call_output", "reasoning"],
                    },
                    "role": {"type": "string"},
                    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
                    "call_id": {"type": "string"},
                    "name": {"type": "string"},
                    "arguments": {"type": "string"},
                    "output": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
                    "encrypted_content": {"type": "string"},
                },
            },
        },
    ]
}


class ResponsesReasoning(_Body):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesTextFormat(_Body):
    type: str = ""
    name: str | None = None
    schema_: Annotated[Any, WithJsonSchema(_JSON)] = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponsesText(_Body):
    format: ResponsesTextFormat | None = None


class ResponsesTool(_Body):
    """A ``function`` tool (flat: ``name``, ``parameters``), or a ``namespace`` of them."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)

    type: str = "function"
    name: str = ""
    description: str | None = None
    strict: bool | None = None
    parameters: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None


class ResponsesRequest(_Body):
    """``POST /v1/responses`` (stateless)."""

    model: str = ""
    input: Annotated[Any, WithJsonSchema(_RESPONSES_INPUT)] = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    reasoning: ResponsesReasoning | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: ResponsesText | None = None
    truncation: str | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Annotated[Any, WithJsonSchema(_JSON)] = None
    stream: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    conversation: Annotated[Any, WithJsonSchema(_JSON)] = None


# --- responses (documentation only) -------------------------------------------------------------


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="`invalid_request_error` (400), `not_found_error` (404) or `api_error`.")
    param: None = None
    code: None = None


class OpenAIError(BaseModel):
    """OpenAI's error shape."""

    error: OpenAIErrorDetail


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ToolCallOut(BaseModel):
    id: str
    index: int
    type: str
    function: dict[str, str]


class AssistantMessage(BaseModel):
    role: str
    content: str
    reasoning: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None


class ChatCompletion(BaseModel):
    """A non-streamed chat completion (streams send ``chat.completion.chunk`` objects as SSE)."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class CompletionChoice(BaseModel):
    text: str
    index: int
    finish_reason: str | None


class Completion(BaseModel):
    """A non-streamed text completion."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class EmbeddingItem(BaseModel):
    object: str
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32 bytes.")
    index: int


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: str
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


class ModelObject(BaseModel):
    id: str
    object: str
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: str
    data: list[ModelObject] | None = Field(description="`null` when no model is installed.")


class ResponseObject(BaseModel):
    """A Responses API ``response`` object (request settings are echoed)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str
    created_at: int
    completed_at: int | None
    status: str
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None


SSE_CONTENT = {"text/event-stream": {"schema": {"type": "string"}}}


def documented(model: type[BaseModel], *, stream: bool = False, not_found: bool = True) -> dict[Any, Any]:
    """``responses=`` for a route: the success body (and SSE when it streams), and the error shape."""
    ok: dict[str, Any] = {"model": model, "description": "Success"}
    if stream:
        ok["content"] = SSE_CONTENT
        ok["description"] = "A JSON object, or with `stream: true` a stream of Server-Sent Events"
    out: dict[Any, Any] = {200: ok, 400: {"model": OpenAIError, "description": "Invalid request"}}
    if not_found:
        out[404] = {"model": OpenAIError, "description": "Model not found"}
    out[500] = {"model": OpenAIError, "description": "Server error"}
    out[503] = {"model": OpenAIError, "description": "Server busy: too many queued requests"}
    return out
