"""``POST /v1/responses``: OpenAI's Responses API, stateless, over the internal chat request (spec §3.1).

Input items become native messages (``instructions`` a leading system message, ``function_call`` /
``function_call_output`` items assistant tool calls and ``tool`` messages, ``reasoning`` the thinking
of the next assistant message); the answer becomes a ``response`` object whose ``output`` holds a
reasoning item, then function calls or one message. Streaming sends the typed event sequence
(``response.created`` ... ``response.completed``) with sequence numbers.
"""

from __future__ import annotations

import io
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
    collect,
    converted,
    first_chunk,
    image_fetch_deadline,
    inline_image,
    parse_format,
    service,
    sse,
    sse_response,
)
from pollama.server.context import body_schema
from pollama.server.errors import status_for
from pollama.server.openai.chat import decode_image, think_from_effort, tool_calls_out
from pollama.server.openai.errors import OpenAIRoute, error_type
from pollama.server.openai.types import ResponseObject, ResponsesRequest, ResponsesTool, documented
from pollama.server.wire import read_json, unless_disconnected

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)

_MAX_DECOMPRESSED = 64 << 20  # a zstd body may not expand past 64 MiB


# --- request ------------------------------------------------------------------------------------


def _text_of(parts: Any) -> str:
    if isinstance(parts, str):
        return parts
    if isinstance(parts, list):
        return "".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _message(i: int, item: dict[str, Any]) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str):
        raise InvalidRequest(f"input[{i}]: message role must be a string")
    role = role.lower()
    if role == "developer":
        role = "system"
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if content is not None and not isinstance(content, list):
        raise InvalidRequest(f"input[{i}]: content must be a string or array")
    text: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content or []):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            value = part.get("text")
            if not isinstance(value, str):
                raise InvalidRequest(f"input[{i}]: content[{j}]: text must be a string")
            text.append(value)
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, str) and url:
                images.append(decode_image(url))
            elif url is not None and not isinstance(url, str):
                raise InvalidRequest(f"input[{i}]: content[{j}]: image_url must be a string")
        elif kind == "input_file":
            raise InvalidRequest("file inputs are not currently supported")
        else:
            raise InvalidRequest(f"input[{i}]: content[{j}]: unknown content type: {kind or ''}")
    message: dict[str, Any] = {"role": role, "content": "".join(text)}
    if images:
        message["images"] = images
    return message


def _arguments(i: int, text: Any) -> dict[str, Any]:
    if text in (None, ""):
        return {}
    if not isinstance(text, str):
        raise InvalidRequest(f"input[{i}]: arguments must be a JSON string")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"failed to parse function call arguments: {exc.msg}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("failed to parse function call arguments: not a JSON object")
    return value


async def inline_image_urls(body: ResponsesRequest) -> None:
    """Replace each ``input_image`` part's ``http(s)`` URL by a ``data:`` URI of what it serves."""
    deadline = image_fetch_deadline()
    for item in body.input if isinstance(body.input, list) else []:
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "input_image":
                url = part.get("image_url")
                if isinstance(url, str) and url.startswith(("http://", "https://")):
                    part["image_url"] = await inline_image(url, deadline=deadline)


