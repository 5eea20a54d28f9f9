"""Manifests and their config blobs, in Ollama's exact JSON shapes and media types.

A manifest is Docker distribution's v2 schema: ``schemaVersion``, ``mediaType``, ``config`` and
``layers``; each layer is a descriptor (media type, digest, size, optional ``from`` and ``name``).
The config blob carries what Ollama derived from the weights (format, family, parameter size,
quantization). Manifests we write are encoded as Go encodes them; manifests we read (written by
Ollama or pulled from a registry) are kept byte for byte, since their digest is the model's ID.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pollama.errors import StoreError
from pollama.store.files import go_json

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"

MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_PROMPT = "application/vnd.ollama.image.prompt"  # legacy alias of template, read only
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_DRAFT = "application/vnd.ollama.image.draft"
MEDIA_EMBED = "application/vnd.ollama.image.embed"  # obsolete, ignored

WEIGHT_MEDIA_TYPES = (MEDIA_MODEL, MEDIA_PROJECTOR, MEDIA_ADAPTER, MEDIA_DRAFT)


@dataclass
class Layer:
    """One descriptor of a manifest."""

    media_type: str
    digest: str
    size: int
    from_: str = ""
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        """The descriptor as Go's ``Layer`` struct marshals it (``from``/``name`` omitted when empty)."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layer:
        """Read a descriptor; ``StoreError`` if a required field is missing."""
        try:
            return cls(
                media_type=str(data["mediaType"]),
                digest=str(data["digest"]),
                size=int(data.get("size", 0)),
                from_=str(data.get("from", "") or ""),
                name=str(data.get("name", "") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"invalid manifest layer: {exc}") from None


@dataclass
class Manifest:
    """A parsed manifest. ``raw`` holds the exact bytes it was read from, if it was read."""

    config: Layer
    layers: list[Layer]
    schema_version: int = 2
    media_type: str = MANIFEST_V2
    raw: bytes = b""

    def to_bytes(self) -> bytes:
        """The bytes to store: the original bytes if this manifest was read, else Go's encoding."""
        if self.raw:
            return self.raw
        return go_json(
            {
                "schemaVersion": self.schema_version,
                "mediaType": self.media_type,
                "config": self.config.to_json(),
                "layers": [layer.to_json() for layer in self.layers],
            }
        )

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the manifest's bytes: the model ID Ollama shows."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def size(self) -> int:
        """Sum of all layer sizes plus the config size (``size`` in ``/api/tags``)."""
        return self.config.size + sum(layer.size for layer in self.layers)

    def all_blobs(self) -> list[Layer]:
        """The config descriptor followed by every layer."""
        return [self.config, *self.layers]

    def layers_of(self, media_type: str) -> list[Layer]:
        """Layers with the given media type, in manifest order."""
        return [layer for layer in self.layers if layer.media_type == media_type]

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Parse manifest bytes; ``StoreError`` when they are not a usable manifest."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"invalid manifest: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise StoreError("invalid manifest: missing config")
        layers = data.get("layers") or []
        if not isinstance(layers, list):
            raise StoreError("invalid manifest: layers is not a list")
        return cls(
            config=Layer.from_json(data["config"]),
            layers=[Layer.from_json(layer) for layer in layers],
            schema_version=int(data.get("schemaVersion", 2)),
            media_type=str(data.get("mediaType", MANIFEST_V2)),
            raw=raw,
        )


@dataclass
class ModelConfig:
    """The config blob (``application/vnd.docker.container.image.v1+json``) Ollama writes."""

    model_format: str = ""
    model_family: str = ""
    model_families: list[str] | None = None
    model_type: str = ""
    file_type: str = ""
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    remote_host: str = ""
    remote_model: str = ""
    capabilities: list[str] = field(default_factory=list)
    context_length: int = 0
    embedding_length: int = 0
    base_name: str = ""
    draft: dict[str, Any] | None = None  # the DRAFT layer's ``{model_format, architecture, ...}``
    architecture: str = "amd64"
    os: str = "linux"
    diff_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The config in Go's field order, with ``omitempty`` fields left out when empty."""
        out: dict[str, Any] = {
            "model_format": self.model_format,
            "model_family": self.model_family,
            "model_families": self.model_families,
            "model_type": self.model_type,
            "file_type": self.file_type,
        }
        for key in ("renderer", "parser", "requires", "remote_host", "remote_model"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.capabilities:
            out["capabilities"] = self.capabilities
        if self.context_length:
            out["context_length"] = self.context_length
        if self.embedding_length:
            out["embedding_length"] = self.embedding_length
        if self.base_name:
            out["base_name"] = self.base_name
        if self.draft:
            out["draft"] = self.draft
        out["architecture"] = self.architecture
        out["os"] = self.os
        out["rootfs"] = {"type": "layers", "diff_ids": self.diff_ids}
        return out

    @classmethod
    def from_json(cls, data: Any) -> ModelConfig:
        """Read a config blob's JSON; unknown fields are ignored, missing ones left empty."""
        if not isinstance(data, dict):
            return cls()
        rootfs = data.get("rootfs") if isinstance(data.get("rootfs"), dict) else {}

        def text(key: str) -> str:
            value = data.get(key)
            return value if isinstance(value, str) else ""

        def number(key: str) -> int:
            value = data.get(key)
            return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

        families = data.get("model_families")
        return cls(
            model_format=text("model_format"),
            model_family=text("model_family"),
            model_families=[str(f) for f in families] if isinstance(families, list) else None,
            model_type=text("model_type"),
            file_type=text("file_type"),
            renderer=text("renderer"),
            parser=text("parser"),
            requires=text("requires"),
            remote_host=text("remote_host"),
            remote_model=text("remote_model"),
            capabilities=[str(c) for c in data.get("capabilities") or [] if isinstance(c, str)],
            context_length=number("context_length"),
            embedding_length=number("embedding_length"),
            base_name=text("base_name"),
            draft=dict(data["draft"]) if isinstance(data.get("draft"), dict) else None,
            architecture=text("architecture") or "amd64",
            os=text("os") or "linux",
            diff_ids=[str(d) for d in (rootfs or {}).get("diff_ids") or []],
        )
