"""``POST /v1/messages``: Anthropic's Messages API over the internal chat request (spec §3.2).

Content blocks become native messages (``tool_result`` blocks separate ``tool`` messages, placed
before a user's own text), ``thinking``/``output_config.effort`` become ``think`` (silently dropped
for models that cannot think), and the answer comes back as a ``message`` with thinking, text and
``tool_use`` blocks, or as Anthropic's SSE sequence (``message_start``, content blocks,
``message_delta``, ``message_stop``). Errors use Anthropic's shape with the native status.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from pollama.errors import InvalidRequest
from pollama.inference import Chunk, CompletionRequest, Stats
from pollama.server.anthropic.types import MessageParam, MessagesRequest, ToolParam, documented
from pollama.server.common import (
    ErrorShapedRoute,
    arguments_json,
    collect,
    converted,
    failure_status,
    first_chunk,
    go_type,
    service,
    sse,
    sse_response,
)
from pollama.server.context import body_schema
from pollama.server.errors import error_headers, status_for
from pollama.server.wire import decode_base64, read_json, unless_disconnected

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "max", "xhigh": "high"}


# --- errors -------------------------------------------------------------------------------------


def _error_object(exc: BaseException) -> dict[str, str]:
    status = status_for(exc)
    return {"type": _ERROR_TYPES.get(status, "api_error"), "message": str(exc) or exc.__class__.__name__}


def error_response(exc: BaseException) -> JSONResponse:
    """Anthropic's ``{"type": "error", "error": {...}, "request_id"}`` for ``exc``, with its status."""
    return JSONResponse(
        {"type": "error", "error": _error_object(exc), "request_id": f"req_{secrets.token_hex(12)}"},
        status_code=failure_status(exc),
        headers=error_headers(exc),
    )


class AnthropicRoute(ErrorShapedRoute):
    """A route whose errors are answered in Anthropic's shape."""

    @staticmethod
    def render_error(exc: BaseException) -> Response:
        """Anthropic's error response for ``exc``."""
        return error_response(exc)


router = APIRouter(tags=["anthropic"], route_class=AnthropicRoute)


# --- request ------------------------------------------------------------------------------------


def _system(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "".join(
            b["text"]
            for b in system
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        )
    return ""


def _image(block: dict[str, Any]) -> str:
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest("invalid image source")
    kind = source.get("type")
    if kind != "base64":
        raise InvalidRequest(
            f"invalid image source type: {kind if isinstance(kind, str) else ''}. Only base64 images are supported."
        )
    data = source.get("data")
    try:
        return base64.b64encode(decode_base64(data if isinstance(data, str) else "")).decode()
    except InvalidRequest as exc:
        raise InvalidRequest(f"invalid base64 image data: {exc}") from None


def _tool_result(block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content")
    text = ""
    images: list[str] = []
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        for item in content:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "text" and isinstance(item.get("text"), str):
                text += item["text"]
            elif item.get("type") == "image":
                images.append(_image(item))
    tool_use_id = block.get("tool_use_id")
    message: dict[str, Any] = {
        "role": "tool",
        "content": text,
        "tool_call_id": tool_use_id if isinstance(tool_use_id, str) else "",
    }
    if images:
        message["images"] = images
    return message


def convert_message(msg: MessageParam) -> list[dict[str, Any]]:
    """One Anthropic message as native messages."""
    role = msg.role.lower()
    content = msg.content
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"invalid message content type: {go_type(content)}")
    text: list[str] = []
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking = ""
    results: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            raise InvalidRequest("invalid content block format")
        kind = block.get("type")
        if kind == "text":
            if isinstance(block.get("text"), str):
                text.append(block["text"])
        elif kind == "image":
            images.append(_image(block))
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str):
                raise InvalidRequest("tool_use block missing required 'id' field")
            if not isinstance(name, str):
                raise InvalidRequest("tool_use block missing required 'name' field")
            arguments = block.get("input")
            calls.append(
                {
                    "id": call_id,
                    "function": {"name": name, "arguments": arguments if isinstance(arguments, dict) else {}},
                }
            )
        elif kind == "tool_result":
            results.append(_tool_result(block))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking = block["thinking"]
        # server_tool_use, web_search_tool_result, redacted_thinking and unknown blocks are ignored
    own: list[dict[str, Any]] = []
    if text or images or calls or thinking:
        message: dict[str, Any] = {"role": role, "content": "".join(text)}
        if images:
            message["images"] = images
        if calls:
            message["tool_calls"] = calls
        if thinking:
            message["thinking"] = thinking
        own.append(message)
    return results + own if role == "user" else own + results