def input_messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as native messages."""
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        if body.input:
            messages.append({"role": "user", "content": body.input})
        return messages
    if body.input is not None and not isinstance(body.input, list):
        raise InvalidRequest("input must be a string or array")
    pending_thinking = ""
    call_names: dict[str, str] = {}
    for i, item in enumerate(body.input or []):
        if not isinstance(item, dict):
            raise InvalidRequest(f"input[{i}]: an input item must be an object")
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "reasoning":
            pending_thinking = item.get("encrypted_content") or _text_of(item.get("summary"))
        elif kind == "message":
            message = _message(i, item)
            if message["role"] == "assistant" and pending_thinking:
                message["thinking"] = pending_thinking
                pending_thinking = ""
            messages.append(message)
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise InvalidRequest(f"input[{i}]: function_call needs string call_id and name")
            call_names[call_id] = name
            call = {"id": call_id, "function": {"name": name, "arguments": _arguments(i, item.get("arguments"))}}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            if pending_thinking:
                messages[-1]["thinking"] = pending_thinking
                pending_thinking = ""
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise InvalidRequest(f"input[{i}]: function_call_output needs a string call_id")
            message = {"role": "tool", "content": _text_of(item.get("output")), "tool_call_id": call_id}
            if call_id in call_names:
                message["tool_name"] = call_names[call_id]
            messages.append(message)
        else:
            raise InvalidRequest(f"input[{i}]: unknown input item type: {item.get('type') or ''}")
    if pending_thinking:
        messages.append({"role": "assistant", "content": "", "thinking": pending_thinking})
    return messages


def _function(name: str, tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def native_tools(tools: list[ResponsesTool] | None) -> list[dict[str, Any]] | None:
    """Flat Responses tools as native function tools; a ``namespace``'s tools become ``ns.fn``.
    Built-in tools (web search, file search, ...) need services pollama does not have: skipped."""
    out = []
    for tool in tools or []:
        if tool.type == "function":
            out.append(_function(tool.name, tool.model_dump()))
        elif tool.type == "namespace":
            for sub in tool.tools or []:
                if isinstance(sub, dict) and sub.get("type", "function") == "function" and sub.get("name"):
                    out.append(_function(f"{tool.name}.{sub['name']}", sub))
    return out or None


def completion_request(body: ResponsesRequest) -> CompletionRequest:
    """The internal chat request for a Responses body."""
    if body.previous_response_id:
        raise InvalidRequest("previous_response_id is not supported: responses are not stored")
    if body.conversation:
        raise InvalidRequest("conversation is not supported: responses are not stored")
    options: dict[str, Any] = {"temperature": body.temperature if body.temperature is not None else 1.0}
    if body.top_p is not None:
        options["top_p"] = body.top_p
    if body.max_output_tokens is not None:
        options["num_predict"] = body.max_output_tokens
    fmt = None
    if body.text is not None and body.text.format is not None:
        kind = body.text.format.type
        if kind == "json_schema":
            fmt = parse_format(body.text.format.schema_)
        elif kind == "json_object":
            fmt = "json"
    effort = body.reasoning.effort if body.reasoning is not None else None
    return CompletionRequest(
        model=body.model,
        endpoint="chat",
        messages=input_messages(body),
        tools=native_tools(body.tools),
        format=fmt,
        options=options,
        think=think_from_effort(effort),
    )


# --- response -----------------------------------------------------------------------------------


def _usage(stats: Stats) -> dict[str, Any]:
    return {
        "input_tokens": stats.prompt_eval_count,
        "output_tokens": stats.eval_count,
        "total_tokens": stats.prompt_eval_count + stats.eval_count,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str, thinking: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": thinking}],
        "encrypted_content": thinking,
    }


def _call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [_text_part(text)]}


def response_object(
    body: ResponsesRequest,
    response_id: str,
    model: str,
    status: str,
    output: list[Any],
    usage: dict[str, Any] | None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """A ``response`` object echoing the request's settings."""
    text_format: dict[str, Any] = {"type": "text"}
    if body.text is not None and body.text.format is not None:
        text_format = body.text.format.model_dump(by_alias=True, exclude_none=True)
    reasoning = None
    if body.reasoning is not None and (body.reasoning.effort or body.reasoning.summary):
        reasoning = {"effort": body.reasoning.effort or None, "summary": body.reasoning.summary or None}
    tools = []
    for tool in body.tools or []:
        echoed: dict[str, Any] = {
            "type": tool.type,
            "name": tool.name,
            "description": tool.description,
            "strict": tool.strict,
            "parameters": tool.parameters,
        }
        if tool.tools is not None:
            echoed["tools"] = tool.tools
        tools.append(echoed)
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "completed_at": completed_at,
        "status": status,
        "incomplete_details": None,
        "model": model,
        "previous_response_id": None,
        "instructions": body.instructions or None,
        "output": output,
        "error": None,
        "tools": tools,
        "tool_choice": "auto",
        "truncation": body.truncation or "disabled",
        "parallel_tool_calls": True,
        "text": {"format": text_format},
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "reasoning": reasoning,
        "usage": usage,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": None,
        "store": False,
        "background": bool(body.background),
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


