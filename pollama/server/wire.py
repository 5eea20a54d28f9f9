"""Reading request bodies and writing responses the way Ollama's Go server does.

Bodies are decoded by hand rather than by FastAPI's body parameters so that the errors are
Ollama's (``missing request body`` and Go-decoder-like messages, status 400) instead of FastAPI's
422 shapes; the pydantic models still describe the bodies in ``/openapi.json``. Streams are NDJSON
written one object per line, and an error after the first line becomes a final ``{"error": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from pollama.errors import InvalidRequest
from pollama.server.errors import error_body, error_response

T = TypeVar("T", bound=BaseModel)

NDJSON = "application/x-ndjson"


async def read_json(request: Request, model: type[T]) -> T:
    """Decode the request body into ``model``; raise ``InvalidRequest`` with Ollama's messages."""
    body = await request.body()
    if not body.strip():
        raise InvalidRequest("missing request body")
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise InvalidRequest("invalid character in request body: not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(_go_syntax_error(body, exc)) from None
    return parse_body(data, model)


def parse_body(data: Any, model: type[T]) -> T:
    """Validate decoded JSON against ``model`` with Go-like type errors."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"json: cannot unmarshal {_json_kind(data)} into Go value of type "
                             f"api.{model.__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int)) or "body"
        given = _json_kind(err.get("input"))
        raise InvalidRequest(f"json: cannot unmarshal {given} into Go struct field "
                             f"{model.__name__}.{field} of type {_go_type(err)}") from None


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
    for prefix, go in (("string", "string"), ("bool", "bool"), ("int", "int"), ("float", "float64"),
                       ("dict", "map[string]interface {}"), ("list", "[]interface {}")):
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
    return format_time(datetime.now(timezone.utc))


def local_time(timestamp: float) -> str:
    """``modified_at``/``expires_at``: a POSIX timestamp in local time with its offset."""
    return format_time(datetime.fromtimestamp(timestamp).astimezone())


def ndjson_line(obj: Any) -> bytes:
    """One NDJSON line."""
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


async def stream_or_collect(
    items: AsyncIterator[dict[str, Any]],
    *,
    stream: bool,
    collect: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
) -> Response:
    """Answer with an NDJSON stream of ``items`` or, if not ``stream``, with one JSON object.

    An error raised before the first item becomes a normal error response with its status; after
    that, a final ``{"error": ...}`` line (status stays 200). Without streaming, ``collect`` folds
    the items into one object (default: the last item).
    """
    iterator = items.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None
    except Exception as exc:  # noqa: BLE001 - every failure becomes Ollama's error shape
        await _close(iterator)
        return error_response(exc)

    if not stream:
        collected = [] if first is None else [first]
        try:
            async for item in iterator:
                collected.append(item)
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)
        if collect is not None:
            return JSONResponse(collect(collected))
        return JSONResponse(collected[-1] if collected else {})

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield ndjson_line(first)
            async for item in iterator:
                yield ndjson_line(item)
        except Exception as exc:  # noqa: BLE001
            yield ndjson_line(error_body(exc))
        finally:
            await _close(iterator)

    return StreamingResponse(body(), media_type=NDJSON)


async def _close(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
