"""Getting a model's files onto a node: the blobs a ``LoadSpec`` names, by digest, into the node's own
models directory, pulled from the frontend's read-only ``/v2`` endpoint with the registry client's
resumable, digest-checked blob download (``pollama.registry.pull.BlobDownload``).

A blob the node already has (a shared models directory, or an earlier pull) is used as it is. Pure
Python and no Ray: the runner actor calls ``localize`` in a worker thread.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from pollama.errors import RegistryError
from pollama.names import parse_name
from pollama.registry.pull import BlobDownload, PullOptions
from pollama.scheduler.spec import LoadSpec
from pollama.store import ModelStore
from pollama.store.manifest import Layer

_BLOB = "application/octet-stream"


@dataclass(frozen=True)
class BlobRef:
    """A blob a runner needs: its digest and size."""

    digest: str
    size: int


@dataclass(frozen=True)
class BlobSource:
    """Where a node fetches blobs: the frontend's ``host:port`` and the API key its ``/v2`` wants."""

    address: str
    api_key: str = ""


def blob_ref(path: Path) -> BlobRef:
    """The digest (from the store's ``sha256-<hex>`` file name) and size of a blob file."""
    name = path.name
    if not name.startswith("sha256-"):
        raise RegistryError(f"{path} is not a blob of a models directory")
    return BlobRef("sha256:" + name[len("sha256-") :], path.stat().st_size)


def spec_blobs(spec: LoadSpec) -> list[BlobRef]:
    """Every blob a runner for ``spec`` reads (weights, adapters, projectors, draft model)."""
    draft = (spec.draft,) if spec.draft is not None else ()
    return [blob_ref(p) for p in (spec.model_path, *spec.adapters, *spec.projectors, *draft)]


def node_models_dir() -> Path:
    """This node's models directory: ``OLLAMA_MODELS`` or ``~/.ollama/models``."""
    raw = os.environ.get("OLLAMA_MODELS", "").strip().strip("\"'")
    return Path(raw).expanduser() if raw else Path.home() / ".ollama" / "models"


def localize(spec: LoadSpec, blobs: list[BlobRef], source: BlobSource, models: Path | None = None) -> LoadSpec:
    """``spec`` with its paths pointing into this node's store, pulling the blobs it lacks first."""
    store = ModelStore(models or node_models_dir())
    for ref in blobs:
        if not store.blobs.exists(ref.digest):
            _pull_blob(store, ref, source)
    local = {ref.digest: store.blobs.path(ref.digest) for ref in blobs}

    def _at(path: Path) -> Path:
        return local[blob_ref_digest(path)]

    return dataclasses.replace(
        spec,
        model_path=_at(spec.model_path),
        adapters=tuple(_at(p) for p in spec.adapters),
        projectors=tuple(_at(p) for p in spec.projectors),
        draft=_at(spec.draft) if spec.draft is not None else None,
    )


def blob_ref_digest(path: Path) -> str:
    """The digest a blob file's name stands for (``sha256-<hex>`` → ``sha256:<hex>``)."""
    return "sha256:" + path.name[len("sha256-") :]


def _pull_blob(store: ModelStore, ref: BlobRef, source: BlobSource) -> None:
    """Download one blob from the frontend (resuming what an earlier attempt left) and verify it."""
    name = parse_name(f"{source.address}/pollama/blobs:latest")
    home = Path.home() / ".ollama"
    options = PullOptions(key_home=home, insecure=True)
    header = f"Bearer {source.api_key}" if source.api_key else None
    download = BlobDownload(store, name, Layer(_BLOB, ref.digest, ref.size), options, header)
    download.start()
    download.done.wait()
    if download.error is not None:
        raise download.error
    download.finish()
