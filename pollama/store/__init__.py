"""The model store: Ollama's models directory layout, content-addressed blobs, manifests, create.

- ``ModelStore`` (``store.py``): names → manifests, copy, delete with garbage collection, start-up pruning.
- ``BlobStore`` (``blobs.py``): ``blobs/sha256-<hex>``, verified before they become visible.
- ``Manifest``, ``Layer``, ``ModelConfig`` and the media types (``manifest.py``).
- ``create_model`` (``create.py``): the ``/api/create`` pipeline.
"""

from pollama.store.blobs import BlobStore, digest_bytes, digest_file, parse_digest
from pollama.store.manifest import Layer, Manifest, ModelConfig
from pollama.store.progress import Progress
from pollama.store.store import ModelStore, StoredModel

__all__ = [
    "BlobStore",
    "Layer",
    "Manifest",
    "ModelConfig",
    "ModelStore",
    "Progress",
    "StoredModel",
    "digest_bytes",
    "digest_file",
    "parse_digest",
]
