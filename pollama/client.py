"""A small synchronous client for pollama's (and Ollama's) REST API, used by the CLI.

Every call raises ``ClientError`` with the server's ``{"error": ...}`` message on failure, so the CLI
can print ``Error: <message>``. Streaming calls yield one decoded object per NDJSON line and raise on
an ``error`` line. If the server cannot be reached, ``ConnectError`` says so.

With ``sign_with`` (``OLLAMA_AUTH``, or a server at ollama.com) every request is signed as Ollama's
client signs it: ``?ts=<unix seconds>`` is added to the URL and ``Authorization: <key>:<signature>``
carries the signature of ``<METHOD>,<path>?ts=<unix seconds>`` by ``~/.ollama/id_ed25519`` (spec §1.1).

With an API key (``api_key``, default ``$POLLAMA_API_KEY``) every request carries
``Authorization: Bearer KEY`` (a signed request's signature takes that header instead). HTTPS servers
are verified against ``$SSL_CERT_FILE`` / ``$SSL_CERT_DIR`` when set (a private CA), else certifi's roots.
"""

from __future__ import annotations

import builtins
import json
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pollama import __version__
from pollama.errors import PollamaError

if TYPE_CHECKING:
    from pollama.registry.keys import KeyPair

_MAX_LINE = 8 * 1024 * 1024


class ClientError(PollamaError):
    """The server answered with an error."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ConnectError(ClientError):
    """Nothing answered at the server's address."""


class Client:
    """Talks to one server at ``base_url`` (``http://127.0.0.1:11434`` by default)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:11434",
        *,
        timeout: float | None = None,
        sign_with: Path | None = None,
        api_key: str | None = None,
        verify: ssl.SSLContext | bool | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key_home = sign_with  # folder of id_ed25519 when requests are signed
        self._key: KeyPair | None = None
        key = os.environ.get("POLLAMA_API_KEY", "").strip() if api_key is None else api_key.strip()
        headers = {"User-Agent": f"pollama/{__version__}"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=5.0),
            headers=headers,
            trust_env=False,  # no proxies from the environment; SSL_CERT_FILE is honoured by _verify_from_env
            verify=_verify_from_env() if verify is None else verify,
        )

    def close(self) -> None:
        """Release the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------------

    def _signed(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Query parameters and headers of a request, signed when this client signs requests."""
        out = dict(headers or {})
        if self._key_home is None:
            return {}, out
        if self._key is None:
            from pollama.registry.keys import load_keypair

            try:
                self._key = load_keypair(self._key_home)
            except PollamaError as exc:
                raise ClientError(str(exc)) from None
        now = str(int(time.time()))
        out["Authorization"] = self._key.sign(f"{method},{path}?ts={now}".encode())
        return {"ts": now}, out

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        params, kwargs["headers"] = self._signed(method, path, kwargs.get("headers"))
        try:
            response = self._http.request(method, path, params=params, **kwargs)
        except httpx.ConnectError as exc:
            raise _connect_error(self.base_url, exc) from None
        except httpx.TransportError as exc:
            raise ClientError(str(exc) or exc.__class__.__name__) from None
        if response.status_code >= 400:
            raise ClientError(_error_message(response), response.status_code)
        return response

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        response = self._request(method, path, json=body)
        return response.json() if response.content else {}

    def _stream(self, path: str, body: dict[str, Any], method: str = "POST") -> Iterator[dict[str, Any]]:
        try:
            params, headers = self._signed(method, path, {"Accept": "application/x-ndjson"})
            with self._http.stream(method, path, json=body, params=params, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(_error_message(response), response.status_code)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    if len(line) > _MAX_LINE:
                        raise ClientError("response line too long")
                    item = json.loads(line)
                    if isinstance(item, dict) and item.get("error"):
                        raise ClientError(str(item["error"]), response.status_code)
                    yield item
        except httpx.ConnectError as exc:
            raise _connect_error(self.base_url, exc) from None
        except httpx.TransportError as exc:
            raise ClientError(str(exc) or exc.__class__.__name__) from None

    # --- endpoints -----------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """``HEAD /``; raises ``ConnectError`` if no server answers."""
        self._request("HEAD", "/")

    def version(self) -> str:
        """The server's version string."""
        return str(self._json("GET", "/api/version").get("version", ""))

    def list(self) -> list[dict[str, Any]]:
        """Installed models (``/api/tags``)."""
        return list(self._json("GET", "/api/tags").get("models") or [])

    def ps(self) -> builtins.list[dict[str, Any]]:
        """Loaded models (``/api/ps``)."""
        return list(self._json("GET", "/api/ps").get("models") or [])

    def show(self, model: str, *, verbose: bool = False, **extra: Any) -> dict[str, Any]:
        """A model's details (``/api/show``)."""
        return dict(self._json("POST", "/api/show", {"model": model, "verbose": verbose, **extra}))

    def copy(self, source: str, destination: str) -> None:
        """Copy a model (``/api/copy``)."""
        self._json("POST", "/api/copy", {"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        """Delete a model (``/api/delete``)."""
        self._json("DELETE", "/api/delete", {"model": model})

    def has_blob(self, digest: str) -> bool:
        """True if the server already has the blob (``HEAD /api/blobs/:digest``)."""
        try:
            self._request("HEAD", f"/api/blobs/{digest}")
        except ClientError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def upload_blob(self, digest: str, path: Path, progress: Any = None) -> None:
        """Upload a file as a blob (``POST /api/blobs/:digest``), calling ``progress(sent, total)``."""
        total = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            sent = 0
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, total)
                    yield chunk

        self._request(
            "POST",
            f"/api/blobs/{digest}",
            content=chunks(),
            headers={"Content-Length": str(total), "Content-Type": "application/octet-stream"},
        )

    def create(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Create a model, yielding progress lines (``/api/create``)."""
        return self._stream("/api/create", {**request, "stream": True})

    def pull(self, model: str, *, insecure: bool = False) -> Iterator[dict[str, Any]]:
        """Pull a model, yielding progress lines (``/api/pull``)."""
        return self._stream("/api/pull", {"model": model, "insecure": insecure, "stream": True})

    def push(self, model: str, *, insecure: bool = False) -> Iterator[dict[str, Any]]:
        """Push a model, yielding progress lines (``/api/push``)."""
        return self._stream("/api/push", {"model": model, "insecure": insecure, "stream": True})

    def generate(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Stream ``/api/generate``."""
        return self._stream("/api/generate", {**request, "stream": True})

    def chat(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Stream ``/api/chat``."""
        return self._stream("/api/chat", {**request, "stream": True})

    def embed(self, request: dict[str, Any]) -> dict[str, Any]:
        """``/api/embed``."""
        return dict(self._json("POST", "/api/embed", request))


def _verify_from_env() -> ssl.SSLContext | bool:
    """How to check an HTTPS server: a context trusting ``$SSL_CERT_FILE`` / ``$SSL_CERT_DIR`` when set."""
    cafile = os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        return True
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"SSL_CERT_FILE/SSL_CERT_DIR: cannot load CA certificates: {exc}") from None


def _connect_error(base_url: str, exc: httpx.ConnectError) -> ClientError:
    """``ConnectError`` when nothing answered; a plain ``ClientError`` when TLS failed (a server is there,
    so the CLI must not try to start one)."""
    message = f"could not connect to pollama server at {base_url}: {exc}"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return ClientError(message)
        cause = cause.__cause__ or cause.__context__
    return ConnectError(message)


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip()
        return text or f"{response.status_code} {response.reason_phrase}"
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", data["error"]))
    return response.text.strip()
