"""``POST /v1/chat/completions``: OpenAI's chat API over the internal completion model (spec §3.1).

The body becomes a chat ``CompletionRequest`` (content parts split into messages, data-URI images
decoded, ``http(s)`` image URLs fetched first, ``temperature``/``top_p`` defaulting to 1.0,
``response_format`` → ``format``, ``reasoning_effort`` → ``think``); the chunks come back as one
``chat.completion`` or as SSE ``chat.completion.chunk`` events ending in a finish chunk, an optional
usage chunk and ``[DONE]``.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pollama.errors import InvalidRequest
from pollama.inference import Chunk, CompletionRequest, Stats
from pollama.server.common import (
    arguments_json,
    collect,
    converted,
    first_chunk,
    go_type,
    image_fetch_deadline,
    inline_image,
    parse_format,
    service,
    sse,
    sse_response,
)
from pollama.server.context import body_schema
from pollama.server.openai.errors import OpenAIRoute, error_for
from pollama.server.openai.types import ChatCompletion, ChatCompletionRequest, ChatMessage, ResponseFormat, documented
from pollama.server.openai.types import ToolCall as ToolCallBody
from pollama.server.wire import decode_base64, read_json, unless_disconnected

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)

_IMAGE_PREFIXES = (*(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp")), "data:;base64,")

# reasoning_effort → think (spec §3.1).
_EFFORT: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def decode_image(url: str) -> str:
    """A ``data:`` URI's image as standard padded base64 (the internal model's form)."""
    if url.startswith(("http://", "https://")):
        raise InvalidRequest("image URLs are not currently supported, please use base64 encoded data instead")
    for prefix in _IMAGE_PREFIXES:
        if url.startswith(prefix):
            return _base64(url[len(prefix) :], "invalid image input")
    raise InvalidRequest("invalid image input")


def _base64(data: str, error: str) -> str:
    try:
        return base64.b64encode(decode_base64(data)).decode("ascii")
    except InvalidRequest:
        raise InvalidRequest(error) from None


def think_from_effort(effort: str | None) -> bool | str | None:
    """``reasoning_effort`` / ``reasoning.effort`` as the internal ``think`` value."""
    if not effort:
        return None
    if effort not in _EFFORT:
        raise InvalidRequest(
            f'invalid reasoning value: {json.dumps(effort)} (must be "minimal", "low", '
            '"medium", "high", "xhigh", "ultra", "max", or "none")'
        )
    return _EFFORT[effort]


def parse_arguments(text: str) -> dict[str, Any]:
    """A tool call's JSON-string arguments as an object (key order kept)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise InvalidRequest("invalid tool call arguments") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("invalid tool call arguments")
    return value


def _native_calls(calls: list[ToolCallBody]) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        native: dict[str, Any] = {
            "function": {"name": call.function.name, "arguments": parse_arguments(call.function.arguments)}
        }
        if call.id:
            native["id"] = call.id
        out.append(native)
    return out


def _tool_name(messages: list[ChatMessage], call_id: str) -> str:
    for msg in reversed(messages):  # the last call with that id wins, as in Ollama
        for call in msg.tool_calls or []:
            if call.id == call_id:
                return call.function.name
    return ""