def _tool(tool: ToolParam) -> dict[str, Any] | None:
    if tool.type and tool.type.startswith("web_search"):
        return None  # Anthropic's server-side web search: not available here
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = (
        tool.input_schema if tool.input_schema is not None else {"type": "object", "properties": {}}
    )
    return {"type": "function", "function": function}


def _think(body: MessagesRequest) -> bool | str | None:
    if body.thinking is not None and body.thinking.type in ("enabled", "disabled"):
        return body.thinking.type == "enabled"
    effort = body.output_config.effort if body.output_config is not None else None
    return _EFFORT.get(effort) if effort else None


def completion_request(body: MessagesRequest) -> CompletionRequest:
    """The internal chat request for an Anthropic body (after the required fields were checked)."""
    messages: list[dict[str, Any]] = []
    system = _system(body.system)
    if system:
        messages.append({"role": "system", "content": system})
    for msg in body.messages or []:
        messages.extend(convert_message(msg))
    options: dict[str, Any] = {"num_predict": body.max_tokens}
    for key in ("temperature", "top_p", "top_k"):
        if getattr(body, key) is not None:
            options[key] = getattr(body, key)
    if body.stop_sequences:
        options["stop"] = list(body.stop_sequences)
    tools = [t for t in (_tool(tool) for tool in body.tools or []) if t is not None]
    return CompletionRequest(
        model=body.model, endpoint="chat", messages=messages, tools=tools or None, options=options, think=_think(body)
    )


async def _drop_unsupported_think(request: Request, req: CompletionRequest) -> None:
    """``/v1/messages`` silently drops ``think`` for models without the thinking capability."""
    if req.think in (None, False):
        return
    svc = service(request)
    info = await svc.model_info(await svc.load_model(req.model))
    if "thinking" not in info.capabilities:
        req.think = None


def _estimate_tokens(req: CompletionRequest) -> int:
    """A rough prompt size (4 characters a token) for ``message_start``, sent before the real count."""
    chars = sum(len(str(m.get("content", ""))) + len(str(m.get("thinking", ""))) for m in req.messages)
    if req.tools:
        chars += len(json.dumps(req.tools))
    return max(1, chars // 4)


# --- response -----------------------------------------------------------------------------------


def stop_reason(done_reason: str, has_tool_calls: bool) -> str | None:
    """Native ``done_reason`` as Anthropic's ``stop_reason``."""
    if has_tool_calls:
        return "tool_use"
    if done_reason == "stop":
        return "end_turn"
    if done_reason == "length":
        return "max_tokens"
    return "stop_sequence" if done_reason else None


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function", {})
    return {
        "type": "tool_use",
        "id": call.get("id", ""),
        "name": function.get("name", ""),
        "input": function.get("arguments") or {},
    }


@router.post(
    "/v1/messages",
    summary="Anthropic: create a message",
    openapi_extra=body_schema(MessagesRequest),
    responses=documented(),
)
async def messages(request: Request) -> Response:
    body = await read_json(request, MessagesRequest)
    if not body.model:
        raise InvalidRequest("model is required")
    if body.max_tokens <= 0:
        raise InvalidRequest("max_tokens is required and must be positive")
    if not body.messages:
        raise InvalidRequest("messages is required")
    req = completion_request(body)
    await _drop_unsupported_think(request, req)
    chunks = service(request).complete(req)
    message_id = f"msg_{secrets.token_hex(12)}"
    if not body.stream:
        answer = await unless_disconnected(request, collect(chunks), chunks)
        stats = answer.stats or Stats()
        content: list[dict[str, Any]] = []
        if answer.thinking:
            content.append({"type": "thinking", "thinking": answer.thinking})
        if answer.content:
            content.append({"type": "text", "text": answer.content})
        content.extend(_tool_use(call) for call in answer.tool_calls)
        return JSONResponse(
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": answer.model or body.model,
                "content": content,
                "stop_reason": stop_reason(answer.done_reason or "", bool(answer.tool_calls)),
                "stop_sequence": None,
                "usage": {"input_tokens": stats.prompt_eval_count, "output_tokens": stats.eval_count},
            }
        )
    first = await first_chunk(chunks)
    stream = _MessageStream(message_id, body.model, _estimate_tokens(req))
    return sse_response(stream.events(first, chunks))


