"""Pydantic models of Ollama's native API bodies (field names and defaults as Ollama's ``api`` package).

They validate what arrives on the wire and document it in ``/openapi.json``; handlers translate them
into pollama's internal requests at once. Unknown fields are ignored, as Go's decoder ignores them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pollama.server.wire import decode_base64


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)


def _check_images(images: list[str] | None) -> list[str] | None:
    """``images`` are Go ``[]byte`` values: standard base64, or the decoder's 400."""
    for image in images or []:
        decode_base64(image)
    return images


Images = Annotated[list[str] | None, AfterValidator(_check_images)]


class ToolCallFunction(_Body):
    index: int | None = None
    name: str = ""
    arguments: dict[str, Any] | None = None


class ToolCall(_Body):
    id: str | None = None
    function: ToolCallFunction = Field(default_factory=ToolCallFunction)


class Message(_Body):
    """A chat message: role (lower-cased on input), content and the optional extras."""

    role: str = ""
    content: str = ""
    thinking: str | None = None
    images: Images = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ShowRequest(_Body):
    model: str = ""
    name: str = ""
    verbose: bool = False
    system: str = ""
    template: str = ""
    options: dict[str, Any] | None = None


class CopyRequest(_Body):
    model_config = ConfigDict(json_schema_extra={"required": ["source", "destination"]})

    source: str = ""
    destination: str = ""


class DeleteRequest(_Body):
    model: str = ""
    name: str = ""


class CreateRequest(_Body):
    model: str = ""
    name: str = ""
    from_: str = Field("", alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    draft_files: dict[str, str] | None = None
    template: str = ""
    system: str = ""
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str = ""
    quantization: str = ""
    draft_quantize: str = ""
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    stream: bool | None = None


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class Tool(BaseModel):
    """A tool the model may call (kept as sent; properties keep their order)."""

    model_config = ConfigDict(extra="allow")

    type: str = "function"
    function: dict[str, Any] = Field(default_factory=dict)


class CompletionBody(_Body):
    """The fields ``/api/generate`` and ``/api/chat`` share."""

    model: str = ""
    stream: bool | None = None
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None
    think: Any = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    debug_render_only: bool = Field(False, alias="_debug_render_only")


class GenerateRequest(CompletionBody):
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: list[int] | None = None
    raw: bool = False
    images: Images = None


class ChatRequest(CompletionBody):
    messages: list[Message] | None = None
    tools: list[Tool] | None = None


class EmbedRequest(_Body):
    model: str = ""
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


class EmbeddingsRequest(_Body):
    model: str = ""
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: Any = None
