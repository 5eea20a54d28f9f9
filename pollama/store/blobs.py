"""Content-addressed blobs: ``blobs/sha256-<hex>``, written only after their bytes hash to their name.

Every byte that enters the store takes one path, ``BlobWriter``: a temporary file in ``blobs/`` (so
the final rename never crosses a file system), hashed while it is written, compared with the
expected digest, fsynced, renamed into place with ``os.replace`` and the folder fsynced. Uploads
(``write_async``), create's small layers and local files (``write``), OCI-layout imports and the
offline catalog (``write``) stream through it; a pull, whose parts arrive out of order in a
resumable ``-partial`` file, hands the finished file to ``commit_file``, which ends the same way.
A blob name is therefore always a promise about its content, and a digest string can never name a
path outside ``blobs/``.

A writer about to reference blobs from a manifest (create, pull, import) *reserves* them first
(``BlobStore.reserve``): garbage collection (``collect``) leaves reserved digests alone, so a
concurrent delete cannot remove a blob between the moment a writer sees it and the moment its
manifest names it. A temporary file is ``flock``-ed by its writer, so start-up cleanup in another
process can tell an abandoned one from one still being written.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from pollama.errors import BlobNotFound, DigestMismatch, InvalidDigest
from pollama.store.files import TEMP_PREFIX, fsync_dir, temp_name

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
_BLOB_FILE = re.compile(r"^sha256-[0-9a-f]{64}$")
_CHUNK = 1 << 20
# An upload's body arrives in small chunks on the event loop; they are handed to a worker thread
# (hashing and writing) in batches of about this many bytes.
_ASYNC_BATCH = 4 << 20


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


@dataclass(frozen=True)
class WrittenBlob:
    """A blob now in the store: its digest, size and path, and whether this write created it."""

    digest: str
    size: int
    path: Path
    created: bool


class BlobReservation:
    """Digests a writer is about to reference from a manifest; garbage collection leaves them alone.

    A context manager: everything reserved is released when the ``with`` block ends. A collection
    that skipped a digest because it was reserved is finished then, by ``collect`` (given by the
    ``ModelStore``, which re-checks references under its lock), so nothing is left behind.
    """

    def __init__(self, blobs: BlobStore, collect: Callable[[list[str]], object] | None = None) -> None:
        self._blobs = blobs
        self._collect = collect
        self._digests: list[str] = []

    def add(self, digest: str) -> bool:
        """Reserve ``digest``; True if the blob is present (checked atomically with collection)."""
        canonical = parse_digest(digest)
        present = self._blobs._reserve(canonical)
        self._digests.append(canonical)
        return present

    def release(self) -> None:
        """Let garbage collection see every digest reserved so far again."""
        digests, self._digests = self._digests, []
        deferred = self._blobs._unreserve(digests)
        if deferred and self._collect is not None:
            try:
                self._collect(deferred)
            except (OSError, ValueError) as exc:  # start-up pruning removes them later
                log.warning("could not remove unused blobs %s: %s", ", ".join(deferred), exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


class BlobWriter:
    """One blob on its way into the store: a locked temporary file in ``blobs/``, hashed as written.

    ``commit()`` checks the digest (when one was expected), fsyncs, renames into place and fsyncs
    the folder; ``abort()`` (or leaving a ``with`` block without committing) deletes the temporary file.
    """

    def __init__(
        self, blobs: BlobStore, digest: str | None = None, *, reservation: BlobReservation | None = None
    ) -> None:
        self._blobs = blobs
        self.expected = parse_digest(digest) if digest is not None else None
        self._reservation = reservation
        self._hash = hashlib.sha256()
        self.size = 0
        blobs.root.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_name(blobs.root, "blob-")
        self._fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "still being written" to other processes

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        if self._fd is None:
            raise ValueError("the blob writer is closed")
        self._hash.update(data)
        _write_all(self._fd, data)
        self.size += len(data)

    def write_all(self, chunks: Iterable[bytes]) -> None:
        """Append every chunk of ``chunks``."""
        for chunk in chunks:
            self.write(chunk)

    def commit(self) -> WrittenBlob:
        """Verify and install the blob; ``DigestMismatch`` (temporary file deleted) if it hashes otherwise."""
        if self._fd is None:
            raise ValueError("the blob writer is closed")
        fd, self._fd = self._fd, None
        actual = "sha256:" + self._hash.hexdigest()
        return self._blobs._install(self.tmp, fd, self.expected or actual, actual, self.size, self._reservation)

    def abort(self) -> None:
        """Throw the bytes away (nothing if already committed or aborted)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.abort()


