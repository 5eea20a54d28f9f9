"""Reading request bodies and writing responses the way Ollama's Go server does.

Bodies are decoded by hand rather than by FastAPI's body parameters so that the errors are
Ollama's (``missing request body`` and Go-decoder-like messages, status 400) instead of FastAPI's
422 shapes; the pydantic models still describe the bodies in ``/openapi.json``. Streams are NDJSON
written one object per line, and an error after the first line becomes a final ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from pollama.errors import InvalidRequest, RequestCanceled
from pollama.server.errors import error_body, error_response

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"


# Bodies at least this large are decoded and validated on a worker thread: their cost is the client's
# to choose (a 20 MB prompt takes a noticeable fraction of a second), and the event loop is everyone's.
_THREAD_BODY_BYTES = 256 * 1024

# Escapes of UTF-16 surrogates: only a body containing one can decode to a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _GoNumberError(ValueError):
    """A number Go's decoder refuses (``NaN``, ``Infinity``, or beyond float64)."""


async def read_json(request: Request, model: type[T]) -> T:
    """Decode the request body into ``model``; raise ``InvalidRequest`` with Ollama's messages.

    Decoding follows Go's ``encoding/json``: ``NaN``/``Infinity`` and numbers beyond float64 are
    errors, a lone UTF-16 surrogate escape becomes U+FFFD, and nesting too deep for the parser is
    ``exceeded max depth``. Every failure is a 400 (``InvalidRequest``); large bodies are decoded on a
    worker thread.
    """
    body = await request.body()
    if len(body) >= _THREAD_BODY_BYTES:
        return await run_in_threadpool(decode_body, body, model)
    return decode_body(body, model)


def decode_body(body: bytes, model: type[T]) -> T:
    """Decode and validate a raw JSON body (the synchronous half of ``read_json``)."""
    return parse_body(decode_json(body), model)


def decode_json(body: bytes) -> Any:
    """Parse a raw JSON body the way Go's decoder would, raising ``InvalidRequest`` for bad input."""
    if not body.strip():
        raise InvalidRequest("missing request body")
    try:
        data = json.loads(body, parse_constant=_reject_constant, parse_float=_go_float, parse_int=_go_int)
    except UnicodeDecodeError:
        raise InvalidRequest("invalid character in request body: not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(_go_syntax_error(body, exc)) from None
    except _GoNumberError as exc:
        raise InvalidRequest(str(exc)) from None
    except RecursionError:
        raise InvalidRequest("exceeded max depth") from None
    if _SURROGATE_ESCAPE.search(body):
        data = _replace_surrogates(data)
    return data


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN, Infinity and -Infinity; Go's decoder (so Ollama) stops at their first letter.
    where = "in numeric literal" if name.startswith("-") else "looking for beginning of value"
    raise _GoNumberError(f"invalid character {name.lstrip('-')[0]!r} {where}")


def _go_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _GoNumberError(f"json: cannot unmarshal number {_shorten(text)} into Go value of type float64")
    return value


def _go_int(text: str) -> int | float:
    # Python refuses to convert more than 4300 digits (ValueError) and Go keeps no integer beyond float64's
    # range: anything longer than float64 can hold is Go's range error.
    if len(text) > 309:
        return _go_float(text)
    return int(text)


def _shorten(text: str) -> str:
    return text if len(text) <= 64 else f"{text[:32]}...{text[-8:]}"


def _replace_surrogates(node: Any) -> Any:
    """Go decodes an unpaired surrogate escape as U+FFFD; Python keeps it, and it cannot be encoded."""
    if isinstance(node, str):
        return _LONE_SURROGATE.sub("\ufffd", node)
    if isinstance(node, list):
        return [_replace_surrogates(item) for item in node]
    if isinstance(node, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in node.items()}
    return node


def parse_body(data: Any, model: type[T]) -> T:
    """Validate decoded JSON against ``model`` with Go-like type errors."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"json: cannot unmarshal {_json_kind(data)} into Go value of type api.{model.__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raised = (err.get("ctx") or {}).get("error")
        if isinstance(raised, InvalidRequest):  # a field validator's own message (e.g. bad base64)
            raise raised from None
        field = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int)) or "body"
        given = _json_kind(err.get("input"))
        raise InvalidRequest(
            f"json: cannot unmarshal {given} into Go struct field {model.__name__}.{field} of type {_go_type(err)}"
        ) from None


def decode_base64(data: str) -> bytes:
    """Decode standard padded base64 as Go's ``base64.StdEncoding`` does (line breaks ignored).

    Raises ``InvalidRequest`` with Go's message, ``illegal base64 data at input byte N``.
    """
    clean = data.replace("\r", "").replace("\n", "") if ("\n" in data or "\r" in data) else data
    try:
        if len(clean) % 4 == 0 and not clean.endswith("==="):  # Python's strict mode allows extra "="
            return binascii.a2b_base64(clean, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    raise InvalidRequest(f"illegal base64 data at input byte {_base64_error_offset(data)}")


_BASE64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _base64_error_offset(data: str) -> int:
    """Where Go's decoder stops on invalid base64 (the offset its ``CorruptInputError`` reports)."""
    n, si = len(data), 0
    while True:
        j = 0
        while j < 4:
            if si == n:
                return 0 if j == 0 else si - j
            ch = data[si]
            si += 1
            if ch in _BASE64_ALPHABET:
                j += 1
                continue
            if ch in "\r\n":
                continue
            if ch != "=" or j < 2:
                return si - 1
            if j == 2:  # "xx=" must be followed by a second "=" (line breaks may come between)
                while si < n and data[si] in "\r\n":
                    si += 1
                if si == n:
                    return n
                if data[si] != "=":
                    return si - 1
                si += 1
            while si < n and data[si] in "\r\n":
                si += 1
            return si if si < n else 0


def _go_syntax_error(body: bytes, exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(exc.doc.rstrip()):
        return "unexpected EOF"
    ch = exc.doc[exc.pos]
    if exc.msg.startswith("Expecting value"):
        return f"invalid character {ch!r} looking for beginning of value"
    if exc.msg.startswith("Expecting property name"):
        return f"invalid character {ch!r} looking for beginning of object key string"
    if exc.msg.startswith("Extra data"):
        return f"invalid character {ch!r} after top-level value"
    return f"invalid character {ch!r} after object key:value pair"


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _go_type(err: Any) -> str:
    kind = str(err.get("type", ""))
    for prefix, go in (
        ("string", "string"),
        ("bool", "bool"),
        ("int", "int"),
        ("float", "float64"),
        ("dict", "map[string]interface {}"),
        ("list", "[]interface {}"),
    ):
        if kind.startswith(prefix):
            return go
    return "interface {}"


def format_time(moment: datetime) -> str:
    """RFC 3339 with up to nanosecond digits (Go's ``RFC3339Nano``: trailing zeros trimmed)."""
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{moment.microsecond:06d}000".rstrip("0")
    offset = moment.strftime("%z")
    zone = "Z" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:]}"
    return f"{base}.{frac}{zone}" if frac else f"{base}{zone}"


