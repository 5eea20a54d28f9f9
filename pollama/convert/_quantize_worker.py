"""The quantizer subprocess: ``python -I -S -c COMMAND FOLDER LIBLLAMA``.

Started by ``pollama.convert.quantize.Quantizer`` (read its docstring for why a subprocess), with
``COMMAND`` (``Quantizer``'s ``_WORKER_COMMAND``) importing this module from ``FOLDER`` and calling
``run``: imported, not run as a script, so that its compiled form is cached like any module's
(compiling it took a few milliseconds of every start). It runs isolated (``-I -S``: no ``site``,
no environment, no working directory on its path) and imports nothing but the standard library,
never ``pollama`` nor llama-cpp-python: it binds the few llama.cpp and GGUF functions it calls
itself, with ``ctypes``. Start-up is on the path of every quantization, and those imports (the
package, ``site``'s ``.pth`` files, the hundreds of prototypes llama-cpp-python declares) cost
more than everything else it does before llama.cpp starts; for the same reason ``json`` and
``hashlib`` (and ``re``, which ``json`` imports) are imported while llama.cpp loads the model,
not before.

It loads llama.cpp, then reads its job from stdin, one line: ``OUTPUT``, ``TYPE`` (the name, for
messages), ``FTYPE`` (llama.cpp's ``llama_ftype``), ``THREADS`` (0: every core), ``HEADER`` (a
path for the predicted header: see below) and ``FOLDER`` (a folder of the parent's holding both,
or nothing), separated by NUL bytes. It can thus be started ahead of any work, and wait with
llama.cpp loaded. Then it reads the source's path (one more line), runs ``llama_model_quantize``
and hashes the output (SHA-256, the blob's name), reporting on stdout, one JSON object a line:
``{"tensors": [NAME, ...]}`` with the tensors llama.cpp started since the last such line (read from
its log, sent at most every ``_PROGRESS_INTERVAL``), ``{"header": BYTES}`` once the header
llama.cpp will write is predicted (see below) and written to ``HEADER``, ``{"written":
true}`` once the file is complete, then ``{"done": true, "digest": "sha256:…", "size": BYTES,
"streamed": BOOL}``; or ``{"error": MESSAGE, "kind": KIND}`` with the runner protocol's kinds.

The hash is taken while llama.cpp writes, not after. llama.cpp writes the file front to back but
its header last (zeros first, then the tensors, then the header over the zeros, once it knows
every tensor's type), and SHA-256 has to start at the header. So the worker first asks llama.cpp
for a dry run (``dry_run``: the type of every tensor, in the order it writes them, from its log;
nothing is written), builds the header those types give with llama.cpp's own GGUF functions, in
the same steps ``llama_model_quantize`` takes, and hashes that header followed by the tensor
bytes as they reach the file. When llama.cpp is done, the header it wrote is compared with the
predicted one; on any difference (or if the prediction could not be made) the finished file is
hashed again from its start, so the digest is always the file's (``"streamed": false`` then).
With ``"streamed": true``, the header in ``HEADER`` is byte for byte the one in the file, so the
parent can read it while llama.cpp still works. It goes through a file, not down the pipe: a
parent busy elsewhere (parsing the source's header) would leave megabytes unread in the pipe, and
every report, llama.cpp's progress included, would wait behind them.

It watches its stdin: the parent writes nothing after the source, so end-of-file means the parent
is gone, before, during or without any work; it then deletes its output, ``HEADER`` and
``FOLDER`` (if it had a job) and exits at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time

USAGE = "usage: _quantize_worker.py LIBLLAMA, then on stdin OUTPUT\\0TYPE\\0FTYPE\\0THREADS\\0HEADER\\0FOLDER, SOURCE"
_PROGRESS_INTERVAL = 0.02  # seconds: a small model's tensors take a millisecond or two each
_GGML_LOG_ERROR = 4  # ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT
_GGML_LOG_CONT = 5
# ggml.h's ``ggml_type`` values by ``ggml_type_name`` (a test checks them against the library). A
# type missing here only means the header is not predicted and the file is hashed after the fact.
GGML_TYPES = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q8_1": 9,
    "q2_K": 10, "q3_K": 11, "q4_K": 12, "q5_K": 13, "q6_K": 14, "q8_K": 15,
    "iq2_xxs": 16, "iq2_xs": 17, "iq3_xxs": 18, "iq1_s": 19, "iq4_nl": 20, "iq3_s": 21, "iq2_s": 22,
    "iq4_xs": 23, "i8": 24, "i16": 25, "i32": 26, "i64": 27, "f64": 28, "iq1_m": 29, "bf16": 30,
    "tq1_0": 34, "tq2_0": 35, "mxfp4": 39, "nvfp4": 40, "q1_0": 41, "q2_0": 42,
}  # fmt: skip
_GGML_QNT_VERSION = 2  # ggml.h's GGML_QNT_VERSION, which llama.cpp writes as general.quantization_version
_SPLIT_KEYS = (b"split.no", b"split.count", b"split.tensors.count")  # removed from the output's metadata
_CHUNK = 1 << 20
_POLL = 0.002  # seconds between looks at a file that has not grown


class QuantizeParams(ctypes.Structure):
    """llama.h's ``llama_model_quantize_params`` (a test checks it against llama-cpp-python's)."""

    _fields_ = [
        ("nthread", ctypes.c_int32),
        ("ftype", ctypes.c_int),
        ("output_tensor_type", ctypes.c_int),
        ("token_embedding_type", ctypes.c_int),
        ("allow_requantize", ctypes.c_bool),
        ("quantize_output_tensor", ctypes.c_bool),
        ("only_copy", ctypes.c_bool),
        ("pure", ctypes.c_bool),
        ("keep_split", ctypes.c_bool),
        ("dry_run", ctypes.c_bool),
        ("imatrix", ctypes.c_void_p),
        ("kv_overrides", ctypes.c_void_p),
        ("tt_overrides", ctypes.c_void_p),
        ("prune_layers", ctypes.c_void_p),
        ("max_buf_size", ctypes.c_size_t),
    ]


class GGUFInitParams(ctypes.Structure):
    """gguf.h's ``gguf_init_params``."""

    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


