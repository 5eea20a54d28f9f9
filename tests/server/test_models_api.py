"""Model management over HTTP against a real ``pollama serve``: tags, create, blobs, copy, delete,
crash safety and refusal of path tricks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, VisionFiles


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def upload(client: httpx.Client, path: Path) -> str:
    digest = file_digest(path)
    with path.open("rb") as fh:
        r = client.post(f"/api/blobs/{digest}", content=fh.read())
    assert r.status_code in (200, 201), r.text
    return digest


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    return (
        {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else {}
    )


def test_root_version_and_empty_tags(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.get("/")
        assert r.status_code == 200 and r.text == "Ollama is running"
        assert c.head("/").status_code == 200
        assert c.get("/api/version").json() == {"version": "0.33.0"}
        assert c.get("/api/tags").json() == {"models": []}
        assert c.head("/api/tags").status_code == 200
        r = c.get("/api/nope")
        assert r.status_code == 404 and r.text == "404 page not found"
        r = c.get("/api/create")
        assert r.status_code == 405 and r.text == "405 method not allowed"


def test_request_body_errors(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/api/show", content=b"")
        assert (r.status_code, r.json()) == (400, {"error": "missing request body"})
        r = c.post("/api/show", content=b"{bad")
        assert r.status_code == 400 and "invalid character" in r.json()["error"]
        r = c.post("/api/show", json={})
        assert (r.status_code, r.json()) == (400, {"error": "model is required"})
        r = c.post("/api/show", json={"model": 3})
        assert r.status_code == 400 and "cannot unmarshal number" in r.json()["error"]
        r = c.post("/api/show", json={"model": "missing"})
        assert (r.status_code, r.json()) == (404, {"error": "model 'missing' not found"})
        r = c.request("DELETE", "/api/delete", json={"model": "missing"})
        assert (r.status_code, r.json()) == (404, {"error": "model 'missing' not found"})
        r = c.request("DELETE", "/api/delete", json={})
        assert (r.status_code, r.json()) == (400, {"error": "model is required"})
        r = c.post("/api/copy", json={"source": "missing", "destination": "x"})
        assert (r.status_code, r.json()) == (404, {"error": 'model "missing" not found'})
        r = c.post("/api/create", json={"model": "x"})
        assert (r.status_code, r.json()) == (400, {"error": "neither 'from' or 'files' was specified"})


def test_create_list_copy_delete(server: ServerProcess, smollm2_gguf: Path) -> None:
    with server.client() as c:
        digest = upload(c, smollm2_gguf)
        assert c.head(f"/api/blobs/{digest}").status_code == 200
        assert c.post(f"/api/blobs/{digest}", content=b"ignored").status_code == 200
        lines = []
        with c.stream(
            "POST",
            "/api/create",
            json={"model": "smol", "files": {"smol.gguf": digest}, "parameters": {"temperature": 0.1}},
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/x-ndjson"
            lines = [line for line in r.iter_lines() if line]
        statuses = [httpx.Response(200, content=line).json()["status"] for line in lines]
        assert statuses[0] == "parsing GGUF"
        assert statuses[-2:] == ["writing manifest", "success"]
        assert any(s.startswith("creating new layer sha256:") for s in statuses)

        r = c.post("/api/create", json={"model": "smol-b", "from": "smol", "system": "hi", "stream": False})
        assert (r.status_code, r.json()) == (200, {"status": "success"})

        tags = c.get("/api/tags").json()["models"]
        assert [m["name"] for m in tags] == ["smol-b:latest", "smol:latest"]
        smol = tags[1]
        assert smol["model"] == "smol:latest"
        assert smol["details"]["family"] == "llama"
        assert smol["details"]["parameter_size"] == "134.52M"
        assert smol["details"]["quantization_level"] == "Q4_1"
        assert smol["details"]["format"] == "gguf"
        manifest = server.models / "manifests/registry.ollama.ai/library/smol/latest"
        assert smol["digest"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
        assert smol["size"] > smollm2_gguf.stat().st_size

        big = [p for p in (server.models / "blobs").iterdir() if p.stat().st_size == smollm2_gguf.stat().st_size]
        assert len(big) == 1, "two models sharing one GGUF must store it once"

        assert c.post("/api/copy", json={"source": "SMOL", "destination": "other/smol:v2"}).status_code == 200
        copied = server.models / "manifests/registry.ollama.ai/other/smol/v2"
        assert copied.read_bytes() == manifest.read_bytes()

        assert c.request("DELETE", "/api/delete", json={"model": "smol"}).status_code == 200
        assert big[0].exists()
        assert c.request("DELETE", "/api/delete", json={"model": "smol-b"}).status_code == 200
        assert c.request("DELETE", "/api/delete", json={"model": "other/smol:v2"}).status_code == 200
        assert not big[0].exists()
        assert c.get("/api/tags").json() == {"models": []}


def test_upload_digest_mismatch(server: ServerProcess) -> None:
    wrong = "sha256:" + "0" * 64
    actual = "sha256:" + hashlib.sha256(b"some bytes").hexdigest()
    with server.client() as c:
        r = c.post(f"/api/blobs/{wrong}", content=b"some bytes")
        assert (r.status_code, r.json()) == (400, {"error": f'digest mismatch, expected "{wrong}", got "{actual}"'})
        r = c.head(f"/api/blobs/{wrong}")
        assert r.status_code == 404
    assert list((server.models / "blobs").iterdir()) == []


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:../../x",
        "sha256-../../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 64 + "%00",
        "%2Fetc%2Fpasswd",
        "sha256%3A" + "g" * 64,
        "x" * 5000,
    ],
)
def test_blob_digest_tricks_rejected(server: ServerProcess, digest: str) -> None:
    import http.client

    before = snapshot(server.models)
    for method in ("HEAD", "POST"):
        # http.client sends the path exactly as written (httpx would collapse the ``..`` segments).
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request(method, f"/api/blobs/{digest}", body=b"data" if method == "POST" else None)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 400, (method, digest, r.status)
        if method == "POST":
            assert json.loads(body) == {"error": "invalid digest format"}
    assert snapshot(server.models) == before


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "../../etc/passwd",
        "/etc/passwd",
        "a/../../b",
        "x\x00y",
        "m" * 81,
        "ns.dots/m",
        "h/ns/m/extra",
        "C:\\evil",
        "model:../../tag",
    ],
)
def test_name_tricks_rejected(server: ServerProcess, smollm2_gguf: Path, name: str) -> None:
    with server.client() as c:
        digest = upload(c, smollm2_gguf)
        assert (
            c.post("/api/create", json={"model": "good", "files": {"m.gguf": digest}, "stream": False}).status_code
            == 200
        )
        before = snapshot(server.models)
        checks = [
            ("POST", "/api/create", {"model": name, "files": {"m.gguf": digest}}, "invalid model name"),
            ("POST", "/api/create", {"model": "ok", "from": name}, "invalid model name"),
            ("POST", "/api/show", {"model": name}, "invalid model name"),
            ("POST", "/api/copy", {"source": "good", "destination": name}, f'destination "{name}" is invalid'),
            ("POST", "/api/copy", {"source": name, "destination": "x"}, f'source "{name}" is invalid'),
            ("DELETE", "/api/delete", {"model": name}, f'name "{name}" is invalid'),
        ]
        for method, path, body, message in checks:
            r = c.request(method, path, json=body)
            assert (r.status_code, r.json()) == (400, {"error": message}), (path, body)
        for files in ({"../m.gguf": digest}, {"/abs/m.gguf": digest}, {"a/../../m.gguf": digest}):
            r = c.post("/api/create", json={"model": "ok", "files": files})
            assert (r.status_code, r.json()) == (400, {"error": "file path must be relative"})
        r = c.post("/api/create", json={"model": "ok", "files": {"m.gguf": "sha256:../../x"}})
        assert (r.status_code, r.json()) == (400, {"error": "invalid digest format"})
        after = snapshot(server.models)
        assert after == before


def test_create_errors(server: ServerProcess, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a gguf file at all" * 10)
    with server.client() as c:
        digest = upload(c, junk)
        # Streaming (the default): the error arrives as the last NDJSON line after the first status.
        r = c.post("/api/create", json={"model": "x", "files": {"junk.gguf": digest}})
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert r.status_code == 200 and lines[-1] == {"error": "supplied file was not in GGUF format"}
        r = c.post("/api/create", json={"model": "x", "stream": False, "files": {"junk.gguf": digest}})
        assert (r.status_code, r.json()) == (400, {"error": "supplied file was not in GGUF format"})
        r = c.post("/api/create", json={"model": "x", "stream": False, "files": {"junk.bin": digest}})
        assert (r.status_code, r.json()) == (400, {"error": "unknown type"})
        r = c.post("/api/create", json={"model": "x", "stream": False, "files": {"model.safetensors": digest}})
        assert (r.status_code, r.json()) == (400, {"error": "open config.json: no such file or directory"})
        r = c.post("/api/create", json={"model": "x", "stream": False, "from": "missing-model"})
        assert r.status_code == 404
        assert not (server.models / "manifests" / "registry.ollama.ai" / "library" / "x").exists()


def _slow_upload(url: str, digest: str, data: bytes, sent: threading.Event) -> None:
    def body():
        yield data[: len(data) // 3]
        sent.set()
        time.sleep(30)
        yield data[len(data) // 3 :]

    try:
        httpx.post(f"{url}/api/blobs/{digest}", content=body(), timeout=60)
    except httpx.HTTPError:
        pass


def test_server_killed_mid_upload_leaves_no_half_blob(isolated_env: Path, smollm2_gguf: Path) -> None:
    server = ServerProcess(isolated_env).start()
    data = smollm2_gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    sent = threading.Event()
    thread = threading.Thread(target=_slow_upload, args=(server.url, digest, data, sent), daemon=True)
    thread.start()
    assert sent.wait(30)
    time.sleep(1.0)
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    blobs = server.models / "blobs"
    assert not (blobs / digest.replace(":", "-")).exists()
    assert not any(p.name.startswith("sha256-") for p in blobs.iterdir())
    restarted = ServerProcess(isolated_env)
    restarted.start()
    try:
        assert list(blobs.iterdir()) == []
        assert not any(p.is_file() for p in (server.models / "manifests").rglob("*"))
        with restarted.client() as c:
            assert c.get("/api/tags").json() == {"models": []}
    finally:
        restarted.stop()


def test_cli_killed_mid_create_leaves_nothing(server: ServerProcess, smollm2_gguf: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_gguf}\nSYSTEM hi\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pollama", "create", "killed", "-f", str(modelfile)],
        env=server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    blobs = server.models / "blobs"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(p.name.startswith(".tmp-") for p in blobs.glob(".*")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    assert not any(p.name.startswith(".tmp-") for p in blobs.glob(".*"))
    manifests = [p for p in (server.models / "manifests").rglob("*") if p.is_file()]
    complete = [p for p in blobs.iterdir() if p.name.startswith("sha256-")]
    assert manifests == []
    for blob in complete:
        assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name.replace("-", ":", 1)


def _blob_names_referenced(models: Path) -> tuple[set[str], set[str]]:
    """(blob file names every manifest references, blob file names present) of a models folder."""
    referenced: set[str] = set()
    for manifest in (models / "manifests").rglob("*"):
        if manifest.is_file():
            data = json.loads(manifest.read_bytes())
            for layer in [data["config"], *data["layers"]]:
                referenced.add(layer["digest"].replace(":", "-"))
    present = {p.name for p in (models / "blobs").iterdir()}
    return referenced, present


def test_concurrent_creates_with_list_show_delete_traffic_all_finish(server: ServerProcess, smollm2_gguf: Path) -> None:
    """Issue 10: ``create_model`` held the store's thread lock across yields, so a create resumed on
    another worker thread could never release it and every later create hung. 8 creators (4 of one
    name, 4 of different names, streaming and not, from a model and from files) run with list, show
    and delete traffic alongside; all must finish, and the store must be left consistent. (Whether
    a step resumes on another thread depends on timing here; ``tests/store`` forces it every step.)"""
    with server.client(timeout=60) as c:
        digest = upload(c, smollm2_gguf)
        r = c.post("/api/create", json={"model": "base", "files": {"smol.gguf": digest}, "stream": False})
        assert r.status_code == 200, r.text
    creators, rounds = 8, 3
    kinds = ["tags", "show", "delete"]
    start = threading.Barrier(creators + len(kinds))
    stop = threading.Event()
    outcomes: list[tuple[str, int, dict[str, object]]] = []
    traffic: dict[str, set[int]] = {"tags": set(), "show": set(), "delete": set()}
    failures: list[BaseException] = []

    def creator(i: int) -> None:
        name = "same" if i % 2 == 0 else f"diff{i}"
        try:
            with server.client(timeout=60) as c:
                start.wait(30)
                for n in range(rounds):
                    body: dict[str, object] = {"model": name, "system": f"creator {i} round {n}", "stream": n % 2 == 1}
                    body.update({"from": "base"} if n % 3 else {"files": {"smol.gguf": digest}})
                    r = c.post("/api/create", json=body)
                    outcomes.append((name, r.status_code, json.loads(r.text.splitlines()[-1])))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    def background(kind: str) -> None:
        try:
            with server.client(timeout=60) as c:
                start.wait(30)
                while not stop.is_set():
                    if kind == "tags":
                        r = c.get("/api/tags")
                    elif kind == "show":
                        r = c.post("/api/show", json={"model": "same"})
                    else:
                        r = c.request("DELETE", "/api/delete", json={"model": "diff1"})
                    traffic[kind].add(r.status_code)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    workers = [threading.Thread(target=creator, args=(i,), daemon=True) for i in range(creators)]
    others = [threading.Thread(target=background, args=(kind,), daemon=True) for kind in kinds]
    for t in [*workers, *others]:
        t.start()
    deadline = time.monotonic() + 120
    for t in workers:
        t.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    for t in others:
        t.join(30)
    assert not [t for t in [*workers, *others] if t.is_alive()], "requests hung"
    assert failures == []
    assert len(outcomes) == creators * rounds
    assert all((code, last) == (200, {"status": "success"}) for _, code, last in outcomes), outcomes
    assert traffic["tags"] == {200}
    assert traffic["show"] <= {200, 404} and traffic["delete"] <= {200, 404}
    with server.client(timeout=10) as c:
        names = {m["name"] for m in c.get("/api/tags").json()["models"]}
        assert {"base:latest", "same:latest", "diff3:latest", "diff5:latest", "diff7:latest"} <= names
        assert c.post("/api/show", json={"model": "same"}).json()["system"].startswith("creator ")
    referenced, present = _blob_names_referenced(server.models)
    assert referenced == present  # nothing missing, nothing orphaned, no temporary files left


def test_big_upload_does_not_delay_other_requests(server: ServerProcess) -> None:
    """Issue 10: an upload was hashed, written and fsynced on the event loop, so every other client
    waited while a big blob came in. With 200 MB in flight, ``/api/tags`` keeps answering quickly."""
    chunk_count, block = 200, bytes(range(256)) * 4096  # 200 blocks of 1 MiB

    def body() -> Iterator[bytes]:
        for i in range(chunk_count):
            yield i.to_bytes(4, "big") + block[4:]

    h = hashlib.sha256()
    for part in body():
        h.update(part)
    digest = "sha256:" + h.hexdigest()
    result: dict[str, int] = {}

    def send() -> None:
        result["status"] = httpx.post(f"{server.url}/api/blobs/{digest}", content=body(), timeout=120).status_code

    latencies: list[float] = []
    with server.client(timeout=30) as c:
        assert c.get("/api/tags").status_code == 200
        uploader = threading.Thread(target=send, daemon=True)
        uploader.start()
        while uploader.is_alive():
            began = time.monotonic()
            assert c.get("/api/tags").status_code == 200
            latencies.append(time.monotonic() - began)
        uploader.join(120)
    assert result == {"status": 201}
    assert (server.models / "blobs" / digest.replace(":", "-")).stat().st_size == chunk_count << 20
    latencies.sort()
    assert len(latencies) >= 5
    p99 = latencies[int(len(latencies) * 0.99)]
    assert p99 < 0.25 and latencies[-1] < 1.0, f"/api/tags p99 {p99:.3f}s, slowest {latencies[-1]:.3f}s"


def test_create_from_a_missing_file_says_it_does_not_exist(server: ServerProcess, tmp_path: Path) -> None:
    """Issue 11: ``FROM ./missing.gguf`` was sent on as a model name and failed with ``invalid model name``."""
    for line in ("FROM ./missing.gguf", "FROM missing.gguf", f"FROM {tmp_path}/gone/model.gguf"):
        modelfile = tmp_path / "Modelfile"
        modelfile.write_text(line + "\n")
        done = server.cli("create", "m", "-f", str(modelfile))
        argument = line.split(" ", 1)[1]
        missing = tmp_path / "missing.gguf" if "gone" not in argument else Path(argument)
        assert (done.returncode, done.stderr) == (1, f"Error: FROM {argument}: file {missing} does not exist\n")
    with server.client() as c:
        assert c.get("/api/tags").json() == {"models": []}


def test_upload_abandoned_by_the_client_leaves_nothing(server: ServerProcess) -> None:
    import socket

    data = b"z" * (8 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs = server.models / "blobs"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data[: len(data) // 2]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(p.name.startswith(".tmp-") for p in blobs.iterdir()):
            time.sleep(0.01)
        assert any(p.name.startswith(".tmp-") for p in blobs.iterdir()), "the upload never started"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and list(blobs.iterdir()):
        time.sleep(0.02)
    assert list(blobs.iterdir()) == []
    with server.client() as c:
        assert c.head(f"/api/blobs/{digest}").status_code == 404
        assert c.get("/api/tags").status_code == 200


def test_create_a_vision_model_from_two_files_and_show_it(server: ServerProcess, vision_files: VisionFiles) -> None:
    """``files`` with the model GGUF and its mmproj: a projector layer, ``vision``, ``projector_info``."""
    with server.client() as c:
        files = {p.name: upload(c, p) for p in (vision_files.model, vision_files.projector)}
        r = c.post("/api/create", json={"model": "tinyvision", "files": files, "stream": False})
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "success"}
        manifest = json.loads((server.models / "manifests/registry.ollama.ai/library/tinyvision/latest").read_text())
        assert [(layer["mediaType"], layer["digest"]) for layer in manifest["layers"]] == [
            ("application/vnd.ollama.image.projector", files[vision_files.projector.name]),
            ("application/vnd.ollama.image.model", files[vision_files.model.name]),
        ]

        show = c.post("/api/show", json={"model": "tinyvision"}).json()
        assert show["capabilities"] == ["completion", "vision"]
        assert show["details"]["family"] == "gemma3"
        assert show["details"]["families"] == ["gemma3"]
        assert show["details"]["parameter_size"] == "256K"
        assert "general.name" not in show["model_info"]
        info = show["projector_info"]
        assert info == {
            "general.architecture": "clip",
            "general.type": "mmproj",
            "general.name": "tiny-gemma3-vision",
            "general.size_label": "46K",
            "general.file_type": 1,
            "clip.has_vision_encoder": True,
            "clip.vision.projection_dim": 64,
            "clip.vision.image_size": 224,
            "clip.vision.patch_size": 14,
            "clip.vision.embedding_length": 32,
            "clip.vision.feed_forward_length": 64,
            "clip.vision.block_count": 2,
            "clip.vision.attention.head_count": 2,
            "clip.vision.image_mean": [0.5, 0.5, 0.5],
            "clip.vision.image_std": [0.5, 0.5, 0.5],
            "clip.projector_type": "gemma3",
            "clip.vision.attention.layer_norm_epsilon": 1e-06,
            "clip.use_gelu": True,
            "general.quantization_version": 2,
            "general.parameter_count": 46272,
        }
        blobs = server.models / "blobs"
        model_blob = blobs / files[vision_files.model.name].replace(":", "-")
        projector_blob = blobs / files[vision_files.projector.name].replace(":", "-")
        assert f"\nFROM {model_blob}\nFROM {projector_blob}\n" in show["modelfile"]

        # a model made from it keeps the projector
        r = c.post("/api/create", json={"model": "derived", "from": "tinyvision", "stream": False})
        assert r.status_code == 200, r.text
        derived = c.post("/api/show", json={"model": "derived"}).json()
        assert derived["capabilities"] == ["completion", "vision"]
        assert derived["projector_info"] == info


def test_a_model_file_alone_has_no_projector(server: ServerProcess, vision_files: VisionFiles) -> None:
    with server.client() as c:
        files = {vision_files.model.name: upload(c, vision_files.model)}
        r = c.post("/api/create", json={"model": "textonly", "files": files, "stream": False})
        assert r.status_code == 200, r.text
        show = c.post("/api/show", json={"model": "textonly"}).json()
        assert show["capabilities"] == ["completion"]
        assert "projector_info" not in show
