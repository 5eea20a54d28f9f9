"""Carrying models between machines as OCI image layouts in a tar file (``pollama export``/``import``).

The archive is an OCI image layout (image-spec ``image-layout.md``)::

    oci-layout                 {"imageLayoutVersion": "1.0.0"}
    index.json                 an image index; each manifest carries the model's full name in the
                               ``org.opencontainers.image.ref.name`` annotation
    blobs/sha256/<hex>         the manifest (byte for byte, so the model keeps its ID), config, layers

so other OCI tools (``oras``, ``skopeo``, ``crane``) can read it or push it to a registry. Export is
deterministic (fixed order, zero timestamps and owners): the same model gives the same tar.

Both directions work on the local models directory directly (``ModelStore``, from ``OLLAMA_MODELS``)
rather than through the server: a model of many gigabytes is not streamed through HTTP twice, and
the commands work with no server running. They take the store's lock (shared with a running server,
through its lock file) for their short critical steps: export reads the manifest and opens its
blobs under it; import writes its blobs through the store's one blob path (``BlobWriter``: SHA-256
and size checked against the name before anything becomes visible), then re-checks them and writes
the manifests under it. If anything fails, blobs this import added are removed again and no
manifest is written. Nothing is extracted by path: members are looked up by the names the index
implies, and an archive holding absolute or ``..`` member names, links or device files is refused
outright, so a crafted archive cannot write outside the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pollama.errors import BlobNotFound, DigestMismatch, InvalidModelName, InvalidRequest, StoreError
from pollama.names import ModelName, parse_name
from pollama.registry.progress import ByteCounter, in_background
from pollama.store.blobs import BlobReservation, parse_digest
from pollama.store.files import fsync_dir, temp_name
from pollama.store.manifest import MANIFEST_V2, OCI_MANIFEST, Manifest
from pollama.store.progress import Progress
from pollama.store.store import ModelStore

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_LAYOUT = {"imageLayoutVersion": "1.0.0"}
_CHUNK = 4 << 20
_MAX_JSON = 16 << 20


def _member_info(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _CountingReader(io.RawIOBase):
    def __init__(self, fh: IO[bytes], counter: ByteCounter) -> None:
        self.fh = fh
        self.counter = counter

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.counter.add(len(data))
        return data


@dataclass(frozen=True)
class LayoutSummary:
    """What an export or import did: the models, the archive, and the models' blobs (count, bytes)."""

    models: list[str]
    archive: Path
    blobs: int
    size: int


def export_model(store: ModelStore, name: ModelName, target: Path) -> Generator[Progress, None, LayoutSummary]:
    """Write ``name`` as an OCI image layout tar at ``target`` (replaced atomically), with progress.

    The manifest is read and its blobs opened under the store lock, so a concurrent delete (here or
    in a server) cannot take them away half way: an open file stays readable after its name is gone.
    """
    handles: dict[str, IO[bytes]] = {}
    try:
        with store.lock:
            found, manifest, _ = store.read_manifest(name)
            for layer in [manifest.config, *manifest.layers]:
                digest = parse_digest(layer.digest)
                if digest not in handles:
                    try:
                        handles[digest] = store.blobs.path(digest).open("rb")
                    except FileNotFoundError:
                        raise BlobNotFound(f'blob "{digest}" not found') from None
        yield from _write_layout(found, manifest, handles, target)
    finally:
        for fh in handles.values():
            fh.close()
    return LayoutSummary([found.display], target, len(handles), manifest.size)