# ggml_log_callback: void (*)(enum ggml_log_level level, const char * text, void * user_data)
LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def bind(path: str) -> ctypes.CDLL:
    """``libllama`` at ``path``, with the prototypes of the functions the quantizer calls."""
    lib = ctypes.CDLL(path)
    lib.llama_log_set.argtypes = [LOG_CALLBACK, ctypes.c_void_p]
    lib.llama_log_set.restype = None
    lib.llama_backend_init.argtypes = []
    lib.llama_backend_init.restype = None
    lib.llama_model_quantize_default_params.argtypes = []
    lib.llama_model_quantize_default_params.restype = QuantizeParams
    lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QuantizeParams)]
    lib.llama_model_quantize.restype = ctypes.c_uint32
    # gguf.h and ggml.h (libllama's dependency, found through it), to build the output's header.
    pointer, text = ctypes.c_void_p, ctypes.c_char_p
    for name, argtypes, restype in (
        ("gguf_init_from_file", [text, GGUFInitParams], pointer),
        ("gguf_init_empty", [], pointer),
        ("gguf_set_kv", [pointer, pointer], None),
        ("gguf_set_val_u32", [pointer, text, ctypes.c_uint32], None),
        ("gguf_remove_key", [pointer, text], ctypes.c_int64),
        ("gguf_add_tensor", [pointer, pointer], None),
        ("gguf_set_tensor_type", [pointer, text, ctypes.c_int], None),
        ("gguf_get_meta_size", [pointer], ctypes.c_size_t),
        ("gguf_get_meta_data", [pointer, pointer], None),
        ("gguf_free", [pointer], None),
        ("ggml_get_tensor", [pointer, text], pointer),
        ("ggml_free", [pointer], None),
    ):
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


