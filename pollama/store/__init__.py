"""The model store: Ollama's models directory layout, content-addressed blobs, manifests, create.

- ``ModelStore`` (``store.py``): names → manifests, copy, delete with garbage collection, start-up pruning.
- ``BlobStore`` (``blobs.py``): ``blobs/sha256-<hex>``; every byte enters through ``BlobWriter``
  (temporary file, digest check, fsync, rename) or, for a finished download, ``commit_file``.
  ``BlobReservation`` keeps garbage collection away from blobs a writer is about to reference.
- ``StoreLock`` (``lock.py``): manifest writes and collections, one at a time across processes.
- ``Manifest``, ``Layer``, ``ModelConfig`` and the media types (``manifest.py``).
- ``create_model`` (``create.py``): the ``/api/create`` pipeline.
"""

from pollama.store.blobs import (
    BlobReservation,
    BlobStore,
    BlobWriter,
    WrittenBlob,
    digest_bytes,
    digest_file,
    parse_digest,
)
from pollama.store.lock import StoreLock
from pollama.store.manifest import Layer, Manifest, ModelConfig
from pollama.store.progress import Progress
from pollama.store.store import ModelStore, StoredModel

__all__ = [
    "BlobReservation",
    "BlobStore",
    "BlobWriter",
    "Layer",
    "Manifest",
    "ModelConfig",
    "ModelStore",
    "Progress",
    "StoreLock",
    "StoredModel",
    "WrittenBlob",
    "digest_bytes",
    "digest_file",
    "parse_digest",
]
