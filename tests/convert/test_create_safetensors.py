"""``/api/create`` with safetensors ``files`` on a real server: statuses, the resulting model, Ollama's
errors, and that a failed or killed conversion leaves no file, blob or model behind."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pollama.modelfile.request import local_files
from tests.conftest import ServerProcess
from tests.convert.convert_fixtures import tiny_hf_folder


def _upload(client: httpx.Client, folder: Path) -> dict[str, str]:
    """Upload every file of ``folder`` as a blob; name → digest, as the CLI sends them."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = client.post(f"/api/blobs/{digest}", content=data)
        assert r.status_code in (200, 201), r.text
        files[path.relative_to(folder).as_posix()] = digest
    return files


def _stray_files(models: Path) -> list[str]:
    """Temporary entries in the models folder (conversion folders, unfinished blobs)."""
    return sorted(p.name for p in (models / "blobs").iterdir() if p.name.startswith(".tmp-"))


def _blobs(models: Path) -> set[str]:
    return {p.name for p in (models / "blobs").iterdir() if p.name.startswith("sha256-")}


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("home")
    proc = ServerProcess(home, {"OLLAMA_MODELS": str(home / "models")})
    proc.models = home / "models"
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def test_create_converts_a_folder(module_server: ServerProcess, tmp_path: Path) -> None:
    folder, _ = tiny_hf_folder(tmp_path, "Qwen2ForCausalLM")
    with module_server.client() as client:
        files = _upload(client, folder)
        with client.stream("POST", "/api/create", json={"model": "tiny-qwen", "files": files}) as r:
            assert r.status_code == 200
            statuses = [json.loads(line)["status"] for line in r.iter_lines() if line]
        assert statuses[0] == "converting model"
        assert statuses[1].startswith("creating new layer sha256:")
        assert statuses[-2:] == ["writing manifest", "success"]
        show = client.post("/api/show", json={"model": "tiny-qwen"}).json()
        assert show["details"]["family"] == "qwen2"
        assert show["details"]["quantization_level"] == "F16"
        assert show["model_info"]["general.file_type"] == 1
        assert show["model_info"]["qwen2.block_count"] == 2
        r = client.post(
            "/api/generate",
            json={
                "model": "tiny-qwen",
                "prompt": "the",
                "raw": True,
                "stream": False,
                "options": {"num_predict": 3, "temperature": 0},
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["eval_count"] == 3
        # the same files again: the converted GGUF is byte-identical, so its blob is reused
        r = client.post("/api/create", json={"model": "tiny-qwen-2", "files": files, "stream": False})
        assert r.json() == {"status": "success"}
        again = client.post("/api/show", json={"model": "tiny-qwen-2"}).json()
        assert again["model_info"] == show["model_info"]
    assert _stray_files(module_server.models) == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("architecture", 'unsupported architecture "FooForCausalLM"'),
        ("tokenizer", "unknown tokenizer format"),
        ("truncated", "model.safetensors: tensor 'lm_head.weight' lies outside the file"),
    ],
)
def test_failed_conversion_leaves_nothing(
    module_server: ServerProcess, tmp_path: Path, damage: str, message: str
) -> None:
    folder, config = tiny_hf_folder(tmp_path, "MistralForCausalLM")
    if damage == "architecture":
        (folder / "config.json").write_text(json.dumps({**config, "architectures": ["FooForCausalLM"]}))
    elif damage == "tokenizer":
        (folder / "tokenizer.json").unlink()
    else:
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:-16])  # the last tensor is lm_head.weight
    with module_server.client() as client:
        files = _upload(client, folder)
        before = _blobs(module_server.models)
        r = client.post("/api/create", json={"model": f"broken-{damage}", "files": files, "stream": False})
        assert r.status_code == 400
        assert r.json() == {"error": message}
        tags = client.get("/api/tags").json()["models"]
    assert f"broken-{damage}:latest" not in [m["name"] for m in tags]
    assert _blobs(module_server.models) == before
    assert _stray_files(module_server.models) == []


def test_killed_conversion_is_cleaned_at_the_next_start(tmp_path: Path, smollm2_hf_folder: Path) -> None:
    models = tmp_path / "models"
    proc = ServerProcess(tmp_path, {"OLLAMA_MODELS": str(models)})
    proc.models = models
    proc.start()
    try:
        with proc.client() as client:
            files = _upload(client, smollm2_hf_folder)
            uploaded = _blobs(models)
            with client.stream("POST", "/api/create", json={"model": "killed", "files": files}) as r:
                lines = r.iter_lines()
                assert json.loads(next(lines))["status"] == "converting model"
                deadline = time.monotonic() + 60
                while not any((models / "blobs" / name).is_dir() for name in _stray_files(models)):
                    assert time.monotonic() < deadline, "the conversion never started"
                    time.sleep(0.01)
                assert proc.process is not None
                os.killpg(proc.process.pid, signal.SIGKILL)
                proc.process.wait()
    finally:
        proc.stop()
    assert _stray_files(models) != []  # what the killed conversion left: its folder of links, its output
    proc = ServerProcess(tmp_path, {"OLLAMA_MODELS": str(models), "OLLAMA_NOPRUNE": "1"})
    proc.models = models
    proc.start()
    try:
        assert _stray_files(models) == []
        assert _blobs(models) == uploaded
        with proc.client() as client:
            assert client.get("/api/tags").json() == {"models": []}
    finally:
        proc.stop()


def test_from_a_shard_or_a_folder_uploads_the_whole_folder(smollm2_hf_folder: Path, tmp_path: Path) -> None:
    expected = {
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert set(local_files(smollm2_hf_folder) or {}) == expected
    assert set(local_files(smollm2_hf_folder / "model-00002-of-00002.safetensors") or {}) == expected
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"):
        (adapter / name).write_text("{}")
    assert set(local_files(adapter, adapter=True) or {}) == {"adapter_config.json", "adapter_model.safetensors"}