def main(argv: list[str]) -> int:
    """Quantize as the argument and stdin say (see the module docstring); the exit status is 0 on success."""
    if len(argv) != 1:
        sys.stderr.write(USAGE + "\n")
        return 2
    lines: list[bytes] = []  # the job, then the source
    job_ready, source_ready = threading.Event(), threading.Event()
    threading.Thread(target=_watch_parent, args=(lines, job_ready, source_ready), daemon=True).start()
    try:
        lib: ctypes.CDLL | None = bind(argv[0])
    except (OSError, AttributeError) as exc:
        lib, failure = None, exc
    log = QuantizeLog()
    if lib is not None:
        lib.llama_log_set(log.callback, None)
        lib.llama_backend_init()
    job_ready.wait()  # a quantizer started ahead of its work waits here, llama.cpp loaded
    try:
        output_path, type_bytes, ftype_text, threads_text, header_path, _folder = _job(lines[0])
        ftype, threads, type_name = int(ftype_text), int(threads_text), type_bytes.decode()
    except ValueError:
        sys.stderr.write(USAGE + "\n")
        return 2
    if lib is None:
        _emit({"error": f"quantizing to {type_name} failed: cannot load llama.cpp: {failure}", "kind": "internal"})
        return 1
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads  # 0: llama.cpp's default, every core (std::thread::hardware_concurrency)
    params.allow_requantize = True  # as Ollama (llama-quantize --allow-requantize)
    source_ready.wait()
    threading.Thread(target=_preload, daemon=True).start()
    source_path, output = lines[1], os.fsdecode(output_path)
    # The dry run and the header it gives are worked out beside the real run, not before it.
    hasher = StreamingHash(output, os.fsdecode(header_path))
    finished = threading.Event()
    thread = threading.Thread(target=hasher.run, args=(lib, params, source_path, log, finished), daemon=True)
    thread.start()
    code = lib.llama_model_quantize(source_path, output_path, ctypes.byref(params))
    finished.set()
    if code != 0:
        text = "".join(log.errors)
        _, found, rest = text.partition("failed to quantize: ")
        reason = rest.split("\n", 1)[0].strip() if found else (text.strip() or f"llama.cpp returned {code}")
        kind = "invalid_request" if "imatrix" in reason or "fallback" in reason else "internal"
        _emit({"error": f"quantizing to {type_name} failed: {reason}", "kind": kind})
        return 1
    log.send_progress()
    _emit({"written": True})
    thread.join()
    streamed = hasher.digest is not None
    digest, size = (hasher.digest, hasher.size) if streamed else sha256_file(output)
    _emit({"done": True, "digest": digest, "size": size, "streamed": streamed})
    return 0


Plan = list[tuple[str, str | None]]
"""Each tensor's name in the order llama.cpp writes them, with its new type's name (``None``: kept)."""


class QuantizeLog:
    """llama.cpp's log sink (``callback``, a ctypes function pointer: keep it referenced while
    llama.cpp logs). Lines from the thread running a dry run (``dry_thread``) make ``plan`` (a
    ``Plan``). Lines from the real run: each tensor's start sets ``writing`` (the output is open by
    then) and is reported, in batches (``send_progress``), and errors are kept."""

    def __init__(self) -> None:
        self.dry_thread: int | None = None
        self.plan: Plan = []
        self.errors: list[str] = []
        self.writing = threading.Event()
        self._started: list[str] = []  # tensors started since the last progress line
        self._sent = 0.0
        self._level = 0
        self.callback = LOG_CALLBACK(self._on_log)

    def _on_log(self, level: int, text: bytes, _user: object) -> None:
        message = text.decode("utf-8", "replace")
        tensor = _tensor_line(message)
        if threading.get_ident() == self.dry_thread:
            if tensor:
                self.plan.append((tensor[2], None))
            elif self.plan and (new_type := _dry_run_type(message)):
                self.plan[-1] = (self.plan[-1][0], new_type)
            return
        if level != _GGML_LOG_CONT:  # a continuation keeps the level of the message it continues
            self._level = level
        if tensor:
            self.writing.set()
            self._started.append(tensor[2])
            if time.monotonic() - self._sent >= _PROGRESS_INTERVAL:
                self.send_progress()
        elif self._level == _GGML_LOG_ERROR:
            self.errors.append(message)

    def send_progress(self) -> None:
        """Report the tensors started since the last report, if any."""
        if self._started:
            _emit({"tensors": self._started})
            self._started = []
            self._sent = time.monotonic()


