"""The guards in front of every route: CORS origins and the DNS-rebinding Host check.

A browser sends a "simple" cross-site request (``POST`` with ``Content-Type: text/plain``, say)
without a preflight, so CORS headers alone cannot stop a web page from changing models; like
gin-contrib/cors in Ollama, ``OriginGuard`` refuses (403) every request whose ``Origin`` is neither
allowed nor the server's own address before it runs. Requests without ``Origin`` (curl, SDKs) pass.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.middleware.cors import CORSMiddleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "User-Agent",
    "Accept",
    "X-Requested-With",
    "OpenAI-Beta",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-custom-poll-interval",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
]


def allowed_origins(extra: tuple[str, ...]) -> list[str]:
    """Ollama's default browser origins plus ``OLLAMA_ORIGINS``."""
    origins = list(extra)
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    origins += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
    return origins


def origin_regex(origins: list[str]) -> str:
    """One regular expression matching any of ``origins`` (``*`` is a wildcard)."""
    parts = [".*" if o == "*" else ".*".join(re.escape(piece) for piece in o.split("*")) for o in origins]
    return "^(?:" + "|".join(parts) + ")$"


def add_cors(app: Any, extra_origins: tuple[str, ...]) -> None:
    """Install CORS with Ollama's origins and allowed headers, behind the ``OriginGuard``."""
    regex = origin_regex(allowed_origins(extra_origins))
    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=regex,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=ALLOWED_HEADERS,
    )
    app.add_middleware(OriginGuard, origin_regex=regex)  # added last, so it runs first


def same_origin(origin: str, host_header: str) -> bool:
    """Whether ``origin`` is the server's own address as the client reached it (``scheme://Host``)."""
    return bool(host_header) and origin in (f"http://{host_header}", f"https://{host_header}")


class OriginGuard:
    """Refuse (403, empty body) a request whose ``Origin`` is not allowed, before it runs.

    Allowed are the origins of ``OLLAMA_ORIGINS`` and Ollama's defaults (``origin_regex``) and the
    server's own address (same-origin requests, e.g. a page served by this server on a LAN address).
    Preflights of allowed origins go on to the CORS middleware.
    """

    def __init__(self, app: ASGIApp, *, origin_regex: str) -> None:
        self.app = app
        self.allowed = re.compile(origin_regex)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = _header(scope, b"origin")
            if origin and not self.origin_allowed(origin, _header(scope, b"host") or ""):
                await _empty(send, 403)
                return
        await self.app(scope, receive, send)

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        """Whether a request from ``origin`` to ``host_header`` may run."""
        return same_origin(origin, host_header) or self.allowed.fullmatch(origin) is not None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def host_allowed(host_header: str) -> bool:
    """Ollama's rule for the ``Host`` header when listening on loopback."""
    host = host_header
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return ip.is_loopback or ip.is_private or ip.is_unspecified or _is_local_ip(ip)
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def _is_local_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return False
    return any(info[4][0] == str(ip) for info in infos)


class HostGuard:
    """Refuse (403) requests whose ``Host`` is not local while the server listens on loopback."""

    def __init__(self, app: ASGIApp, *, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not host_allowed(_header(scope, b"host") or ""):
            await _empty(send, 403)
            return
        await self.app(scope, receive, send)


async def _empty(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
