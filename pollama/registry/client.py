"""HTTP to one OCI distribution registry: URLs, retried requests with authentication, and the one
function that turns what a registry answers into our errors.

``RegistryClient`` speaks to ``<scheme>://<host>/v2/<namespace>/<model>/...`` for one model name.
Requests go out with ``Authorization`` once a challenge was answered (``auth.Authenticator``); a
``401`` is answered once and the request retried, as Ollama does. ``HTTP_PROXY``, ``HTTPS_PROXY``
and ``NO_PROXY`` are honoured (httpx ``trust_env``). ``registry_error`` is the single place where a
registry's status codes, OCI error bodies and transport failures become ``RegistryError`` and its
subclasses, with Ollama's messages.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx

from pollama import OLLAMA_VERSION, __version__
from pollama.errors import RegistryError, RegistryUnavailable, RegistryUnreachable, Unauthorized
from pollama.names import ModelName
from pollama.registry.auth import Authenticator
from pollama.store.manifest import MANIFEST_V2, OCI_MANIFEST

ACCEPT_MANIFEST = f"{MANIFEST_V2}, {OCI_MANIFEST}"
_MAX_ERROR_BODY = 4096


@dataclass(frozen=True)
class TransferSettings:
    """How blobs move: part sizes, parallelism, retries and timeouts (Ollama's values by default)."""

    max_parts: int = 16
    min_part_size: int = 100_000_000
    max_part_size: int = 1_000_000_000
    max_retries: int = 6
    retry_base: float = 1.0  # a failed part waits retry_base * 2**attempt seconds
    stall_timeout: float = 30.0  # no bytes for this long: the part is restarted
    max_stalls: int = 20
    connect_timeout: float = 15.0
    progress_interval: float = 0.06
    state_interval: float = 0.5  # how often a part's resume state is saved while it downloads

    def part_size(self, total: int) -> int:
        """Bytes per part for a blob of ``total`` bytes: total/16 clamped to [100 MB, 1 GB]."""
        return max(self.min_part_size, min(self.max_part_size, total // self.max_parts or 1))


def user_agent() -> str:
    """``ollama/<api version> (<arch> <os>) Python/<version> pollama/<version>``."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine().lower(), platform.machine().lower())
    python = ".".join(map(str, sys.version_info[:3]))
    return f"ollama/{OLLAMA_VERSION} ({arch} {sys.platform}) Python/{python} pollama/{__version__}"


def registry_error(source: httpx.Response | httpx.TransportError | BaseException) -> RegistryError:
    """The error to raise for a failed registry exchange (the one mapping, see the module docstring).

    * no connection at all (DNS, refused, connect timeout, proxy unreachable) → ``RegistryUnreachable``
    * other transport failures → ``RegistryError`` with the transport's message
    * 401 → ``Unauthorized("unauthorized: access denied")`` (Ollama's ``errUnauthorized``)
    * 404 → ``RegistryError("file does not exist")`` (Ollama's ``os.ErrNotExist``)
    * any other status ≥ 400 → ``RegistryError("<status>: <body>")``, as Ollama reports it; an OCI
      error body (``{"errors": [{"code", "message"}]}``) is kept as the registry sent it; 429 and
      5xx are ``RegistryUnavailable`` (worth retrying).
    """
    if isinstance(source, httpx.Response):
        status = source.status_code
        if status == 401:
            return Unauthorized("unauthorized: access denied")
        if status == 404:
            return RegistryError("file does not exist")
        body = _body_text(source)
        message = f"{status}: {body}" if body else f"{status}: {source.reason_phrase}"
        return RegistryUnavailable(message) if status == 429 or status >= 500 else RegistryError(message)
    if isinstance(source, (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError, httpx.UnsupportedProtocol)):
        request = _request_of(source)
        where = f'{request.method} "{request.url}": ' if request is not None else ""
        return RegistryUnreachable(f"{where}{source}")
    if isinstance(source, httpx.TransportError):
        return RegistryUnavailable(str(source) or source.__class__.__name__)
    if isinstance(source, RegistryError):
        return source
    return RegistryError(str(source) or source.__class__.__name__)


def _request_of(exc: httpx.TransportError) -> httpx.Request | None:
    try:
        return exc.request
    except RuntimeError:
        return None


def _body_text(response: httpx.Response) -> str:
    try:
        raw = response.read()
    except httpx.HTTPError:
        return ""
    text = raw[:_MAX_ERROR_BODY].decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text
    return json.dumps(data, separators=(",", ":"))


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to (or replacing in) its query string."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


Body = Callable[[], Iterable[bytes] | bytes] | bytes | None


class RegistryClient:
    """Requests to the registry that serves ``name`` (a context manager owning its connections)."""

    def __init__(
        self,
        name: ModelName,
        *,
        insecure: bool = False,
        key_home: Path,
        settings: TransferSettings | None = None,
        home: Path | None = None,
    ) -> None:
        self.name = name
        self.settings = settings or TransferSettings()
        scheme = "http" if insecure else name.scheme
        self.base_url = f"{scheme}://{name.host}"
        self.auth = Authenticator(name.host, key_home=key_home, home=home)
        timeout = httpx.Timeout(self.settings.stall_timeout, connect=self.settings.connect_timeout)
        self.http = httpx.Client(
            timeout=timeout,
            headers={"User-Agent": user_agent()},
            follow_redirects=False,
            trust_env=True,
            limits=httpx.Limits(
                max_connections=4 * self.settings.max_parts, max_keepalive_connections=self.settings.max_parts
            ),
        )

    def close(self) -> None:
        """Release the connection pool."""
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- URLs ------------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """``<base>/v2/<namespace>/<model>/<path>``."""
        return f"{self.base_url}/v2/{self.name.repository}/{path}"

    def resolve(self, base: str, location: str) -> str:
        """A ``Location`` header made absolute against the URL that returned it."""
        return urljoin(base, location)

    def same_host(self, url: str) -> bool:
        """True if ``url`` is on the registry's own host (where our ``Authorization`` may go)."""
        return urlsplit(url).netloc.lower() == urlsplit(self.base_url).netloc.lower()

    # --- requests --------------------------------------------------------------------------------

    def _headers(self, url: str, headers: dict[str, str] | None) -> dict[str, str]:
        out = dict(headers or {})
        if self.auth.header and self.same_host(url) and "Authorization" not in out:
            out["Authorization"] = self.auth.header
        return out

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: Body = None,
        allow: Iterable[int] = (),
    ) -> httpx.Response:
        """Send a request (its body read fully into the response), answering one auth challenge.

        Statuses below 400, and those in ``allow``, are returned; anything else is raised through
        ``registry_error``. ``body`` may be a callable so that it can be produced again for the retry.
        """
        with self.stream(method, url, headers=headers, body=body, allow=allow) as response:
            response.read()
            return response

    @contextmanager
    def stream(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: Body = None,
        allow: Iterable[int] = (),
        follow_redirects: bool = False,
    ) -> Iterator[httpx.Response]:
        """Like ``request`` but the body is left to be streamed by the caller."""
        allowed = set(allow)
        for attempt in range(2):
            content = body() if callable(body) else body
            request = self.http.build_request(method, url, headers=self._headers(url, headers), content=content)
            try:
                response = self.http.send(request, stream=True, follow_redirects=follow_redirects)
            except httpx.TransportError as exc:
                raise registry_error(exc) from None
            try:
                if response.status_code == 401 and 401 not in allowed:
                    challenge = response.headers.get("WWW-Authenticate", "")
                    response.read()
                    if attempt == 0 and challenge:
                        self.auth.answer(challenge, self.http)
                        continue
                    raise Unauthorized("unauthorized: access denied")
                if response.status_code >= 400 and response.status_code not in allowed:
                    raise registry_error(response)
                yield response
                return
            finally:
                response.close()
        raise Unauthorized("unauthorized: access denied")

    # --- manifests -------------------------------------------------------------------------------

    def get_manifest(self, reference: str) -> tuple[bytes, str]:
        """The manifest bytes for ``reference`` (a tag or digest) and the digest the registry claims."""
        response = self.request("GET", self.url(f"manifests/{reference}"), headers={"Accept": ACCEPT_MANIFEST})
        return response.content, response.headers.get("Docker-Content-Digest", "")

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> None:
        """Store manifest bytes under ``reference``."""
        self.request(
            "PUT", self.url(f"manifests/{reference}"), body=data, headers={"Content-Type": media_type or MANIFEST_V2}
        )

    def has_blob(self, digest: str) -> bool:
        """``HEAD .../blobs/<digest>``: True if the repository already has the blob."""
        response = self.request("HEAD", self.url(f"blobs/{digest}"), allow=(404,))
        return response.status_code < 300