def _tensor_line(message: str) -> tuple[int, int, str] | None:
    """``(index, count, name)`` of the line llama.cpp logs as it starts a tensor (``[  12/ 272]
    blk.1.attn_k.weight - [...], type = f16, ``), else ``None``."""
    if not message.startswith("["):
        return None
    head, closed, rest = message[1:].partition("]")
    index, slash, count = head.partition("/")
    words = rest.split(None, 1)
    if not (closed and slash and index.strip().isdigit() and count.strip().isdigit() and words):
        return None
    return int(index), int(count), words[0]


def _dry_run_type(message: str) -> str | None:
    """The new type's name in a dry run's size line for a tensor that changes type (``size =
    54.00 MiB -> 15.19 MiB (q4_0)``), else ``None``."""
    line = message.rstrip()
    if not (line.startswith("size = ") and "->" in line and line.endswith(")")):
        return None
    return line[line.rfind("(") + 1 : -1] or None


def dry_run(lib: ctypes.CDLL, params: QuantizeParams, source: bytes, output: bytes, log: QuantizeLog) -> Plan:
    """llama.cpp's ``Plan`` for ``source`` from a dry run in this thread, which writes no file;
    empty if it fails (the real run then reports why)."""
    dry = QuantizeParams.from_buffer_copy(params)
    dry.dry_run = True
    log.dry_thread = threading.get_ident()
    try:
        code = lib.llama_model_quantize(source, output, ctypes.byref(dry))
    finally:
        log.dry_thread = None
    return log.plan if code == 0 else []


def predicted_header(lib: ctypes.CDLL, source: bytes, plan: Plan, ftype: int) -> bytes | None:
    """The header (metadata, tensor infos, padding) llama.cpp will write when it quantizes
    ``source`` as ``plan`` says, built with its GGUF functions in ``llama_model_quantize``'s
    steps: the source's metadata, the quantization version and file type set, the split keys
    removed, the tensors added in order, then given their new types. ``None`` if it cannot be."""
    types: dict[str, int] = {}
    for name, type_name in plan:
        if type_name is not None:
            if type_name not in GGML_TYPES:
                return None
            types[name] = GGML_TYPES[type_name]
    if len({name for name, _ in plan}) != len(plan):
        return None
    tensors = ctypes.c_void_p()
    metadata = lib.gguf_init_from_file(source, GGUFInitParams(True, ctypes.pointer(tensors)))
    if not metadata:
        return None
    header = lib.gguf_init_empty()
    try:
        lib.gguf_set_kv(header, metadata)
        lib.gguf_set_val_u32(header, b"general.quantization_version", _GGML_QNT_VERSION)
        lib.gguf_set_val_u32(header, b"general.file_type", ftype)
        for key in _SPLIT_KEYS:
            lib.gguf_remove_key(header, key)
        found = [lib.ggml_get_tensor(tensors, name.encode()) for name, _ in plan]
        if not all(found):
            return None
        for tensor in found:
            lib.gguf_add_tensor(header, tensor)
        for name, type_id in types.items():
            lib.gguf_set_tensor_type(header, name.encode(), type_id)
        data = ctypes.create_string_buffer(lib.gguf_get_meta_size(header))
        lib.gguf_get_meta_data(header, data)
        return data.raw
    finally:
        lib.gguf_free(header)
        lib.gguf_free(metadata)
        lib.ggml_free(tensors)


