"""pollama's one internal request/response model for inference.

The Ollama, OpenAI and Anthropic routers translate their wire shapes into these dataclasses and
render ``Chunk``s back into their own shapes; nothing below the routers sees any API's format.
Messages, tools and tool calls keep Ollama's dict shape (``role``, ``content``, ``images`` as base64,
``tool_calls[].function.arguments`` as an object), which is also what templates consume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class CompletionRequest:
    """A generate or chat request."""

    model: str
    endpoint: Literal["generate", "chat"] = "chat"
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    raw: bool = False
    context: list[int] | None = None
    images: list[str] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    think: bool | str | None = None
    keep_alive: float | None = None
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    debug_render_only: bool = False  # answer with the rendered prompt instead of generating

    @property
    def is_empty(self) -> bool:
        """A request with nothing to generate from: it only loads (or unloads) the model."""
        if self.endpoint == "chat":
            return not self.messages
        return not self.prompt and not self.suffix and not self.images


@dataclass
class Stats:
    """Timings in nanoseconds and token counts, as Ollama reports them."""

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


@dataclass
class Chunk:
    """A piece of a streamed answer; the last one has ``done`` set and the statistics."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    done_reason: str | None = None
    stats: Stats | None = None
    context: list[int] | None = None
    model: str = ""
    # Per generated token, when asked: {"token", "logprob", "bytes", "top_logprobs": [...]}.
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    debug_info: dict[str, Any] | None = None  # ``_debug_render_only``: the rendered prompt


@dataclass
class EmbedRequest:
    """Embed one or more texts."""

    model: str
    inputs: list[str]
    truncate: bool = True
    dimensions: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    keep_alive: float | None = None
    normalize: bool = True


@dataclass
class EmbedResult:
    """Vectors plus the statistics Ollama returns with them."""

    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


@dataclass
class RunningModel:
    """A loaded model as ``/api/ps`` describes it."""

    name: str
    model: str
    size: int
    digest: str
    details: dict[str, Any]
    expires_at: float
    size_vram: int
    context_length: int
