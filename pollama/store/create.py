"""Creating a model in the store from a create request, step for step as Ollama's ``/api/create``.

The base layers come from an installed model (``from``) or from uploaded GGUF blobs (``files``),
plus LoRA ``adapters``; with ``quantize``, F16/BF16/F32 model layers are quantized by llama.cpp
(``pollama.convert.quantize``, in a subprocess) into new blobs; the request's template, system
prompt, licenses, parameters and messages become layers of their own; a config blob summarises the
weights; the manifest is written last. Progress is reported as the status lines Ollama's clients
print (``parsing GGUF``, ``quantizing F16 model to Q4_K_M`` with a progress bar, ``using existing
layer sha256:…``, ``creating new layer sha256:…``, ``writing manifest``, ``success``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollama.convert.quantize import (
    Quantizer,
    check_quantization_source,
    file_type_id,
    parse_quantization_type,
)
from pollama.errors import BlobNotFound, InvalidDigest, InvalidRequest, PollamaError, QuantizationFailed
from pollama.gguf import (
    GGUFFile,
    context_length,
    embedding_length,
    file_type_name,
    human_number,
    is_gguf,
    is_projector,
    read_gguf,
)
from pollama.names import ModelName, parse_name
from pollama.store.blobs import BlobReservation, digest_file, parse_digest
from pollama.store.files import TEMP_PREFIX, go_json, temp_name
from pollama.store.manifest import (
    CONFIG_V1,
    MEDIA_ADAPTER,
    MEDIA_DRAFT,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    WEIGHT_MEDIA_TYPES,
    Layer,
    Manifest,
    ModelConfig,
)
from pollama.store.progress import Progress
from pollama.store.store import ModelStore

# Temporary names of a safetensors conversion in ``blobs/`` (a folder of links and the GGUF output).
CONVERT_HINT = "convert-"
QUANTIZE_HINT = "quantize-"


# Ollama reports quantization progress under this placeholder digest (the new layer has none yet).
_QUANTIZE_DIGEST = "0000000000000000000"


@dataclass
class CreateRequest:
    """Everything ``/api/create`` accepts, already decoded from JSON."""

    name: ModelName
    from_: str = ""
    files: dict[str, str] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)
    draft_files: dict[str, str] = field(default_factory=dict)  # the DRAFT model (GGUF or safetensors)
    draft_quantize: str = ""
    template: str | None = None
    system: str | None = None
    licenses: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    quantize: str = ""
    renderer: str = ""
    parser: str = ""
    requires: str = ""


@dataclass
class _BaseLayer:
    layer: Layer
    gguf: GGUFFile | None = None
    status: str = ""


def validate_file_names(files: dict[str, str]) -> None:
    """Ollama's checks on ``files``/``adapters`` keys and digests before anything is created."""
    for name, digest in files.items():
        if not _valid_relative_path(name):
            raise InvalidRequest("file path must be relative")
        if not digest:
            raise InvalidDigest()
        parse_digest(digest)