def _write_layout(
    found: ModelName, manifest: Manifest, handles: dict[str, IO[bytes]], target: Path
) -> Iterator[Progress]:
    raw = manifest.to_bytes()
    manifest_digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": manifest.media_type or MANIFEST_V2,
                "digest": manifest_digest,
                "size": len(raw),
                "annotations": {REF_NAME: found.full},
            }
        ],
    }
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target.parent, "export-")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", json.dumps(_LAYOUT).encode())
            _add_bytes(tar, "index.json", json.dumps(index, indent=2).encode() + b"\n")
            tar.addfile(_member_info("blobs", 0, directory=True))
            tar.addfile(_member_info("blobs/sha256", 0, directory=True))
            _add_bytes(tar, f"blobs/sha256/{manifest_digest[7:]}", raw)
            for digest, handle in handles.items():
                if digest == manifest_digest:
                    continue
                size = os.fstat(handle.fileno()).st_size

                def add(counter: ByteCounter, fh: IO[bytes] = handle, digest: str = digest, size: int = size) -> None:
                    tar.addfile(_member_info(f"blobs/sha256/{digest[7:]}", size), _CountingReader(fh, counter))

                yield from in_background(add, f"exporting {digest[7:19]}", digest, size)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    yield Progress("success")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_member_info(name, len(data)), io.BytesIO(data))


@dataclass
class _Planned:
    name: ModelName
    manifest: Manifest


def import_layout(
    store: ModelStore, source: Path, name: ModelName | None = None
) -> Generator[Progress, None, LayoutSummary]:
    """Install the models of the OCI image layout tar ``source`` (``name`` renames a single model).

    Blobs are written (verified) and reserved first; then, under the store lock, every blob each
    manifest names is checked again — one that a garbage collection in another process removed
    meanwhile is copied once more — and the manifests are written.
    """
    created: list[str] = []
    try:
        tar = tarfile.open(source, "r:*")  # noqa: SIM115 - closed by the with below
    except tarfile.TarError as exc:
        raise InvalidRequest(f"{source.name} is not a tar file: {exc}") from None
    try:
        with tar, store.reserve() as reserved:
            members = _safe_members(tar, source)
            layout = _read_json(tar, members, "oci-layout")
            if not str(layout.get("imageLayoutVersion", "")).startswith("1."):
                raise InvalidRequest(
                    f"{source.name}: unsupported OCI layout version {layout.get('imageLayoutVersion')!r}"
                )
            index = _read_json(tar, members, "index.json")
            descriptors = index.get("manifests")
            if not isinstance(descriptors, list) or not descriptors:
                raise InvalidRequest(f"{source.name}: index.json lists no manifests")
            if name is not None and len(descriptors) != 1:
                raise InvalidRequest(f"{source.name} holds {len(descriptors)} models; a name can only be given for one")
            planned = [_plan(tar, members, source, d, name) for d in descriptors]
            sizes: dict[str, int] = {}
            for item in planned:
                for layer in item.manifest.all_blobs():
                    digest = parse_digest(layer.digest)
                    if digest in sizes:
                        continue
                    sizes[digest] = layer.size
                    if reserved.add(digest):
                        store.blobs.touch(digest)
                        yield Progress(f"importing {digest[7:19]}", digest, layer.size, layer.size)
                        continue
                    member = _member(members, source, digest)
                    if member.size != layer.size:
                        raise DigestMismatch(
                            f"{source.name}: blob {digest} has {member.size} bytes, the manifest says {layer.size}"
                        )

                    def copy(counter: ByteCounter, member: tarfile.TarInfo = member, digest: str = digest) -> None:
                        _copy_blob(store, tar, member, digest, counter, source, reserved)

                    yield from in_background(copy, f"importing {digest[7:19]}", digest, layer.size)
                    created.append(digest)
            yield Progress("writing manifest")
            with store.lock:
                for item in planned:
                    for digest in store.missing_blobs(item.manifest):
                        _copy_blob(
                            store,
                            tar,
                            _member(members, source, parse_digest(digest)),
                            parse_digest(digest),
                            ByteCounter(),
                            source,
                            reserved,
                        )
                    store.write_manifest(item.name, item.manifest)
    except tarfile.TarError as exc:
        if created:
            store.remove_unreferenced(created)
        raise InvalidRequest(f"{source.name} is damaged: {exc}") from None
    except BaseException:
        if created:
            store.remove_unreferenced(created)
        raise
    yield Progress("success")
    return LayoutSummary([item.name.display for item in planned], source, len(sizes), sum(sizes.values()))