def _part(role: str, part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise InvalidRequest("invalid message format")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest("invalid message format")
        return {"role": role, "content": text}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise InvalidRequest("invalid message format")
        return {"role": role, "content": "", "images": [decode_image(url)]}
    if kind == "input_audio":
        audio = part.get("input_audio")
        data = audio.get("data") if isinstance(audio, dict) else None
        if not isinstance(data, str):
            raise InvalidRequest("invalid message format")
        return {"role": role, "content": "", "images": [_base64(data, "invalid audio input")]}
    raise InvalidRequest("invalid message format")


async def inline_image_urls(messages: list[ChatMessage]) -> None:
    """Replace each ``image_url`` part's ``http(s)`` URL by a ``data:`` URI of what it serves
    (``inline_image``: all within one deadline, each bounded in size; a URL that cannot be fetched is a 400)."""
    deadline = image_fetch_deadline()
    for msg in messages:
        if not isinstance(msg.content, list):
            continue
        for part in msg.content:
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                part["image_url"] = {"url": await inline_image(url, deadline=deadline)}


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI messages as native ones: each content part becomes its own message with the same role;
    tool calls, ``reasoning`` and the tool's name/id go on the last message produced."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        role = msg.role.lower()
        tool_name = ""
        if role == "tool":
            tool_name = msg.name or (_tool_name(messages, msg.tool_call_id) if msg.tool_call_id else "")
        content = msg.content
        produced: list[dict[str, Any]]
        if isinstance(content, str):
            produced = [{"role": role, "content": content}]
        elif isinstance(content, list):
            produced = [_part(role, part) for part in content]
        elif msg.tool_calls is not None:  # content may only be missing next to tool calls
            produced = [{"role": role, "content": ""}]
        else:
            raise InvalidRequest(f"invalid message content type: {go_type(content)}")
        if not produced:
            continue
        last = produced[-1]
        if msg.tool_calls:
            last["tool_calls"] = _native_calls(msg.tool_calls)
        if msg.reasoning:
            last["thinking"] = msg.reasoning
        if tool_name:
            last["tool_name"] = tool_name
        if msg.tool_call_id:
            last["tool_call_id"] = msg.tool_call_id
        out.extend(produced)
    return out


def stop_list(stop: Any) -> list[str] | None:
    """``stop`` (a string or strings; other array elements dropped) as the ``stop`` option."""
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str)]
    return None


def response_format(fmt: ResponseFormat | None) -> Any:
    """``response_format`` as the internal ``format``: ``"json"``, a JSON schema, or nothing."""
    if fmt is None:
        return None
    kind = fmt.type.strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema" and fmt.json_schema is not None:
        return parse_format(fmt.json_schema.schema_)
    return None


def select_tools(tools: list[dict[str, Any]] | None, choice: Any) -> list[dict[str, Any]] | None:
    """Apply ``tool_choice`` where it can be honoured without constrained decoding: ``"none"`` sends no
    tools, a named function sends only that one; ``"auto"``/``"required"`` leave the list as is."""
    if not tools:
        return None
    if choice == "none":
        return None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
        chosen = [t for t in tools if isinstance(name, str) and t.get("function", {}).get("name") == name]
        return chosen or tools
    return tools


def check_top_logprobs(value: int | None) -> int:
    """``top_logprobs`` within Ollama's 0–20 (0 when absent)."""
    if value is not None and not 0 <= value <= 20:
        raise InvalidRequest("top_logprobs must be between 0 and 20")
    return value or 0


def completion_request(body: ChatCompletionRequest) -> CompletionRequest:
    """The internal chat request for an OpenAI body."""
    if not body.messages:
        raise InvalidRequest("[] is too short - 'messages'")
    options: dict[str, Any] = {}
    stop = stop_list(body.stop)
    if stop is not None:
        options["stop"] = stop
    max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    options["temperature"] = body.temperature if body.temperature is not None else 1.0
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        if getattr(body, key) is not None:
            options[key] = getattr(body, key)
    options["top_p"] = body.top_p if body.top_p is not None else 1.0
    effort = body.reasoning.effort if body.reasoning is not None else body.reasoning_effort
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    return CompletionRequest(
        model=body.model,
        endpoint="chat",
        messages=chat_messages(body.messages),
        tools=select_tools(tools, body.tool_choice),
        format=response_format(body.response_format),
        options=options,
        think=think_from_effort(effort),
        logprobs=bool(body.logprobs),
        top_logprobs=check_top_logprobs(body.top_logprobs),
    )


