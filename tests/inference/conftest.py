"""Fixtures for the inference tests: tiny GGUF models in a real store, and a service whose runners
are ``FakeRunner``s (see ``fake_runner.py``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pollama.config import Settings
from pollama.inference.service import InferenceService
from pollama.names import parse_name
from pollama.store import ModelStore
from pollama.store.create import CreateRequest, create_model
from tests.inference.fake_runner import Runners, write_model_gguf, write_projector_gguf

Install = Callable[..., None]


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    models = ModelStore(tmp_path / "models")
    models.prepare()
    return models


@pytest.fixture
def install(store: ModelStore, tmp_path: Path) -> Install:
    """``install(name, template=..., system=..., parameters=..., messages=..., chat_template=...,
    projector=True)`` (a projector layer gives the model the ``vision`` capability)."""

    def install_model(
        name: str,
        *,
        chat_template: str | None = None,
        context_length: int = 4096,
        embedding: bool = False,
        projector: bool = False,
        **fields: Any,
    ) -> None:
        path = write_model_gguf(
            tmp_path / f"{name.replace(':', '_')}.gguf",
            context_length=context_length,
            chat_template=chat_template,
            embedding=embedding,
        )
        digest, _ = store.blobs.write_bytes(path.read_bytes())
        files = {"model.gguf": digest}
        if projector:
            mmproj = write_projector_gguf(tmp_path / f"mmproj-{name.replace(':', '_')}.gguf")
            files["mmproj.gguf"] = store.blobs.write_bytes(mmproj.read_bytes())[0]
        for _ in create_model(store, CreateRequest(name=parse_name(name), files=files, **fields)):
            pass

    return install_model


@pytest.fixture
def runners() -> Runners:
    return Runners()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(models=tmp_path / "models", num_parallel=1)


@pytest.fixture
def make_service(settings: Settings, store: ModelStore, runners: Runners) -> Callable[..., InferenceService]:
    """A service over ``store`` whose runners are ``FakeRunner``s (settings overridable)."""

    def make(**overrides: Any) -> InferenceService:
        return InferenceService(dataclasses.replace(settings, **overrides), store, launcher=runners.launch)

    return make
