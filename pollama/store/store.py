"""The models directory: Ollama's layout of ``blobs/`` and ``manifests/<host>/<ns>/<model>/<tag>``.

``ModelStore`` finds models by name (case-insensitively, as Ollama does), reads and writes their
manifests atomically, copies them (a manifest only: blobs are shared), deletes them with garbage
collection of blobs nothing references any more, and cleans up after crashes at start-up.

Manifest writes, copies, deletes and every garbage collection hold ``lock`` (a ``StoreLock``: a
thread lock plus an ``flock`` on ``.pollama.lock`` in the models directory, so other processes
take part too), each for one short step that never yields. A writer's order is: write its blobs
(reserving them, ``BlobStore.reserve``), then take the lock, re-check that every blob is there,
write the manifest, release. A collection, under the lock, removes only blobs that no manifest
references and no writer has reserved; temporary and partial files are never its candidates.
Readers (``load``, ``list_models``) take no lock: manifests and blobs only ever appear by rename.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollama.convert.quantize import Quantizers
from pollama.errors import ModelNotFound, NotFound, StoreError
from pollama.names import ModelName, parse_name
from pollama.store.blobs import BlobReservation, BlobStore, is_blob_filename, parse_digest
from pollama.store.files import atomic_write_bytes
from pollama.store.lock import LOCK_FILE, StoreLock
from pollama.store.manifest import (
    MEDIA_ADAPTER,
    MEDIA_DRAFT,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Manifest,
    ModelConfig,
)

log = logging.getLogger(__name__)

# Files in blobs/ that are not referenced, or not blobs at all, survive start-up pruning this long:
# another process may be about to reference them (an upload before its create).
_PRUNE_AGE = 3600.0
# Resumable download state (``sha256-<hex>-partial*``) is kept longer, so a pull can resume a day later.
_PARTIAL_AGE = 24 * 3600.0


@dataclass
class StoredModel:
    """An installed model: its manifest, config and the contents of its small text layers."""

    name: ModelName
    manifest: Manifest
    config: ModelConfig
    modified_at: float
    blobs: BlobStore
    template: str | None = None
    system: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """The model ID: hex SHA-256 of the manifest bytes."""
        return self.manifest.digest

    @property
    def model_path(self) -> Path | None:
        """Path of the GGUF weights blob, if the model has one."""
        layers = self.manifest.layers_of(MEDIA_MODEL)
        return self.blobs.path(layers[0].digest) if layers else None

    @property
    def parent_model(self) -> str:
        """The ``from`` of the model layer (``details.parent_model``)."""
        layers = self.manifest.layers_of(MEDIA_MODEL)
        return layers[0].from_ if layers else ""

    @property
    def adapters(self) -> list[Path]:
        """LoRA adapter blobs, in manifest order."""
        return [self.blobs.path(layer.digest) for layer in self.manifest.layers_of(MEDIA_ADAPTER)]

    @property
    def projectors(self) -> list[Path]:
        """Multimodal projector blobs, in manifest order."""
        return [self.blobs.path(layer.digest) for layer in self.manifest.layers_of(MEDIA_PROJECTOR)]

    @property
    def draft(self) -> Path | None:
        """A speculative-decoding draft model blob, if any."""
        layers = self.manifest.layers_of(MEDIA_DRAFT)
        return self.blobs.path(layers[0].digest) if layers else None

    @property
    def size(self) -> int:
        """Total bytes of the manifest's blobs."""
        return self.manifest.size


@dataclass(frozen=True)
class ManifestEntry:
    """A manifest found on disk, with the name its path spells."""

    name: ModelName
    path: Path


