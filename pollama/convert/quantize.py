"""Quantizing a GGUF model with llama.cpp's own quantizer (``llama_model_quantize``).

Which types exist, and which sources may be quantized, follow Ollama's rules (type names are
upper-cased, ``Q4_K`` means ``Q4_K_M``, only F16, BF16 and F32 models are quantized) widened to
every type llama.cpp's ``llama-quantize`` tool offers. The choice of a type per tensor (K-quants
keeping some tensors at higher precision, fallbacks for rows a block size does not divide) is
llama.cpp's, untouched. Ollama's few extra per-architecture exceptions (qwen35 ``nextn.eh_proj``,
gemma3n ``per_layer_token_embd``, deepseek2's MLA tensors, glm's embeddings) are not added on
top: llama.cpp's quantizer has its own rules for those tensors (it leaves the MLA ones
unquantized, for one), and they apply.

The quantizer runs in a subprocess, ``python -m pollama.convert.quantize SOURCE OUTPUT TYPE``,
not in a worker thread of the server, because:

- it must be stoppable: ``llama_model_quantize`` has no cancel hook and runs for minutes on a
  large model; a thread cannot be stopped, a process can be killed at once when the client
  disconnects or the server shuts down;
- a crash in llama.cpp (an ``abort`` on a malformed tensor, a failed allocation) must not take
  the server down with it; in a subprocess it becomes an error of this request;
- it keeps llama.cpp, its threads and its memory out of the server process.

The subprocess reports on stdout, one JSON object a line: ``{"tensor": NAME, "index": I,
"count": N}`` as llama.cpp starts each tensor (read from its log), then ``{"done": true}``, or
``{"error": MESSAGE, "kind": KIND}`` with the runner protocol's kinds. It watches its stdin: when
the parent goes away (the pipe closes) it deletes its output and exits, so a killed server leaves
no quantizer behind. The parent owns the output file (a temporary name in the models directory);
``quantize_gguf`` kills the subprocess whenever it is closed early or fails.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import importlib.util
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pollama.errors import QuantizationFailed, UnsupportedQuantization

if TYPE_CHECKING:  # the subprocess imports this module too: it must start without numpy and gguf
    from pollama.gguf import GGUFFile

# llama.cpp's ``llama_ftype`` values, in the order of llama-quantize's QUANT_OPTIONS table
# (tools/quantize/quantize.cpp), without its aliases and ``COPY``. A test checks them against
# llama-cpp-python's ``LLAMA_FTYPE_*`` constants; the server does not import llama.cpp for them.
_FTYPES: dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "BF16": 32,
    "Q1_0": 40,
    "Q2_0": 41,
    "Q4_0": 2,
    "Q4_1": 3,
    "MXFP4_MOE": 38,
    "Q5_0": 8,
    "Q5_1": 9,
    "IQ2_XXS": 19,
    "IQ2_XS": 20,
    "IQ2_S": 28,
    "IQ2_M": 29,
    "IQ1_S": 24,
    "IQ1_M": 31,
    "TQ1_0": 36,
    "TQ2_0": 37,
    "Q2_K": 10,
    "Q2_K_S": 21,
    "IQ3_XXS": 23,
    "IQ3_S": 26,
    "IQ3_M": 27,
    "IQ3_XS": 22,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "IQ4_NL": 25,
    "IQ4_XS": 30,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "Q8_0": 7,
}
_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
# Types whose tensors llama.cpp refuses to quantize without an importance matrix (its
# ``tensor_requires_imatrix``: IQ1/IQ2/IQ3_XXS targets, and Q2_K inside a Q2_K_S file).
_NEEDS_IMATRIX = frozenset({"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "IQ3_XXS", "Q2_K_S"})
SOURCE_TYPES = ("F16", "BF16", "F32")
"""The file types a model must have to be quantized (Ollama's rule)."""

# How often a running quantization reports, even when no tensor finished meanwhile: a consumer
# driven step by step (the create pipeline in a worker thread) can then stop it within this time.
_HEARTBEAT = 0.5
_GGML_LOG_ERROR = 4  # ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT
_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


def supported_types() -> list[str]:
    """Every type a model can be quantized to here, in llama-quantize's order (floats first)."""
    return [name for name in _FTYPES if name not in _NEEDS_IMATRIX]


def parse_quantization_type(text: str) -> str:
    """The canonical name of a requested type (upper-cased, ``Q4_K`` → ``Q4_K_M``).

    Raises ``UnsupportedQuantization`` in Ollama's words for an unknown type, and for the i-quants
    that need an importance matrix.
    """
    name = text.upper()
    name = _ALIASES.get(name, name)
    supported = ", ".join(supported_types())
    if name in _NEEDS_IMATRIX:
        raise UnsupportedQuantization(
            f"quantization type {name} needs an importance matrix (imatrix), which is not supported"
            f" - supported types are {supported}"
        )
    if name not in _FTYPES:
        raise UnsupportedQuantization(f"unsupported quantization type {name} - supported types are {supported}")
    return name


def file_type_id(name: str) -> int:
    """llama.cpp's ``llama_ftype`` value (``general.file_type``) of a canonical type name."""
    return _FTYPES[name]


def check_quantization_source(file_type: str) -> None:
    """Refuse to quantize a model whose file type (``Q4_1``, ...) is not F16, BF16 or F32."""
    if file_type not in SOURCE_TYPES:
        raise UnsupportedQuantization("quantization is only supported for F16, BF16 and F32 models")


def quantize_gguf(source: GGUFFile, output: Path, type_name: str, *, threads: int = 0) -> Generator[float, None, None]:
    """Quantize the GGUF ``source`` to ``type_name`` (canonical) into ``output``, in a subprocess.

    Yields the fraction of the source's tensor bytes done so far, rising to 1.0 when the file is
    complete, and at least every half second while it runs. Closing the iterator early, or any
    failure, kills the subprocess; ``output`` belongs to the caller (delete it on failure).
    Raises ``QuantizationFailed`` if llama.cpp fails or the subprocess dies, and
    ``UnsupportedQuantization`` if llama.cpp finds the type impossible for this model.
    """
    weights = {tensor.name: tensor.n_bytes for tensor in source.tensors}
    total = sum(weights.values()) or 1
    command = [sys.executable, "-m", "pollama.convert.quantize", str(source.path), str(output), type_name]
    if threads > 0:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
    assert process.stdout is not None and process.stdin is not None
    done_bytes = 0
    current = ""
    finished = False
    try:
        for event in _events(process.stdout):
            if event is None:  # heartbeat
                yield done_bytes / total
            elif "tensor" in event:
                done_bytes += weights.get(current, 0)
                current = str(event["tensor"])
                yield min(done_bytes / total, 1.0)
            elif "error" in event:
                message = str(event["error"])
                if event.get("kind") == "invalid_request":
                    raise UnsupportedQuantization(message)
                raise QuantizationFailed(message)
            elif event.get("done"):
                finished = True
        code = process.wait()
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
            raise QuantizationFailed(f"quantizing to {type_name} failed: the quantizer {how}")
        if not finished or code != 0:
            raise QuantizationFailed(f"quantizing to {type_name} failed: the quantizer exited with status {code}")
        yield 1.0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


def _events(stdout: IO[bytes]) -> Iterator[dict[str, Any] | None]:
    """The subprocess's JSON lines as they come, with ``None`` whenever a heartbeat passes without one."""
    fd = stdout.fileno()
    os.set_blocking(fd, False)
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            if not selector.select(_HEARTBEAT):
                yield None
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue


# --- the subprocess ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m pollama.convert.quantize SOURCE OUTPUT TYPE [--threads N]``: run llama.cpp's
    quantizer, reporting progress and the outcome as JSON lines on stdout."""
    parser = argparse.ArgumentParser(prog="python -m pollama.convert.quantize")
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("type", choices=sorted(_FTYPES))
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    output = Path(args.output)
    threading.Thread(target=_exit_when_orphaned, args=(output,), daemon=True).start()

    llama_cpp = _llama_binding()
    errors: list[str] = []
    callback = _log_callback(llama_cpp, errors)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPES[args.type]
    params.nthread = args.threads
    params.allow_requantize = True  # as Ollama (llama-quantize --allow-requantize)
    code = llama_cpp.llama_model_quantize(os.fsencode(args.source), os.fsencode(args.output), ctypes.byref(params))
    if code != 0:
        text = "".join(errors)
        match = re.search(r"failed to quantize: (.*)", text)
        reason = match.group(1).strip() if match else (text.strip() or f"llama.cpp returned {code}")
        kind = "invalid_request" if "imatrix" in reason or "fallback" in reason else "internal"
        _emit({"error": f"quantizing to {args.type} failed: {reason}", "kind": kind})
        return 1
    _emit({"done": True})
    return 0


def _llama_binding() -> Any:
    """llama-cpp-python's ctypes binding, ``llama_cpp.llama_cpp``, without running the package's
    ``__init__``, which also imports its high-level API (numpy, jinja2, the chat formats): up to a
    second of start-up the quantizer does not use, on every quantization."""
    if "llama_cpp" not in sys.modules:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is not None and spec.submodule_search_locations:
            package = types.ModuleType("llama_cpp")
            package.__path__ = list(spec.submodule_search_locations)
            sys.modules["llama_cpp"] = package
    return importlib.import_module("llama_cpp.llama_cpp")


def _log_callback(llama_cpp: Any, errors: list[str]) -> Any:
    """llama.cpp's log sink (a ctypes function pointer: keep it referenced while llama.cpp logs):
    each tensor's start becomes a progress line; errors are kept."""
    last_level = [0]

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def on_log(level: int, text: bytes, _user: Any) -> None:
        if level != 5:  # GGML_LOG_LEVEL_CONT continues the previous message at its level
            last_level[0] = level
        message = text.decode("utf-8", "replace")
        match = _TENSOR_LINE.match(message)
        if match:
            _emit({"tensor": match.group(3), "index": int(match.group(1)), "count": int(match.group(2))})
        elif last_level[0] == _GGML_LOG_ERROR:
            errors.append(message)

    return on_log


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _exit_when_orphaned(output: Path) -> None:
    """Block on stdin; the parent never writes, so end-of-file means it is gone: clean up and exit."""
    with contextlib.suppress(OSError):
        while os.read(0, 4096):  # the raw descriptor: a buffered reader would block interpreter exit
            pass
    with contextlib.suppress(OSError):
        output.unlink()
    os._exit(3)


if __name__ == "__main__":
    sys.exit(main())