class StreamingHash:
    """The SHA-256 of a file llama.cpp is writing, taken as it grows: the predicted header, then the
    bytes after it as they reach the file. ``digest`` stays ``None`` unless, once the file is
    finished, its header is the predicted one and every byte after it was hashed."""

    def __init__(self, path: str, header_path: str) -> None:
        self.path = path
        self.header_path = header_path  # where the predicted header is written for the parent
        self.digest: str | None = None
        self.size = 0

    def run(
        self,
        lib: ctypes.CDLL,
        params: QuantizeParams,
        source: bytes,
        log: QuantizeLog,
        finished: threading.Event,
    ) -> None:
        """Predict the header (a dry run beside the real one), then hash the file from when
        ``log.writing`` is set until ``finished`` is and nothing more is left."""
        plan = dry_run(lib, params, source, os.fsencode(self.path), log)
        header = predicted_header(lib, source, plan, params.ftype) if plan else None
        if header is None:
            return
        if _write_new(self.header_path, header):
            _emit({"header": len(header)})
        while not log.writing.wait(0.05):
            if finished.is_set():
                return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            self.follow(fd, header, finished)
        finally:
            os.close(fd)

    def follow(self, fd: int, header: bytes, finished: threading.Event) -> None:
        """Hash ``header`` and then the file open at ``fd`` from ``len(header)`` on, as it grows,
        until ``finished`` is set and the end is read; keep the digest if the file then starts
        with ``header``."""
        import hashlib

        hasher = hashlib.sha256(header)
        position = len(header)
        view = memoryview(bytearray(_CHUNK))
        while True:
            last = finished.is_set()  # before the read: a read after the end sees every byte
            count = os.preadv(fd, [view], position)
            if count:
                hasher.update(view[:count])
                position += count
            elif last:
                break
            else:
                time.sleep(_POLL)
        if os.fstat(fd).st_size == position and os.pread(fd, len(header), 0) == header:
            self.digest, self.size = "sha256:" + hasher.hexdigest(), position


def sha256_file(path: str) -> tuple[str, int]:
    """The file's ``sha256:<hex>`` digest and size, hashed straight from its mapped pages."""
    import hashlib
    import mmap

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return "sha256:" + hashlib.sha256().hexdigest(), 0
        populate = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map every page at once, not fault by fault
        with mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ) as mapped:
            return "sha256:" + hashlib.sha256(mapped).hexdigest(), size


def _preload() -> None:
    """Import what the reports and the hash need, beside llama.cpp's model load (see the docstring)."""
    import hashlib  # noqa: F401
    import json  # noqa: F401


_SEND = threading.Lock()  # two threads report: llama.cpp's log (progress) and the hash (the header's line)


def _emit(event: dict[str, object]) -> None:
    """Write ``event`` as a line on stdout."""
    import json  # loaded by ``_preload`` by now, or else here

    data = memoryview(json.dumps(event).encode() + b"\n")
    with _SEND:
        while data:
            data = data[os.write(1, data) :]


def _write_new(path: str, data: bytes) -> bool:
    """Write ``data`` to a new file at ``path``; False if that cannot be done."""
    try:
        with open(path, "xb") as fh:
            fh.write(data)
    except OSError:
        return False
    return True


def _job(line: bytes) -> list[bytes]:
    """The job line's fields: output, type, ftype, threads, header file, folder (``ValueError`` if
    it has another number of them)."""
    fields = line.split(b"\0")
    if len(fields) != 6:
        raise ValueError(f"a job has 6 fields, not {len(fields)}")
    return fields


def _watch_parent(lines: list[bytes], job_ready: threading.Event, source_ready: threading.Event) -> None:
    """Read stdin into ``lines``: the job (``job_ready`` set), then the source's path
    (``source_ready`` set). End-of-file, at any point, means the parent is gone: delete the
    output, the header's file and the folder (once the job named them) and exit."""
    pending = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(0, 4096):  # the raw descriptor: a buffered reader would block interpreter exit
            pending += chunk
            while len(lines) < 2 and b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                lines.append(line)
                (job_ready if len(lines) == 1 else source_ready).set()
    with contextlib.suppress(IndexError, ValueError):  # no job, or not one: nothing of it to delete
        output, _, _, _, header, folder = _job(lines[0])
        for path in (output, header):
            with contextlib.suppress(OSError):
                os.unlink(path)
        if folder:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    os._exit(3)


def run() -> None:
    """Quantize as ``sys.argv`` says (after the module's folder) and exit with ``main``'s status."""
    # Every line is written unbuffered: skip the interpreter's teardown (and llama.cpp's).
    os._exit(main(sys.argv[2:]))


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
