"""Quantizing a GGUF model with llama.cpp's own quantizer (``llama_model_quantize``).

Which types exist, and which sources may be quantized, follow Ollama's rules (type names are
upper-cased, ``Q4_K`` means ``Q4_K_M``, only F16, BF16 and F32 models are quantized) widened to
every type llama.cpp's ``llama-quantize`` tool offers. The choice of a type per tensor (K-quants
keeping some tensors at higher precision, fallbacks for rows a block size does not divide) is
llama.cpp's, untouched. Ollama's few extra per-architecture exceptions (qwen35 ``nextn.eh_proj``,
gemma3n ``per_layer_token_embd``, deepseek2's MLA tensors, glm's embeddings) are not added on
top: llama.cpp's quantizer has its own rules for those tensors (it leaves the MLA ones
unquantized, for one), and they apply.

The quantizer runs in a subprocess (``_quantize_worker.py``, a script of the standard library
alone: its docstring says why and what it reports), not in a worker thread of the server, because:

- it must be stoppable: ``llama_model_quantize`` has no cancel hook and runs for minutes on a
  large model; a thread cannot be stopped, a process can be killed at once when the client
  disconnects or the server shuts down;
- a crash in llama.cpp (an ``abort`` on a malformed tensor, a failed allocation) must not take
  the server down with it; in a subprocess it becomes an error of this request;
- it keeps llama.cpp, its threads and its memory out of the server process.

Its start is kept off the request's path: ``Quantizer`` starts it (or takes the one a store's
``Quantizers`` started ahead, after the last quantization) before the caller has read the source,
so that the interpreter starts and loads llama.cpp meanwhile, and hands it the source's path as
soon as it is known, as one line on its stdin. The subprocess hashes the file (SHA-256, the
blob's name) as llama.cpp writes it, and hands over the header llama.cpp is to write (in a file
next to the output) as soon as it has predicted it, so that the caller parses it meanwhile
(``header``), not once the file is done. When the parent goes away, before or during the work,
the subprocess deletes its output (and the output's folder, if named) and exits, so a killed
server leaves no quantizer behind. The parent owns the output (a create's is a new file in a
locked temporary folder of the models directory); ``Quantizer`` kills the subprocess whenever it
is closed early or fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Never, Self

from pollama.errors import PollamaError, QuantizationFailed, UnsupportedQuantization

if TYPE_CHECKING:
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
# Progress is reported as tensors start, but not more often than this: a small model's hundreds of
# tensors take a few milliseconds each, and every report crosses threads and the event loop, on
# the cores the quantizer uses.
_PROGRESS_INTERVAL = 0.05
# The subprocess's module, imported from its folder by a stand-alone interpreter (see its docstring).
_WORKER = Path(__file__).resolve().with_name("_quantize_worker.py")
_WORKER_COMMAND = "import sys; sys.path.insert(0, sys.argv[1]); import _quantize_worker; _quantize_worker.run()"
SPARE_SECONDS = 60.0
"""How long a quantizer started ahead (``Quantizers``) waits for work before it is stopped."""


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


class Quantizer:
    """One quantization into ``output`` as ``type_name`` (canonical), in a subprocess started at once.

    Start it as early as possible, hand it the source's path (``begin``) as soon as it is known,
    then call ``quantize`` with the source's parsed header, and ``digest`` once the file is
    written. Closing it (or leaving its ``with`` block) kills the subprocess if it still runs;
    ``output`` belongs to the caller (delete it on failure).
    """

    def __init__(
        self,
        output: Path,
        type_name: str,
        *,
        threads: int = 0,
        process: subprocess.Popen[bytes] | None = None,
        on_done: Callable[[], object] | None = None,
        folder: Path | None = None,
    ) -> None:
        """``process``: a subprocess started ahead (``_spawn``) and given no job yet, else one is
        started now; ``on_done`` is called when a quantizer that finished is closed; ``folder``
        (the output's, made for it) is removed by the subprocess with the output if this process goes."""
        self.output = output
        self.type_name = type_name
        # Where the subprocess puts the header it predicts (next to the output: a temporary name too).
        self._header_file = output.with_name(output.name + ".header")
        self._process = process if process is not None else _spawn()
        self._on_done = on_done
        assert self._process.stdout is not None
        self._events = _events(self._process.stdout)
        ftype = str(_FTYPES[type_name]).encode()
        fields = (
            os.fsencode(output),
            type_name.encode(),
            ftype,
            str(threads).encode(),
            os.fsencode(self._header_file),
            os.fsencode(folder) if folder is not None else b"",
        )
        self._send(b"\0".join(fields))
        self._written = False
        self._predicted: GGUFFile | None = None  # the header llama.cpp is to write, parsed
        self._size = 0
        self._finished = False
        self._held: int | None = None  # the finished output, open
        self.streamed = False
        """Whether the digest was taken as the file was written (else from the finished file)."""
        self.source: Path | None = None
        """The file handed to llama.cpp, once ``begin`` was called."""

    def begin(self, source: Path) -> None:
        """Hand ``source`` to llama.cpp now (once): a caller that knows the path before it has
        read and checked the file's header lets llama.cpp start meanwhile."""
        if self.source is not None:
            raise ValueError(f"the quantizer already works on {self.source}")
        self.source = source
        self._send(os.fsencode(source))

    def _send(self, line: bytes) -> None:
        assert self._process.stdin is not None
        with contextlib.suppress(OSError):  # a subprocess already gone: its exit status says why
            self._process.stdin.write(line + b"\n")
            self._process.stdin.flush()

    def quantize(self, source: GGUFFile) -> Generator[float, None, None]:
        """Quantize ``source`` (``begin`` it first if not done yet): yields the fraction of its
        tensor bytes done so far as tensors start (at most every ``_PROGRESS_INTERVAL``), rising to
        1.0 when the file is complete, and at least every half second while it runs.

        Raises ``QuantizationFailed`` if llama.cpp fails or the subprocess dies, and
        ``UnsupportedQuantization`` if llama.cpp finds the type impossible for this model.
        """
        if self.source is None:
            self.begin(source.path)
        elif self.source != source.path:
            raise ValueError(f"the quantizer works on {self.source}, not {source.path}")
        weights = {tensor.name: tensor.n_bytes for tensor in source.tensors}
        total = sum(weights.values()) or 1
        done_bytes = 0
        current = ""
        reported = 0.0
        for event in self._events:
            if event is None:  # heartbeat
                reported = time.monotonic()
                yield done_bytes / total
            elif "header" in event:
                self._predicted = self._read_prediction(event["header"])
            elif "tensors" in event:
                for name in event["tensors"]:
                    done_bytes += weights.get(current, 0)
                    current = str(name)
                if time.monotonic() - reported >= _PROGRESS_INTERVAL:
                    reported = time.monotonic()
                    yield min(done_bytes / total, 1.0)
            elif event.get("written"):
                self._written = True
                with contextlib.suppress(OSError):  # see ``close``
                    self._held = os.open(self.output, os.O_RDONLY | os.O_CLOEXEC)
                yield 1.0
                return
            elif "error" in event:
                self._fail(event)
        self._fail({})

    def digest(self) -> str:
        """The ``sha256:<hex>`` digest of the written file, as the subprocess hashed it (checked
        against the file once llama.cpp had closed it; the subprocess writes nothing after that)."""
        if not self._written:
            raise QuantizationFailed(f"quantizing to {self.type_name} failed: the file was not written")
        for event in self._events:
            if event is None:
                continue
            if "header" in event:  # a prediction that came after the last tensor
                self._predicted = self._read_prediction(event["header"])
            if "error" in event:
                self._fail(event)
            if event.get("done") and isinstance(event.get("digest"), str):
                self.streamed = bool(event.get("streamed"))
                self._size = int(event.get("size", 0))
                self._finished = True
                return str(event["digest"])  # its exit (or a kill by ``close``) cannot change the file now
        self._fail({})

    def _read_prediction(self, size: object) -> GGUFFile | None:
        """The predicted header the subprocess wrote (``size`` bytes), parsed; its file is deleted."""
        try:
            data = self._header_file.read_bytes()
        except OSError:
            return None
        finally:
            self._header_file.unlink(missing_ok=True)
        if len(data) != size:
            return None
        from pollama.gguf import parse_gguf_header

        try:
            return parse_gguf_header(data, self.output)
        except PollamaError:  # not a GGUF header after all: the file's own is read instead
            return None

    @property
    def finished(self) -> bool:
        """Whether ``digest`` returned: the file is complete and the subprocess exits by itself."""
        return self._finished

    def header(self) -> GGUFFile | None:
        """The written file's parsed header, once ``digest`` returned, if the subprocess predicted
        it and confirmed that the file holds exactly that header (``streamed``); else ``None``
        (read the file then). The prediction arrives while llama.cpp works, and is parsed then."""
        if not (self.streamed and self._predicted is not None):
            return None
        return dataclasses.replace(self._predicted, file_size=self._size)

    def _fail(self, event: dict[str, Any]) -> Never:
        """Raise the error ``event`` reports, or else the one the subprocess's exit status implies."""
        if "error" in event:
            message = str(event["error"])
            if event.get("kind") == "invalid_request":
                raise UnsupportedQuantization(message)
            raise QuantizationFailed(message)
        code = self._process.wait()
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        raise QuantizationFailed(f"quantizing to {self.type_name} failed: the quantizer {how}")

    def close(self) -> None:
        """Kill the subprocess if it still runs, reap it and close its pipes (then, if it had
        finished, call ``on_done``). The finished output is held open until then, so that when the
        caller deletes it (a blob it already had) its pages are given back here, not there."""
        _stop_process(self._process)
        self._events.close()
        if self._held is not None:
            os.close(self._held)
            self._held = None
        with contextlib.suppress(OSError):
            self._header_file.unlink(missing_ok=True)
        if self._finished and self._on_done is not None:
            on_done, self._on_done = self._on_done, None
            on_done()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class Quantizers:
    """Where a store's ``Quantizer``s come from (``start``).

    When a finished quantizer is closed, the next subprocess is started ahead and kept for ``keep``
    seconds, idle: its interpreter and llama.cpp load while nothing waits for them, so that a
    quantization that follows (the same model to another type, the next model of a script)
    starts at once, not 20-30 ms later. There is one such spare at most; it expires, is stopped
    by ``close``, and exits by itself when this process goes (its stdin closes).
    """

    def __init__(self, *, keep: float = SPARE_SECONDS) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._spare: subprocess.Popen[bytes] | None = None
        self._timer: threading.Timer | None = None
        self._closed = False

    def start(self, output: Path, type_name: str, *, threads: int = 0, folder: Path | None = None) -> Quantizer:
        """A ``Quantizer`` into ``output`` (see its ``folder``), in the spare subprocess if one is ready."""
        with self._lock:
            spare, self._spare = self._spare, None
            if self._timer is not None:
                self._timer.cancel()
        if spare is not None and spare.poll() is not None:  # it died meanwhile
            _stop_process(spare)
            spare = None
        return Quantizer(output, type_name, threads=threads, process=spare, on_done=self._start_spare, folder=folder)

    def spare_pid(self) -> int | None:
        """The spare subprocess's pid, if one waits."""
        with self._lock:
            return self._spare.pid if self._spare is not None else None

    def close(self) -> None:
        """Stop the spare; start no more."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
            if self._timer is not None:
                self._timer.cancel()
        if spare is not None:
            _stop_process(spare)

    def _start_spare(self) -> None:
        if self.keep <= 0:
            return
        with self._lock:
            if self._closed or self._spare is not None:
                return
            try:
                self._spare = spare = _spawn()
            except (OSError, QuantizationFailed):  # only a head start lost: the next one reports it
                return
            self._timer = threading.Timer(self.keep, self._expire, args=(spare,))
            self._timer.daemon = True
            self._timer.start()

    def _expire(self, spare: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if self._spare is not spare:
                return
            self._spare = None
        _stop_process(spare)


def _spawn() -> subprocess.Popen[bytes]:
    """A quantizer subprocess, loading llama.cpp and then waiting for its job on stdin."""
    command = [sys.executable, "-I", "-S", "-c", _WORKER_COMMAND, str(_WORKER.parent), str(_libllama())]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` if it still runs, reap it and close its pipes."""
    if process.poll() is None:
        process.kill()
    process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


@functools.cache
def _libllama() -> Path:
    """llama-cpp-python's ``libllama`` (where its own binding loads it from), found without importing it."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        folder = Path(override)
    else:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            raise QuantizationFailed("llama-cpp-python is not installed")
        folder = Path(next(iter(spec.submodule_search_locations))) / "lib"
    for name in ("libllama.so", "libllama.dylib"):
        if (folder / name).exists():
            return folder / name
    raise QuantizationFailed(f"llama.cpp's library was not found in {folder}")


def _events(stdout: IO[bytes]) -> Generator[dict[str, Any] | None, None, None]:
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
