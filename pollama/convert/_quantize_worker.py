"""The quantizer subprocess: ``python -I -S _quantize_worker.py OUTPUT TYPE FTYPE LIBLLAMA THREADS``.

Started by ``pollama.convert.quantize.Quantizer`` (read its docstring for why a subprocess). It is
run as a script, isolated (``-I -S``: no ``site``, no environment, no working directory on its
path) and imports nothing but the standard library, never ``pollama`` nor llama-cpp-python: it
binds the four llama.cpp functions it calls itself, with ``ctypes``. Start-up is on the path of
every quantization, and those imports (the package, ``site``'s ``.pth`` files, the hundreds of
prototypes llama-cpp-python declares) cost more than everything else it does before llama.cpp
starts.

It loads llama.cpp, reads ``{"source": PATH}`` from stdin, runs ``llama_model_quantize`` and hashes
the output (SHA-256, from its mapped pages while they are hot), reporting on stdout, one JSON
object a line: ``{"tensor": NAME, "index": I, "count": N}`` as llama.cpp starts each tensor (read
from its log), ``{"written": true}`` once the file is complete, then ``{"done": true, "digest":
"sha256:…", "size": BYTES}``; or ``{"error": MESSAGE, "kind": KIND}`` with the runner protocol's
kinds. It watches its stdin: the parent writes nothing after the source, so end-of-file means the
parent is gone, before or during the work; it then deletes its output and exits at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import mmap
import os
import re
import sys
import threading

USAGE = "usage: _quantize_worker.py OUTPUT TYPE FTYPE LIBLLAMA THREADS"
_GGML_LOG_ERROR = 4  # ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT
_GGML_LOG_CONT = 5
_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


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
    return lib


def main(argv: list[str]) -> int:
    """Quantize as the arguments say (see the module docstring); the exit status is 0 on success."""
    try:
        output, type_name, ftype_text, library, threads_text = argv
        ftype, threads = int(ftype_text), int(threads_text)
    except ValueError:
        sys.stderr.write(USAGE + "\n")
        return 2
    source: list[str] = []
    ready = threading.Event()
    threading.Thread(target=_watch_parent, args=(output, source, ready), daemon=True).start()

    try:
        lib = bind(library)
    except (OSError, AttributeError) as exc:
        _emit({"error": f"quantizing to {type_name} failed: cannot load llama.cpp: {exc}", "kind": "internal"})
        return 1
    errors: list[str] = []
    callback = _log_callback(errors)
    lib.llama_log_set(callback, None)
    lib.llama_backend_init()
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads  # 0: llama.cpp's default, every core (std::thread::hardware_concurrency)
    params.allow_requantize = True  # as Ollama (llama-quantize --allow-requantize)
    ready.wait()
    code = lib.llama_model_quantize(os.fsencode(source[0]), os.fsencode(output), ctypes.byref(params))
    if code != 0:
        text = "".join(errors)
        match = re.search(r"failed to quantize: (.*)", text)
        reason = match.group(1).strip() if match else (text.strip() or f"llama.cpp returned {code}")
        kind = "invalid_request" if "imatrix" in reason or "fallback" in reason else "internal"
        _emit({"error": f"quantizing to {type_name} failed: {reason}", "kind": kind})
        return 1
    _emit({"written": True})
    digest, size = sha256_file(output)
    _emit({"done": True, "digest": digest, "size": size})
    return 0


def sha256_file(path: str) -> tuple[str, int]:
    """The file's ``sha256:<hex>`` digest and size, hashed straight from its mapped pages."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return "sha256:" + hashlib.sha256().hexdigest(), 0
        populate = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map every page at once, not fault by fault
        with mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ) as mapped:
            return "sha256:" + hashlib.sha256(mapped).hexdigest(), size


def _log_callback(errors: list[str]) -> object:
    """llama.cpp's log sink (a ctypes function pointer: keep it referenced while llama.cpp logs):
    each tensor's start becomes a progress line; errors are kept."""
    last_level = [0]

    @LOG_CALLBACK  # type: ignore[untyped-decorator]
    def on_log(level: int, text: bytes, _user: object) -> None:
        if level != _GGML_LOG_CONT:  # a continuation keeps the level of the message it continues
            last_level[0] = level
        message = text.decode("utf-8", "replace")
        match = _TENSOR_LINE.match(message)
        if match:
            _emit({"tensor": match.group(3), "index": int(match.group(1)), "count": int(match.group(2))})
        elif last_level[0] == _GGML_LOG_ERROR:
            errors.append(message)

    return on_log


def _emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _watch_parent(output: str, source: list[str], ready: threading.Event) -> None:
    """Read stdin: the first line names the source (then ``ready`` is set); end-of-file, with or
    without a source, means the parent is gone: delete the output and exit."""
    pending = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(0, 4096):  # the raw descriptor: a buffered reader would block interpreter exit
            pending += chunk
            if not ready.is_set() and b"\n" in pending:
                line = pending.split(b"\n", 1)[0]
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    source.append(str(json.loads(line)["source"]))
                    ready.set()
    with contextlib.suppress(OSError):
        os.unlink(output)
    os._exit(3)


if __name__ == "__main__":
    status = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(status)  # every line is flushed: skip the interpreter's teardown (and llama.cpp's)
