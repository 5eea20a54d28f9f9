"""Pushing a model: each blob the registry lacks is uploaded in chunks, then the manifest.

Ollama's push (spec §6.3): ``retrieving manifest`` (from the local store), then per blob
``HEAD .../blobs/<digest>``; a missing blob starts an upload with ``POST .../blobs/uploads/``
(asking to mount it from the repository named by the layer's ``from`` when that is a model on the
same registry: a ``201`` means the registry linked it without any bytes sent), sends ``PATCH``
chunks of 100 MB–1 GB (``Content-Range: <start>-<end>``), each answer naming the URL for the
next, and commits with ``PUT <url>?digest=<digest>``. A ``307`` answer to a ``PATCH`` (Ollama's
registry sends uploads to object storage) means the chunk is ``PUT`` to that location without our
credentials, up to 16 of those at once. Finally ``pushing manifest`` sends the manifest's own bytes,
so a model pulled back has the same ID.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pollama.errors import InvalidModelName, ModelNotFound, RegistryError, RegistryUnavailable
from pollama.names import ModelName, parse_name
from pollama.registry.client import RegistryClient, TransferSettings, registry_error, with_query
from pollama.registry.progress import ByteCounter, in_background
from pollama.store.manifest import Layer
from pollama.store.progress import Progress
from pollama.store.store import ModelStore

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class PushOptions:
    """What a push needs besides the store and the name."""

    key_home: Path  # folder of id_ed25519 (``~/.ollama``)
    insecure: bool = False
    settings: TransferSettings = field(default_factory=TransferSettings)
    home: Path | None = None  # for ~/.docker/config.json (default: $HOME)


def push_model(store: ModelStore, name: ModelName, options: PushOptions) -> Iterator[Progress]:
    """Push ``name`` from ``store`` to its registry, yielding Ollama's status lines."""
    yield Progress("retrieving manifest")
    if name.scheme == "http" and not options.insecure:
        raise RegistryError("insecure protocol http")
    try:
        _, manifest, _ = store.read_manifest(name)
    except ModelNotFound:
        yield Progress("couldn't retrieve manifest")
        raise
    with RegistryClient(
        name, insecure=options.insecure, key_home=options.key_home, settings=options.settings, home=options.home
    ) as client:
        seen: set[str] = set()
        for layer in [*manifest.layers, manifest.config]:
            if layer.digest in seen:
                continue
            seen.add(layer.digest)
            yield from _push_blob(store, client, name, layer, options.settings)
        yield Progress("pushing manifest")
        client.put_manifest(name.tag, manifest.to_bytes(), manifest.media_type)
    yield Progress("success")


def _mount_source(layer: Layer, name: ModelName) -> str:
    """The repository to mount ``layer`` from: its ``from`` model, if on the same registry."""
    if not layer.from_:
        return ""
    try:
        source = parse_name(layer.from_)
    except InvalidModelName:
        return ""
    if source.host.lower() != name.host.lower() or source.repository == name.repository:
        return ""
    return source.repository


def _push_blob(
    store: ModelStore, client: RegistryClient, name: ModelName, layer: Layer, settings: TransferSettings
) -> Iterator[Progress]:
    label = f"pushing {layer.digest[7:19]}"
    if client.has_blob(layer.digest):
        yield Progress(label, layer.digest, layer.size, layer.size)
        return
    path = store.blobs.path(layer.digest)
    if not path.is_file():
        raise RegistryError(f'blob "{layer.digest}" not found')
    total = path.stat().st_size
    yield from in_background(
        lambda counter: _upload(client, name, layer, path, total, settings, counter),
        label,
        layer.digest,
        total,
        interval=settings.progress_interval,
    )


def _upload(
    client: RegistryClient,
    name: ModelName,
    layer: Layer,
    path: Path,
    total: int,
    settings: TransferSettings,
    counter: ByteCounter,
) -> None:
    """Upload one blob, retrying the whole upload session on transient failures."""
    attempt = 0
    while True:
        try:
            _upload_once(client, name, layer, path, total, settings, counter)
            return
        except (RegistryUnavailable, httpx.TransportError) as exc:
            error = registry_error(exc)
            if attempt >= settings.max_retries:
                raise RegistryError(f"max retries exceeded: {error}") from None
            delay = settings.retry_base * 2**attempt
            attempt += 1
            log.info("%s upload attempt %d failed: %s, retrying in %.1fs", layer.digest[7:19], attempt, error, delay)
            time.sleep(delay)


