"""Modelfile ``DRAFT`` turned into a create request's ``draft_files`` (spec §4.2), without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from pollama.errors import ModelfileError
from pollama.modelfile import parse_modelfile, typed_parameters
from pollama.modelfile.request import PreparedCreate, prepare_create


def _prepare(text: str, folder: Path) -> PreparedCreate:
    return prepare_create(parse_modelfile(text), folder, typed_parameters=typed_parameters)


def test_a_draft_file_or_folder_becomes_draft_files(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "draft.gguf").write_bytes(b"GGUF")
    prepared = _prepare("FROM ./model.gguf\ndraft draft.gguf\n", tmp_path)
    assert prepared.files == {"model.gguf": tmp_path / "model.gguf"}
    assert prepared.draft_files == {"draft.gguf": tmp_path / "draft.gguf"}
    assert "draft_files" not in prepared.body  # the CLI fills in digests after uploading

    hf = tmp_path / "small"
    hf.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        (hf / name).write_bytes(b"{}")
    prepared = _prepare("FROM llama3.2\nDRAFT ./small\n", tmp_path)
    assert prepared.body["from"] == "llama3.2"
    assert set(prepared.draft_files) == {"model.safetensors", "config.json", "tokenizer.json"}


def test_draft_errors_are_ollamas(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelfileError) as err:
        _prepare(f"DRAFT ./model.gguf\nFROM {tmp_path / 'model.gguf'}\n", tmp_path)
    assert str(err.value) == "DRAFT must not reference the same local path as FROM: ./model.gguf"
    with pytest.raises(ModelfileError) as err:
        _prepare("FROM ./model.gguf\nDRAFT ./missing.gguf\n", tmp_path)
    assert str(err.value) == "open ./missing.gguf: no such file or directory"
