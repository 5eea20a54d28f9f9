"""The read-only OCI distribution endpoint (``/v2``): byte-identical manifests and blobs, pulls from it
by pollama's own pull and through a real ``docker-registry`` pull-through cache, API keys."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pollama.names import parse_name
from pollama.registry.pull import PullOptions, pull_model
from pollama.store import ModelStore
from tests.conftest import ServerProcess, free_port, imported_by_a_started_app

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def _manifest_file(server: ServerProcess) -> Path:
    return server.models / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "latest"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_v2_answers_with_the_api_version(smollm2_server: ServerProcess) -> None:
    r = httpx.get(smollm2_server.url + "/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert r.json() == {}
    assert httpx.head(smollm2_server.url + "/v2/").status_code == 200


def test_manifest_is_the_stored_bytes(smollm2_server: ServerProcess) -> None:
    raw = _manifest_file(smollm2_server).read_bytes()
    for path in ("/v2/library/smollm2/manifests/latest", "/v2/smollm2/manifests/latest"):
        r = httpx.get(smollm2_server.url + path)
        assert r.status_code == 200
        assert r.content == raw
        assert r.headers["docker-content-digest"] == _sha(raw)
        assert r.headers["content-type"] == MANIFEST_TYPE
    by_digest = httpx.get(f"{smollm2_server.url}/v2/library/smollm2/manifests/{_sha(raw)}")
    assert by_digest.status_code == 200 and by_digest.content == raw
    head = httpx.head(smollm2_server.url + "/v2/library/smollm2/manifests/latest")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(raw))
    missing = httpx.get(smollm2_server.url + "/v2/library/smollm2/manifests/nope")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_blobs_are_the_stored_bytes(smollm2_server: ServerProcess) -> None:
    manifest = json.loads(_manifest_file(smollm2_server).read_bytes())
    for layer in [*manifest["layers"], manifest["config"]]:
        digest = layer["digest"]
        blob = smollm2_server.models / "blobs" / digest.replace(":", "-")
        r = httpx.get(f"{smollm2_server.url}/v2/library/smollm2/blobs/{digest}", timeout=60)
        assert r.status_code == 200
        assert _sha(r.content) == digest and len(r.content) == layer["size"] == blob.stat().st_size
        assert r.headers["docker-content-digest"] == digest
    weights = max(manifest["layers"], key=lambda layer: layer["size"])
    ranged = httpx.get(
        f"{smollm2_server.url}/v2/library/smollm2/blobs/{weights['digest']}", headers={"Range": "bytes=100-199"}
    )
    assert ranged.status_code == 206
    blob = smollm2_server.models / "blobs" / weights["digest"].replace(":", "-")
    with blob.open("rb") as fh:
        fh.seek(100)
        assert ranged.content == fh.read(100)
    unknown = httpx.get(f"{smollm2_server.url}/v2/library/smollm2/blobs/sha256:{'0' * 64}")
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def _assert_same_model(source: ServerProcess, store: ModelStore, name: str) -> None:
    raw = _manifest_file(source).read_bytes()
    pulled = store.manifest_path(parse_name(name)).read_bytes()
    assert pulled == raw
    for layer in [*json.loads(raw)["layers"], json.loads(raw)["config"]]:
        ours = store.blobs.path(layer["digest"])
        assert _sha(ours.read_bytes()) == layer["digest"]


def test_pollama_pulls_from_another_pollama(smollm2_server: ServerProcess, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "second")
    name = f"127.0.0.1:{smollm2_server.port}/library/smollm2:latest"
    statuses = [p.status for p in pull_model(store, parse_name(name), PullOptions(tmp_path, insecure=True))]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    _assert_same_model(smollm2_server, store, name)


@pytest.fixture
def mirror(smollm2_server: ServerProcess, tmp_path: Path) -> Iterator[str]:
    """Debian's ``docker-registry`` as a pull-through cache of the pollama server."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(binary).exists():
        pytest.fail("docker-registry is not installed (scripts/test installs it)")
    port = free_port()
    root = tmp_path / "mirror"
    (root / "storage").mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"proxy:\n  remoteurl: http://127.0.0.1:{smollm2_server.port}\n"
    )
    with open(root / "registry.log", "ab") as log:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (root / "registry.log").read_text()
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def test_a_docker_registry_mirror_pulls_through_pollama(
    mirror: str, smollm2_server: ServerProcess, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "via-mirror")
    name = f"{mirror}/library/smollm2:latest"
    statuses = [p.status for p in pull_model(store, parse_name(name), PullOptions(tmp_path, insecure=True))]
    assert statuses[-1] == "success"
    _assert_same_model(smollm2_server, store, name)


def test_v2_needs_a_key_when_keys_are_set(start_server: object) -> None:
    server = start_server(POLLAMA_API_KEYS="sk-oci")  # type: ignore[operator]
    assert httpx.get(server.url + "/v2/").status_code == 401
    assert httpx.get(server.url + "/v2/library/x/manifests/latest").status_code == 401
    assert httpx.get(server.url + "/v2/", headers={"Authorization": "Bearer sk-oci"}).status_code == 200
    missing = httpx.get(server.url + "/v2/library/x/manifests/latest", headers={"Authorization": "Bearer sk-oci"})
    assert missing.status_code == 404


def test_ray_is_not_imported_without_an_address() -> None:
    assert imported_by_a_started_app("ray") == [False]