@dataclass
class _Chunk:
    """One ``PATCH`` of an upload: its place in the blob, the bytes counted as sent, its MD5."""

    offset: int
    size: int
    sent: int = 0
    md5: bytes = b""

    def body(self, path: Path, counter: ByteCounter) -> Iterator[bytes]:
        """The chunk's bytes, read afresh (a request retried after a 401 reads them again)."""
        counter.add(-self.sent)
        self.sent = 0
        return self._read(path, counter)

    def _read(self, path: Path, counter: ByteCounter) -> Iterator[bytes]:
        md5 = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as fh:
            fh.seek(self.offset)
            remaining = self.size
            while remaining > 0:
                data = fh.read(min(_READ_CHUNK, remaining))
                if not data:
                    raise RegistryError(f"{path.name} is shorter than expected")
                remaining -= len(data)
                md5.update(data)
                self.sent += len(data)
                counter.add(len(data))
                yield data
        self.md5 = md5.digest()


def _upload_once(
    client: RegistryClient,
    name: ModelName,
    layer: Layer,
    path: Path,
    total: int,
    settings: TransferSettings,
    counter: ByteCounter,
) -> None:
    counter.add(-counter.value)
    start_url = client.url("blobs/uploads/")
    source = _mount_source(layer, name)
    if source:
        start_url = with_query(start_url, mount=layer.digest, **{"from": source})
    response = client.request("POST", start_url, headers={"Content-Length": "0"}, body=b"")
    if response.status_code == 201 and source:
        counter.add(total)
        return
    url = _next_url(client, start_url, response)
    part_size = settings.part_size(total)
    chunks = [_Chunk(offset, min(part_size, total - offset)) for offset in range(0, total, part_size)]
    redirected: list[Future[None]] = []
    with ThreadPoolExecutor(max_workers=settings.max_parts, thread_name_prefix="push-part") as pool:
        for chunk in chunks:
            response = client.request(
                "PATCH",
                url,
                body=functools.partial(chunk.body, path, counter),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(chunk.size),
                    "X-Redirect-Uploads": "1",
                    "Content-Range": f"{chunk.offset}-{chunk.offset + chunk.size - 1}",
                },
            )
            next_url = _next_url(client, url, response)
            if response.status_code == 307:
                target = client.resolve(url, response.headers.get("Location", ""))
                redirected.append(pool.submit(_put_redirected, client, target, path, chunk, counter, settings))
            url = next_url
        for future in redirected:
            future.result()
    etag = hashlib.md5(b"".join(c.md5 for c in chunks), usedforsecurity=False).hexdigest()
    commit = with_query(url, digest=layer.digest, etag=f"{etag}-{len(chunks)}")
    client.request("PUT", commit, headers={"Content-Length": "0"}, body=b"")


def _next_url(client: RegistryClient, current: str, response: httpx.Response) -> str:
    """Where the upload goes on: ``Docker-Upload-Location``, else ``Location`` (made absolute)."""
    location = response.headers.get("Docker-Upload-Location") or response.headers.get("Location")
    if not location:
        raise RegistryError(f"{response.status_code}: the registry did not say where to upload")
    return client.resolve(current, location)


def _put_redirected(
    client: RegistryClient, url: str, path: Path, chunk: _Chunk, counter: ByteCounter, settings: TransferSettings
) -> None:
    """Send a chunk to the storage a ``307`` pointed at, without our credentials (retried)."""
    for attempt in range(settings.max_retries + 1):
        try:
            response = client.http.put(
                url,
                content=chunk.body(path, counter),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(chunk.size)},
            )
        except httpx.TransportError as exc:
            error: RegistryError = registry_error(exc)
        else:
            if response.status_code < 400:
                return
            error = registry_error(response)
            if not isinstance(error, RegistryUnavailable):
                raise error
        if attempt == settings.max_retries:
            raise RegistryError(f"max retries exceeded: {error}")
        time.sleep(settings.retry_base * 2**attempt)
