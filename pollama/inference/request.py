"""pollama's one internal request/response model for inference.

The Ollama, OpenAI and Anthropic routers translate their wire shapes into these dataclasses and
render ``Chunk``s back into their own shapes; nothing below the routers sees any API's format.
Messages, tools and tool calls keep Ollama's dict shape (``role``, ``content``, ``images`` as base64,
``tool_calls[].function.arguments`` as an object), which is also what templates consume.
"""

from __future__ import annotations

from collections.abc import Iterable
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
        """A request with nothing to generate from: it only loads (or unloads) the model (a generate
        request without a prompt ignores its images, as Ollama does)."""
        if self.endpoint == "chat":
            return not self.messages
        return not self.prompt and not self.suffix

    @property
    def image_count(self) -> int:
        """How many images the request carries (the generate ``images`` and every message's)."""
        return len(self.images) + sum(len(m.get("images") or []) for m in self.messages)


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


def fold_chunks(chunks: Iterable[Chunk]) -> Chunk:
    """A whole (non-streamed) answer as one chunk: texts concatenated, tool calls and log
    probabilities gathered, everything else from the last chunk (the one with the statistics)."""
    folded = Chunk()
    content: list[str] = []
    thinking: list[str] = []
    for chunk in chunks:
        content.append(chunk.content)
        thinking.append(chunk.thinking)
        folded.tool_calls.extend(chunk.tool_calls)
        folded.logprobs.extend(chunk.logprobs)
        folded.model = chunk.model or folded.model
        folded.done = chunk.done
        folded.done_reason = chunk.done_reason
        folded.stats = chunk.stats
        folded.context = chunk.context
        folded.debug_info = chunk.debug_info
    folded.content = "".join(content)
    folded.thinking = "".join(thinking)
    return folded


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
