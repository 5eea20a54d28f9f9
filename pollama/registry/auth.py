"""Registry authentication: anonymous, Basic, Docker-style bearer tokens and Ollama's signed tokens.

Nothing is sent until a registry asks: a ``401`` carries a ``WWW-Authenticate`` challenge, and
``Authenticator.answer`` turns it into the ``Authorization`` header of the retried request.

* ``Basic realm=...``: the host's credentials, as ``Basic base64(user:password)``.
* ``Bearer realm=...,service=...,scope=...``: a token fetched from ``realm``:
  - with credentials for the host, the Docker token protocol: ``GET realm?service=&scope=`` with Basic auth;
  - without credentials, from an Ollama registry (``registry.ollama.ai``, ``*.ollama.ai``, ``*.ollama.com``):
    Ollama's signed request (spec §6.5): ``ts`` and ``nonce`` added to the realm URL, the string
    ``GET,<url>,<base64(hex(sha256("")))>`` signed with ``~/.ollama/id_ed25519``;
  - otherwise anonymously (public images of ghcr.io, Docker Hub, Harbor...).

Credentials for a host come from, in order:

1. the Docker client's config, ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``:
   ``auths[<host>]`` (``auth`` = base64 ``user:password``, or ``username``/``password``; keys may be
   spelled ``host``, ``https://host`` or ``http://host[/v2/]``), or a ``credHelpers``/``credsStore``
   helper (``docker-credential-<name> get``), so ``docker login`` works unchanged;
2. ``POLLAMA_REGISTRY_USERNAME`` / ``POLLAMA_REGISTRY_PASSWORD`` in the server's environment (sent to
   any registry that asks for them; ``POLLAMA_REGISTRY_HOST``, if set, restricts them to that host).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote_plus, urlsplit, urlunsplit

import httpx

from pollama.errors import RegistryError, Unauthorized
from pollama.registry.keys import ensure_keypair

log = logging.getLogger(__name__)

_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')
_OLLAMA_SUFFIXES = (".ollama.ai", ".ollama.com")


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str
    realm: str = ""
    service: str = ""
    scope: str = ""

    @classmethod
    def parse(cls, header: str) -> Challenge:
        """Parse ``Bearer realm="...",service="...",scope="..."`` (or ``Basic realm="..."``)."""
        scheme, _, rest = header.strip().partition(" ")
        params = {
            m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
            for m in _PARAM.finditer(rest)
        }
        return cls(scheme.lower(), params.get("realm", ""), params.get("service", ""), params.get("scope", ""))


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or identity token) for one registry."""

    username: str
    password: str

    def basic(self) -> str:
        """The ``Authorization`` header value for Basic auth."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def is_ollama_host(host: str) -> bool:
    """True for Ollama's own registries, which use signed token requests."""
    bare = host.lower().split(":")[0]
    return bare in ("registry.ollama.ai", "ollama.com") or bare.endswith(_OLLAMA_SUFFIXES)


def _docker_config_path(environ: Mapping[str, str], home: Path) -> Path:
    base = environ.get("DOCKER_CONFIG")
    return (Path(base).expanduser() if base else home / ".docker") / "config.json"


def _host_of_key(key: str) -> str:
    if "://" in key:
        key = urlsplit(key).netloc or key
    return key.split("/")[0].lower()