class _MessageStream:
    """Native chunks → Anthropic's streaming events."""

    def __init__(self, message_id: str, model: str, estimated_input: int) -> None:
        self.id = message_id
        self.model = model
        self.input_tokens = estimated_input
        self.index = 0
        self.started = False
        self.thinking_open = False
        self.thinking_done = False
        self.text_open = False
        self.tool_calls = 0

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        return sse({"type": kind, **data}, event=kind)

    def _stop_block(self) -> bytes:
        event = self._event("content_block_stop", {"index": self.index})
        self.index += 1
        return event

    def convert(self, chunk: Chunk) -> list[bytes]:
        events: list[bytes] = []
        if chunk.model:
            self.model = chunk.model
        if not self.started:
            self.started = True
            if chunk.done and chunk.stats is not None:
                self.input_tokens = chunk.stats.prompt_eval_count
            events.append(
                self._event(
                    "message_start",
                    {
                        "message": {
                            "id": self.id,
                            "type": "message",
                            "role": "assistant",
                            "model": self.model,
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
                        }
                    },
                )
            )
        if chunk.thinking and not self.thinking_done:
            if not self.thinking_open:
                self.thinking_open = True
                events.append(
                    self._event(
                        "content_block_start",
                        {"index": self.index, "content_block": {"type": "thinking", "thinking": ""}},
                    )
                )
            events.append(
                self._event(
                    "content_block_delta",
                    {"index": self.index, "delta": {"type": "thinking_delta", "thinking": chunk.thinking}},
                )
            )
        if chunk.content:
            if self.thinking_open and not self.thinking_done:
                self.thinking_done = True
                events.append(self._stop_block())
            if not self.text_open:
                self.text_open = True
                events.append(
                    self._event(
                        "content_block_start", {"index": self.index, "content_block": {"type": "text", "text": ""}}
                    )
                )
            events.append(
                self._event(
                    "content_block_delta", {"index": self.index, "delta": {"type": "text_delta", "text": chunk.content}}
                )
            )
        for call in chunk.tool_calls:
            if self.thinking_open and not self.thinking_done:
                self.thinking_done = True
                events.append(self._stop_block())
            if self.text_open:
                self.text_open = False
                events.append(self._stop_block())
            function = call.get("function", {})
            events.append(
                self._event(
                    "content_block_start",
                    {
                        "index": self.index,
                        "content_block": {
                            "type": "tool_use",
                            "id": call.get("id", ""),
                            "name": function.get("name", ""),
                            "input": {},
                        },
                    },
                )
            )
            events.append(
                self._event(
                    "content_block_delta",
                    {"index": self.index, "delta": {"type": "input_json_delta", "partial_json": arguments_json(call)}},
                )
            )
            events.append(self._stop_block())
            self.tool_calls += 1
        if chunk.done:
            if self.text_open or (self.thinking_open and not self.thinking_done):
                events.append(self._stop_block())
            stats = chunk.stats or Stats()
            if stats.prompt_eval_count:
                self.input_tokens = stats.prompt_eval_count
            events.append(
                self._event(
                    "message_delta",
                    {
                        "delta": {
                            "stop_reason": stop_reason(chunk.done_reason or "", self.tool_calls > 0),
                            "stop_sequence": None,
                        },
                        "usage": {"input_tokens": self.input_tokens, "output_tokens": stats.eval_count},
                    },
                )
            )
            events.append(self._event("message_stop", {}))
        return events

    async def events(self, first: Chunk | None, chunks: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
        def failed(exc: Exception) -> list[bytes]:
            return [self._event("error", {"error": _error_object(exc)})]

        async for event in converted(first, chunks, self.convert, failed):
            yield event