def _valid_relative_path(name: str) -> bool:
    """Go's ``fs.ValidPath``: a clean, unrooted, slash-separated path without ``.``/``..`` elements."""
    if name == ".":
        return True
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def create_model(store: ModelStore, request: CreateRequest) -> Generator[Progress, None, None]:
    """Create ``request.name`` in ``store``, yielding progress; raises a domain error on failure.

    Safe to run concurrently with other creates, pulls and deletes: every blob the new manifest
    will name is reserved as soon as it is seen, and the store lock is held only inside
    ``write_manifest`` and ``remove_unreferenced`` (never across a ``yield``: the next step of this
    generator may run on another thread).
    """
    validate_file_names(request.files)
    validate_file_names(request.adapters)
    validate_file_names(request.draft_files)
    quantize = parse_quantization_type(request.quantize) if request.quantize else ""
    draft_quantize = _draft_quantization(request)
    with store.reserve() as reserved, _QuantizeStaging(store, quantize, request) as staging:
        if request.from_:
            base, inherited = _layers_from_model(store, request.from_, reserved)
            if request.files:  # e.g. FROM an installed model plus FROM ./mmproj.gguf
                yield from _projectors_onto(store, request.files, base, reserved)
        elif request.files:
            base, inherited = [], ModelConfig()
            yield from _layers_from_files(store, request.files, base, reserved, adapter=False)
        else:
            raise InvalidRequest("neither 'from' or 'files' was specified")
        if request.adapters:
            safetensors = any(name.endswith(".safetensors") for name in request.adapters)
            if len(request.adapters) > 1 and not safetensors:  # a PEFT folder is several files
                raise InvalidRequest("only one adapter is currently supported")
            yield from _layers_from_files(store, request.adapters, base, reserved, adapter=True)
        if quantize:
            yield from _quantize_models(store, base, quantize, reserved, staging)
        if request.draft_files:
            yield from _draft_layer(store, request.draft_files, base, reserved, draft_quantize)

        config = _config_for(base, inherited, request)
        config.draft = _draft_config(base, inherited)
        layers = [b.layer for b in base]
        statuses = [b.status for b in base]

        def add_text_layer(media_type: str, data: bytes, *, replace: bool) -> None:
            nonlocal layers, statuses
            if replace:
                kept = [(lay, st) for lay, st in zip(layers, statuses, strict=True) if lay.media_type != media_type]
                layers, statuses = [lay for lay, _ in kept], [st for _, st in kept]
            written = store.blobs.write([data], reservation=reserved)
            layers.append(Layer(media_type, written.digest, len(data)))
            statuses.append(f"{'creating new' if written.created else 'using existing'} layer {written.digest}")

        if request.template is not None and request.template != "":
            _check_template(request.template)
            add_text_layer(MEDIA_TEMPLATE, request.template.encode("utf-8"), replace=True)
        if request.system:
            add_text_layer(MEDIA_SYSTEM, request.system.encode("utf-8"), replace=True)
        for license_text in request.licenses:
            if license_text:
                add_text_layer(MEDIA_LICENSE, license_text.encode("utf-8"), replace=False)
        params = dict(request.parameters)
        for layer in layers:
            if layer.media_type == MEDIA_PARAMS:
                existing = _json_object(store.blobs.read_bytes(layer.digest))
                for key, value in existing.items():
                    params.setdefault(key, value)
        if params:
            add_text_layer(MEDIA_PARAMS, go_json(dict(sorted(params.items()))), replace=True)
        if request.messages:
            add_text_layer(MEDIA_MESSAGES, go_json([_message_json(m) for m in request.messages]), replace=True)

        config.diff_ids = [layer.digest for layer in layers]
        config_bytes = go_json(config.to_json())
        config_blob = store.blobs.write([config_bytes], reservation=reserved)
        manifest = Manifest(config=Layer(CONFIG_V1, config_blob.digest, len(config_bytes)), layers=layers)

        for status in statuses:
            if status:
                yield Progress(status)
        yield Progress("writing manifest")
        previous = store.write_manifest(request.name, manifest)
        if previous is not None and not store.noprune:
            store.remove_unreferenced([layer.digest for layer in previous.all_blobs()])
    yield Progress("success")


def _layers_from_model(
    store: ModelStore, source: str, reserved: BlobReservation
) -> tuple[list[_BaseLayer], ModelConfig]:
    """Every layer of an installed model, marked as coming from it (and reserved)."""
    from_name = parse_name(source)
    model = store.load(from_name)
    display = from_name.display
    base = []
    for layer in model.manifest.layers:
        reused = Layer(layer.media_type, layer.digest, layer.size, from_=display, name=layer.name)
        if not reserved.add(layer.digest):  # gone: the model was deleted meanwhile
            raise BlobNotFound(f'model "{display}" not found, try pulling it first')
        gguf = None
        if layer.media_type in WEIGHT_MEDIA_TYPES:
            gguf = read_gguf(store.blobs.path(layer.digest))
        base.append(_BaseLayer(reused, gguf, f"using existing layer {layer.digest}"))
    return base, model.config


