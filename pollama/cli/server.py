"""Running the server (``pollama serve``) and starting one in the background for other commands.

When a command finds nothing listening at a loopback ``OLLAMA_HOST``, it starts ``pollama serve``
as a detached process logging to ``~/.ollama/logs/server.log``, waits until it answers, and says so
once on stderr. A non-loopback host is never started: the error says it could not connect.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pollama.client import Client, ConnectError
from pollama.config import Settings
from pollama.errors import ConfigError

log = logging.getLogger(__name__)

_START_TIMEOUT = 60.0
_SHUTDOWN_MARGIN = 3.0


def run_server(settings: Settings) -> None:
    """Serve the API on ``OLLAMA_HOST`` until interrupted.

    Everything that can stop a start (an unwritable ``~/.ollama``, an ``OLLAMA_MODELS`` that is not a
    folder, a port already taken) is checked before ``Listening on`` is logged, and raises
    ``ConfigError`` naming the cause.
    """
    import uvicorn

    from pollama.server.app import create_app

    _check_folders(settings)
    host = settings.host.host or "0.0.0.0"
    listener = _listen(host, settings.host.port)
    _check_tls(settings)
    if not settings.auth_required and not settings.host.is_loopback:
        print(
            f"Warning: listening on {host}:{settings.host.port} beyond this machine with no API key: anyone who can "
            "reach it can use it (set POLLAMA_API_KEYS or POLLAMA_API_KEYS_FILE)",
            file=sys.stderr,
            flush=True,
        )
    ensure_server_key(settings)
    # Worker threads render templates, hash uploads and parse big bodies while the event loop serves
    # everyone else: hand the GIL over every millisecond (Python's default is 5 ms) so the loop's
    # turn comes round promptly.
    sys.setswitchinterval(0.001)
    from pollama.server.accesslog import configure_logging

    configure_logging(logging.DEBUG if settings.debug > 0 else logging.INFO, settings.log_format)
    log.info("server config %s", settings.describe())
    app = create_app(settings)
    log.info("Listening on %s:%d%s", host, settings.host.port, " (HTTPS)" if settings.tls else "")
    log.info("Chat page: %s", _page_url(host, settings.host.port, settings.tls))
    config = uvicorn.Config(
        app,
        log_level="warning" if settings.debug <= 0 else "debug",
        log_config=None,  # keep the handlers configure_logging set up
        access_log=False,  # pollama.access logs each request once
        # The app ends its own requests after the grace (with an error line); uvicorn's timeout only
        # backs that up, for a connection that would still hang on.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace + _SHUTDOWN_MARGIN),
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )
    _server(config, app.state.shutdown.begin).run(sockets=[listener])


def _server(config: Any, on_exit: Callable[[], None]) -> Any:
    """A ``uvicorn.Server`` that tells the app a shutdown began (``/health`` 503, the grace timer)
    as soon as SIGTERM or SIGINT arrives; uvicorn then stops accepting and waits for requests."""
    import uvicorn

    class _GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            on_exit()
            super().handle_exit(sig, frame)

    return _GracefulServer(config)


def _check_folders(settings: Settings) -> None:
    """Make ``~/.ollama`` and the models folder, or say which one cannot be used and why."""
    for path, what in ((settings.home, "HOME"), (settings.models, "OLLAMA_MODELS")):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{what}: {path} is not a directory")
        try:
            for folder in (path, *((path / "blobs", path / "manifests") if what == "OLLAMA_MODELS" else ())):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{what}: cannot create {exc.filename or path}: {exc.strerror}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{what}: {path} is not writable")


def _check_tls(settings: Settings) -> None:
    """Load the certificate and key once before serving, so a bad pair stops the start with its cause."""
    if settings.tls_cert is None or settings.tls_key is None:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"POLLAMA_TLS_CERT/POLLAMA_TLS_KEY: cannot use {settings.tls_cert} with {settings.tls_key}: {exc}"
        ) from None


def _page_url(host: str, port: int, tls: bool) -> str:
    """The web chat page's address as a browser on this machine reaches it."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"{'https' if tls else 'http'}://{shown}:{port}/ui"


def _listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything says it listens (Ollama's bind error)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        shown = f"[{host}]" if ":" in host else host
        raise ConfigError(f"listen tcp {shown}:{port}: bind: {reason}") from None


def ensure_server_key(settings: Settings) -> None:
    """Make ``~/.ollama/id_ed25519`` on first start and show its public key, as ``ollama serve`` does."""
    from pollama.registry.keys import PRIVATE_KEY_FILE, ensure_keypair

    path = settings.home / PRIVATE_KEY_FILE
    if path.exists():
        return
    print(f"Couldn't find '{path}'. Generating new private key.", flush=True)
    key, _ = ensure_keypair(settings.home)
    print(f"Your new public key is: \n\n{key.authorized_key}", flush=True)


def client_for(settings: Settings) -> Client:
    """A client for ``OLLAMA_HOST`` that sends ``POLLAMA_API_KEY`` as a Bearer key when set, and signs its
    requests when ``OLLAMA_AUTH`` is set or the host is ollama.com, as Ollama's client does."""
    signs = settings.auth or settings.host.host == "ollama.com"
    return Client(settings.host.url, sign_with=settings.home if signs else None, api_key=settings.api_key)


def connect(settings: Settings, *, start: bool = True) -> Client:
    """A client for ``OLLAMA_HOST``, starting a background server first if needed and allowed."""
    client = client_for(settings)
    try:
        client.heartbeat()
        return client
    except ConnectError:
        if not start or not settings.host.connects_locally:
            raise ConnectError("could not connect to pollama server, run 'pollama serve' to start it") from None
    _start_background(settings, client)
    return client


def _start_background(settings: Settings, client: Client) -> None:
    log_dir = settings.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "server.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "pollama", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            env=os.environ.copy(),
        )
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConnectError(f"could not start pollama server, see {_display(log_path)}")
        try:
            client.heartbeat()
        except ConnectError:
            time.sleep(0.1)
            continue
        print(
            f"Started pollama server in the background (logs: {_display(log_path)}; stop it with: kill {process.pid})",
            file=sys.stderr,
        )
        return
    raise ConnectError(f"timed out waiting for server to start, see {_display(log_path)}")


def _display(path: Path) -> str:
    home = Path.home()
    try:
        return "~/" + path.relative_to(home).as_posix()
    except ValueError:
        return str(path)
