"""API keys: ``POLLAMA_API_KEYS`` / ``POLLAMA_API_KEYS_FILE`` and the guard that asks for one.

``KeyRing`` holds the accepted keys: those of ``POLLAMA_API_KEYS`` plus those of the keys file, which
a worker thread re-reads when its mtime, size or inode changes (checked once a second) or when the
server gets SIGHUP, so no request ever waits on the file. ``ApiKeyGuard`` is the ASGI middleware:
when keys are configured, every request except the open ones (``GET``/``HEAD /``, ``/health``, the web
page's static files, CORS preflights) must carry ``Authorization: Bearer KEY`` or ``x-api-key: KEY``.
A refused request gets 401 in the shape of the API it asked: ``{"error": "unauthorized"}`` on
Ollama's routes, OpenAI's and Anthropic's error objects on theirs. Keys are compared with
``hmac.compare_digest`` against every key (no early exit), and never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from pollama.config import Settings, read_api_keys_file
from pollama.errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)

_POLL_SECONDS = 1.0

# Paths anyone may GET/HEAD without a key: liveness, the load balancer's health probe and the web page.
OPEN_PATHS = frozenset({"/", "/health", "/ui"})
# The web page's static files (the page asks for a key itself before it calls the API).
OPEN_PREFIXES: tuple[str, ...] = ("/ui/",)

_OPENAI_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_OPENAI_WRONG = "Incorrect API key provided."
_ANTHROPIC_MISSING = "x-api-key header is required"
_ANTHROPIC_WRONG = "invalid x-api-key"


def _file_state(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file apart: (mtime in ns, size, inode), or None when it cannot be seen."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class KeyRing:
    """The keys the server accepts, kept current with ``POLLAMA_API_KEYS_FILE``.

    ``start()`` begins watching the file in a daemon thread and reloads on SIGHUP (when called on
    the main thread); ``close()`` stops both. ``reload()`` re-reads the file now. An unreadable file
    at a reload keeps the last keys read (and logs a warning), so a half-written edit never opens or
    closes the server by accident.
    """

    def __init__(self, keys: tuple[str, ...] = (), keys_file: Path | None = None) -> None:
        self._static = tuple(k.encode() for k in keys)
        self.keys_file = keys_file
        self._from_file: tuple[bytes, ...] = ()
        self._state: tuple[int, int, int] | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_sighup: Any = None
        if keys_file is not None:
            self._state = _file_state(keys_file)
            self._from_file = tuple(k.encode() for k in read_api_keys_file(keys_file))

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing | None:
        """The key ring of ``settings``, or None when no key is configured (every request passes)."""
        if not settings.auth_required:
            return None
        return cls(settings.api_keys, settings.api_keys_file)

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every key accepted right now."""
        return self._static + self._from_file

    def accepts(self, given: str) -> bool:
        """Whether ``given`` is one of the keys, compared in constant time against all of them."""
        candidate = given.encode()
        found = False
        for key in self.keys:
            found |= hmac.compare_digest(candidate, key)
        return found and bool(candidate)

    def reload(self) -> None:
        """Re-read the keys file (runs in the watcher thread, never on the event loop)."""
        if self.keys_file is None:
            return
        state = _file_state(self.keys_file)
        try:
            keys = read_api_keys_file(self.keys_file)
        except ConfigError as exc:
            log.warning("keeping the previous API keys: %s", exc)
            return
        self._state = state
        self._from_file = tuple(k.encode() for k in keys)
        log.info("API keys reloaded from %s (%d keys)", self.keys_file, len(keys))

    def request_reload(self, *_: object) -> None:
        """Ask the watcher to re-read the file now (the SIGHUP handler; safe from a signal)."""
        self._wake.set()

    def start(self) -> None:
        """Watch the keys file in a worker thread and reload on SIGHUP."""
        if self.keys_file is None or self._thread is not None:
            return
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
            self._previous_sighup = signal.signal(signal.SIGHUP, self.request_reload)
        self._thread = threading.Thread(target=self._watch, name="api-keys-watcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching and give SIGHUP back to its previous handler."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._previous_sighup is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None

    def _watch(self) -> None:
        assert self.keys_file is not None
        while not self._stopping.is_set():
            asked = self._wake.wait(_POLL_SECONDS)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if asked or _file_state(self.keys_file) != self._state:
                self.reload()


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def presented_key(scope: Scope) -> str | None:
    """The key a request carries (``Authorization: Bearer KEY`` or ``x-api-key: KEY``), or None."""
    authorization = _header(scope, b"authorization")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = _header(scope, b"x-api-key").strip()
    return api_key or None


def is_open(method: str, path: str) -> bool:
    """Whether a request needs no key: CORS preflights, ``GET``/``HEAD`` of ``/``, ``/health`` and static files."""
    if method == "OPTIONS":
        return True
    if method not in ("GET", "HEAD"):
        return False
    return path in OPEN_PATHS or (bool(OPEN_PREFIXES) and path.startswith(OPEN_PREFIXES))


def unauthorized_body(path: str, missing: bool) -> dict[str, Any]:
    """The 401 body in the shape of the API ``path`` belongs to."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        message = _ANTHROPIC_MISSING if missing else _ANTHROPIC_WRONG
        return {"type": "error", "error": {"type": "authentication_error", "message": message}}
    if path.startswith("/v1/"):
        message = _OPENAI_MISSING if missing else _OPENAI_WRONG
        return {
            "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
        }
    return {"error": "unauthorized"}


class ApiKeyGuard:
    """Refuse (401) a request without an accepted key, before it runs; nothing when ``keys`` is None."""

    def __init__(self, app: ASGIApp, *, keys: KeyRing | None) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys is None or scope["type"] != "http" or is_open(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        given = presented_key(scope)
        if given is not None and self.keys.accepts(given):
            await self.app(scope, receive, send)
            return
        body = json.dumps(unauthorized_body(scope["path"], given is None)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