@router.post(
    "/v1/responses",
    summary="OpenAI: create a response (stateless)",
    openapi_extra=body_schema(ResponsesRequest),
    responses=documented(ResponseObject, stream=True),
)
async def responses(request: Request) -> Response:
    await _decompress(request)
    body = await read_json(request, ResponsesRequest)
    await inline_image_urls(body)
    req = completion_request(body)
    chunks = service(request).complete(req)
    response_id = f"resp_{random.randrange(999999)}"
    item_id = f"msg_{random.randrange(999999)}"
    if not body.stream:
        answer = await unless_disconnected(request, collect(chunks), chunks)
        output: list[Any] = []
        if answer.thinking:
            output.append(_reasoning_item(f"rs_{response_id}", answer.thinking))
        if answer.tool_calls:
            for i, call in enumerate(tool_calls_out(answer.tool_calls)):
                output.append(_call_item(f"fc_{response_id}_{i}", call))
        else:
            output.append(_message_item(item_id, answer.content))
        return JSONResponse(
            response_object(
                body,
                response_id,
                answer.model or body.model,
                "completed",
                output,
                _usage(answer.stats or Stats()),
                completed_at=int(time.time()),
            )
        )
    first = await first_chunk(chunks)
    return sse_response(_ResponsesStream(body, response_id, item_id).events(first, chunks))


async def _decompress(request: Request) -> None:
    """Accept ``Content-Encoding: zstd`` bodies (Codex-style clients send them)."""
    if request.headers.get("content-encoding", "").strip().lower() != "zstd":
        return
    try:
        import zstandard
    except ImportError:
        raise InvalidRequest("zstd request bodies need the zstandard package on the server") from None
    raw = await request.body()
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as reader:
            decoded = reader.read(_MAX_DECOMPRESSED + 1)
    except zstandard.ZstdError as exc:
        raise InvalidRequest(f"invalid zstd request body: {exc}") from None
    if len(decoded) > _MAX_DECOMPRESSED:
        raise InvalidRequest("request body too large")
    request._body = decoded  # Starlette caches the body here; read_json reads it back