def utc_now() -> str:
    """``created_at``: the current time in UTC."""
    return format_time(datetime.now(UTC))


# What Ollama shows as the expiry of a model kept loaded forever (now + the longest Go duration).
FOREVER_TIME = "2318-03-31T00:00:00Z"


def local_time(timestamp: float) -> str:
    """``modified_at``/``expires_at``: a POSIX timestamp in local time with its offset.

    An instant no datetime can hold (an infinite or absurd expiry) is shown as ``FOREVER_TIME``
    instead of failing the whole listing.
    """
    try:
        return format_time(datetime.fromtimestamp(timestamp).astimezone())
    except (OverflowError, OSError, ValueError):
        return FOREVER_TIME


def ndjson_line(obj: Any) -> bytes:
    """One NDJSON line."""
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


async def stream_or_collect(
    items: AsyncIterator[dict[str, Any]],
    *,
    stream: bool,
    request: Request | None = None,
) -> Response:
    """Answer with an NDJSON stream of ``items`` or, if not ``stream``, with one JSON object.

    An error raised before the first item becomes a normal error response with its status; after
    that, a final ``{"error": ...}`` line (status stays 200). Without streaming, the answer is the
    last item (a progress stream's final status; completions fold their chunks in
    ``common.collect``). With ``request``, everything read before the response starts (the first
    item, or all of them without streaming) stops when the client disconnects, and ``items`` is
    closed so that its runner slot is released at once.
    """
    iterator = items.__aiter__()

    async def until_first() -> list[dict[str, Any]]:
        try:
            return [await iterator.__anext__()]
        except StopAsyncIteration:
            return []

    async def until_end() -> list[dict[str, Any]]:
        return [item async for item in iterator]

    try:
        head = await unless_disconnected(request, until_first(), iterator)
        if not stream:
            collected = head + await unless_disconnected(request, until_end(), iterator)
            return JSONResponse(collected[-1] if collected else {})
    except Exception as exc:  # noqa: BLE001 - every failure becomes Ollama's error shape
        await _close(iterator)
        return error_response(exc)

    async def body() -> AsyncIterator[bytes]:
        try:
            for item in head:
                yield ndjson_line(item)
            async for item in iterator:
                yield ndjson_line(item)
        except Exception as exc:  # noqa: BLE001
            yield ndjson_line(error_body(exc))
        finally:
            await _close(iterator)

    return StreamingResponse(body(), media_type=NDJSON)


async def unless_disconnected(
    request: Request | None, work: Coroutine[Any, Any, R], closing: AsyncIterator[Any] | None = None
) -> R:
    """Await ``work`` unless ``request``'s client disconnects first (without ``request``: just await it).

    A request that is not streamed reads its whole answer before sending a byte, so nothing else
    notices a client that went away; this watches the ASGI ``http.disconnect`` message meanwhile.
    On a disconnect ``work`` is cancelled, ``closing`` (the chunk iterator it reads) is closed, which
    ends the generation in the runner, and ``RequestCanceled`` is raised. Call it once the body has
    been read.
    """
    if request is None:
        return await work
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        gone = not task.done() and watcher.done() and watcher.exception() is None
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
    if not gone:  # finished first (or the disconnect could not be watched)
        return await task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if closing is not None:
        with contextlib.suppress(Exception):
            await _close(closing)
    log.info("client disconnected: %s %s canceled", request.method, request.url.path)
    raise RequestCanceled()


async def _disconnected(request: Request) -> None:
    """Return once the client of ``request`` (whose body has been read) goes away."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


async def _close(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
