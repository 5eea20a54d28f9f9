"""Moving models in and out of the store: OCI distribution registries, Python packages, tar files.

- ``pull_model`` (``pull.py``): manifest → parallel, ranged, resumable, verified blob downloads →
  manifest written last; ``BlobTransfers`` shares downloads between concurrent pulls.
- ``push_model`` (``push.py``): HEAD → mount or chunked upload → commit, then the manifest.
- ``RegistryClient``, ``TransferSettings``, ``registry_error`` (``client.py``): HTTP to a registry and
  the one mapping of registry failures to ``pollama.errors``.
- ``Authenticator`` and credentials lookup (``auth.py``); the ed25519 machine key and Ollama's
  signatures (``keys.py``, on ``cryptography``).
- ``offline_source`` and ``CATALOG`` (``catalog.py``): models installed from Python packages when no
  registry can be reached.
- ``export_model`` / ``import_layout`` (``oci_layout.py``): OCI image layout tar files.

Nothing here knows about HTTP status codes of pollama's own API; ``pollama.server`` renders errors.
"""

from pollama.registry.catalog import CATALOG, CatalogEntry, find_entry, install_from_package, offline_source
from pollama.registry.client import RegistryClient, TransferSettings, registry_error
from pollama.registry.keys import KeyPair, ensure_keypair, load_keypair
from pollama.registry.oci_layout import export_model, import_layout
from pollama.registry.pull import BlobTransfers, PullOptions, pull_model
from pollama.registry.push import PushOptions, push_model

__all__ = [
    "CATALOG",
    "BlobTransfers",
    "CatalogEntry",
    "KeyPair",
    "PullOptions",
    "PushOptions",
    "RegistryClient",
    "TransferSettings",
    "ensure_keypair",
    "export_model",
    "find_entry",
    "import_layout",
    "install_from_package",
    "load_keypair",
    "offline_source",
    "pull_model",
    "push_model",
    "registry_error",
]