def lookup_credentials(
    host: str, *, environ: Mapping[str, str] | None = None, home: Path | None = None
) -> Credentials | None:
    """The credentials to offer ``host`` (``host[:port]``), or ``None`` (see the module docstring)."""
    env = os.environ if environ is None else environ
    home_dir = home or Path(env.get("HOME") or Path.home())
    wanted = host.lower()
    path = _docker_config_path(env, home_dir)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        config = {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        config = {}
    if isinstance(config, dict):
        found = _from_docker_config(config, wanted)
        if found is not None:
            return found
    user = env.get("POLLAMA_REGISTRY_USERNAME", "")
    password = env.get("POLLAMA_REGISTRY_PASSWORD", "")
    only = env.get("POLLAMA_REGISTRY_HOST", "").lower()
    if (user or password) and (not only or only == wanted):
        return Credentials(user, password)
    return None


def _from_docker_config(config: dict[str, object], host: str) -> Credentials | None:
    auths = config.get("auths")
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if _host_of_key(str(key)) != host or not isinstance(entry, dict):
                continue
            if entry.get("auth"):
                try:
                    user, _, password = base64.b64decode(str(entry["auth"])).decode("utf-8").partition(":")
                except (ValueError, UnicodeDecodeError):
                    log.warning("ignoring a malformed 'auth' entry for %s in the Docker config", host)
                    continue
                return Credentials(user, password)
            if entry.get("username") or entry.get("password"):
                return Credentials(str(entry.get("username", "")), str(entry.get("password", "")))
            if entry.get("identitytoken"):
                return Credentials("<token>", str(entry["identitytoken"]))
    helpers = config.get("credHelpers")
    helper = helpers.get(host) if isinstance(helpers, dict) else None
    helper = helper or config.get("credsStore")
    if isinstance(helper, str) and helper:
        return _from_helper(helper, host)
    return None


def _from_helper(helper: str, host: str) -> Credentials | None:
    """Ask ``docker-credential-<helper> get`` (the Docker credential-helper protocol)."""
    try:
        done = subprocess.run(
            [f"docker-credential-{helper}", "get"], input=host, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("credential helper %s failed: %s", helper, exc)
        return None
    if done.returncode != 0:
        return None
    try:
        data = json.loads(done.stdout)
    except ValueError:
        return None
    if not isinstance(data, dict) or not data.get("Secret"):
        return None
    return Credentials(str(data.get("Username", "")), str(data["Secret"]))


def signed_token_url(realm: str, challenge: Challenge, *, now: float | None = None, nonce: str | None = None) -> str:
    """The token URL Ollama requests: ``realm`` plus ``service``, each ``scope``, ``ts`` and ``nonce``,
    with every query parameter sorted by key (Go's ``url.Values.Encode``)."""
    parts = urlsplit(realm)
    values: dict[str, list[str]] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        values.setdefault(key, []).append(value)
    values.setdefault("service", []).append(challenge.service)
    for scope in challenge.scope.split(" "):
        values.setdefault("scope", []).append(scope)
    values.setdefault("ts", []).append(str(int(time.time() if now is None else now)))
    if nonce is None:
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")
    values.setdefault("nonce", []).append(nonce)
    query = "&".join(f"{quote_plus(key)}={quote_plus(value)}" for key in sorted(values) for value in values[key])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def signed_request_payload(method: str, url: str, body: bytes = b"") -> bytes:
    """The bytes Ollama signs for a token request: ``METHOD,URL,base64(hex(sha256(body)))``."""
    digest = hashlib.sha256(body).hexdigest().encode("ascii")
    return f"{method},{url},".encode() + base64.b64encode(digest)


class Authenticator:
    """Answers one registry host's challenges; holds the ``Authorization`` header once it has one."""

    def __init__(
        self, host: str, *, key_home: Path, environ: Mapping[str, str] | None = None, home: Path | None = None
    ) -> None:
        self.host = host
        self.key_home = key_home
        self.environ = environ
        self.home = home
        self.header: str | None = None
        self._credentials: Credentials | None = None
        self._looked_up = False

    def credentials(self) -> Credentials | None:
        """This host's credentials, looked up once."""
        if not self._looked_up:
            self._credentials = lookup_credentials(self.host, environ=self.environ, home=self.home)
            self._looked_up = True
        return self._credentials

    def answer(self, header: str, http: httpx.Client) -> None:
        """Obtain an ``Authorization`` header for the challenge ``header`` (from a 401)."""
        challenge = Challenge.parse(header)
        creds = self.credentials()
        if challenge.scheme == "basic":
            if creds is None:
                raise Unauthorized("unauthorized: access denied")
            self.header = creds.basic()
            return
        if challenge.scheme != "bearer" or not challenge.realm:
            raise Unauthorized("unauthorized: access denied")
        if creds is None and is_ollama_host(self.host):
            token = self._signed_token(challenge, http)
        else:
            token = self._docker_token(challenge, creds, http)
        self.header = f"Bearer {token}"

    def _docker_token(self, challenge: Challenge, creds: Credentials | None, http: httpx.Client) -> str:
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params.extend(("scope", scope) for scope in challenge.scope.split(" ") if scope)
        headers = {"Authorization": creds.basic()} if creds is not None else {}
        response = _get(http, challenge.realm, params=params, headers=headers)
        return _token_from(response)

    def _signed_token(self, challenge: Challenge, http: httpx.Client) -> str:
        realm_host = urlsplit(challenge.realm).netloc
        if realm_host.lower() != self.host.lower():
            raise RegistryError(f'realm host "{realm_host}" does not match original host "{self.host}"')
        key, _ = ensure_keypair(self.key_home)
        url = signed_token_url(challenge.realm, challenge)
        signature = key.sign(signed_request_payload("GET", url))
        response = _get(http, url, headers={"Authorization": signature})
        return _token_from(response)


def _get(http: httpx.Client, url: str, **kwargs: object) -> httpx.Response:
    from pollama.registry.client import registry_error

    try:
        response = http.get(url, **kwargs)  # type: ignore[arg-type]
    except httpx.TransportError as exc:
        raise registry_error(exc) from None
    if response.status_code in (401, 403):
        raise Unauthorized("unauthorized: access denied")
    if response.status_code >= 400:
        raise registry_error(response)
    return response


def _token_from(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        raise RegistryError("the registry's token endpoint did not answer JSON") from None
    token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryError("the registry's token endpoint answered without a token")
    return token
