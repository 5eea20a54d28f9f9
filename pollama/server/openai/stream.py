"""What the compatibility routers (OpenAI and Anthropic) share: Server-Sent Events framing, starting a
stream so that early errors still get a status code, folding a stream of ``Chunk``s into one answer,
and the Go-flavoured bits of Ollama's messages (JSON tool arguments, ``%T`` type names)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import StreamingResponse

from pollama.inference import Chunk, Stats

EVENT_STREAM = "text/event-stream"


def sse(data: Any, event: str | None = None) -> bytes:
    """One event: ``[event: <type>\\n]data: <json>\\n\\n`` (``data`` may be a ready-made string)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    """A ``text/event-stream`` response that proxies and browsers do not cache or buffer."""
    return StreamingResponse(body, media_type=EVENT_STREAM, headers={"Cache-Control": "no-cache"})


async def first_chunk(chunks: AsyncIterator[Chunk]) -> Chunk | None:
    """The first chunk of ``chunks``: awaited before a stream starts, so that a failure (unknown model,
    missing capability, full queue) is still answered with its status instead of inside a 200 stream."""
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


async def converted(first: Chunk | None, chunks: AsyncIterator[Chunk],
                    convert: Callable[[Chunk], list[bytes]],
                    on_error: Callable[[Exception], list[bytes]]) -> AsyncIterator[bytes]:
    """The events of a stream: ``convert`` applied to ``first`` and then to every later chunk; a
    failure mid-stream becomes ``on_error``'s events (the status is already sent); ``chunks`` is
    always closed, so a client that goes away releases its runner slot."""
    try:
        if first is not None:
            for event in convert(first):
                yield event
        async for chunk in chunks:
            for event in convert(chunk):
                yield event
    except Exception as exc:  # noqa: BLE001 - every failure becomes the protocol's error event
        for event in on_error(exc):
            yield event
    finally:
        await close(chunks)


async def close(chunks: AsyncIterator[Chunk]) -> None:
    """Stop ``chunks`` early (the client went away): releases the runner it holds."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


@dataclass
class Answer:
    """A whole (non-streamed) answer: the chunks' text concatenated, tool calls gathered."""

    model: str = ""
    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    done_reason: str = ""
    stats: Stats = field(default_factory=Stats)
    logprobs: list[dict[str, Any]] = field(default_factory=list)


async def collect(chunks: AsyncIterator[Chunk]) -> Answer:
    """Read ``chunks`` to the end into one ``Answer``."""
    answer = Answer()
    content: list[str] = []
    thinking: list[str] = []
    async for chunk in chunks:
        answer.model = chunk.model or answer.model
        content.append(chunk.content)
        thinking.append(chunk.thinking)
        answer.tool_calls.extend(chunk.tool_calls)
        answer.logprobs.extend(chunk.logprobs)
        if chunk.done:
            answer.done_reason = chunk.done_reason or ""
            if chunk.stats is not None:
                answer.stats = chunk.stats
    answer.content = "".join(content)
    answer.thinking = "".join(thinking)
    return answer


def arguments_json(call: dict[str, Any]) -> str:
    """A native tool call's arguments as the JSON string OpenAI-style APIs carry (key order kept)."""
    return json.dumps(call.get("function", {}).get("arguments") or {}, ensure_ascii=False, separators=(",", ":"))


def go_type(value: Any) -> str:
    """The Go type name ``%T`` prints for a decoded JSON value (for Ollama's error messages)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"