def _layers_from_files(
    store: ModelStore, files: dict[str, str], base: list[_BaseLayer], reserved: BlobReservation, *, adapter: bool
) -> Iterator[Progress]:
    """Turn uploaded blobs into model/projector/adapter layers (reserved, appended to ``base``):
    GGUF files as they are, a set with safetensors files converted to one GGUF first."""
    if any(name.endswith(".safetensors") for name in files):
        yield from _layer_from_safetensors(store, files, base, reserved, adapter=adapter)
        return
    for name in sorted(files):  # Ollama's order: by file name
        digest = files[name]
        path = store.blobs.path(digest)
        if not reserved.add(digest):
            raise BlobNotFound(f'blob "{parse_digest(digest)}" not found')
        if not name.endswith(".gguf") and not is_gguf(path):
            raise InvalidRequest("unknown type")
        yield Progress("parsing GGUF")
        gguf = read_gguf(path)
        if adapter or gguf.kind == "adapter":
            media_type = MEDIA_ADAPTER
        elif is_projector(gguf):  # an mmproj file: its own layer, loaded next to the model
            media_type = MEDIA_PROJECTOR
        else:
            media_type = MEDIA_MODEL
        canonical = parse_digest(digest)
        layer = Layer(media_type, canonical, path.stat().st_size, from_=str(path))
        base.append(_BaseLayer(layer, gguf, f"using existing layer {canonical}"))


def _layer_from_safetensors(
    store: ModelStore, files: dict[str, str], base: list[_BaseLayer], reserved: BlobReservation, *, adapter: bool
) -> Iterator[Progress]:
    """Convert a Hugging Face folder (or a PEFT adapter for the model in ``base``) sent as blobs.

    The blobs are linked under their file names into a temporary folder in ``blobs/``, the GGUF is
    written to a temporary file beside them (both locked, so start-up cleanup in another process
    leaves them alone while this runs, and removes them if it was killed), then hashed and installed
    as a blob; the folder and any unfinished file are removed however the conversion ends. Runs in
    the caller's thread (create runs in a worker thread, never on the event loop).
    """
    from pollama.convert import convert_adapter, convert_model

    for digest in files.values():
        if not reserved.add(digest):
            raise BlobNotFound(f'blob "{parse_digest(digest)}" not found')
    base_gguf = None
    if adapter:
        models = [item for item in base if item.layer.media_type == MEDIA_MODEL]
        if not models:
            raise InvalidRequest("no base model was specified for the adapter")
        base_gguf = store.blobs.path(models[0].layer.digest)
    yield Progress("converting adapter" if adapter else "converting model")
    with _conversion_workspace(store, files) as (folder, staged):
        if base_gguf is not None:
            convert_adapter(folder, base_gguf, staged)
        else:
            convert_model(folder, staged)
        digest = digest_file(staged)
        written = store.blobs.commit_file(staged, digest, actual=digest, reservation=reserved)
    gguf = read_gguf(written.path)
    media_type = MEDIA_ADAPTER if adapter else MEDIA_MODEL
    layer = Layer(media_type, written.digest, written.size)
    status = f"{'creating new' if written.created else 'using existing'} layer {written.digest}"
    base.append(_BaseLayer(layer, gguf, status))


