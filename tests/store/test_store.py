"""The store on disk: Ollama's layout, verified atomic blobs, shared blobs, copy, delete and pruning."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollama.errors import (
    DigestMismatch,
    InvalidDigest,
    ModelNotFound,
    StoreError,
    StoreLocked,
)
from pollama.names import parse_name
from pollama.store import Manifest, ModelStore, Progress, parse_digest
from pollama.store.create import CreateRequest, create_model
from pollama.store.files import go_json


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    s = ModelStore(tmp_path / "models")
    s.prepare()
    return s


def text_model(store: ModelStore, name: str, weights: bytes, system: str = "") -> None:
    """A tiny fake model: a GGUF header-free 'model' blob written straight as a manifest."""
    digest, _ = store.blobs.write_bytes(weights)
    from pollama.store.manifest import CONFIG_V1, MEDIA_MODEL, MEDIA_SYSTEM, Layer

    layers = [Layer(MEDIA_MODEL, digest, len(weights))]
    if system:
        sdigest, _ = store.blobs.write_bytes(system.encode())
        layers.append(Layer(MEDIA_SYSTEM, sdigest, len(system)))
    config = b'{"model_format":"gguf"}\n'
    cdigest, _ = store.blobs.write_bytes(config)
    store.write_manifest(parse_name(name), Manifest(Layer(CONFIG_V1, cdigest, len(config)), layers))


def test_digest_syntax() -> None:
    hexd = "ab" * 32
    assert parse_digest(f"sha256:{hexd}") == f"sha256:{hexd}"
    assert parse_digest(f"sha256-{hexd.upper()}") == f"sha256:{hexd}"
    for bad in (
        "",
        "sha256:../../x",
        "sha256:" + "a" * 63,
        "md5:" + "a" * 64,
        f"sha256:{hexd}\x00",
        f"sha256:{hexd}/../x",
        "/etc/passwd",
        f"sha256:{'g' * 64}",
    ):
        with pytest.raises(InvalidDigest, match="^invalid digest format$"):
            parse_digest(bad)


def test_blob_written_only_when_digest_matches(store: ModelStore) -> None:
    data = b"hello world"
    with pytest.raises(DigestMismatch, match=f'^digest mismatch, expected "{sha(b"other")}", got "{sha(data)}"$'):
        store.blobs.write_stream(sha(b"other"), [data])
    assert store.blobs.list_files() == []
    path = store.blobs.write_stream(sha(data), [b"hello ", b"world"])
    assert path.name == "sha256-" + hashlib.sha256(data).hexdigest()
    assert path.read_bytes() == data
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_interrupted_blob_write_leaves_nothing_visible(store: ModelStore) -> None:
    def chunks():
        yield b"partial"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.blobs.write_stream(sha(b"partial data"), chunks())
    assert store.blobs.list_files() == []


def test_manifest_encoding_is_gos(store: ModelStore) -> None:
    text_model(store, "m", b"weights", system="a <b> & c")
    raw = store.manifest_path(parse_name("m")).read_bytes()
    assert raw.endswith(b"}\n") and b" " not in raw.split(b"\n")[0]
    assert raw.startswith(
        b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:'
    )
    assert go_json({"s": "<a&b>"}) == b'{"s":"\\u003ca\\u0026b\\u003e"}\n'
    assert go_json({"t": 1.0, "u": 0.5}) == b'{"t":1,"u":0.5}\n'


def test_case_insensitive_lookup_and_copy_shares_blobs(store: ModelStore) -> None:
    text_model(store, "Alpha:Latest", b"weights-a")
    before = sorted(p.name for p in store.blobs.list_files())
    found = store.resolve(parse_name("alpha:latest"))
    assert found is not None and found.display == "Alpha:Latest"
    store.copy(parse_name("ALPHA:latest"), parse_name("beta:v1"))
    assert sorted(p.name for p in store.blobs.list_files()) == before
    a = store.manifest_path(parse_name("Alpha:Latest")).read_bytes()
    b = store.manifest_path(parse_name("beta:v1")).read_bytes()
    assert a == b
    with pytest.raises(ModelNotFound):
        store.copy(parse_name("nope"), parse_name("x"))


def test_delete_collects_only_unreferenced_blobs(store: ModelStore) -> None:
    text_model(store, "a", b"shared weights", system="A")
    text_model(store, "b", b"shared weights", system="B")
    shared = store.blobs.path(sha(b"shared weights"))
    store.delete(parse_name("a"))
    assert shared.exists()
    assert not store.blobs.path(sha(b"A")).exists()
    assert not (store.manifests_dir / "registry.ollama.ai" / "library" / "a").exists()
    store.delete(parse_name("B"))
    assert not shared.exists()
    assert store.blobs.list_files() == []
    assert list(store.manifests_dir.iterdir()) == []
    with pytest.raises(ModelNotFound):
        store.delete(parse_name("a"))


def test_noprune_keeps_blobs(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "m", noprune=True)
    store.prepare()
    text_model(store, "a", b"w")
    store.delete(parse_name("a"))
    assert store.blobs.path(sha(b"w")).exists()


def test_write_manifest_refuses_missing_blobs(store: ModelStore) -> None:
    from pollama.store.manifest import CONFIG_V1, MEDIA_MODEL, Layer

    manifest = Manifest(Layer(CONFIG_V1, sha(b"c"), 1), [Layer(MEDIA_MODEL, sha(b"w"), 1)])
    with pytest.raises(StoreError):
        store.write_manifest(parse_name("m"), manifest)
    assert not store.manifest_path(parse_name("m")).exists()


def test_startup_pruning(store: ModelStore) -> None:
    text_model(store, "keep", b"kept")
    old = time.time() - 7200
    orphan = store.blobs.write_stream(sha(b"orphan"), [b"orphan"])
    fresh_orphan = store.blobs.write_stream(sha(b"fresh"), [b"fresh"])
    junk = store.blobs.root / "not-a-blob"
    junk.write_bytes(b"x")
    temp = store.blobs.root / ".tmp-blob-123"
    temp.write_bytes(b"half")
    partial = store.blobs.root / ("sha256-" + "c" * 64 + "-partial")
    partial.write_bytes(b"resume me")
    for path in (orphan, junk, partial):
        os.utime(path, (old, old))
    legacy = store.blobs.root / ("sha256:" + "d" * 64)
    legacy.write_bytes(b"legacy")
    empty = store.manifests_dir / "example.com" / "ns" / "gone"
    empty.mkdir(parents=True)
    store.prepare()
    names = {p.name for p in store.blobs.list_files()}
    assert orphan.name not in names and junk.name not in names and temp.name not in names
    assert fresh_orphan.name in names and partial.name in names
    assert ("sha256-" + "d" * 64) in names
    assert not empty.exists()
    assert store.resolve(parse_name("keep")) is not None


def test_pruning_skipped_when_a_manifest_is_corrupt(store: ModelStore) -> None:
    orphan = store.blobs.write_stream(sha(b"orphan"), [b"orphan"])
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    bad = store.manifests_dir / "registry.ollama.ai" / "library" / "bad" / "latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    store.prepare()
    assert orphan.exists()


def test_create_from_gguf_and_from_model(store: ModelStore, smollm2_gguf: Path) -> None:
    digest, size = store.blobs.import_files([smollm2_gguf])
    statuses = [
        p.status
        for p in create_model(
            store,
            CreateRequest(
                name=parse_name("smol"),
                files={"smol.gguf": digest},
                system="Be brief.",
                parameters={"temperature": 0.2, "stop": ["<|im_end|>"]},
                licenses=["L1", "L2"],
            ),
        )
    ]
    assert statuses[0] == "parsing GGUF"
    assert statuses[1] == f"using existing layer {digest}"
    assert statuses[-2:] == ["writing manifest", "success"]
    model = store.load(parse_name("smol"))
    assert model.config.model_family == "llama"
    assert model.config.model_type == "134.52M"
    assert model.config.file_type == "Q4_1"
    assert model.config.context_length == 8192
    assert model.system == "Be brief."
    assert model.params == {"stop": ["<|im_end|>"], "temperature": 0.2}
    assert model.licenses == ["L1", "L2"]
    assert model.model_path == store.blobs.path(digest)

    statuses = [
        p.status
        for p in create_model(
            store, CreateRequest(name=parse_name("smol2"), from_="smol", system="Be verbose.", parameters={"top_k": 5})
        )
    ]
    child = store.load(parse_name("smol2"))
    assert child.model_path == model.model_path
    assert child.system == "Be verbose."
    assert child.params == {"stop": ["<|im_end|>"], "temperature": 0.2, "top_k": 5}
    assert child.licenses == ["L1", "L2"]
    assert child.parent_model == "smol:latest"
    assert f"using existing layer {digest}" in statuses
    weights = [p for p in store.blobs.list_files() if p.stat().st_size == size]
    assert len(weights) == 1


def test_read_ollama_written_store(tmp_path: Path) -> None:
    """A models folder laid out by hand exactly as Ollama writes it (spec §5) is read as is."""
    root = tmp_path / "models"
    blobs = root / "blobs"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    weights = blob(b"GGUF-not-really")
    template = blob(b"{{ .Prompt }}")
    params = blob(b'{"stop":["<|eot_id|>"],"temperature":0.6}\n')
    config = blob(
        json.dumps(
            {
                "model_format": "gguf",
                "model_family": "llama",
                "model_families": ["llama"],
                "model_type": "8.0B",
                "file_type": "Q4_K_M",
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        ).encode()
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", **weights},
            {"mediaType": "application/vnd.ollama.image.template", **template},
            {"mediaType": "application/vnd.ollama.image.params", **params},
        ],
    }
    raw = json.dumps(manifest, indent=2).encode()
    path = root / "manifests" / "registry.ollama.ai" / "library" / "llama3" / "8b"
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)

    store = ModelStore(root)
    (model,) = store.list_models()
    assert model.name.display == "llama3:8b"
    assert model.digest == hashlib.sha256(raw).hexdigest()
    assert model.template == "{{ .Prompt }}"
    assert model.params == {"stop": ["<|eot_id|>"], "temperature": 0.6}
    assert model.config.file_type == "Q4_K_M"
    assert model.size == sum(int(x["size"]) for x in (weights, template, params, config))
    store.copy(parse_name("llama3:8b"), parse_name("copy"))
    assert store.manifest_path(parse_name("copy")).read_bytes() == raw


def _run_on_changing_threads(work: Iterator[Progress], timeout: float = 10.0) -> list[str]:
    """Drive ``work`` as ``iterate_in_threadpool`` may: every step on another live (daemon) thread.

    Threads stay alive until the end, so no two steps share a thread identity.
    """
    finished = threading.Event()
    statuses: list[str] = []

    def step(out: queue.Queue[object]) -> None:
        try:
            out.put(next(work))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out.put(exc)
        finished.wait()

    try:
        while True:
            out: queue.Queue[object] = queue.Queue()
            threading.Thread(target=step, args=(out,), daemon=True).start()
            try:
                item = out.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"create hung after {statuses}") from None
            if isinstance(item, StopIteration):
                return statuses
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Progress)
            statuses.append(item.status)
    finally:
        finished.set()


def test_create_resumed_on_another_thread_at_every_step_finishes(store: ModelStore, smollm2_gguf: Path) -> None:
    """Issue 10: the store lock was held across ``yield``s, so a create whose next step ran on another
    thread blocked forever on the lock its first thread still owned."""
    digest, _ = store.blobs.import_files([smollm2_gguf])
    for n, request in enumerate(
        [
            CreateRequest(name=parse_name("a"), files={"a.gguf": digest}, system="one"),
            CreateRequest(name=parse_name("a"), from_="a", system="two", parameters={"top_k": 3}),
            CreateRequest(name=parse_name("b"), from_="a", licenses=["MIT"]),
        ]
    ):
        statuses = _run_on_changing_threads(create_model(store, request))
        assert statuses[-2:] == ["writing manifest", "success"], n
    assert store.load(parse_name("a")).system == "two"
    assert store.load(parse_name("b")).licenses == ["MIT"]
    assert not store.lock.held
    # The replaced version of "a" left nothing behind: every blob is referenced.
    referenced = {
        parse_digest(layer.digest)
        for e in store.entries()
        for layer in Manifest.from_bytes(e.path.read_bytes()).all_blobs()
    }
    assert {p.name.replace("-", ":", 1) for p in store.blobs.list_files()} == referenced


def test_delete_during_create_keeps_the_blob_the_create_is_about_to_reference(
    store: ModelStore, smollm2_gguf: Path
) -> None:
    """Issue 11: a delete's garbage collection removed the GGUF a concurrent create had already
    checked, and the create then failed writing its manifest (or, without the check, named a missing blob)."""
    digest, _ = store.blobs.import_files([smollm2_gguf])
    list(create_model(store, CreateRequest(name=parse_name("old"), files={"m.gguf": digest})))
    work = create_model(store, CreateRequest(name=parse_name("new"), files={"m.gguf": digest}, system="s"))
    assert next(work).status == "parsing GGUF"
    store.delete(parse_name("old"))  # "old" was the only model naming the GGUF
    assert store.blobs.exists(digest)
    assert [p.status for p in work][-1] == "success"
    assert store.load(parse_name("new")).model_path == store.blobs.path(digest)
    store.delete(parse_name("new"))
    assert store.blobs.list_files() == []


def test_collection_held_up_by_a_reservation_finishes_when_it_is_released(store: ModelStore) -> None:
    text_model(store, "a", b"weights of a", system="sys a")
    weights = sha(b"weights of a")
    with store.reserve() as reserved:
        assert reserved.add(weights) is True
        store.delete(parse_name("a"))
        assert store.blobs.exists(weights)  # reserved: left alone
        assert not store.blobs.exists(sha(b"sys a"))
    assert not store.blobs.exists(weights)  # released and still unreferenced: collected now
    assert store.blobs.list_files() == []


def test_store_lock_is_shared_with_other_processes(store: ModelStore) -> None:
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
                "print('locked', flush=True); sys.stdin.read()"
            ),
            str(store.lock.path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        began = time.monotonic()
        with pytest.raises(
            StoreLocked,
            match=r"^the models directory is busy: .*\.pollama\.lock is locked by "
            r"another process \(waited 0\.3s\)$",
        ):
            store.lock.acquire(timeout=0.3)
        assert 0.3 <= time.monotonic() - began < 2
        assert not store.lock.held
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    with store.lock, store.lock:  # reentrant in one thread
        assert store.lock.held
    assert not store.lock.held


def test_startup_cleanup_leaves_a_blob_that_is_still_being_written(store: ModelStore) -> None:
    """Start-up cleanup (of another server or CLI on the same folder) removes abandoned temporary
    files only: a writer's temporary file is locked by it and survives."""
    abandoned = store.blobs.root / ".tmp-blob-abandoned"
    abandoned.write_bytes(b"half")
    with store.blobs.writer(sha(b"in flight")) as writer:
        writer.write(b"in ")
        ModelStore(store.root).prepare()  # another store object: its own lock file descriptor
        assert not abandoned.exists()
        assert writer.tmp.exists()
        writer.write(b"flight")
        written = writer.commit()
    assert (written.digest, written.size, written.created) == (sha(b"in flight"), 9, True)
    assert written.path.read_bytes() == b"in flight"
    assert [p.name for p in store.blobs.list_files()] == [written.path.name]


