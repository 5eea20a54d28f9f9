"""The ``DRAFT`` model layer through a real server, the real CLI and llama.cpp: Modelfile ``DRAFT`` and
``create --draft-quantize``, the ``image.draft`` layer and the config's ``draft``, ``show --modelfile``,
inheritance through ``FROM``, the runner started with the draft (and restarted when
``draft_num_predict`` changes), answers the same with and without it, and Ollama's errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import httpx
import pytest

from tests.conftest import CHATML_TEMPLATE, ServerProcess, file_digest, upload_blob

DRAFT_MEDIA = "application/vnd.ollama.image.draft"
PROMPT = "<|im_start|>user\nWrite a haiku about autumn leaves.<|im_end|>\n<|im_start|>assistant\n"


def _manifest(server: ServerProcess, name: str) -> dict[str, Any]:
    path = server.models / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    return dict(json.loads(path.read_text()))


def _config(server: ServerProcess, name: str) -> dict[str, Any]:
    digest = _manifest(server, name)["config"]["digest"]
    return dict(json.loads((server.models / "blobs" / digest.replace(":", "-")).read_text()))


def _runner_args(server: ServerProcess) -> list[str]:
    (pid,) = server.runner_pids()
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def _generate(client: httpx.Client, model: str, **options: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": PROMPT, "raw": True, "stream": False, "options": {"num_predict": 32, **options}}
    r = client.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture(scope="module")
def drafted(smollm2_server: ServerProcess, smollm2_gguf: Path, smollm2_f16_gguf: Path, tmp_path_factory: Any) -> str:
    """``smol-draft``: SmolLM2 Q4_1 with SmolLM2 F16 as its DRAFT, quantized to Q8_0 by the CLI."""
    folder = tmp_path_factory.mktemp("modelfile")
    modelfile = folder / "Modelfile"
    modelfile.write_text(f'FROM {smollm2_gguf}\nDRAFT {smollm2_f16_gguf}\nTEMPLATE """{CHATML_TEMPLATE}"""\n')
    result = smollm2_server.cli("create", "smol-draft", "-f", str(modelfile), "--draft-quantize", "q8_0")
    assert result.returncode == 0, result.stderr
    assert "quantizing F16 model to Q8_0" in result.stderr
    return "smol-draft"


def test_create_writes_a_draft_layer_and_show_lists_it(
    smollm2_server: ServerProcess, drafted: str, smollm2_gguf: Path
) -> None:
    manifest = _manifest(smollm2_server, drafted)
    layers = {layer["mediaType"]: layer for layer in manifest["layers"]}
    assert layers["application/vnd.ollama.image.model"]["digest"] == file_digest(smollm2_gguf)
    draft_digest = layers[DRAFT_MEDIA]["digest"]
    draft_blob = smollm2_server.models / "blobs" / draft_digest.replace(":", "-")
    assert layers[DRAFT_MEDIA]["size"] == draft_blob.stat().st_size
    file_type = gguf.GGUFReader(draft_blob).fields["general.file_type"].contents()
    assert file_type == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert _config(smollm2_server, drafted)["draft"] == {"model_format": "gguf", "architecture": "llama"}
    assert _config(smollm2_server, "smollm2").get("draft") is None

    show = smollm2_server.cli("show", drafted, "--modelfile")
    assert show.returncode == 0, show.stderr
    lines = show.stdout.splitlines()
    assert lines[4].startswith("FROM ") and lines[5] == f"DRAFT {draft_blob}"

    with smollm2_server.client() as client:
        r = client.post(
            "/api/create", json={"model": "smol-child", "from": drafted, "system": "Be brief.", "stream": False}
        )
        assert r.status_code == 200, r.text
    child = {layer["mediaType"]: layer for layer in _manifest(smollm2_server, "smol-child")["layers"]}
    assert child[DRAFT_MEDIA]["digest"] == draft_digest
    assert child[DRAFT_MEDIA]["from"] == f"{drafted}:latest"
    assert _config(smollm2_server, "smol-child")["draft"] == {"model_format": "gguf", "architecture": "llama"}


def test_answers_are_the_same_with_and_without_the_draft(smollm2_server: ServerProcess, drafted: str) -> None:
    greedy = {"temperature": 0, "draft_max": 0}  # prompt lookup off: the drafts are the draft model's
    seeded = {"temperature": 0.9, "seed": 42, "draft_max": 0}
    with smollm2_server.client() as client:
        with_draft = _generate(client, drafted, **greedy)
        args = _runner_args(smollm2_server)
        draft_blob = args[args.index("--draft") + 1]
        (layer,) = [item for item in _manifest(smollm2_server, drafted)["layers"] if item["mediaType"] == DRAFT_MEDIA]
        assert Path(draft_blob).name == layer["digest"].replace(":", "-")
        assert args[args.index("--draft-max") + 1] == "4"  # Ollama's default with a DRAFT model
        pid = smollm2_server.runner_pids()

        shorter = _generate(client, drafted, **greedy, draft_num_predict=2)
        args = _runner_args(smollm2_server)
        assert args[args.index("--draft-max") + 1] == "2"
        assert smollm2_server.runner_pids() != pid  # draft_num_predict is a load option: reloaded
        sampled = _generate(client, drafted, **seeded, draft_num_predict=2)["response"]

        without = _generate(client, drafted, **greedy, draft_num_predict=0)
        assert "--draft" not in _runner_args(smollm2_server)  # 0 disables: no draft loaded
        assert with_draft["response"] == shorter["response"] == without["response"]
        assert with_draft["eval_count"] == without["eval_count"] == 32
        assert sampled == _generate(client, drafted, **seeded, draft_num_predict=0)["response"]


def test_a_safetensors_draft_folder_is_converted(
    smollm2_server: ServerProcess, smollm2_gguf: Path, smollm2_hf_folder: Path, tmp_path: Path
) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_gguf}\nDRAFT {smollm2_hf_folder}\n")
    result = smollm2_server.cli("create", "smol-st", "-f", str(modelfile))
    assert result.returncode == 0, result.stderr
    assert "converting model" in result.stderr.splitlines()
    (layer,) = [item for item in _manifest(smollm2_server, "smol-st")["layers"] if item["mediaType"] == DRAFT_MEDIA]
    reader = gguf.GGUFReader(smollm2_server.models / "blobs" / layer["digest"].replace(":", "-"))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert len(reader.tensors) == len(gguf.GGUFReader(smollm2_gguf).tensors)
    assert _config(smollm2_server, "smol-st")["draft"] == {"model_format": "gguf", "architecture": "llama"}


def test_errors_are_ollamas(smollm2_server: ServerProcess, smollm2_gguf: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_gguf}\nDRAFT {smollm2_gguf}\n")
    result = smollm2_server.cli("create", "bad", "-f", str(modelfile))
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: DRAFT must not reference the same local path as FROM: {smollm2_gguf}"

    modelfile.write_text(f"FROM {smollm2_gguf}\n")
    result = smollm2_server.cli("create", "bad", "-f", str(modelfile), "--draft-quantize", "q8_0")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: --draft-quantize requires a DRAFT model"

    with smollm2_server.client() as client:
        digest = upload_blob(client, smollm2_gguf)
        body = {"model": "bad", "files": {"m.gguf": digest}, "draft_quantize": "q8_0", "stream": False}
        r = client.post("/api/create", json=body)
        assert (r.status_code, r.json()) == (400, {"error": "--draft-quantize requires a DRAFT model"})
        body = {"model": "bad", "files": {"m.gguf": digest}, "draft_files": {"d.gguf": digest}, "draft_quantize": "q9"}
        r = client.post("/api/create", json={**body, "stream": False})
        assert r.status_code == 400 and r.json()["error"].startswith("unsupported quantization type Q9")
    assert not (smollm2_server.models / "manifests" / "registry.ollama.ai" / "library" / "bad").exists()


def test_a_draft_with_another_vocabulary_fails_to_load(
    smollm2_server: ServerProcess, smollm2_gguf: Path, gemma3_gguf: Path
) -> None:
    with smollm2_server.client() as client:
        files = {"m.gguf": upload_blob(client, smollm2_gguf)}
        body = {"model": "smol-gemma", "files": files, "draft_files": {"d.gguf": upload_blob(client, gemma3_gguf)}}
        r = client.post("/api/create", json={**body, "stream": False})
        assert r.status_code == 200, r.text
        r = client.post("/api/generate", json={"model": "smol-gemma", "prompt": "hi", "stream": False})
        assert r.status_code == 500
        assert r.json() == {
            "error": "the draft model is not compatible with the model: the vocabulary types differ (target 2, draft 1)"
        }
        # the same weights without the draft load and answer
        body = {"model": "smol-gemma", "prompt": "hi", "stream": False}
        r = client.post("/api/generate", json={**body, "options": {"draft_num_predict": 0, "num_predict": 4}})
        assert r.status_code == 200, r.text


def test_copy_and_delete_treat_the_draft_like_any_blob(smollm2_server: ServerProcess, drafted: str) -> None:
    (layer,) = [item for item in _manifest(smollm2_server, drafted)["layers"] if item["mediaType"] == DRAFT_MEDIA]
    blob = smollm2_server.models / "blobs" / layer["digest"].replace(":", "-")
    with smollm2_server.client() as client:
        assert client.post("/api/copy", json={"source": drafted, "destination": "smol-copy"}).status_code == 200
        assert _manifest(smollm2_server, "smol-copy")["layers"] == _manifest(smollm2_server, drafted)["layers"]
        for name in (drafted, "smol-child"):
            assert client.request("DELETE", "/api/delete", json={"model": name}).status_code == 200
        assert blob.is_file()  # smol-copy still references it
        assert client.request("DELETE", "/api/delete", json={"model": "smol-copy"}).status_code == 200
    assert not blob.exists()
