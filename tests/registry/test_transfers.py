"""Download behaviour in process, against the real registry through the proxy: stalls, shared
downloads between concurrent pulls, and cancellation that keeps what was fetched."""

from __future__ import annotations

import threading
from pathlib import Path

from pollama.names import ModelName, parse_name
from pollama.registry import (
    BlobTransfers,
    PullOptions,
    PushOptions,
    TransferSettings,
    pull_model,
    push_model,
)
from pollama.store import ModelStore
from tests.registry.conftest import CountingProxy, DockerRegistry
from tests.registry.test_registry import local_model


def _published(proxy: CountingProxy, gguf: Path, tmp_path: Path) -> tuple[ModelName, str, int]:
    name = parse_name(f"{proxy.host}/library/big:latest")
    source = local_model(tmp_path / "source", name.full, gguf)
    for _ in push_model(source, name, PushOptions(key_home=tmp_path, insecure=True)):
        pass
    proxy.reset()
    return name, source.load(name).manifest.layers[0].digest, gguf.stat().st_size


def test_stalled_part_restarts_without_using_a_retry(
    registry: DockerRegistry, proxy: CountingProxy, big_gguf: Path, tmp_path: Path
) -> None:
    name, digest, size = _published(proxy, big_gguf, tmp_path)
    proxy.cut_after, proxy.cuts_left, proxy.cut_delay = 200_000, 2, 1.5
    settings = TransferSettings(stall_timeout=0.3, max_retries=0, progress_interval=0.02)
    store = ModelStore(tmp_path / "b")
    steps = [
        p.status for p in pull_model(store, name, PullOptions(key_home=tmp_path, insecure=True, settings=settings))
    ]
    assert steps[-1] == "success"
    assert [e.range for e in proxy.blob_gets(digest)] == [
        f"bytes=0-{size - 1}",
        f"bytes=200000-{size - 1}",
        f"bytes=400000-{size - 1}",
    ]
    assert proxy.blob_bytes(digest) == size


def test_concurrent_pulls_share_one_download(
    registry: DockerRegistry, proxy: CountingProxy, big_gguf: Path, tmp_path: Path
) -> None:
    name, digest, size = _published(proxy, big_gguf, tmp_path)
    proxy.delay_per_mb = 0.05
    store = ModelStore(tmp_path / "b")
    transfers = BlobTransfers()
    options = PullOptions(key_home=tmp_path, insecure=True)
    results: list[str] = []

    def run() -> None:
        results.append([p.status for p in pull_model(store, name, options, transfers=transfers)][-1])

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["success"] * 3
    assert proxy.blob_bytes(digest) == size  # fetched once for three pulls


def test_abandoned_pull_keeps_its_progress(
    registry: DockerRegistry, proxy: CountingProxy, big_gguf: Path, tmp_path: Path
) -> None:
    name, digest, size = _published(proxy, big_gguf, tmp_path)
    proxy.delay_per_mb = 0.2
    store = ModelStore(tmp_path / "b")
    transfers = BlobTransfers()
    settings = TransferSettings(min_part_size=4 << 20, progress_interval=0.02, state_interval=0.05)
    options = PullOptions(key_home=tmp_path, insecure=True, settings=settings)
    pull = pull_model(store, name, options, transfers=transfers)
    for item in pull:
        if item.digest == digest and (item.completed or 0) > size // 3:
            break
    pull.close()  # the client went away: the only waiter leaves, the download is cancelled
    partial = store.blobs.path(digest).with_name(store.blobs.path(digest).name + "-partial")
    assert partial.exists() and not store.blobs.exists(digest)
    fetched = proxy.blob_bytes(digest)
    assert fetched < size

    proxy.reset()
    proxy.delay_per_mb = 0
    assert [p.status for p in pull_model(store, name, options, transfers=transfers)][-1] == "success"
    assert store.blobs.path(digest).read_bytes() == big_gguf.read_bytes()
    # Together the two pulls fetched the blob about once (a cancelled part may lose its last chunk).
    assert size <= fetched + proxy.blob_bytes(digest) <= size + 6 * (1 << 20)


def test_delete_during_pull_keeps_the_blob_the_pull_is_about_to_reference(
    registry: DockerRegistry, proxy: CountingProxy, big_gguf: Path, tmp_path: Path
) -> None:
    """Issue 11: the pull saw the weights already in the store (another model had them), a delete
    of that model collected them, and the pull's manifest then named a blob that was gone."""
    name, digest, size = _published(proxy, big_gguf, tmp_path)
    store = local_model(tmp_path / "b", "other:latest", big_gguf)
    assert store.blobs.exists(digest)
    pull = pull_model(store, name, PullOptions(key_home=tmp_path, insecure=True))
    for item in pull:
        if item.digest == digest:
            break
    store.delete(parse_name("other"))  # the only manifest naming the weights, until the pull's
    assert store.blobs.exists(digest)
    assert [p.status for p in pull][-1] == "success"
    assert store.load(name).model_path == store.blobs.path(digest)
    assert proxy.blob_bytes(digest) == 0  # the weights were never downloaded again
    assert size == store.blobs.size(digest)