def test_startup_cleanup_removes_an_abandoned_quantization_folder_only(store: ModelStore) -> None:
    """A quantization's folder (``.tmp-quantize-*``, llama.cpp's output inside) is locked while
    its create runs; one left by a killed server goes at the next start, a live one stays."""
    from pollama.store.create import _QuantizeStaging

    abandoned = store.blobs.root / ".tmp-quantize-abandoned"
    abandoned.mkdir()
    (abandoned / "model.gguf").write_bytes(b"half")
    with _QuantizeStaging(store, "Q4_0", None) as staging:
        (live,) = [p for p in store.blobs.root.iterdir() if p.name.startswith(".tmp-quantize-") and p != abandoned]
        ModelStore(store.root).prepare()  # another store object: its own lock file descriptor
        assert not abandoned.exists() and live.is_dir()
        staging.stop_unused()
    assert not live.exists()
    store.quantizers.close()


def test_listing_while_models_are_deleted_never_fails(store: ModelStore) -> None:
    """``entries`` walks ``manifests/`` without the store lock while deletes remove folders under
    it (a model's folder goes with its last tag): a folder gone mid-walk is skipped, not an error
    (a ``glob`` over the tree raised FileNotFoundError, a 500 for ``/api/tags``)."""
    keep = [f"keep{i}" for i in range(5)]
    for name in keep:
        text_model(store, name, b"weights")
    stop, errors, listed = threading.Event(), [], []

    def churn() -> None:
        n = 0
        while not stop.is_set():
            name = f"gone{n % 7}/m{n}"
            text_model(store, name, b"weights")
            store.delete(parse_name(name))
            n += 1

    def lister() -> None:
        try:
            while not stop.is_set():
                listed.append(sorted(e.name.display for e in store.entries() if e.name.model.startswith("keep")))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn), *(threading.Thread(target=lister) for _ in range(2))]
    for thread in threads:
        thread.start()
    time.sleep(2)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(listed) > 20 and all(names == [f"{name}:latest" for name in keep] for names in listed)
