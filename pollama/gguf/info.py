"""What Ollama derives from a GGUF header: parameter size, quantization name, capabilities,
``model_info`` for ``/api/show``, and how much memory a model will need once loaded."""

from __future__ import annotations

from typing import Any

from pollama.gguf.reader import GGUFFile, SkippedArray, gguf_format

_KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def file_type_name(gguf: GGUFFile) -> str:
    """``general.file_type`` as Ollama names it (``Q4_K_M``, ``F16``, ...); ``unknown`` if absent."""
    value = gguf.metadata.get("general.file_type")
    if value is None:
        return "unknown"
    try:
        name = str(gguf_format().LlamaFileType(int(value)).name)
    except ValueError:
        return "unknown"
    if name == "ALL_F32":
        return "F32"
    name = name.removeprefix("MOSTLY_")
    return "MXFP4" if name == "MXFP4_MOE" else name


def human_number(count: int) -> str:
    """Ollama's ``format.HumanNumber``: ``134.52M``, ``8B``, ``1.5B``, ``12K``."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if count >= scale:
            value = count / scale
            if value == int(value):
                return f"{value:.0f}{suffix}"
            return f"{value:.1f}{suffix}" if suffix in "TB" else f"{value:.2f}{suffix}"
    if count >= 1000:
        return f"{count / 1000:.0f}K"
    return str(count)


def gguf_capabilities(gguf: GGUFFile) -> set[str]:
    """Capabilities the weights alone imply: ``embedding`` (a pooling type) or ``completion``; ``vision``."""
    caps = set()
    if f"{gguf.architecture}.pooling_type" in gguf.metadata:
        caps.add("embedding")
    else:
        caps.add("completion")
    if f"{gguf.architecture}.vision.block_count" in gguf.metadata or "vision.block_count" in gguf.metadata:
        caps.add("vision")
    if f"{gguf.architecture}.audio.block_count" in gguf.metadata:
        caps.add("audio")
    return caps


def is_projector(gguf: GGUFFile) -> bool:
    """Whether a GGUF file is a multimodal projector (an ``mmproj``), by Ollama's rules at create time.

    ``general.type`` says so (``projector``/``mmproj``); or the file has vision layers but no text
    layers (``<arch>.vision.block_count`` without ``<arch>.block_count``); or it is a ``clip`` file
    without text layers that declares a vision or audio encoder (``clip.has_vision_encoder``).
    """
    if gguf.kind in ("projector", "mmproj"):
        return True
    if _uint(gguf.arch_value("block_count")) == 0 and _uint(gguf.arch_value("vision.block_count")) > 0:
        return True
    return (
        gguf.architecture == "clip"
        and _uint(gguf.arch_value("block_count")) == 0
        and (gguf.arch_value("has_vision_encoder") is True or gguf.arch_value("has_audio_encoder") is True)
    )


def _uint(value: Any) -> int:
    """A metadata value read as Go's ``KV.Uint``: an integer, else 0."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def model_info(gguf: GGUFFile, *, verbose: bool = False) -> dict[str, Any]:
    """The ``model_info`` object of ``/api/show``: every key but the name and chat template.

    Arrays longer than 5 elements become ``[]`` unless ``verbose`` (then ``gguf`` must have been
    read with ``arrays="all"``). ``general.parameter_count`` is added.
    """
    return _info(gguf, verbose=verbose, drop=("general.name", "tokenizer.chat_template"))


def projector_info(gguf: GGUFFile, *, verbose: bool = False) -> dict[str, Any]:
    """The ``projector_info`` object of ``/api/show`` for a projector GGUF.

    Like ``model_info`` but nothing is dropped (Ollama removes ``general.name`` only from the
    model's own info): ``general.architecture`` (``clip``), ``clip.vision.*``, ``clip.projector_type``
    and the computed ``general.parameter_count``.
    """
    return _info(gguf, verbose=verbose, drop=())


def _info(gguf: GGUFFile, *, verbose: bool, drop: tuple[str, ...]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for key, value in gguf.metadata.items():
        if key in drop:
            continue
        if isinstance(value, SkippedArray) or (isinstance(value, list) and len(value) > 5 and not verbose):
            value = []
        info[key] = value
    info["general.parameter_count"] = gguf.parameter_count
    return info


def tensor_list(gguf: GGUFFile) -> list[dict[str, Any]]:
    """The ``tensors`` list of ``/api/show -v``: name, type and shape of each tensor."""
    return [{"name": t.name, "type": t.type_name, "shape": list(t.shape)} for t in gguf.tensors]


def context_length(gguf: GGUFFile) -> int:
    """The model's trained context length (``<arch>.context_length``), 0 if unknown."""
    return int(gguf.arch_value("context_length", 0) or 0)


def embedding_length(gguf: GGUFFile) -> int:
    """``<arch>.embedding_length``, 0 if unknown."""
    return int(gguf.arch_value("embedding_length", 0) or 0)


def kv_cache_bytes(gguf: GGUFFile, n_ctx: int, kv_type: str = "f16") -> int:
    """Bytes of K and V cache for ``n_ctx`` tokens across all layers."""
    n_layer = int(gguf.arch_value("block_count", 0) or 0)
    n_embd = int(gguf.arch_value("embedding_length", 0) or 0)
    n_head = _first_int(gguf.arch_value("attention.head_count", 1)) or 1
    n_head_kv = _first_int(gguf.arch_value("attention.head_count_kv", n_head)) or n_head
    head_k = int(gguf.arch_value("attention.key_length", n_embd // n_head) or 0)
    head_v = int(gguf.arch_value("attention.value_length", n_embd // n_head) or 0)
    per_token = n_layer * n_head_kv * (head_k + head_v)
    return int(per_token * n_ctx * _KV_BYTES_PER_ELEMENT.get(kv_type, 2.0))


def estimate_memory(
    gguf: GGUFFile, *, num_ctx: int, num_parallel: int, num_batch: int = 512, kv_type: str = "f16", extra_files: int = 0
) -> int:
    """Bytes a runner will use: weights (+ projector/adapters in ``extra_files``), KV cache for
    ``num_ctx × num_parallel`` tokens, and a compute-buffer surcharge that grows with the batch."""
    weights = sum(t.n_bytes for t in gguf.tensors) or max(gguf.file_size - gguf.data_offset, 0)
    kv = kv_cache_bytes(gguf, num_ctx * num_parallel, kv_type)
    n_vocab = int(gguf.arch_value("vocab_size", 0) or 0)
    if not n_vocab:
        tokens = gguf.metadata.get("tokenizer.ggml.tokens")
        n_vocab = len(tokens) if tokens is not None else 32000
    n_embd = int(gguf.arch_value("embedding_length", 0) or 0)
    compute = 4 * num_batch * (n_vocab + 4 * n_embd) + 64 * 1024 * 1024
    return weights + kv + compute + extra_files


def _first_int(value: Any) -> int:
    """Head counts may be per-layer arrays; take the largest."""
    if isinstance(value, list):
        return max((int(v) for v in value), default=0)
    if isinstance(value, SkippedArray):
        return 0
    return int(value or 0)
