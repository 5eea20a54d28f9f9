"""Pull and push against a real registry (Debian's ``docker-registry``), through real ``pollama serve``
processes and, where transfers are counted, cut or corrupted, through a proxy in front of it."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import bcrypt
import httpx

from pollama.names import parse_name
from pollama.registry import PullOptions, PushOptions, TransferSettings, pull_model, push_model
from pollama.store import ModelStore
from pollama.store.create import CreateRequest, create_model
from tests.conftest import ServerProcess, create_from_gguf
from tests.registry.conftest import CountingProxy, DockerRegistry


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def statuses(items: list[dict[str, Any]]) -> list[str]:
    """The distinct statuses, in order."""
    out: list[str] = []
    for item in items:
        status = item.get("status") or f"error: {item.get('error')}"
        if not out or out[-1] != status:
            out.append(status)
    return out


def store_files(models: Path) -> dict[str, bytes]:
    """Every blob and manifest of a models folder, by relative path."""
    return {str(p.relative_to(models)): p.read_bytes() for p in sorted(models.rglob("*")) if p.is_file()}


def pull(server: ServerProcess, name: str, **body: Any) -> list[dict[str, Any]]:
    with server.client() as c:
        return lines(c.post("/api/pull", json={"model": name, "insecure": True, **body}))


def push(server: ServerProcess, name: str, **body: Any) -> list[dict[str, Any]]:
    with server.client() as c:
        return lines(c.post("/api/push", json={"model": name, "insecure": True, **body}))


def local_model(root: Path, name: str, gguf: Path, **extra: Any) -> ModelStore:
    """A store at ``root`` holding ``name`` created (in process) from ``gguf``."""
    store = ModelStore(root)
    store.prepare()
    digest, _ = store.blobs.import_files([gguf])
    request = CreateRequest(parse_name(name), files={gguf.name: digest}, **extra)
    for _ in create_model(store, request):
        pass
    return store


def test_push_then_pull_is_byte_identical(
    registry: DockerRegistry, proxy: CountingProxy, start_server: Any, tiny_gguf: Path, tmp_path: Path
) -> None:
    name = f"{proxy.host}/library/tiny:latest"
    first = start_server(OLLAMA_MODELS=str(tmp_path / "a"))
    with first.client() as c:
        create_from_gguf(c, name, tiny_gguf, system="You are tiny.", parameters={"stop": ["<end>"]})
    pushed = push(first, name)
    assert statuses(pushed)[0] == "retrieving manifest"
    assert statuses(pushed)[-2:] == ["pushing manifest", "success"]
    layer_lines = [i for i in pushed if i["status"].startswith("pushing ") and "digest" in i]
    assert {i["status"] for i in layer_lines} == {f"pushing {i['digest'][7:19]}" for i in layer_lines}
    assert len({i["digest"] for i in layer_lines}) == 4  # model, system, params, config
    assert all(i["completed"] == i["total"] for i in layer_lines if i is layer_lines[-1])

    # A second push finds every blob in place and sends no bytes.
    proxy.reset()
    push(first, name)
    assert not [e for e in proxy.exchanges if e.method in ("PATCH", "POST")]

    second = start_server(OLLAMA_MODELS=str(tmp_path / "b"))
    proxy.reset()
    pulled = pull(second, name)
    assert statuses(pulled)[0] == "pulling manifest"
    assert statuses(pulled)[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert store_files(tmp_path / "a") == store_files(tmp_path / "b")
    assert proxy.blob_bytes() == sum(len(v) for k, v in store_files(tmp_path / "b").items() if k.startswith("blobs/"))
    with second.client() as c:
        tags = c.get("/api/tags").json()["models"]
        assert [m["name"] for m in tags] == [name]
        shown = c.post("/api/show", json={"model": name}).json()
        assert shown["system"] == "You are tiny."

    # Pulling again downloads nothing: every layer reports complete at once.
    proxy.reset()
    again = pull(second, name)
    assert proxy.blob_gets() == []
    assert [e.method for e in proxy.exchanges] == ["GET"]  # the manifest only
    for item in again:
        if "digest" in item:
            assert item["completed"] == item["total"]

    # stream:false gives one object; errors are Ollama's.
    with second.client() as c:
        r = c.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
        assert (r.status_code, r.json()) == (200, {"status": "success"})
        r = c.post("/api/pull", json={"model": f"{proxy.host}/library/missing", "insecure": True})
        assert lines(r)[-1] == {"error": "pull model manifest: file does not exist"}
        r = c.post("/api/pull", json={"model": f"http://{proxy.host}/library/tiny"})
        assert r.json() == {"error": "insecure protocol http"}
        r = c.post("/api/pull", json={"model": "bad//name"})
        assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})
        r = c.post("/api/push", json={})
        assert (r.status_code, r.json()) == (400, {"error": "model is required"})
        r = c.post("/api/push", json={"model": f"{proxy.host}/library/nothere", "insecure": True})
        assert statuses(lines(r)) == [
            "retrieving manifest",
            "couldn't retrieve manifest",
            f"error: model '{proxy.host}/library/nothere:latest' not found",
        ]

    # A model made FROM the pushed one mounts its layers from that repository instead of uploading.
    with first.client() as c:
        r = c.post(
            "/api/create",
            json={"model": f"{proxy.host}/library/tiny2", "from": name, "system": "Another.", "stream": False},
        )
        assert r.status_code == 200, r.text
    proxy.reset()
    push(first, f"{proxy.host}/library/tiny2")
    model_digest = next(i["digest"] for i in layer_lines if i["total"] == max(x["total"] for x in layer_lines))
    mounts = [e for e in proxy.exchanges if e.method == "POST" and "mount=" in e.path]
    assert [e.status for e in mounts if model_digest.replace(":", "%3A") in e.path] == [201]
    committed = [e.path for e in proxy.exchanges if e.method == "PUT" and "digest=" in e.path]
    assert committed and not [p for p in committed if model_digest.replace(":", "%3A") in p]


def test_parallel_ranged_pull_resumes_cut_connections(
    registry: DockerRegistry, proxy: CountingProxy, big_gguf: Path, tmp_path: Path
) -> None:
    name = parse_name(f"{proxy.host}/team/big:v1")
    source = local_model(tmp_path / "a", name.full, big_gguf)
    settings = TransferSettings(min_part_size=1 << 20, retry_base=0.01, progress_interval=0.01)
    for _ in push_model(source, name, PushOptions(key_home=tmp_path / "keys", insecure=True, settings=settings)):
        pass

    target = ModelStore(tmp_path / "b")
    target.prepare()
    proxy.reset()
    proxy.cut_after, proxy.cuts_left = 300_000, 6  # six responses end early
    seen = []
    for item in pull_model(target, name, PullOptions(key_home=tmp_path / "keys", insecure=True, settings=settings)):
        seen.append(item)
    model_digest = source.load(name).manifest.layers[0].digest
    size = big_gguf.stat().st_size
    gets = proxy.blob_gets(model_digest)
    starts = {e.range.split("=")[1].split("-")[0] for e in gets}
    assert len(gets) >= 16 + 6 and len(starts) >= 16 + 6  # 16 parts, and 6 retries starting mid-part
    assert proxy.blob_bytes(model_digest) == size  # not one byte fetched twice
    assert target.blobs.path(model_digest).read_bytes() == big_gguf.read_bytes()
    assert not [p for p in target.blobs.list_files() if "partial" in p.name]
    progress = [i.completed for i in seen if i.digest == model_digest]
    assert progress == sorted(progress) and progress[-1] == size


def test_pull_killed_mid_blob_resumes_with_only_missing_bytes(
    registry: DockerRegistry, proxy: CountingProxy, start_server: Any, big_gguf: Path, tmp_path: Path
) -> None:
    name = parse_name(f"{proxy.host}/library/big:latest")
    source = local_model(tmp_path / "a", name.full, big_gguf)
    for _ in push_model(source, name, PushOptions(key_home=tmp_path / "keys", insecure=True)):
        pass
    digest = source.load(name).manifest.layers[0].digest
    size = big_gguf.stat().st_size
    models = tmp_path / "b"
    server = start_server(OLLAMA_MODELS=str(models))
    state = models / "blobs" / f"{digest.replace(':', '-')}-partial-0"
    proxy.reset()
    proxy.delay_per_mb = 0.25  # about six seconds for the blob

    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", "/api/pull", json={"model": name.full, "insecure": True}) as r,
    ):
        deadline = time.monotonic() + 30
        for line in r.iter_lines():
            item = json.loads(line)
            if (
                item.get("completed", 0) > size // 4
                and state.exists()
                and json.loads(state.read_text())["Completed"] > size // 4
            ):
                break
            assert time.monotonic() < deadline, "the download did not progress"
        assert server.process is not None
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
    done_before = json.loads(state.read_text())["Completed"]
    assert 0 < done_before < size
    assert not (models / "manifests").exists() or not any((models / "manifests").rglob("latest"))

    proxy.reset()
    proxy.delay_per_mb = 0
    restarted = start_server(OLLAMA_MODELS=str(models))
    result = pull(restarted, name.full)
    assert statuses(result)[-1] == "success"
    gets = proxy.blob_gets(digest)
    assert [e.range for e in gets] == [f"bytes={done_before}-{size - 1}"]
    assert proxy.blob_bytes(digest) == size - done_before
    assert (models / "blobs" / digest.replace(":", "-")).read_bytes() == big_gguf.read_bytes()
    assert not [p for p in (models / "blobs").iterdir() if "partial" in p.name]


def test_blob_altered_in_transit_is_rejected(
    registry: DockerRegistry, proxy: CountingProxy, start_server: Any, tiny_gguf: Path, tmp_path: Path
) -> None:
    name = parse_name(f"{proxy.host}/library/tiny:latest")
    source = local_model(tmp_path / "a", name.full, tiny_gguf)
    for _ in push_model(source, name, PushOptions(key_home=tmp_path / "keys", insecure=True)):
        pass
    digest = source.load(name).manifest.layers[0].digest
    models = tmp_path / "b"
    server = start_server(OLLAMA_MODELS=str(models))
    proxy.tamper_digest = digest
    result = pull(server, name.full)
    error = result[-1].get("error", "")
    assert error.startswith("digest mismatch, file must be downloaded again: want " + digest + ", got sha256:")
    assert not (models / "blobs" / digest.replace(":", "-")).exists()
    assert not [p for p in (models / "blobs").iterdir() if "partial" in p.name or p.name.startswith(".tmp")]
    assert not [p for p in (models / "manifests").rglob("*") if p.is_file()]
    with server.client() as c:
        assert c.get("/api/tags").json() == {"models": []}


def _htpasswd(path: Path, user: str, password: str) -> Path:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    path.write_text(f"{user}:{hashed}\n")
    return path


def test_basic_auth_with_docker_config(tmp_path: Path, start_server: Any, tiny_gguf: Path, isolated_env: Path) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    registry = DockerRegistry(root, htpasswd=_htpasswd(root / "htpasswd", "alice", "s3cret")).start()
    try:
        name = f"{registry.host}/alice/tiny:1"
        server = start_server(OLLAMA_MODELS=str(tmp_path / "a"))
        with server.client() as c:
            create_from_gguf(c, name, tiny_gguf)
        denied = push(server, name)
        assert denied[-1] == {"error": "unauthorized: access denied"}
        cli = server.cli("push", "--insecure", name)
        assert cli.returncode == 1 and "unauthorized: access denied" in cli.stderr

        docker = isolated_env / ".docker"
        docker.mkdir()
        auth = base64.b64encode(b"alice:s3cret").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {f"http://{registry.host}": {"auth": auth}}}))
        assert statuses(push(server, name))[-1] == "success"

        other = start_server(OLLAMA_MODELS=str(tmp_path / "b"))
        assert statuses(pull(other, name))[-1] == "success"
        assert store_files(tmp_path / "a") == store_files(tmp_path / "b")

        (docker / "config.json").write_text(
            json.dumps({"auths": {registry.host: {"auth": base64.b64encode(b"alice:wrong").decode()}}})
        )
        failed = pull(start_server(OLLAMA_MODELS=str(tmp_path / "c")), name)
        assert failed[-1] == {"error": "pull model manifest: unauthorized: access denied"}
    finally:
        registry.stop()


def test_serve_creates_key_and_cli_pull_push(
    registry: DockerRegistry, server: ServerProcess, tiny_gguf: Path, isolated_env: Path
) -> None:
    key = isolated_env / ".ollama" / "id_ed25519"
    assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"
    pub = (isolated_env / ".ollama" / "id_ed25519.pub").read_text()
    assert pub.startswith("ssh-ed25519 AAAA") and pub.endswith("\n")
    log = server.log.read_text()
    assert f"Couldn't find '{key}'. Generating new private key." in log
    assert f"Your new public key is: \n\n{pub}" in log

    name = f"{registry.host}/library/tiny:latest"
    with server.client() as c:
        create_from_gguf(c, name, tiny_gguf)
    pushed = server.cli("push", "--insecure", name)
    assert pushed.returncode == 0, pushed.stderr
    assert "pushing manifest" in pushed.stderr and "success" in pushed.stderr
    with server.client() as c:
        c.request("DELETE", "/api/delete", json={"model": name})
    pulled = server.cli("pull", "--insecure", name)
    assert pulled.returncode == 0, pulled.stderr
    out = pulled.stderr.splitlines()
    assert out[0] == "pulling manifest" and out[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert any(line.startswith("pulling ") and "100% ▕" in line for line in out)
    missing = server.cli("pull", "--insecure", f"{registry.host}/library/none")
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("Error: pull model manifest: file does not exist")