class _ResponsesStream:
    """Native chunks → Responses streaming events."""

    def __init__(self, body: ResponsesRequest, response_id: str, item_id: str) -> None:
        self.body = body
        self.response_id = response_id
        self.item_id = item_id
        self.model = body.model
        self.sequence = 0
        self.output_index = 0
        self.started = False
        self.text = ""
        self.text_started = False
        self.thinking = ""
        self.reasoning_id = ""
        self.reasoning_done = False
        self.calls: list[dict[str, Any]] = []

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return sse(data, event=kind)

    def _response(
        self, status: str, output: list[Any], usage: dict[str, Any] | None = None, completed_at: int | None = None
    ) -> dict[str, Any]:
        return response_object(self.body, self.response_id, self.model, status, output, usage, completed_at)

    def _finish_reasoning(self) -> list[bytes]:
        if not self.reasoning_id or self.reasoning_done:
            return []
        self.reasoning_done = True
        events = [
            self._event(
                "response.reasoning_summary_text.done",
                {
                    "item_id": self.reasoning_id,
                    "output_index": self.output_index,
                    "summary_index": 0,
                    "text": self.thinking,
                },
            ),
            self._event(
                "response.output_item.done",
                {"output_index": self.output_index, "item": _reasoning_item(self.reasoning_id, self.thinking)},
            ),
        ]
        self.output_index += 1
        return events

    def convert(self, chunk: Chunk) -> list[bytes]:
        events: list[bytes] = []
        if chunk.model:
            self.model = chunk.model
        if not self.started:
            self.started = True
            events.append(self._event("response.created", {"response": self._response("in_progress", [])}))
            events.append(self._event("response.in_progress", {"response": self._response("in_progress", [])}))
        if chunk.thinking:
            if not self.reasoning_id:
                self.reasoning_id = f"rs_{random.randrange(999999)}"
                events.append(
                    self._event(
                        "response.output_item.added",
                        {
                            "output_index": self.output_index,
                            "item": {"id": self.reasoning_id, "type": "reasoning", "summary": []},
                        },
                    )
                )
            self.thinking += chunk.thinking
            events.append(
                self._event(
                    "response.reasoning_summary_text.delta",
                    {
                        "item_id": self.reasoning_id,
                        "output_index": self.output_index,
                        "summary_index": 0,
                        "delta": chunk.thinking,
                    },
                )
            )
        if chunk.tool_calls:
            events.extend(self._finish_reasoning())
            for call in tool_calls_out(chunk.tool_calls):
                index = self.output_index + len(self.calls)
                item_id = f"fc_{random.randrange(999999)}_{len(self.calls)}"
                self.calls.append(_call_item(item_id, call))
                arguments = call["function"]["arguments"]
                events.append(
                    self._event(
                        "response.output_item.added",
                        {"output_index": index, "item": {**_call_item(item_id, call, "in_progress"), "arguments": ""}},
                    )
                )
                if arguments:
                    events.append(
                        self._event(
                            "response.function_call_arguments.delta",
                            {"item_id": item_id, "output_index": index, "delta": arguments},
                        )
                    )
                events.append(
                    self._event(
                        "response.function_call_arguments.done",
                        {"item_id": item_id, "output_index": index, "arguments": arguments},
                    )
                )
                events.append(self._event("response.output_item.done", {"output_index": index, "item": self.calls[-1]}))
        elif not self.calls and chunk.content:
            events.extend(self._finish_reasoning())
            if not self.text_started:
                self.text_started = True
                events.append(
                    self._event(
                        "response.output_item.added",
                        {
                            "output_index": self.output_index,
                            "item": {
                                "id": self.item_id,
                                "type": "message",
                                "status": "in_progress",
                                "role": "assistant",
                                "content": [],
                            },
                        },
                    )
                )
                events.append(
                    self._event(
                        "response.content_part.added",
                        {
                            "item_id": self.item_id,
                            "output_index": self.output_index,
                            "content_index": 0,
                            "part": _text_part(""),
                        },
                    )
                )
            self.text += chunk.content
            events.append(
                self._event(
                    "response.output_text.delta",
                    {
                        "item_id": self.item_id,
                        "output_index": self.output_index,
                        "content_index": 0,
                        "delta": chunk.content,
                        "logprobs": [],
                    },
                )
            )
        if chunk.done:
            events.extend(self._finish_reasoning())
            if not self.calls and self.text_started:
                events.append(
                    self._event(
                        "response.output_text.done",
                        {
                            "item_id": self.item_id,
                            "output_index": self.output_index,
                            "content_index": 0,
                            "text": self.text,
                            "logprobs": [],
                        },
                    )
                )
                events.append(
                    self._event(
                        "response.content_part.done",
                        {
                            "item_id": self.item_id,
                            "output_index": self.output_index,
                            "content_index": 0,
                            "part": _text_part(self.text),
                        },
                    )
                )
                events.append(
                    self._event(
                        "response.output_item.done",
                        {"output_index": self.output_index, "item": _message_item(self.item_id, self.text)},
                    )
                )
            events.append(
                self._event(
                    "response.completed",
                    {
                        "response": self._response(
                            "completed", self._output(), _usage(chunk.stats or Stats()), completed_at=int(time.time())
                        )
                    },
                )
            )
        return events

    def _output(self) -> list[Any]:
        output: list[Any] = []
        if self.reasoning_id:
            output.append(_reasoning_item(self.reasoning_id, self.thinking))
        if self.calls:
            output.extend(self.calls)
        elif self.text_started:
            output.append(_message_item(self.item_id, self.text))
        return output

    async def events(self, first: Chunk | None, chunks: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
        def failed(exc: Exception) -> list[bytes]:
            response = self._response("failed", self._output())
            response["error"] = {"code": error_type(status_for(exc)), "message": str(exc) or exc.__class__.__name__}
            return [self._event("response.failed", {"response": response})]

        async for event in converted(first, chunks, self.convert, failed):
            yield event
