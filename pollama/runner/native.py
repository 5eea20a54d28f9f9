"""Owners of llama.cpp's native handles: model, context, batch, sampler chain, LoRA adapter, and the
multimodal projector (libmtmd: ``MtmdContext``, ``Bitmap``, ``MediaPrompt``, ``EmbeddingBatch``).

Each class wraps one C handle from ``llama_cpp.llama_cpp`` (llama-cpp-python's ctypes binding),
frees it exactly once in ``close()`` (also as a context manager), and exposes only what the engine
needs. Everything here runs inside the runner subprocess; nothing knows about HTTP or any API.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as C

from pollama.errors import InvalidRequest, RunnerError

log = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready: list[bool] = []  # filled once per process; llama_backend_init is process-wide


def init_backend(*, quiet: bool = True) -> None:
    """Initialise llama.cpp once per process (and silence its logging unless debugging)."""
    with _backend_lock:
        if _backend_ready:
            return
        if quiet:
            C.llama_log_set(_SILENT_LOG, ctypes.c_void_p(0))
        C.llama_backend_init()
        _backend_ready.append(True)


_aborting = threading.Event()  # set while a decode is being aborted on purpose: its errors are expected
_expected = threading.local()  # ``failing`` is set on a thread whose llama.cpp errors are the client's (bad input)


@C.llama_log_callback  # type: ignore[untyped-decorator]
def _silent_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if level == 4 and text:  # GGML_LOG_LEVEL_ERROR (5 continues the previous line)
        message = text.decode("utf-8", "replace").rstrip()
        if _aborting.is_set():
            log.debug("llama.cpp (aborted decode): %s", message)
        elif getattr(_expected, "failing", False):
            log.debug("llama.cpp (bad input): %s", message)
        else:
            log.error("llama.cpp: %s", message)


def _abort_reader() -> Any:
    """A C function usable as llama.cpp's abort callback that reads a one-byte flag.

    llama.cpp polls the abort callback after every graph node (about 500 times per decode of a
    small model). A Python ctypes callback would take the GIL each time, which made decoding
    several times slower; libc's ``strlen`` over a two-byte buffer ``[flag, 0]`` answers 0 or 1
    without leaving C. None if libc cannot be found (then decodes are simply not abortable).
    """
    try:
        return ctypes.cast(ctypes.CDLL(None).strlen, C.ggml_abort_callback)
    except (AttributeError, OSError, TypeError):
        return None


_ABORT_READER = _abort_reader()


_SILENT_LOG = _silent_log


def physical_cores() -> int:
    """Physical CPU cores available to this process (llama.cpp's best thread count on CPU)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        block: dict[str, str] = {}
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in [*fh, "\n"]:
                if not line.strip():
                    if "core id" in block:
                        cores.add((block.get("physical id", "0"), block["core id"]))
                    block = {}
                    continue
                key, _, value = line.partition(":")
                block[key.strip()] = value.strip()
    except OSError:
        pass
    return max(1, min(len(cores) or available, available))


@dataclass(frozen=True)
class ModelParams:
    """Load-time options for the weights."""

    path: Path
    n_gpu_layers: int = -1
    main_gpu: int = 0
    use_mmap: bool = True
    use_mlock: bool = False
    vocab_only: bool = False


class Model:
    """A loaded GGUF model (weights and vocabulary)."""

    def __init__(self, params: ModelParams) -> None:
        init_backend()
        p = C.llama_model_default_params()
        # num_gpu -1 means "as many layers as fit"; with a CPU-only build the value is ignored.
        p.n_gpu_layers = 999 if params.n_gpu_layers < 0 else params.n_gpu_layers
        p.main_gpu = params.main_gpu
        p.use_mmap = params.use_mmap
        p.use_mlock = params.use_mlock
        p.vocab_only = params.vocab_only
        handle = C.llama_model_load_from_file(str(params.path).encode(), p)
        if not handle:
            raise RunnerError(f"unable to load model: {params.path}")
        self._handle: Any = handle
        self.vocab = C.llama_model_get_vocab(handle)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = C.llama_model_n_ctx_train(handle)
        self.n_embd = C.llama_model_n_embd(handle)
        self.add_bos = bool(C.llama_vocab_get_add_bos(self.vocab))
        self.add_eos = bool(C.llama_vocab_get_add_eos(self.vocab))
        self.bos = C.llama_vocab_bos(self.vocab)
        self.eos = C.llama_vocab_eos(self.vocab)
        self.has_encoder = bool(C.llama_model_has_encoder(handle))
        self.has_decoder = bool(C.llama_model_has_decoder(handle))
        self.size = int(C.llama_model_size(handle))
        self._pieces: dict[int, bytes] = {}

    @property
    def handle(self) -> Any:
        if self._handle is None:
            raise RunnerError("model is closed")
        return self._handle

    def close(self) -> None:
        """Free the weights."""
        if self._handle is not None:
            C.llama_model_free(self._handle)
            self._handle = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text, or None."""
        buf = ctypes.create_string_buffer(4096)
        n = C.llama_model_meta_val_str(self.handle, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Text to token ids (``add_special`` adds BOS/EOS as the model wants)."""
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buf = (C.llama_token * capacity)()
        n = C.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            buf = (C.llama_token * capacity)()
            n = C.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes one token stands for (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        if type(token) is not int or not 0 <= token < self.n_vocab:
            # llama.cpp would throw std::out_of_range through the C API and abort the process.
            raise InvalidRequest(f"invalid token id {token!r}: the model's vocabulary has ids 0 to {self.n_vocab - 1}")
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        piece = buf.raw[:n]
        self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """Token ids back to text; special tokens (``<|im_start|>``...) are written out only with ``special``."""
        if not special:
            return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")
        out = bytearray()
        buf = ctypes.create_string_buffer(64)
        for token in tokens:
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
            out += buf.raw[:n]
        return out.decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, ...)."""
        return bool(C.llama_vocab_is_eog(self.vocab, token))

    @property
    def vocab_type(self) -> int:
        """The tokenizer kind (``LLAMA_VOCAB_TYPE_*``: SPM, BPE, WPM, ...)."""
        return int(C.llama_vocab_type(self.vocab))

    def token_text(self, token: int) -> bytes:
        """A token's text as the vocabulary stores it (``llama_vocab_get_text``; ``token`` must be in range)."""
        return bytes(C.llama_vocab_get_text(self.vocab, token) or b"")


class LoraAdapter:
    """A LoRA adapter file loaded against a model."""

    def __init__(self, model: Model, path: Path) -> None:
        handle = C.llama_adapter_lora_init(model.handle, str(path).encode())
        if not handle:
            raise RunnerError(f"unable to load adapter: {path}")
        self._handle: Any = handle

    @property
    def handle(self) -> Any:
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            C.llama_adapter_lora_free(self._handle)
            self._handle = None


@dataclass(frozen=True)
class ContextParams:
    """Load-time options for the KV cache and compute."""

    n_ctx: int
    n_batch: int
    n_seq_max: int = 1
    n_threads: int = 0
    embeddings: bool = False
    flash_attention: bool | None = None
    kv_cache_type: str = "f16"


_KV_TYPES = {"f16": C.GGML_TYPE_F16, "q8_0": C.GGML_TYPE_Q8_0, "q4_0": C.GGML_TYPE_Q4_0}


class Context:
    """A llama.cpp context: the KV cache for ``n_seq_max`` sequences plus compute buffers."""

    def __init__(self, model: Model, params: ContextParams, adapters: Sequence[LoraAdapter] = ()) -> None:
        p = C.llama_context_default_params()
        p.n_ctx = params.n_ctx
        p.n_batch = params.n_batch
        p.n_ubatch = params.n_batch
        p.n_seq_max = params.n_seq_max
        # More threads than CPUs only makes them wait for each other (1000 made a step 400× slower).
        threads = min(params.n_threads, os.cpu_count() or 1) if params.n_threads > 0 else physical_cores()
        p.n_threads = threads
        p.n_threads_batch = threads
        p.embeddings = params.embeddings
        if params.embeddings:
            arch = model.meta("general.architecture") or ""
            if model.meta(f"{arch}.pooling_type") is None:
                # A generative model asked for embeddings: average its token states.
                p.pooling_type = C.LLAMA_POOLING_TYPE_MEAN
        p.kv_unified = False  # one cache stream per slot: a slot sees the same layout whoever else runs
        p.no_perf = True
        if params.flash_attention is not None:
            p.flash_attn_type = 1 if params.flash_attention else 0
        kv_type = _KV_TYPES.get(params.kv_cache_type, C.GGML_TYPE_F16)
        if kv_type != C.GGML_TYPE_F16 and params.flash_attention is False:
            kv_type = C.GGML_TYPE_F16  # quantized K/V needs flash attention, as in Ollama
        p.type_k = kv_type
        p.type_v = kv_type
        handle = C.llama_init_from_model(model.handle, p)
        if not handle:
            raise RunnerError("unable to create context (out of memory?)")
        self._handle: Any = handle
        self.model = model
        self.n_ctx = C.llama_n_ctx(handle)
        self.n_batch = C.llama_n_batch(handle)
        self.memory = C.llama_get_memory(handle)
        self.can_shift = bool(C.llama_memory_can_shift(self.memory))
        self.pooling = C.llama_pooling_type(handle)
        self._abort_flag = ctypes.create_string_buffer(2)  # [flag, NUL]: see _abort_reader
        if _ABORT_READER is not None:
            C.llama_set_abort_callback(handle, _ABORT_READER, ctypes.cast(self._abort_flag, ctypes.c_void_p))
        if adapters:
            arr = (C.llama_adapter_lora_p_ctypes * len(adapters))(*(a.handle for a in adapters))
            scales = (ctypes.c_float * len(adapters))(*([1.0] * len(adapters)))
            if C.llama_set_adapters_lora(handle, arr, len(adapters), scales) != 0:
                raise RunnerError("unable to apply LoRA adapters")

    @property
    def handle(self) -> Any:
        if self._handle is None:
            raise RunnerError("context is closed")
        return self._handle

    def close(self) -> None:
        """Free the KV cache and buffers."""
        if self._handle is not None:
            C.llama_free(self._handle)
            self._handle = None

    def decode(self, batch: Batch) -> bool:
        """Evaluate a batch: ``True`` when done, ``False`` if ``request_abort`` stopped it midway (the
        batch's positions are then not in the KV cache). Raises on failure (1 = no KV slot, <0 = error)."""
        fn = C.llama_encode if (self.model.has_encoder and not self.model.has_decoder) else C.llama_decode
        rc = fn(self.handle, batch.struct)
        if rc == 2 and self._abort_flag.raw[0]:
            return False
        if rc != 0:
            raise RunnerError(f"llama_decode failed with status {rc}" + (" (KV cache full)" if rc == 1 else ""))
        return True

    def request_abort(self) -> None:
        """Make a running (or the next) ``decode`` stop at its next graph node; any thread may call it."""
        _aborting.set()
        self._abort_flag[0] = b"\x01"

    def clear_abort(self) -> None:
        """Let decodes run to the end again."""
        self._abort_flag[0] = b"\x00"
        _aborting.clear()

    def seq_remove(self, seq: int, p0: int = 0, p1: int = -1) -> bool:
        """Drop positions [p0, p1) of a sequence from the KV cache."""
        return bool(C.llama_memory_seq_rm(self.memory, seq, p0, p1))

    def seq_copy(self, src: int, dst: int) -> None:
        """Make sequence ``dst`` a copy of sequence ``src`` (the whole of it: with a cache stream per
        sequence llama.cpp copies the stream's buffers, at the start of the next decode)."""
        C.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    def seq_shift(self, seq: int, p0: int, p1: int, delta: int) -> None:
        """Move positions [p0, p1) of a sequence by ``delta`` (context shift)."""
        C.llama_memory_seq_add(self.memory, seq, p0, p1, delta)

    def clear(self) -> None:
        """Empty the whole KV cache."""
        C.llama_memory_clear(self.memory, True)

    def embedding(self, seq: int) -> list[float] | None:
        """The pooled embedding of a sequence after decoding it (None if the model does not pool)."""
        ptr = C.llama_get_embeddings_seq(self.handle, seq)
        if not ptr:
            return None
        return list(ptr[: self.model.n_embd])

    def logits(self, i: int) -> Any:
        """The logits of output ``i`` of the last batch, as a numpy array over the vocabulary."""
        import numpy as np

        ptr = C.llama_get_logits_ith(self.handle, i)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def decode_embeddings(self, batch: EmbeddingBatch, *, causal: bool = True) -> bool:
        """Evaluate a batch of embeddings (an image's), with causal attention or, as some projectors
        want (Gemma 3), without; the same return and errors as ``decode``."""
        if not causal:
            C.llama_set_causal_attn(self.handle, False)
        try:
            rc = C.llama_decode(self.handle, batch.struct)
        finally:
            if not causal:
                C.llama_set_causal_attn(self.handle, True)
        if rc == 2 and self._abort_flag.raw[0]:
            return False
        if rc != 0:
            raise RunnerError(f"llama_decode failed with status {rc}" + (" (KV cache full)" if rc == 1 else ""))
        return True

    def embedding_ith(self, i: int) -> list[float] | None:
        """The embedding of the i-th output of the last batch (for unpooled models)."""
        ptr = C.llama_get_embeddings_ith(self.handle, i)
        if not ptr:
            return None
        return list(ptr[: self.model.n_embd])


class Batch:
    """A reusable ``llama_batch`` of up to ``capacity`` tokens, each in one sequence."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._batch: Any = C.llama_batch_init(capacity, 0, 1)
        self.struct = self._batch
        self.n = 0

    def close(self) -> None:
        if self._batch is not None:
            C.llama_batch_free(self._batch)
            self._batch = None

    def clear(self) -> None:
        self.n = 0
        self._batch.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append a token; returns its index in the batch (the index to sample from)."""
        i = self.n
        if i >= self.capacity:
            raise RunnerError("batch overflow")
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        self.n = i + 1
        b.n_tokens = self.n
        return i


class EmbeddingBatch:
    """A ``llama_batch`` of up to ``capacity`` embedding vectors of ``n_embd`` floats, all in one sequence."""

    def __init__(self, capacity: int, n_embd: int) -> None:
        self.capacity = capacity
        self.n_embd = n_embd
        self._batch: Any = C.llama_batch_init(capacity, n_embd, 1)
        self.struct = self._batch
        self.n = 0

    def close(self) -> None:
        """Free the batch."""
        if self._batch is not None:
            C.llama_batch_free(self._batch)
            self._batch = None

    def fill(self, embd: Any, first: int, count: int, pos: int, seq: int, *, logits_last: bool) -> None:
        """Load vectors ``first .. first+count`` of ``embd`` (a ctypes float array) at positions from
        ``pos`` in sequence ``seq``; the last one gives logits when ``logits_last``."""
        if count > self.capacity:
            raise RunnerError("batch overflow")
        b = self._batch
        size = ctypes.sizeof(ctypes.c_float)
        ctypes.memmove(b.embd, ctypes.addressof(embd) + first * self.n_embd * size, count * self.n_embd * size)
        for i in range(count):
            b.pos[i] = pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits_last and i == count - 1
        self.n = count
        b.n_tokens = count


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling options, in Ollama's names and meanings."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = -1
    grammar: str | None = None


class SamplerChain:
    """One request's sampler chain: penalties, grammar, truncation, temperature, then a draw.

    The order follows llama.cpp's common defaults (penalties → top_k → typical → top_p → min_p →
    temperature → dist), with the grammar first so that it only ever offers legal tokens, and
    mirostat or greedy replacing the tail when asked.
    """

    def __init__(
        self, model: Model, params: SamplingParams, context_tokens: Sequence[int] = (), *, num_ctx: int = 0
    ) -> None:
        cp = C.llama_sampler_chain_default_params()
        cp.no_perf = True
        self._chain: Any = C.llama_sampler_chain_init(cp)
        self._penalties: Any = None
        seed = C.LLAMA_DEFAULT_SEED if params.seed is None or params.seed < 0 else params.seed & 0xFFFFFFFF
        try:
            if params.grammar:
                grammar = C.llama_sampler_init_grammar(model.vocab, params.grammar.encode(), b"root")
                if not grammar:
                    raise RunnerError("failed to parse grammar")
                self._add(grammar)
            penalize = params.repeat_last_n != 0 and (
                params.repeat_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
            )
            if penalize:
                # -1 means the whole context (Ollama); the window is a ring buffer, so bound it by the
                # context too rather than let a huge value allocate gigabytes.
                window = num_ctx if num_ctx > 0 else model.n_vocab
                last_n = window if params.repeat_last_n < 0 else min(params.repeat_last_n, window)
                self._penalties = C.llama_sampler_init_penalties(
                    model.n_vocab, last_n, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
                )
                self._add(self._penalties)
                # Image pseudo-tokens (negative, see ``image_token``) are not vocabulary ids.
                for token in [t for t in context_tokens if t >= 0][-last_n:]:
                    C.llama_sampler_accept(self._penalties, token)
            if params.temperature <= 0:
                self._add(C.llama_sampler_init_greedy())
            elif params.mirostat == 1:
                self._add(C.llama_sampler_init_temp(params.temperature))
                self._add(
                    C.llama_sampler_init_mirostat(model.n_vocab, seed, params.mirostat_tau, params.mirostat_eta, 100)
                )
            elif params.mirostat == 2:
                self._add(C.llama_sampler_init_temp(params.temperature))
                self._add(C.llama_sampler_init_mirostat_v2(seed, params.mirostat_tau, params.mirostat_eta))
            else:
                if params.top_k > 0:
                    self._add(C.llama_sampler_init_top_k(min(params.top_k, model.n_vocab)))
                if 0 < params.typical_p < 1:
                    self._add(C.llama_sampler_init_typical(params.typical_p, 1))
                if 0 < params.top_p < 1:
                    self._add(C.llama_sampler_init_top_p(params.top_p, 1))
                if params.min_p > 0:
                    self._add(C.llama_sampler_init_min_p(params.min_p, 1))
                self._add(C.llama_sampler_init_temp(params.temperature))
                self._add(C.llama_sampler_init_dist(seed))
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: Any) -> None:
        C.llama_sampler_chain_add(self._chain, sampler)  # the chain now owns it

    def sample(self, ctx: Context, index: int) -> int:
        """Draw (and accept) a token from output ``index`` of the last batch."""
        return int(C.llama_sampler_sample(self._chain, ctx.handle, index))

    def close(self) -> None:
        """Free the chain and every sampler in it."""
        if self._chain is not None:
            C.llama_sampler_free(self._chain)
            self._chain = None