def _safe_members(tar: tarfile.TarFile, source: Path) -> dict[str, tarfile.TarInfo]:
    """The archive's members by cleaned name; ``InvalidRequest`` for any member that could point
    outside a folder it were extracted to (absolute, ``..``, links, devices), even though nothing
    is extracted by path: such an archive was not made by an exporter and is refused whole."""
    members: dict[str, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        raw = member.name
        parts = raw.replace("\\", "/").split("/")
        if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":"):
            reason = "absolute path"
        elif ".." in parts:
            reason = "path leaves the archive (..)"
        elif member.issym() or member.islnk():
            reason = f"link to {member.linkname!r}"
        elif not (member.isfile() or member.isdir()):
            reason = "not a regular file or folder"
        else:
            members[_clean(raw)] = member
            continue
        raise InvalidRequest(f"{source.name}: unsafe archive member {raw!r} ({reason}); nothing was imported")
    return members


def _clean(member_name: str) -> str:
    while member_name.startswith("./"):
        member_name = member_name[2:]
    return member_name.rstrip("/")


def _member(members: dict[str, tarfile.TarInfo], source: Path, digest: str) -> tarfile.TarInfo:
    member = members.get(f"blobs/sha256/{digest[7:]}")
    if member is None:
        raise StoreError(f"{source.name}: blob {digest} is missing from the archive")
    if not member.isfile():
        raise InvalidRequest(f"{source.name}: blobs/sha256/{digest[7:]} is not a regular file")
    return member


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise InvalidRequest(f"{member.name} is too large")
    fh = tar.extractfile(member)
    if fh is None:
        raise InvalidRequest(f"{member.name} is not a regular file")
    return fh.read()


def _read_json(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], member_name: str) -> dict[str, Any]:
    member = members.get(member_name)
    if member is None or not member.isfile():
        raise InvalidRequest(f"not an OCI image layout: {member_name} is missing")
    try:
        data = json.loads(_read_member(tar, member, _MAX_JSON))
    except ValueError as exc:
        raise InvalidRequest(f"{member_name}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"{member_name} is not a JSON object")
    return data


def _plan(
    tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], source: Path, descriptor: Any, name: ModelName | None
) -> _Planned:
    """Read and check one manifest of the index; decide the name it is installed under."""
    if not isinstance(descriptor, dict):
        raise InvalidRequest(f"{source.name}: index.json has a malformed manifest entry")
    media_type = descriptor.get("mediaType")
    if media_type not in (MANIFEST_V2, OCI_MANIFEST):
        raise InvalidRequest(f"{source.name}: unsupported manifest type {media_type!r}")
    digest = parse_digest(str(descriptor.get("digest", "")))
    raw = _read_member(tar, _member(members, source, digest), _MAX_JSON)
    actual = "sha256:" + hashlib.sha256(raw).hexdigest()
    if actual != digest:
        raise DigestMismatch(f'{source.name}: digest mismatch, expected "{digest}", got "{actual}"')
    manifest = Manifest.from_bytes(raw)
    if name is None:
        found = descriptor.get("annotations")
        annotations: dict[str, Any] = found if isinstance(found, dict) else {}
        ref = str(annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME) or "")
        if not ref or ("/" not in ref and ":" not in ref):
            raise InvalidRequest(
                f"{source.name}: the archive does not name its model "
                f"({REF_NAME} is {ref!r}); give a name: pollama import FILE NAME"
            )
        try:
            name = parse_name(ref)
        except InvalidModelName:
            raise InvalidModelName(f"{source.name}: invalid model name {ref!r}") from None
    return _Planned(name, manifest)


def _copy_blob(
    store: ModelStore,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    digest: str,
    counter: ByteCounter,
    source: Path,
    reserved: BlobReservation,
) -> None:
    fh = tar.extractfile(member)
    if fh is None:
        raise InvalidRequest(f"{member.name} is not a regular file")

    def chunks() -> Iterator[bytes]:
        while chunk := fh.read(_CHUNK):
            counter.add(len(chunk))
            yield chunk

    try:
        store.blobs.write(chunks(), digest, reservation=reserved)
    except DigestMismatch as exc:
        raise DigestMismatch(f"{source.name}: blob {digest} is corrupt: {exc}") from None
