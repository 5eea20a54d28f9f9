"""One log line per request (``pollama.access``), the request metrics, and the end of requests cut
short by a shutdown, all in one ASGI middleware (``RequestObserver``).

A line has the method, path, route template, model (when the request named one), status, duration,
prompt and generated tokens (when a model ran) and the client address; never a body, unless
``OLLAMA_DEBUG`` is 2 (trace), which adds the first 4 KiB of the request body. Headers are never
logged. ``configure_logging`` formats every log line as ``key=value`` text, or one JSON object per
line with ``POLLAMA_LOG_FORMAT=json``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pollama.server.shutdown import SHUTTING_DOWN, Shutdown

if TYPE_CHECKING:
    from pollama.server.metrics import Metrics

access_log = logging.getLogger("pollama.access")

_BODY_LIMIT = 4096


@dataclass
class RequestRecord:
    """What is known about one request; the inference layer fills in model and tokens."""

    method: str
    path: str
    client: str
    model: str | None = None
    status: int | None = None
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    body: bytes | None = None


current_request: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "pollama_current_request", default=None
)


class RequestObserver:
    """Logs and counts every HTTP request, and ends it with ``server shutting down`` when the
    shutdown grace runs out."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, shutdown: Shutdown, log_bodies: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.shutdown = shutdown
        self.log_bodies = log_bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        record = RequestRecord(
            method=scope["method"],
            path=scope["path"],
            client=f"{client[0]}:{client[1]}" if client else "",
            body=b"" if self.log_bodies else None,
        )
        token = current_request.set(record)
        started = time.monotonic()
        finished = False
        content_type = ""

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                self._done(scope, record, time.monotonic() - started)

        async def observed_receive() -> Message:
            message = await receive()
            if record.body is not None and message["type"] == "http.request" and len(record.body) < _BODY_LIMIT:
                record.body += message.get("body", b"")[: _BODY_LIMIT - len(record.body)]
            return message

        async def observed_send(message: Message) -> None:
            nonlocal content_type
            if message["type"] == "http.response.start":
                record.status = message["status"]
                for key, value in message.get("headers", []):
                    if key.lower() == b"content-type":
                        content_type = value.decode("latin-1")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()  # before the last bytes leave: a client that saw the end sees the counts
            await send(message)

        try:
            with self.shutdown.ends() as ends:
                await self.app(scope, observed_receive, observed_send)
            if ends.cancelled_caught and not finished:
                await self._cut_short(record, content_type, send, finish)
        except BaseException:
            if record.status is None:
                record.status = 500
            raise
        finally:
            finish()
            current_request.reset(token)

    async def _cut_short(
        self, record: RequestRecord, content_type: str, send: Send, finish: Callable[[], None]
    ) -> None:
        """End a request the shutdown interrupted: a last error event in its stream's framing, or a
        503 when nothing was sent yet."""
        if record.status is None:
            record.status = 503
            body = json.dumps({"error": SHUTTING_DOWN}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            finish()
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        finish()
        await send({"type": "http.response.body", "body": _error_event(record.path, content_type), "more_body": False})

    def _done(self, scope: Scope, record: RequestRecord, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        status = record.status or 500
        self.metrics.request_done(record.method, template, status, seconds)
        fields: dict[str, Any] = {
            "method": record.method,
            "path": record.path,
            "route": template,
            "status": status,
            "duration": round(seconds, 6),
            "client": record.client,
        }
        if record.model is not None:
            fields["model"] = record.model
        if record.prompt_tokens is not None:
            fields["prompt_tokens"] = record.prompt_tokens
        if record.generated_tokens is not None:
            fields["generated_tokens"] = record.generated_tokens
        if record.body:
            fields["body"] = record.body.decode("utf-8", "replace")
        access_log.info("request", extra={"fields": fields})


def _error_event(path: str, content_type: str) -> bytes:
    """``server shutting down`` as the last event of a stream already under way."""
    if content_type.startswith("text/event-stream"):
        if path.startswith("/v1/messages"):
            payload = {"type": "error", "error": {"type": "api_error", "message": SHUTTING_DOWN}}
            return f"event: error\ndata: {json.dumps(payload)}\n\n".encode()
        payload = {"error": {"message": SHUTTING_DOWN, "type": "api_error", "param": None, "code": None}}
        return f"data: {json.dumps(payload)}\n\n".encode()
    return json.dumps({"error": SHUTTING_DOWN}).encode() + b"\n"


# --- formatting -------------------------------------------------------------------------------


class TextFormatter(logging.Formatter):
    """``time=... level=... source=... msg=...`` followed by a record's ``fields`` as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("time=%(asctime)s level=%(levelname)s source=%(name)s msg=%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        return " ".join([line, *(f"{key}={_text_value(value)}" for key, value in fields.items())])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``source``, ``msg`` and a record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "source": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _text_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


def configure_logging(level: int, log_format: str) -> None:
    """Send every log line to stderr, as text or (``log_format="json"``) JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
