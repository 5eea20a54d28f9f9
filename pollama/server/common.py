"""What the API routers (Ollama, OpenAI, Anthropic) share, so that none of them imports another.

The inference service handle (``service``), ``format`` parsing, folding a non-streamed answer
(``collect``: the one fold every API uses), starting a stream so that early errors still get a
status code (``first_chunk``, ``converted``, ``close``), Server-Sent Events framing (``sse``,
``sse_response``), the route class that renders a handler's errors in its API's shape
(``ErrorShapedRoute``), an image URL fetched into a ``data:`` URI (``inline_image``), and the
Go-flavoured bits of Ollama's messages (``arguments_json``, ``go_type``).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
import httpx
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute

from pollama.errors import InvalidRequest, PollamaError
from pollama.inference.request import Chunk, fold_chunks
from pollama.inference.service import InferenceService
from pollama.server.context import context
from pollama.server.errors import status_for

log = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"


def service(request: Request) -> InferenceService:
    """The app's inference service."""
    svc: InferenceService = context(request).services["inference"]
    return svc


def parse_format(value: Any) -> Any:
    """``format``: ``"json"``, a JSON-schema object, or nothing (spec §9.3)."""
    if value is None or value == "":
        return None
    if value == "json" or isinstance(value, dict):
        return value
    raw = json.dumps(value, separators=(",", ":"))
    raise InvalidRequest(f'invalid format: {raw}; expected "json" or a valid JSON Schema object')


# --- images -------------------------------------------------------------------------------------

IMAGE_FETCH_TIMEOUT = 10.0
"""Seconds the image URLs of one request may take to answer in full, all of them together."""
MAX_IMAGE_BYTES = 20 << 20
"""The largest image a URL may send."""


def image_fetch_deadline() -> float:
    """The deadline (``anyio.current_time()`` clock) for the image URLs of a request starting now."""
    return anyio.current_time() + IMAGE_FETCH_TIMEOUT


async def inline_image(url: str, *, deadline: float | None = None, max_bytes: int = MAX_IMAGE_BYTES) -> str:
    """``url`` as a ``data:`` URI when it is an ``http(s)`` URL (its body, fetched by ``deadline`` —
    default ``image_fetch_deadline()`` — and at most ``max_bytes``), else unchanged. A URL that cannot
    be fetched is a 400 naming it."""
    if not url.startswith(("http://", "https://")):
        return url
    failed = f"invalid image input: failed to fetch image URL {url}"
    body = b""
    with anyio.CancelScope(deadline=image_fetch_deadline() if deadline is None else deadline) as scope:
        try:
            body = await _fetch(url, IMAGE_FETCH_TIMEOUT, max_bytes, failed)
        except httpx.HTTPError as exc:
            raise InvalidRequest(f"{failed}: {str(exc) or type(exc).__name__}") from None
    if scope.cancelled_caught:
        raise InvalidRequest(f"{failed}: timed out")
    return "data:;base64," + base64.b64encode(body).decode("ascii")


async def _fetch(url: str, limit: float, max_bytes: int, failed: str) -> bytes:
    async with (
        httpx.AsyncClient(timeout=limit, follow_redirects=True, max_redirects=3, trust_env=False) as client,
        client.stream("GET", url) as response,
    ):
        if response.status_code != 200:
            raise InvalidRequest(f"{failed}: status {response.status_code}")
        data = bytearray()
        async for piece in response.aiter_bytes():
            data += piece
            if len(data) > max_bytes:
                raise InvalidRequest(f"{failed}: larger than {max_bytes} bytes")
        return bytes(data)


# --- answers ------------------------------------------------------------------------------------


async def collect(chunks: AsyncIterator[Chunk]) -> Chunk:
    """Read ``chunks`` to the end into one chunk (``fold_chunks``): a whole, non-streamed answer."""
    return fold_chunks([chunk async for chunk in chunks])


async def first_chunk(chunks: AsyncIterator[Chunk]) -> Chunk | None:
    """The first chunk of ``chunks``: awaited before a stream starts, so that a failure (unknown model,
    missing capability, full queue) is still answered with its status instead of inside a 200 stream."""
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


async def converted(
    first: Chunk | None,
    chunks: AsyncIterator[Chunk],
    convert: Callable[[Chunk], list[bytes]],
    on_error: Callable[[Exception], list[bytes]],
) -> AsyncIterator[bytes]:
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


async def close(chunks: AsyncIterator[Any]) -> None:
    """Stop ``chunks`` early (the client went away): releases the runner it holds."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


# --- Server-Sent Events -------------------------------------------------------------------------


def sse(data: Any, event: str | None = None) -> bytes:
    """One event: ``[event: <type>\\n]data: <json>\\n\\n`` (``data`` may be a ready-made string)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    """A ``text/event-stream`` response that proxies and browsers do not cache or buffer."""
    return StreamingResponse(body, media_type=EVENT_STREAM, headers={"Cache-Control": "no-cache"})


# --- errors -------------------------------------------------------------------------------------


def failure_status(exc: BaseException) -> int:
    """The status ``exc`` is answered with; a server-side failure (5xx) is logged on the way."""
    status = status_for(exc)
    if status >= 500:
        log.error("request failed: %s", exc, exc_info=not isinstance(exc, PollamaError))
    return status


class ErrorShapedRoute(APIRoute):
    """A route whose handler's errors are answered by ``render_error`` (an API's own error shape)
    instead of Ollama's ``{"error": "..."}``; subclasses set ``render_error``."""

    @staticmethod
    def render_error(exc: BaseException) -> Response:
        """The response for a failed request."""
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        render = self.render_error

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - every failure becomes the API's error shape
                return render(exc)

        return handle


# --- Go-flavoured details -----------------------------------------------------------------------


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