class BlobStore:
    """The ``blobs/`` folder of a models directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._reserved: collections.Counter[str] = collections.Counter()
        self._deferred: set[str] = set()  # collections skipped because the digest was reserved
        self._reserved_lock = threading.Lock()

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

    def refresh(self, digest: str) -> bool:
        """True (and the mtime refreshed) if the blob is present."""
        if not self.exists(digest):
            return False
        self.touch(digest)
        return True

    # --- writing: the one way in ---------------------------------------------------------------

    def writer(self, digest: str | None = None, *, reservation: BlobReservation | None = None) -> BlobWriter:
        """A ``BlobWriter`` for a blob expected to hash to ``digest`` (``None``: named by its hash)."""
        return BlobWriter(self, digest, reservation=reservation)

    def write(
        self, chunks: Iterable[bytes], digest: str | None = None, *, reservation: BlobReservation | None = None
    ) -> WrittenBlob:
        """Store the bytes of ``chunks`` (as ``digest``, or under their own hash if ``None``)."""
        with self.writer(digest, reservation=reservation) as writer:
            writer.write_all(chunks)
            return writer.commit()

    async def write_async(
        self, chunks: AsyncIterable[bytes], digest: str | None = None, *, reservation: BlobReservation | None = None
    ) -> WrittenBlob:
        """``write`` for an asynchronous source (an HTTP request body): the event loop only collects
        chunks; opening, hashing, writing, fsync and rename run in worker threads."""
        import anyio
        import anyio.to_thread

        writer = await anyio.to_thread.run_sync(lambda: self.writer(digest, reservation=reservation))
        try:
            batch: list[bytes] = []
            pending = 0
            async for chunk in chunks:
                if not chunk:
                    continue
                batch.append(chunk)
                pending += len(chunk)
                if pending >= _ASYNC_BATCH:
                    await anyio.to_thread.run_sync(writer.write_all, batch)
                    batch, pending = [], 0
            if batch:
                await anyio.to_thread.run_sync(writer.write_all, batch)
            return await anyio.to_thread.run_sync(writer.commit)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(writer.abort)

    def commit_file(
        self, staged: Path, digest: str, *, actual: str | None = None, reservation: BlobReservation | None = None
    ) -> WrittenBlob:
        """Install a file written in place in ``blobs/`` (a finished download) as blob ``digest``.

        ``actual`` is the file's hash if the caller already knows it; otherwise it is computed. On
        ``DigestMismatch`` the staged file is deleted.
        """
        expected = parse_digest(digest)
        fd = os.open(staged, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if actual is None:
                actual = digest_file(staged)
        except BaseException:
            os.close(fd)
            raise
        return self._install(staged, fd, expected, actual, size, reservation)

    def write_stream(self, digest: str, chunks: Iterable[bytes]) -> Path:
        """``write`` with a known digest, returning the blob's path."""
        return self.write(chunks, digest).path

    def write_bytes(self, data: bytes) -> tuple[str, bool]:
        """``write`` of one ``bytes`` under its own digest: ``(digest, created)``."""
        written = self.write([data])
        return written.digest, written.created

    def import_files(self, paths: Iterable[Path]) -> tuple[str, int]:
        """``write`` of the concatenation of ``paths`` under its own digest: ``(digest, size)``."""
        written = self.write(_file_chunks(paths))
        return written.digest, written.size

    def _install(
        self, staged: Path, fd: int, expected: str, actual: str, size: int, reservation: BlobReservation | None
    ) -> WrittenBlob:
        """Every write ends here: digest check, fsync, rename into place, folder fsync."""
        final = self.path(expected)
        try:
            if actual != expected:
                raise DigestMismatch(f'digest mismatch, expected "{expected}", got "{actual}"')
            present = reservation.add(expected) if reservation is not None else self.exists(expected)
            if present:
                self.touch(expected)
            else:
                os.fsync(fd)
                os.fchmod(fd, 0o644)
                os.replace(staged, final)  # while the temp file is still locked by us
                fsync_dir(self.root)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            raise
        os.close(fd)
        if present:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
        return WrittenBlob(expected, size, final, created=not present)

    # --- reservations and garbage collection ---------------------------------------------------

    def reserve(self, collect: Callable[[list[str]], object] | None = None) -> BlobReservation:
        """A new, empty reservation (use it as a context manager); ``collect`` finishes deferred collections."""
        return BlobReservation(self, collect)

    def _reserve(self, digest: str) -> bool:
        with self._reserved_lock:
            self._reserved[digest] += 1
            return self.exists(digest)

    def _unreserve(self, digests: list[str]) -> list[str]:
        """Drop one reservation of each digest; returns those now free whose collection was deferred."""
        freed = []
        with self._reserved_lock:
            for digest in digests:
                self._reserved[digest] -= 1
                if self._reserved[digest] <= 0:
                    del self._reserved[digest]
                    if digest in self._deferred:
                        self._deferred.discard(digest)
                        freed.append(digest)
        return freed

    def is_reserved(self, digest: str) -> bool:
        """True while some writer of this process has ``digest`` reserved."""
        with self._reserved_lock:
            return self._reserved.get(parse_digest(digest), 0) > 0

    def collect(self, digest: str) -> bool:
        """Delete blob ``digest`` unless it is reserved; True if a file was removed.

        The caller (``ModelStore``, under the store lock) has checked that no manifest references it.
        """
        canonical = parse_digest(digest)
        with self._reserved_lock:
            if self._reserved.get(canonical, 0) > 0:
                self._deferred.add(canonical)
                return False
            try:
                self.path(canonical).unlink()
            except FileNotFoundError:
                return False
            return True

    def delete(self, digest: str) -> None:
        """Remove a blob if present (regardless of references: for undoing a failed import)."""
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

    def remove_abandoned(self, path: Path) -> bool:
        """Delete temporary file ``path`` unless its writer (in any process) still holds it open."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                return True
            return False
        finally:
            os.close(fd)


def _file_chunks(paths: Iterable[Path]) -> Iterable[bytes]:
    for path in paths:
        with path.open("rb") as src:
            while chunk := src.read(_CHUNK):
                yield chunk


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