@contextlib.contextmanager
def _conversion_workspace(store: ModelStore, files: dict[str, str]) -> Iterator[tuple[Path, Path]]:
    """A locked temporary folder of links named as ``files`` say, and a locked temporary output path."""
    root = store.blobs.root
    root.mkdir(parents=True, exist_ok=True)
    folder = temp_name(root, CONVERT_HINT)
    folder.mkdir()
    staged = temp_name(root, CONVERT_HINT)
    fds: list[int] = []
    try:
        fds.append(_locked(folder, os.O_RDONLY | os.O_DIRECTORY))
        fds.append(_locked(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        for name, digest in files.items():
            link = folder / name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(store.blobs.path(digest), link)
        yield folder, staged
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        for fd in fds:
            os.close(fd)


def _locked(path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_abandoned_workspaces(root: Path) -> None:
    """Remove conversion folders and outputs, and quantization folders, in ``root`` (``blobs/``)
    whose creator is gone (not locked)."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if not path.name.startswith((TEMP_PREFIX + CONVERT_HINT, TEMP_PREFIX + QUANTIZE_HINT)):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a conversion still running in some process
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        finally:
            os.close(fd)


class _QuantizeStaging:
    """Quantizer subprocesses, each writing its output in a locked temporary folder in ``blobs/``.

    The first one is started as soon as a create asks to quantize, before the source is even read,
    so that its interpreter and llama.cpp load meanwhile; it is handed the file the request most
    likely quantizes at once (``_likely_source``), so that llama.cpp reads it while this process
    parses and checks the same header. ``take`` hands it out for that file, or replaces it (and
    starts more, for several model layers). ``stop_unused`` stops those never taken, and ``close``
    (at the end of the create: see ``_stop``) kills whatever still runs and deletes every output not
    installed as a blob (start-up cleanup in any process leaves a locked one alone).
    """

    def __init__(self, store: ModelStore, target: str, request: CreateRequest | None) -> None:
        self._store = store
        self._target = target
        self._started: list[tuple[Path, int, Quantizer]] = []
        self._taken = 0
        if target:
            quantizer = self._start()
            guess = _likely_source(store, request) if request is not None else None
            if guess is not None:
                quantizer.begin(guess)

    def _start(self) -> Quantizer:
        root = self._store.blobs.root
        root.mkdir(parents=True, exist_ok=True)
        # llama.cpp creates its output in a locked folder of its own, not in a file made (and locked)
        # beforehand: it opens the output with O_TRUNC, and on ext4 a file truncated to nothing has
        # its data written back as soon as it is closed, which an fsync anywhere on the disk (the
        # manifest's, a moment later) then waits for: 10-25 ms, against 1-2 ms for a new file.
        folder = temp_name(root, QUANTIZE_HINT)
        folder.mkdir()
        staged = folder / "model.gguf"
        try:
            fd = _locked(folder, os.O_RDONLY | os.O_DIRECTORY)
        except BaseException:
            folder.rmdir()
            raise
        try:
            quantizer = self._store.quantizers.start(staged, self._target, folder=folder)
        except BaseException:
            os.close(fd)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._started.append((staged, fd, quantizer))
        return quantizer

    def take(self, source: Path) -> tuple[Path, Quantizer]:
        """An output path and the quantizer that writes it from ``source`` (started already; one
        that began on another file is stopped and replaced)."""
        if self._taken < len(self._started):
            staged, fd, quantizer = self._started[self._taken]
            if quantizer.source not in (None, source):  # a wrong guess: its output is not this one
                self._started.pop(self._taken)
                _stop(staged, fd, quantizer)
        if self._taken == len(self._started):
            self._start()
        staged, _fd, quantizer = self._started[self._taken]
        self._taken += 1
        return staged, quantizer

    def stop_unused(self) -> None:
        """Stop the quantizers never taken (started ahead for a model that needed none)."""
        unused, self._started = self._started[self._taken :], self._started[: self._taken]
        for staged, fd, quantizer in unused:
            _stop(staged, fd, quantizer)

    def close(self) -> None:
        """Stop every quantizer, unlock and delete every output still at its temporary name."""
        started, self._started = self._started, []
        for staged, fd, quantizer in started:
            _stop(staged, fd, quantizer)

    def __enter__(self) -> _QuantizeStaging:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _stop(staged: Path, fd: int, quantizer: Quantizer) -> None:
    """Stop ``quantizer`` (at once, unless it is done and exits by itself), delete ``staged``'s
    folder (with the output, if it was not installed), and close ``fd`` (the folder's lock) and
    the quantizer in the background.

    The last close of an unlinked output (a failure, or a model the store already had: the
    quantizer holds the finished file open) hands its pages back to the kernel: tens of
    milliseconds that the request need not wait for. It is also why staged outputs are closed only
    at the end of a create: on ext4 a manifest's ``fsync`` that runs beside it waits for it (about
    30 ms here, against 1 ms).
    """
    done = quantizer.finished

    def finish() -> None:
        if done:
            quantizer.close()
        os.close(fd)

    try:
        if not done:
            quantizer.close()
    finally:
        shutil.rmtree(staged.parent, ignore_errors=True)
        threading.Thread(target=finish, name="close-quantized", daemon=True).start()


def _likely_source(store: ModelStore, request: CreateRequest) -> Path | None:
    """The blob a quantizing create will most likely quantize, guessed before anything is read:
    the model layer of ``from``, or the largest GGUF among ``files`` (a guess only: the file is
    checked as always before its output is used, and a wrong guess costs only the time spent)."""
    with contextlib.suppress(PollamaError, OSError, ValueError):
        if request.from_:
            _found, manifest, _mtime = store.read_manifest(parse_name(request.from_))
            models = manifest.layers_of(MEDIA_MODEL)
            return store.blobs.path(models[0].digest) if models else None
        paths = [store.blobs.path(digest) for name, digest in request.files.items() if name.endswith(".gguf")]
        sizes = {path: path.stat().st_size for path in paths if path.is_file()}
        if sizes and not any(name.endswith(".safetensors") for name in request.files):
            return max(sizes, key=lambda path: sizes[path])
    return None


def _quantize_models(
    store: ModelStore, base: list[_BaseLayer], target: str, reserved: BlobReservation, staging: _QuantizeStaging
) -> Iterator[Progress]:
    """Quantize every model layer of ``base`` to ``target`` in place (Ollama: F16/BF16/F32 only;
    a model already of that type is left as it is)."""
    try:
        for item in base:
            if item.layer.media_type != MEDIA_MODEL or item.gguf is None:
                continue
            source_type = file_type_name(item.gguf)
            check_quantization_source(source_type)
            if source_type == target:
                continue
            yield from _quantize_layer(store, item, source_type, target, reserved, staging)
    finally:
        staging.stop_unused()  # a quantizer started for nothing (an F16 model asked for F16) stops here


def _quantize_layer(
    store: ModelStore,
    item: _BaseLayer,
    source_type: str,
    target: str,
    reserved: BlobReservation,
    staging: _QuantizeStaging,
) -> Iterator[Progress]:
    """Quantize one model layer into a new blob and put it in ``item``'s place.

    llama.cpp writes a locked temporary file in ``blobs/``; it becomes a blob only once complete
    and verified, and is deleted (by ``staging``) on any failure, including this generator being
    closed when the client goes away. The subprocess hashes the file as llama.cpp writes it, and
    sends the header llama.cpp is to write, parsed here meanwhile; the checks below read that one
    once the subprocess has found it in the file byte for byte (else the file's own). The file is
    then renamed into place, not copied.
    """
    assert item.gguf is not None
    status = f"quantizing {source_type} model to {target}"
    total = item.layer.size
    staged, quantizer = staging.take(item.gguf.path)
    with contextlib.closing(quantizer.quantize(item.gguf)) as fractions:
        for fraction in fractions:  # also a heartbeat: each step returns within a second
            yield Progress(status, digest=_QUANTIZE_DIGEST, total=total, completed=int(fraction * total))
    yield Progress("verifying conversion")
    digest = quantizer.digest()
    quantized = quantizer.header() or read_gguf(staged)
    if quantized.metadata.get("general.file_type") != file_type_id(target) or len(quantized.tensors) != len(
        item.gguf.tensors
    ):
        raise QuantizationFailed(f"quantizing to {target} failed: the quantized file does not verify")
    written = store.blobs.commit_file(staged, digest, actual=digest, reservation=reserved)
    quantized.path = written.path
    item.layer = Layer(MEDIA_MODEL, written.digest, written.size, name=item.layer.name)
    item.gguf = quantized
    item.status = f"{'creating new' if written.created else 'using existing'} layer {written.digest}"


def _draft_quantization(request: CreateRequest) -> str:
    """The validated ``draft_quantize`` type ("" for none); it needs ``draft_files`` (Ollama's message)."""
    if not request.draft_quantize:
        return ""
    if not request.draft_files:
        raise InvalidRequest("--draft-quantize requires a DRAFT model")
    return parse_quantization_type(request.draft_quantize)


def _draft_layer(
    store: ModelStore, files: dict[str, str], base: list[_BaseLayer], reserved: BlobReservation, quantize: str
) -> Iterator[Progress]:
    """Make the DRAFT files (one GGUF, or a safetensors folder, converted as FROM folders are) the model's
    draft layer, quantized to ``quantize`` if given; it replaces a draft inherited from a ``from`` model."""
    found: list[_BaseLayer] = []
    yield from _layers_from_files(store, files, found, reserved, adapter=False)
    if len(found) != 1 or found[0].layer.media_type != MEDIA_MODEL:
        raise InvalidRequest("a DRAFT must be a single model: one GGUF file or one safetensors folder")
    item = found[0]
    if quantize and item.gguf is not None:
        source_type = file_type_name(item.gguf)
        check_quantization_source(source_type)
        if source_type != quantize:
            with _QuantizeStaging(store, quantize, None) as staging:
                yield from _quantize_layer(store, item, source_type, quantize, reserved, staging)
    old = item.layer
    item.layer = Layer(MEDIA_DRAFT, old.digest, old.size, from_=old.from_, name=old.name)
    base[:] = [b for b in base if b.layer.media_type != MEDIA_DRAFT] + [item]


def _draft_config(base: list[_BaseLayer], inherited: ModelConfig) -> dict[str, Any] | None:
    """The config's ``draft``: what the draft layer's GGUF is (or the ``from`` model's, for its layer)."""
    for item in base:
        if item.layer.media_type == MEDIA_DRAFT:
            if item.gguf is None:
                return inherited.draft
            return {"model_format": "gguf", "architecture": item.gguf.architecture}
    return None


def _projectors_onto(
    store: ModelStore, files: dict[str, str], base: list[_BaseLayer], reserved: BlobReservation
) -> Iterator[Progress]:
    """Put the projectors among ``files`` in place of the base model's own (Ollama ignores ``files``
    when ``from`` is set, which would drop a projector named next to an installed model)."""
    uploaded: list[_BaseLayer] = []
    yield from _layers_from_files(store, files, uploaded, reserved, adapter=False)
    projectors = [item for item in uploaded if item.layer.media_type == MEDIA_PROJECTOR]
    if projectors:
        base[:] = [item for item in base if item.layer.media_type != MEDIA_PROJECTOR] + projectors


def _config_for(base: list[_BaseLayer], inherited: ModelConfig, request: CreateRequest) -> ModelConfig:
    """The config blob: what the GGUF layers say, plus settings inherited from a ``from`` model."""
    config = ModelConfig(
        renderer=request.renderer or inherited.renderer,
        parser=request.parser or inherited.parser,
        requires=request.requires or inherited.requires,
        model_format=inherited.model_format,
        capabilities=list(inherited.capabilities),
    )
    families: list[str] = []
    for item in base:
        gguf = item.gguf
        if gguf is None:
            continue
        if item.layer.media_type != MEDIA_MODEL:
            continue  # a projector's (``clip``) or an adapter's architecture is not a family
        config.model_format = config.model_format or "gguf"
        families.append(gguf.architecture)
        config.model_family = config.model_family or gguf.architecture
        config.model_type = config.model_type or human_number(gguf.parameter_count)
        config.file_type = config.file_type or file_type_name(gguf)
        config.context_length = config.context_length or context_length(gguf)
        config.embedding_length = config.embedding_length or embedding_length(gguf)
    config.model_families = families or None
    return config


def _check_template(text: str) -> None:
    """Refuse a TEMPLATE that Go would not parse (Ollama's ``template error: ...``)."""
    from pollama.errors import TemplateParseError
    from pollama.template import parse_template

    try:
        parse_template(text)
    except TemplateParseError as exc:
        raise InvalidRequest(f"template error: {exc.full_message}") from None


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _message_json(message: dict[str, Any]) -> dict[str, Any]:
    """A message as Ollama's ``api.Message`` marshals it: role and content, then non-empty extras."""
    out: dict[str, Any] = {"role": message.get("role", ""), "content": message.get("content", "")}
    for key in ("thinking", "images", "tool_calls", "tool_name", "tool_call_id"):
        if message.get(key):
            out[key] = message[key]
    return out