def tool_calls_out(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Native tool calls in OpenAI's form (arguments as a JSON string)."""
    out = []
    for i, call in enumerate(calls):
        function = call.get("function", {})
        index = function.get("index")
        out.append(
            {
                "id": call.get("id", ""),
                "index": index if isinstance(index, int) else i,
                "type": "function",
                "function": {"name": function.get("name", ""), "arguments": arguments_json(call)},
            }
        )
    return out


def usage(stats: Stats) -> dict[str, int]:
    """OpenAI's ``usage`` object from the final chunk's statistics."""
    return {
        "prompt_tokens": stats.prompt_eval_count,
        "completion_tokens": stats.eval_count,
        "total_tokens": stats.prompt_eval_count + stats.eval_count,
    }


def _logprobs(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Native per-token log probabilities as OpenAI's ``{"content": [...]}`` (same entry shape; OpenAI
    clients expect ``top_logprobs`` to be a list even when no alternatives were asked for)."""
    if not entries:
        return None
    return {"content": [{**entry, "top_logprobs": entry.get("top_logprobs") or []} for entry in entries]}


@router.post(
    "/v1/chat/completions",
    summary="OpenAI: create a chat completion",
    openapi_extra=body_schema(ChatCompletionRequest),
    responses=documented(ChatCompletion, stream=True),
)
async def chat_completions(request: Request) -> Response:
    body = await read_json(request, ChatCompletionRequest)
    await inline_image_urls(body.messages or [])
    req = completion_request(body)
    chunks = service(request).complete(req)
    completion_id = f"chatcmpl-{random.randrange(999)}"
    if not body.stream:
        answer = await unless_disconnected(request, collect(chunks), chunks)
        calls = tool_calls_out(answer.tool_calls)
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.thinking:
            message["reasoning"] = answer.thinking
        if calls:
            message["tool_calls"] = calls
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "finish_reason": "tool_calls" if calls else (answer.done_reason or None),
        }
        logprobs = _logprobs(answer.logprobs)
        if logprobs:
            choice["logprobs"] = logprobs
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": answer.model or body.model,
                "system_fingerprint": "fp_ollama",
                "choices": [choice],
                "usage": usage(answer.stats or Stats()),
            }
        )
    first = await first_chunk(chunks)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    stream = _ChatStream(completion_id, body.model, include_usage)
    return sse_response(stream.events(first, chunks))


class _ChatStream:
    """Native chunks → ``chat.completion.chunk`` events (spec §3.1 streaming rules)."""

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        self.id = completion_id
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time())
        self.role_sent = False
        self.tool_calls_sent = False

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": "fp_ollama",
                "choices": choices,
                **extra,
            }
        )

    def _delta(
        self, delta: dict[str, Any], finish_reason: str | None = None, logprobs: dict[str, Any] | None = None
    ) -> bytes:
        if not self.role_sent:
            delta = {"role": "assistant", **delta}
            self.role_sent = True
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        if logprobs:
            choice["logprobs"] = logprobs
        return self._chunk([choice])

    def convert(self, chunk: Chunk) -> list[bytes]:
        out = []
        if chunk.model:
            self.model = chunk.model
        if chunk.thinking:
            out.append(self._delta({"reasoning": chunk.thinking}))
        if chunk.content or chunk.tool_calls or chunk.logprobs:
            delta: dict[str, Any] = {"content": chunk.content}
            if chunk.tool_calls:
                delta["tool_calls"] = tool_calls_out(chunk.tool_calls)
                self.tool_calls_sent = True
            out.append(self._delta(delta, logprobs=_logprobs(chunk.logprobs)))
        if chunk.done:
            if not self.role_sent:
                out.append(self._delta({"content": ""}))
            reason = "tool_calls" if self.tool_calls_sent else (chunk.done_reason or "stop")
            out.append(self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}]))
            if self.include_usage:
                out.append(self._chunk([], usage=usage(chunk.stats or Stats())))
        return out

    async def events(self, first: Chunk | None, chunks: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
        async for event in converted(first, chunks, self.convert, lambda exc: [sse(error_for(exc))]):
            yield event
        yield sse("[DONE]")
