"""Content-addressed blobs: ``blobs/sha256-<hex>``, written only after their bytes hash to their name.

Every way a blob enters the store (an upload, a local file, bytes made by ``create``, a download)
goes through ``BlobStore.write_stream``: bytes go to a temporary file while being hashed, and the
file is renamed to its digest's name only if the hash matches. A blob name is therefore always a
promise about its content, and a digest string can never name a path outside ``blobs/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import AsyncIterable, Iterable
from pathlib import Path

from pollama.errors import BlobNotFound, DigestMismatch, InvalidDigest
from pollama.store.files import TEMP_PREFIX, fsync_dir, temp_name

_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
_BLOB_FILE = re.compile(r"^sha256-[0-9a-f]{64}$")
_CHUNK = 1 << 20


def parse_digest(text: str) -> str:
    """Canonical form ``sha256:<lower hex>`` of a digest written ``sha256:<hex>`` or ``sha256-<hex>``.

    Raises ``InvalidDigest`` (Ollama's ``invalid digest format``) for anything else.
    """
    match = _DIGEST.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidDigest()
    return f"sha256:{match.group(1).lower()}"


def digest_bytes(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_file(path: Path) -> str:
    """The ``sha256:<hex>`` digest of a file's contents."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def is_blob_filename(name: str) -> bool:
    """True if ``name`` is a final blob file name (``sha256-<64 lower hex>``)."""
    return _BLOB_FILE.match(name) is not None


class BlobStore:
    """The ``blobs/`` folder of a models directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        """Where the blob with ``digest`` lives (whether or not it exists)."""
        return self.root / parse_digest(digest).replace(":", "-")

    def exists(self, digest: str) -> bool:
        """True if the blob is present."""
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        """The blob's size in bytes; ``BlobNotFound`` if absent."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f'blob "{parse_digest(digest)}" not found') from None

    def read_bytes(self, digest: str) -> bytes:
        """The blob's contents; ``BlobNotFound`` if absent."""
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f'blob "{parse_digest(digest)}" not found') from None

    def touch(self, digest: str) -> None:
        """Refresh an existing blob's mtime (so start-up pruning sees it as recent)."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(digest))

    def _open_temp(self) -> tuple[Path, int]:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(self.root, "blob-")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        return tmp, fd

    def _commit(self, tmp: Path, fd: int, digest: str, actual: str) -> Path:
        """Check the hash and move the temporary file into place (or delete it)."""
        try:
            if actual != digest:
                raise DigestMismatch(f'digest mismatch, expected "{digest}", got "{actual}"')
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        os.close(fd)
        final = self.path(digest)
        os.replace(tmp, final)
        fsync_dir(self.root)
        return final

    def write_stream(self, digest: str, chunks: Iterable[bytes]) -> Path:
        """Store the bytes of ``chunks`` as blob ``digest``; ``DigestMismatch`` if they hash otherwise."""
        digest = parse_digest(digest)
        tmp, fd = self._open_temp()
        h = hashlib.sha256()
        try:
            for chunk in chunks:
                h.update(chunk)
                _write_all(fd, chunk)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return self._commit(tmp, fd, digest, "sha256:" + h.hexdigest())

    async def write_async_stream(self, digest: str, chunks: AsyncIterable[bytes]) -> Path:
        """``write_stream`` for an asynchronous source (an HTTP request body)."""
        digest = parse_digest(digest)
        tmp, fd = self._open_temp()
        h = hashlib.sha256()
        try:
            async for chunk in chunks:
                h.update(chunk)
                _write_all(fd, chunk)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return self._commit(tmp, fd, digest, "sha256:" + h.hexdigest())

    def write_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` under its own digest; returns ``(digest, created)``."""
        digest = digest_bytes(data)
        if self.exists(digest):
            self.touch(digest)
            return digest, False
        self.write_stream(digest, [data])
        return digest, True

    def import_files(self, paths: Iterable[Path]) -> tuple[str, int]:
        """Concatenate ``paths`` into one blob (hashing as it copies); returns ``(digest, size)``."""
        tmp, fd = self._open_temp()
        h = hashlib.sha256()
        size = 0
        try:
            for path in paths:
                with path.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        _write_all(fd, chunk)
                        size += len(chunk)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        digest = "sha256:" + h.hexdigest()
        if self.exists(digest):
            os.close(fd)
            tmp.unlink()
            self.touch(digest)
            return digest, size
        self._commit(tmp, fd, digest, digest)
        return digest, size

    def delete(self, digest: str) -> None:
        """Remove a blob if present."""
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def list_files(self) -> list[Path]:
        """Every file in ``blobs/`` (blobs, temporary and partial files alike)."""
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_file()]

    def rename_legacy(self) -> None:
        """Rename blobs named ``sha256:<hex>`` (old Ollama) to ``sha256-<hex>``."""
        for path in self.list_files():
            if path.name.startswith("sha256:") and _DIGEST.match(path.name):
                target = self.root / path.name.replace(":", "-").lower()
                if not target.exists():
                    os.replace(path, target)

    def is_temporary(self, path: Path) -> bool:
        """True for files this process family writes while a blob is not yet verified."""
        return path.name.startswith(TEMP_PREFIX)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