# --- multimodal projector (libmtmd) -----------------------------------------------------------------

IMAGE_TOKEN_LIMIT = 1 << 16
"""Most embeddings one image may become (the pseudo-token scheme below numbers them in 16 bits)."""


def image_token(digest: int, k: int) -> int:
    """The pseudo-token standing for embedding ``k`` of the image whose content hash is ``digest``.

    A slot's token cache holds these (always negative, so never a vocabulary id) where an image sits
    in the prompt: the same bytes at the same place compare equal and are reused from the KV cache,
    any other image differs from its first embedding on.
    """
    return -1 - ((digest << 16) | k)


def image_token_parts(token: int) -> tuple[int, int] | None:
    """``(digest, k)`` of a pseudo-token from ``image_token``, or None for an ordinary token."""
    if token >= 0:
        return None
    value = -1 - token
    return value >> 16, value & 0xFFFF


def image_digest(data: bytes) -> int:
    """A 48-bit identity of an image's bytes (from their sha256)."""
    return int.from_bytes(hashlib.sha256(data).digest()[:6], "big")


# stb_image (what libmtmd decodes with) reads these; other bytes are refused before libmtmd sees them,
# so that it never hands them to ffprobe as a possible video.
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"P5", b"P6", b"8BPS")
_NO_FFMPEG = b"/nonexistent/pollama-no-ffmpeg"


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(_IMAGE_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


MAX_IMAGE_PIXELS = 1 << 26
"""Largest image decoded (64 Mpixel, 192 MiB of RGB): a small file can claim a huge size, and libmtmd
decodes the whole of it before scaling it down."""


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header of a PNG, GIF, BMP or JPEG file (None for other formats or
    a header that does not say)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data.startswith(b"BM") and len(data) >= 26:
        return abs(int.from_bytes(data[18:22], "little", signed=True)), abs(
            int.from_bytes(data[22:26], "little", signed=True)
        )
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 <= len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            i += 2 + length
    return None


class Bitmap:
    """A decoded image (RGB pixels) ready for ``MtmdContext.tokenize``; identified by its bytes' hash."""

    def __init__(self, handle: Any, digest: int) -> None:
        self._handle: Any = handle
        self.digest = digest

    @property
    def handle(self) -> Any:
        if self._handle is None:
            raise RunnerError("bitmap is closed")
        return self._handle

    def close(self) -> None:
        """Free the pixels."""
        if self._handle is not None:
            _mtmd().mtmd_bitmap_free(self._handle)
            self._handle = None


@dataclass(frozen=True)
class MediaChunk:
    """One image of a prompt: where its embeddings start in the prompt's token list, and how many."""

    start: int
    n_tokens: int
    digest: int
    handle: Any  # the mtmd_input_chunk, owned by the MediaPrompt


class MediaPrompt:
    """A prompt tokenized with its images (``mtmd_tokenize``): the token list, with a run of
    ``image_token`` pseudo-tokens for each image, and the image chunks to evaluate (owned here)."""

    def __init__(self, handle: Any, tokens: list[int], images: list[MediaChunk]) -> None:
        self._handle: Any = handle
        self.tokens = tokens
        self.images = images
        self._by_start = {chunk.start: chunk for chunk in images}
        self.embeddings: dict[int, Any] = {}  # image start -> its embeddings, when encoded ahead of time

    def image_at(self, start: int) -> MediaChunk | None:
        """The image whose embeddings start at prompt index ``start``."""
        return self._by_start.get(start)

    def close(self) -> None:
        """Free the chunks (the images' preprocessed pixels)."""
        if self._handle is not None:
            _mtmd().mtmd_input_chunks_free(self._handle)
            self._handle = None
            self._by_start = {}
            self.embeddings = {}


def _mtmd() -> Any:
    from llama_cpp import mtmd_cpp

    return mtmd_cpp


class MtmdContext:
    """A multimodal projector (an ``mmproj`` GGUF) loaded by libmtmd against a text model.

    ``bitmap`` and ``tokenize`` only read the projector's settings (llama-server calls them on its
    HTTP threads too); they and ``encode`` (the vision tower, which has its own compute buffers and
    never touches a llama context) may run on any thread, one at a time (a lock here), also while
    the engine thread decodes.
    """

    def __init__(self, model: Model, path: Path, *, n_threads: int = 0, use_gpu: bool = True) -> None:
        mtmd = _mtmd()
        init_backend()
        if not log.isEnabledFor(logging.DEBUG):
            mtmd.mtmd_helper_log_set(_SILENT_LOG, ctypes.c_void_p(0))
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads if n_threads > 0 else physical_cores()
        params.print_timings = False
        params.warmup = False
        handle = mtmd.mtmd_init_from_file(str(path).encode(), model.handle, params)
        if not handle:
            raise RunnerError(f"unable to load projector: {path}")
        self._handle: Any = handle
        self.model = model
        self.marker = mtmd.mtmd_default_marker().decode()
        self.vision = bool(mtmd.mtmd_support_vision(handle))
        self.audio = bool(mtmd.mtmd_support_audio(handle))
        self.mrope = bool(mtmd.mtmd_decode_use_mrope(handle))
        self._lock = threading.Lock()

    @property
    def handle(self) -> Any:
        if self._handle is None:
            raise RunnerError("projector is closed")
        return self._handle

    def close(self) -> None:
        """Free the projector (before the model it was loaded against)."""
        if self._handle is not None:
            _mtmd().mtmd_free(self._handle)
            self._handle = None

    def __enter__(self) -> MtmdContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bitmap(self, data: bytes, number: int = 1) -> Bitmap:
        """Decode image file bytes (PNG, JPEG, ...); ``InvalidRequest`` naming image ``number`` if they
        are not an image libmtmd can read."""
        mtmd = _mtmd()
        failed = InvalidRequest(f"failed to decode image {number}: the data is not a supported image (PNG, JPEG, ...)")
        if not _looks_like_image(data):
            raise failed
        size = image_size(data)
        if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise InvalidRequest(
                f"failed to decode image {number}: the image is too large ({size[0]}x{size[1]} pixels, "
                f"at most {MAX_IMAGE_PIXELS} pixels)"
            )
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        opt = mtmd.mtmd_helper_init_opt_default()
        opt.video_params.ffmpeg_bin_dir = _NO_FFMPEG
        with self._lock:
            _expected.failing = True  # bytes that are not an image are the client's error, not the runner's
            try:
                wrapped = mtmd.mtmd_helper_bitmap_init_from_buf_wrapper(self.handle, buf, len(data), False, opt)
            finally:
                _expected.failing = False
        if wrapped.video_ctx:
            mtmd.mtmd_helper_video_free(wrapped.video_ctx)
            if wrapped.bitmap:
                mtmd.mtmd_bitmap_free(wrapped.bitmap)
            raise failed
        if not wrapped.bitmap:
            raise failed
        digest = image_digest(data)
        bitmap = Bitmap(wrapped.bitmap, digest)
        mtmd.mtmd_bitmap_set_id(wrapped.bitmap, f"{digest:012x}".encode())
        return bitmap

    def tokenize(self, text: str, bitmaps: Sequence[Bitmap]) -> MediaPrompt:
        """Split ``text`` at its markers (one per bitmap, in order) into text tokens (BOS added as the
        model wants) and image chunks; ``InvalidRequest`` if the counts differ."""
        mtmd = _mtmd()
        markers = text.count(self.marker)
        if markers != len(bitmaps):
            raise InvalidRequest(
                f"the prompt has {markers} image marker{'s' if markers != 1 else ''} ({self.marker}) "
                f"but {len(bitmaps)} image{'s were' if len(bitmaps) != 1 else ' was'} sent"
            )
        data = text.encode("utf-8")
        inp = mtmd.mtmd_input_text()
        inp.text = data
        inp.text_len = len(data)
        inp.add_special = True
        inp.parse_special = True
        arr = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*(b.handle for b in bitmaps))
        chunks = mtmd.mtmd_input_chunks_init()
        if not chunks:
            raise RunnerError("unable to allocate input chunks")
        try:
            with self._lock:
                _expected.failing = True
                try:
                    rc = mtmd.mtmd_tokenize(self.handle, chunks, ctypes.byref(inp), arr, len(bitmaps))
                finally:
                    _expected.failing = False
            if rc == 2:
                raise InvalidRequest(f"the prompt's image markers ({self.marker}) do not match the images sent")
            if rc != 0:
                raise InvalidRequest(f"failed to process the images (libmtmd status {rc})")
            tokens, images = self._layout(chunks, [b.digest for b in bitmaps])
        except BaseException:
            mtmd.mtmd_input_chunks_free(chunks)
            raise
        return MediaPrompt(chunks, tokens, images)

    def _layout(self, chunks: Any, digests: list[int]) -> tuple[list[int], list[MediaChunk]]:
        mtmd = _mtmd()
        tokens: list[int] = []
        images: list[MediaChunk] = []
        for chunk in _chunks(chunks):
            kind = mtmd.mtmd_input_chunk_get_type(chunk)
            if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens.extend(ptr[: n.value] if n.value else [])
                continue
            if kind != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE or len(images) >= len(digests):
                raise InvalidRequest("only images are supported as media input")
            count = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
            if not 0 < count < IMAGE_TOKEN_LIMIT:
                raise InvalidRequest(f"an image of {count} embeddings is not supported")
            digest = digests[len(images)]
            images.append(MediaChunk(start=len(tokens), n_tokens=count, digest=digest, handle=chunk))
            tokens.extend(image_token(digest, k) for k in range(count))
        return tokens, images

    def non_causal(self, chunk: MediaChunk) -> bool:
        """Whether the chunk's embeddings attend to each other both ways (Gemma 3) when decoded."""
        return bool(_mtmd().mtmd_decode_use_non_causal(self.handle, chunk.handle))

    def encode(self, chunk: MediaChunk) -> Any:
        """Run the vision tower on an image chunk: a ctypes array of ``n_tokens × n_embd`` floats (a copy)."""
        mtmd = _mtmd()
        size = chunk.n_tokens * self.model.n_embd
        out = (ctypes.c_float * size)()
        with self._lock:  # the output buffer is the context's: encode and copy before anyone else encodes
            rc = mtmd.mtmd_encode_chunk(self.handle, chunk.handle)
            if rc != 0:
                raise RunnerError(f"failed to encode image (libmtmd status {rc})")
            ptr = mtmd.mtmd_get_output_embd(self.handle)
            ctypes.memmove(out, ptr, size * ctypes.sizeof(ctypes.c_float))
        return out


def _chunks(chunks: Any) -> Iterator[Any]:
    mtmd = _mtmd()
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        yield mtmd.mtmd_input_chunks_get(chunks, i)