class ModelStore:
    """One models directory (``OLLAMA_MODELS``)."""

    def __init__(self, root: Path, *, noprune: bool = False) -> None:
        self.root = root
        self.noprune = noprune
        self.blobs = BlobStore(root / "blobs")
        self.manifests_dir = root / "manifests"
        # Held (briefly, never across a yield) while manifests change and while blobs are
        # garbage-collected, by this process's threads and by other processes alike.
        self.lock = StoreLock(root / LOCK_FILE)
        self.quantizers = Quantizers()
        """Where creates get their quantizer subprocesses (one kept ready after a quantization)."""

    def reserve(self) -> BlobReservation:
        """A reservation of blobs a writer is about to reference (see ``BlobStore.reserve``); a
        collection it held up is finished, under the lock, when it is released."""
        return self.blobs.reserve(collect=self.remove_unreferenced)

    # --- names and manifests -------------------------------------------------------------------

    def manifest_path(self, name: ModelName) -> Path:
        """Where ``name``'s manifest lives (whether or not it exists)."""
        return self.manifests_dir.joinpath(*name.parts)

    def entries(self) -> Iterator[ManifestEntry]:
        """Every manifest under ``manifests/`` whose path is a valid model name.

        It reads without the store lock, so a delete may remove a folder while this walks: that
        folder is skipped, as if it had gone a moment earlier (a ``glob`` would raise instead).
        """
        for host, ns, model, tag in _paths_below(self.manifests_dir, 4):
            path = self.manifests_dir / host / ns / model / tag
            if tag.startswith(".") or not path.is_file():
                continue
            try:
                name = parse_name(f"{host}/{ns}/{model}:{tag}")
            except ValueError:
                log.warning("ignoring manifest with an invalid name: %s", path)
                continue
            yield ManifestEntry(name, path)

    def resolve(self, name: ModelName) -> ModelName | None:
        """The installed name matching ``name`` case-insensitively, with its stored casing."""
        if self.manifest_path(name).is_file():
            return name
        for entry in self.entries():
            if entry.name.matches(name):
                return entry.name
        return None

    def canonical(self, name: ModelName) -> ModelName:
        """``name`` with the casing of an installed model that matches it, or ``name`` itself."""
        return self.resolve(name) or name

    def read_manifest(self, name: ModelName) -> tuple[ModelName, Manifest, float]:
        """Find and parse ``name``'s manifest: ``(stored name, manifest, mtime)``."""
        found = self.resolve(name)
        if found is None:
            raise ModelNotFound(f"model '{name.display}' not found")
        path = self.manifest_path(found)
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            raise ModelNotFound(f"model '{name.display}' not found") from None
        return found, Manifest.from_bytes(raw), mtime

    def write_manifest(self, name: ModelName, manifest: Manifest) -> Manifest | None:
        """Write ``name``'s manifest atomically, after checking (under the lock) that every blob it
        names is present; returns the manifest it replaced (``None`` if there was none or it was unreadable)."""
        with self.lock:
            self.check_blobs(manifest)
            target = self.manifest_path(self.canonical(name))
            previous = None
            with contextlib.suppress(FileNotFoundError, StoreError):
                previous = Manifest.from_bytes(target.read_bytes())
            atomic_write_bytes(target, manifest.to_bytes())
            return previous

    def missing_blobs(self, manifest: Manifest) -> list[str]:
        """Digests ``manifest`` names that are not in ``blobs/`` (or are not valid digests)."""
        missing = []
        for layer in manifest.all_blobs():
            try:
                present = self.blobs.exists(layer.digest)
            except ValueError:
                present = False
            if not present:
                missing.append(layer.digest)
        return missing

    def check_blobs(self, manifest: Manifest) -> None:
        """``StoreError`` naming the first blob of ``manifest`` that is missing."""
        missing = self.missing_blobs(manifest)
        if missing:
            raise StoreError(f"blob {missing[0]} is missing; the manifest was not written")

    def load(self, name: ModelName) -> StoredModel:
        """Read an installed model and its text layers; ``ModelNotFound`` if it is not installed."""
        found, manifest, mtime = self.read_manifest(name)
        config = ModelConfig()
        with contextlib.suppress(FileNotFoundError, ValueError, ModelNotFound, LookupError):
            config = ModelConfig.from_json(json.loads(self.blobs.read_bytes(manifest.config.digest)))
        model = StoredModel(found, manifest, config, mtime, self.blobs)
        for layer in manifest.layers:
            kind = layer.media_type
            if kind not in (MEDIA_TEMPLATE, MEDIA_PROMPT, MEDIA_SYSTEM, MEDIA_PARAMS, MEDIA_MESSAGES, MEDIA_LICENSE):
                continue
            text = self.blobs.read_bytes(layer.digest).decode("utf-8", errors="replace")
            if kind in (MEDIA_TEMPLATE, MEDIA_PROMPT):
                model.template = text
            elif kind == MEDIA_SYSTEM:
                model.system = text
            elif kind == MEDIA_LICENSE:
                model.licenses.append(text)
            elif kind == MEDIA_PARAMS:
                params = _json_or(text, {})
                model.params = params if isinstance(params, dict) else {}
            else:
                messages = _json_or(text, [])
                model.messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
        return model

    def list_models(self) -> list[StoredModel]:
        """Every installed model whose manifest parses, newest first (as ``/api/tags`` lists them)."""
        models = []
        for entry in self.entries():
            try:
                models.append(self.load(entry.name))
            except (StoreError, NotFound, OSError) as exc:  # also: deleted while being read
                log.warning("skipping unreadable manifest %s: %s", entry.path, exc)
        models.sort(key=lambda m: m.modified_at, reverse=True)
        return models

    # --- copy and delete ------------------------------------------------------------------------

    def copy(self, source: ModelName, destination: ModelName) -> ModelName:
        """Copy ``source``'s manifest byte for byte to ``destination``; blobs are shared."""
        with self.lock:
            _, manifest, _ = self.read_manifest(source)
            target = self.canonical(destination)
            atomic_write_bytes(self.manifest_path(target), manifest.to_bytes())
            return target

    def delete(self, name: ModelName) -> None:
        """Remove ``name``'s manifest, empty folders above it, and (unless ``noprune``) its blobs
        that no other manifest references."""
        with self.lock:
            found, manifest, _ = self.read_manifest(name)
            path = self.manifest_path(found)
            path.unlink()
            self._remove_empty_dirs(path.parent)
            if not self.noprune:
                self.remove_unreferenced([layer.digest for layer in manifest.all_blobs()])

    def referenced_digests(self) -> set[str]:
        """Digests named by any manifest on disk; ``StoreError`` if some manifest cannot be read."""
        digests: set[str] = set()
        for entry in self.entries():
            manifest = Manifest.from_bytes(entry.path.read_bytes())
            for layer in manifest.all_blobs():
                with contextlib.suppress(ValueError):
                    digests.add(parse_digest(layer.digest))
        return digests

    def remove_unreferenced(self, candidates: list[str]) -> list[str]:
        """Delete those of ``candidates`` that no manifest references and no writer has reserved;
        returns what was deleted."""
        with self.lock:
            try:
                keep = self.referenced_digests()
            except StoreError as exc:
                log.warning("not removing unused blobs: %s", exc)
                return []
            removed = []
            for digest in dict.fromkeys(candidates):
                try:
                    canonical = parse_digest(digest)
                except ValueError:
                    continue
                if canonical not in keep and self.blobs.collect(canonical):
                    removed.append(canonical)
            return removed

    def _remove_empty_dirs(self, directory: Path) -> None:
        while directory != self.manifests_dir and self.manifests_dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    # --- start-up ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Start-up housekeeping: create folders, rename legacy blobs, prune (unless ``noprune``)."""
        self.blobs.root.mkdir(parents=True, exist_ok=True)
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self.blobs.rename_legacy()
            self._remove_stray_temporaries()
            if not self.noprune:
                self.prune()

    def _remove_stray_temporaries(self) -> None:
        """Temporary files of an interrupted write (never visible as blobs or manifests). A blob
        still being written by another process is locked by its writer and left alone; manifest
        temporaries are only written under the store lock, which the caller holds."""
        for path in self.blobs.list_files():
            if self.blobs.is_temporary(path):
                self.blobs.remove_abandoned(path)
        from pollama.store.create import remove_abandoned_workspaces  # create imports this module

        remove_abandoned_workspaces(self.blobs.root)  # a killed conversion's or quantization's folder
        if self.manifests_dir.is_dir():
            for path in self.manifests_dir.rglob(".tmp-*"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def prune(self, *, now: float | None = None) -> list[Path]:
        """Ollama's start-up pruning: unreferenced blobs and stray files older than an hour go,
        empty manifest folders go. Skipped (with a warning) if any manifest is unreadable."""
        now = time.time() if now is None else now
        removed: list[Path] = []
        with self.lock:
            try:
                keep = self.referenced_digests()
            except (StoreError, OSError) as exc:
                log.warning("skipping blob pruning, a manifest could not be read: %s", exc)
                return removed
            for path in self.blobs.list_files():
                try:
                    age = now - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                name = path.name
                if is_blob_filename(name):
                    digest = name.replace("-", ":", 1)
                    stale = digest not in keep and age > _PRUNE_AGE and not self.blobs.is_reserved(digest)
                elif "-partial" in name and name.startswith("sha256-"):
                    stale = age > _PARTIAL_AGE
                else:
                    stale = age > _PRUNE_AGE
                if stale:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed.append(path)
            if self.manifests_dir.is_dir():
                for directory in sorted(self.manifests_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if directory.is_dir():
                        with contextlib.suppress(OSError):
                            directory.rmdir()
        return removed


def _paths_below(folder: Path, depth: int) -> Iterator[tuple[str, ...]]:
    """The names on every path ``depth`` levels below ``folder``, in sorted order; a folder that is
    gone (or is not a folder) when it is reached has none."""
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        if depth == 1:
            yield (name,)
        else:
            for rest in _paths_below(folder / name, depth - 1):
                yield (name, *rest)


def _json_or(text: str, default: Any) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return default
