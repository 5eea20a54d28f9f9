"""Vision models in the store: a projector (mmproj) GGUF becomes its own ``image.projector`` layer,
whether it comes with the model in ``files`` (in any order) or in a manifest pulled from Ollama."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pollama.gguf import is_projector, projector_info, read_gguf
from pollama.names import parse_name
from pollama.store import ModelStore
from pollama.store.capabilities import model_capabilities, read_model_gguf
from pollama.store.create import CreateRequest, create_model
from pollama.store.manifest import MEDIA_MODEL, MEDIA_PROJECTOR
from tests.conftest import VisionFiles

MODEL_SHA = "sha256:3c481daa0c8741ce2ea99c6aafeb30e4cbe810b511913ad83b8bb8cdceba191c"
PROJECTOR_SHA = "sha256:ae1d02eecf9d1451e9d766d76a8e156e866a0a6ebf7e84c4d98a7af0198b2e6c"


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    s = ModelStore(tmp_path / "models")
    s.prepare()
    return s


def _upload(store: ModelStore, path: Path) -> str:
    digest, _ = store.blobs.write_bytes(path.read_bytes())
    return digest


def test_the_projector_is_recognised_by_its_header(vision_files: VisionFiles) -> None:
    assert is_projector(read_gguf(vision_files.projector))
    assert not is_projector(read_gguf(vision_files.model))


def test_is_projector_follows_ollamas_rules(vision_files: VisionFiles) -> None:
    """general.type decides first; else a clip file needs no text layers and an encoder."""
    gguf = read_gguf(vision_files.projector)
    meta = dict(gguf.metadata)
    meta.pop("general.type")
    gguf.metadata = meta
    assert is_projector(gguf)  # clip + clip.has_vision_encoder
    gguf.metadata = {**meta, "clip.has_vision_encoder": False}
    assert is_projector(gguf)  # clip.vision.block_count without clip.block_count
    gguf.metadata = {k: v for k, v in meta.items() if k != "clip.vision.block_count"} | {
        "clip.has_vision_encoder": False
    }
    assert not is_projector(gguf)
    gguf.metadata = {**meta, "clip.block_count": 2}
    assert not is_projector(gguf)  # it has text layers: a model


@pytest.mark.parametrize("order", ["model first", "projector first"])
def test_files_give_a_model_and_a_projector_layer(store: ModelStore, vision_files: VisionFiles, order: str) -> None:
    model = (vision_files.model.name, _upload(store, vision_files.model))
    projector = (vision_files.projector.name, _upload(store, vision_files.projector))
    files = dict([model, projector] if order == "model first" else [projector, model])
    statuses = [p.status for p in create_model(store, CreateRequest(name=parse_name("tiny"), files=files))]
    assert statuses == [
        "parsing GGUF",
        "parsing GGUF",
        f"using existing layer {PROJECTOR_SHA}",  # Ollama's order: by file name (mmproj-... < tiny-...)
        f"using existing layer {MODEL_SHA}",
        "writing manifest",
        "success",
    ]
    stored = store.load(parse_name("tiny"))
    assert [(layer.media_type, layer.digest) for layer in stored.manifest.layers] == [
        (MEDIA_PROJECTOR, PROJECTOR_SHA),
        (MEDIA_MODEL, MODEL_SHA),
    ]
    assert stored.projectors == [store.blobs.path(PROJECTOR_SHA)]
    assert stored.model_path == store.blobs.path(MODEL_SHA)
    config = stored.config
    assert (config.model_family, config.model_families, config.model_type, config.file_type) == (
        "gemma3",
        ["gemma3"],  # the projector's "clip" is not a family
        "256K",
        "F16",
    )
    assert model_capabilities(stored, read_model_gguf(stored)) == ["completion", "vision"]


def test_a_model_created_from_a_vision_model_keeps_its_projector(store: ModelStore, vision_files: VisionFiles) -> None:
    files = {p.name: _upload(store, p) for p in (vision_files.model, vision_files.projector)}
    list(create_model(store, CreateRequest(name=parse_name("tiny"), files=files)))
    list(create_model(store, CreateRequest(name=parse_name("tiny2"), from_="tiny", system="Look closely.")))
    derived = store.load(parse_name("tiny2"))
    assert derived.projectors == [store.blobs.path(PROJECTOR_SHA)]
    assert [layer.from_ for layer in derived.manifest.layers_of(MEDIA_PROJECTOR)] == ["tiny:latest"]


def test_a_pulled_manifest_with_a_projector_layer(tmp_path: Path, vision_files: VisionFiles) -> None:
    """A models folder as Ollama's pull leaves it (llava-style: model, projector, template, params)."""
    root = tmp_path / "models"
    blobs = root / "blobs"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    weights = blob(vision_files.model.read_bytes())
    projector = blob(vision_files.projector.read_bytes())
    assert projector["digest"] == PROJECTOR_SHA
    params = blob(b'{"num_predict":8}')
    config = blob(
        json.dumps({"model_format": "gguf", "model_family": "gemma3", "model_families": ["gemma3", "clip"]}).encode()
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", **weights},
            {"mediaType": "application/vnd.ollama.image.projector", **projector},
            {"mediaType": "application/vnd.ollama.image.params", **params},
        ],
    }
    path = root / "manifests" / "registry.ollama.ai" / "library" / "tinyvision" / "latest"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))

    stored = ModelStore(root).load(parse_name("tinyvision"))
    assert stored.projectors == [blobs / f"sha256-{PROJECTOR_SHA.removeprefix('sha256:')}"]
    assert model_capabilities(stored, read_model_gguf(stored)) == ["completion", "vision"]


def test_projector_info_keeps_every_key_and_counts_parameters(vision_files: VisionFiles) -> None:
    info = projector_info(read_gguf(vision_files.projector))
    assert info["general.name"] == "tiny-gemma3-vision"  # Ollama drops it only from model_info
    assert info["general.architecture"] == "clip"
    assert info["general.parameter_count"] == 46272
    assert info["clip.projector_type"] == "gemma3"
    assert info["clip.has_vision_encoder"] is True
    assert (info["clip.vision.embedding_length"], info["clip.vision.projection_dim"]) == (32, 64)
    assert info["clip.vision.image_mean"] == [0.5, 0.5, 0.5]


def test_a_projector_file_next_to_an_installed_model_is_added(store: ModelStore, vision_files: VisionFiles) -> None:
    """``FROM textmodel`` + ``FROM ./mmproj.gguf``: the CLI sends ``from`` and ``files``; the
    projector joins the installed model's layers instead of being dropped."""
    model_files = {vision_files.model.name: _upload(store, vision_files.model)}
    list(create_model(store, CreateRequest(name=parse_name("text"), files=model_files)))
    assert store.load(parse_name("text")).projectors == []
    projector_files = {vision_files.projector.name: _upload(store, vision_files.projector)}
    statuses = [
        p.status
        for p in create_model(store, CreateRequest(name=parse_name("seeing"), from_="text", files=projector_files))
    ]
    assert statuses == [
        "parsing GGUF",
        f"using existing layer {MODEL_SHA}",
        f"using existing layer {PROJECTOR_SHA}",
        "writing manifest",
        "success",
    ]
    seeing = store.load(parse_name("seeing"))
    assert [layer.media_type for layer in seeing.manifest.layers] == [MEDIA_MODEL, MEDIA_PROJECTOR]
    assert seeing.projectors == [store.blobs.path(PROJECTOR_SHA)]
    assert model_capabilities(seeing, read_model_gguf(seeing)) == ["completion", "vision"]
    assert seeing.config.model_families == ["gemma3"]
