"""Fixtures for registry tests: a real registry (Debian's ``docker-registry``) on a free loopback port,
a counting (and misbehaving on request) HTTP proxy in front of it, and tiny synthetic GGUF models."""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import free_port

REGISTRY_BINARY = "docker-registry"


@dataclass
class DockerRegistry:
    """A ``docker-registry serve`` process with its own storage root."""

    root: Path
    htpasswd: Path | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DockerRegistry:
        binary = shutil.which(REGISTRY_BINARY) or "/usr/bin/docker-registry"
        if not Path(binary).exists():
            pytest.fail("docker-registry is not installed (scripts/test installs it)")
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.htpasswd is not None:
            auth = f"auth:\n  htpasswd:\n    realm: pollama-test\n    path: {self.htpasswd}\n"
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n" + auth
        )
        log = open(self.root / "registry.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.root / "registry.log").read_text())
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code in (200, 401):
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[DockerRegistry]:
    """An empty registry without authentication."""
    reg = DockerRegistry(tmp_path / "registry").start()
    try:
        yield reg
    finally:
        reg.stop()


@dataclass
class Exchange:
    """One request the proxy forwarded."""

    method: str
    path: str
    range: str
    status: int = 0
    body_bytes: int = 0  # response body bytes sent to the client


class CountingProxy:
    """A forwarding HTTP proxy (the client talks to it as if it were the registry) that records
    every exchange and can corrupt, cut or slow down blob downloads."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.exchanges: list[Exchange] = []
        self.lock = threading.Lock()
        self.tamper_digest = ""  # flip a byte in GETs of this blob
        self.cut_after = 0  # end each blob GET response after this many body bytes (0: never)
        self.cuts_left = 0  # how many responses to cut
        self.cut_delay = 0.0  # seconds a cut response stays open, silent, before it is closed (a stall)
        self.delay_per_mb = 0.0  # seconds of sleep per MiB of blob body
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                proxy.forward(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.exchanges.clear()

    def blob_gets(self, digest: str = "") -> list[Exchange]:
        """GETs of blobs (of ``digest`` if given)."""
        with self.lock:
            return [
                e
                for e in self.exchanges
                if e.method == "GET" and "/blobs/sha256:" in e.path and (not digest or e.path.endswith(digest))
            ]

    def blob_bytes(self, digest: str = "") -> int:
        return sum(e.body_bytes for e in self.blob_gets(digest))

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        exchange = Exchange(handler.command, handler.path, handler.headers.get("Range", ""))
        with self.lock:
            self.exchanges.append(exchange)
        body = _read_body(handler)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "transfer-encoding")}
        if body or handler.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            conn.request(handler.command, handler.path, body=body, headers=headers)
            response = conn.getresponse()
            exchange.status = response.status
            is_blob = handler.command == "GET" and "/blobs/sha256:" in handler.path and response.status < 300
            data = response.read()
            handler.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                    handler.send_header(key, value)
            length = response.getheader("Content-Length", "0") if handler.command == "HEAD" else str(len(data))
            handler.send_header("Content-Length", length)
            handler.send_header("Connection", "close")
            handler.end_headers()
            if handler.command == "HEAD":
                return
            if not is_blob:
                handler.wfile.write(data)
                exchange.body_bytes = len(data)
                return
            if self.tamper_digest and handler.path.endswith(self.tamper_digest) and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            limit = len(data)
            with self.lock:
                if self.cut_after and self.cuts_left > 0:
                    self.cuts_left -= 1
                    limit = min(limit, self.cut_after)
            sent = 0
            step = 256 * 1024
            while sent < limit:
                piece = data[sent : min(limit, sent + step)]
                try:
                    handler.wfile.write(piece)
                    handler.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(piece)
                exchange.body_bytes = sent
                if self.delay_per_mb:
                    time.sleep(self.delay_per_mb * len(piece) / (1 << 20))
            if limit < len(data):
                time.sleep(self.cut_delay)
                handler.close_connection = True
                try:
                    handler.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        finally:
            conn.close()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


@pytest.fixture
def proxy(registry: DockerRegistry) -> Iterator[CountingProxy]:
    """A counting proxy in front of ``registry``."""
    p = CountingProxy(registry.host)
    try:
        yield p
    finally:
        p.close()


def write_gguf(path: Path, *, payload_bytes: int = 64 * 1024, seed: int = 0) -> Path:
    """A small valid GGUF ("llama" architecture) whose size is mostly ``payload_bytes`` of random data."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_head_count(1)
    writer.add_file_type(0)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    rng = np.random.default_rng(seed)
    writer.add_tensor("payload", np.frombuffer(rng.bytes(payload_bytes), dtype=np.int8).copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 KiB synthetic GGUF."""
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def big_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24 MiB synthetic GGUF, for ranged, parallel and resumed transfers."""
    return write_gguf(tmp_path_factory.mktemp("gguf") / "big.gguf", payload_bytes=24 << 20, seed=1)
