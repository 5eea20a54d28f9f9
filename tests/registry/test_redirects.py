"""Blob downloads through redirects, as registries with object storage serve them: same-host
redirects are followed with the bearer token, and the presigned URL on another host (a CDN) is read
without it."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pollama.names import parse_name
from pollama.registry import PullOptions, TransferSettings, pull_model
from pollama.store import ModelStore
from pollama.store.files import go_json


def _serve(host: str, handle: object) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            handle(self)  # type: ignore[operator]

        do_HEAD = do_GET

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    for key, value in headers.items():
        handler.send_header(key.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


class _CdnRegistry:
    def __init__(self) -> None:
        self.blob = os.urandom(3 << 20)
        self.config = b'{"model_format":"gguf"}'
        self.blobs = {"sha256:" + hashlib.sha256(b).hexdigest(): b for b in (self.blob, self.config)}
        digests = list(self.blobs)
        self.manifest = go_json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": digests[1],
                    "size": len(self.config),
                },
                "layers": [
                    {"mediaType": "application/vnd.ollama.image.model", "digest": digests[0], "size": len(self.blob)}
                ],
            }
        )
        self.registry_auth: list[tuple[str, str, str]] = []
        self.cdn_auth: list[tuple[str, str]] = []
        self.registry = _serve("127.0.0.1", self.handle_registry)
        self.host = f"127.0.0.1:{self.registry.server_address[1]}"
        self.cdn = _serve("127.0.0.2", self.handle_cdn)
        self.cdn_host = f"127.0.0.2:{self.cdn.server_address[1]}"

    def close(self) -> None:
        for server in (self.registry, self.cdn):
            server.shutdown()
            server.server_close()

    def handle_registry(self, h: BaseHTTPRequestHandler) -> None:
        auth = h.headers.get("Authorization", "")
        self.registry_auth.append((h.command, h.path, auth))
        if h.path.startswith("/token"):
            _send(h, 200, json.dumps({"token": "t0k"}).encode())
            return
        if auth != "Bearer t0k":
            _send(
                h,
                401,
                b"{}",
                WWW_Authenticate=f'Bearer realm="http://{self.host}/token",service="fake",'
                f'scope="repository:library/m:pull"',
            )
            return
        if h.path == "/v2/library/m/manifests/latest":
            _send(h, 200, self.manifest, Content_Type="application/vnd.docker.distribution.manifest.v2+json")
            return
        digest = h.path.rsplit("/", 1)[-1]
        if h.path.startswith("/v2/library/m/blobs/"):
            _send(h, 307, Location=f"/v2/library/m/moved/{digest}")  # same host: followed
            return
        if h.path.startswith("/v2/library/m/moved/"):
            _send(h, 307, Location=f"http://{self.cdn_host}/cdn/{digest}?sig=presigned")
            return
        _send(h, 404)

    def handle_cdn(self, h: BaseHTTPRequestHandler) -> None:
        self.cdn_auth.append((h.command, h.headers.get("Authorization", "")))
        digest = h.path.split("?")[0].rsplit("/", 1)[-1]
        data = self.blobs.get(digest)
        if data is None or "sig=presigned" not in h.path:
            _send(h, 403)
            return
        wanted = h.headers.get("Range", "")
        if wanted.startswith("bytes="):
            start, end = (int(x) for x in wanted[6:].split("-"))
            _send(h, 206, data[start : end + 1], Content_Range=f"bytes {start}-{end}/{len(data)}")
        else:
            _send(h, 200, data)


@pytest.fixture
def cdn_registry() -> Iterator[_CdnRegistry]:
    reg = _CdnRegistry()  # 127.0.0.2: the whole 127/8 range is loopback on Linux
    yield reg
    reg.close()


def test_cdn_redirect_is_read_without_the_token(cdn_registry: _CdnRegistry, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.prepare()
    name = parse_name(f"{cdn_registry.host}/library/m")
    settings = TransferSettings(min_part_size=512 * 1024)
    out = list(pull_model(store, name, PullOptions(key_home=tmp_path, insecure=True, settings=settings)))
    assert out[-1].status == "success"
    assert store.manifest_path(name).read_bytes() == cdn_registry.manifest
    for digest, data in cdn_registry.blobs.items():
        assert store.blobs.path(digest).read_bytes() == data
    cdn_gets = [auth for method, auth in cdn_registry.cdn_auth if method == "GET"]
    assert len(cdn_gets) == 6 + 1  # six parts of the 3 MiB layer, one for the config
    assert set(cdn_gets) == {""}  # never the registry's token
    followed = [(m, p, a) for m, p, a in cdn_registry.registry_auth if "/moved/" in p]
    assert followed and all(a == "Bearer t0k" for _, _, a in followed)


class _RedirectingUploads:
    """A registry that, like Ollama's, answers each upload PATCH with a 307 to object storage."""

    def __init__(self) -> None:
        self.parts: dict[int, bytes] = {}
        self.patches: list[str] = []
        self.storage_auth: list[str] = []
        self.committed = b""
        self.manifest = b""
        self.registry = _serve_all("127.0.0.1", self.handle_registry)
        self.host = f"127.0.0.1:{self.registry.server_address[1]}"
        self.storage = _serve_all("127.0.0.2", self.handle_storage)
        self.storage_host = f"127.0.0.2:{self.storage.server_address[1]}"

    def close(self) -> None:
        for server in (self.registry, self.storage):
            server.shutdown()
            server.server_close()

    def handle_registry(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        path, _, query = h.path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if h.command == "HEAD":
            _send(h, 404)
        elif h.command == "POST":
            _send(h, 202, Location="/v2/library/m/blobs/uploads/u1?n=0")
        elif h.command == "PATCH":
            n = int(params["n"])
            self.patches.append(h.headers["Content-Range"])
            _send(
                h,
                307,
                Location=f"http://{self.storage_host}/put/{n}",
                Docker_Upload_Location=f"/v2/library/m/blobs/uploads/u1?n={n + 1}",
            )
        elif h.command == "PUT" and "digest" in params:
            data = b"".join(self.parts[k] for k in sorted(self.parts))
            self.parts.clear()
            ok = params["digest"].replace("%3A", ":") == "sha256:" + hashlib.sha256(data).hexdigest()
            self.committed = data if ok else b""
            _send(h, 201 if ok else 400)
        elif h.command == "PUT" and "/manifests/" in path:
            self.manifest = body
            _send(h, 201)
        else:
            _send(h, 404)

    def handle_storage(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        self.storage_auth.append(h.headers.get("Authorization", ""))
        self.parts[int(h.path.rsplit("/", 1)[-1])] = body
        _send(h, 200)


def _serve_all(host: str, handle: object) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _any(self) -> None:
            handle(self)  # type: ignore[operator]

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _any

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_push_follows_upload_redirects(tmp_path: Path) -> None:
    from pollama.registry import PushOptions, push_model
    from tests.registry.conftest import write_gguf
    from tests.registry.test_registry import local_model

    fake = _RedirectingUploads()
    try:
        name = parse_name(f"{fake.host}/library/m")
        gguf = write_gguf(tmp_path / "m.gguf", payload_bytes=3 << 20)
        store = local_model(tmp_path / "models", name.full, gguf)
        settings = TransferSettings(min_part_size=1 << 20)
        steps = [
            p.status for p in push_model(store, name, PushOptions(key_home=tmp_path, insecure=True, settings=settings))
        ]
        assert steps[-1] == "success"
        size = gguf.stat().st_size
        assert fake.patches[:4] == [f"{o}-{min(o + (1 << 20), size) - 1}" for o in range(0, size, 1 << 20)]
        assert fake.storage_auth and set(fake.storage_auth) == {""}
        assert fake.manifest == store.manifest_path(name).read_bytes()
    finally:
        fake.close()
