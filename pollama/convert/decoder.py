"""Decoder-only language models (Llama, Mistral, Qwen2, Qwen3, Gemma2, Gemma3, Phi3) → GGUF.

The families share one shape (embeddings, blocks of attention + gated MLP, a final norm, an output
projection), so one converter serves them all and a small ``_Arch`` record says what differs:
Llama and Mistral (llama.cpp's ``llama``) have their Q/K rows reordered from Hugging Face's
half-split rotary layout to llama.cpp's interleaved one; Gemma stores norm weights as ``w`` for
``x * (1 + w)`` where llama.cpp multiplies by the stored weight, so 1 is added; Phi3 keeps its fused
QKV and gate/up projections and always has an output matrix. Hyper-parameters come from
``config.json``; tensor names are mapped with ``gguf``'s ``TensorNameMap``.

Tensors are streamed: every tensor's name, shape and type is declared first, the header, metadata
and tensor table are written, then each tensor is read (memory-mapped), transformed and written
before the next one is touched, so memory stays near the largest tensor.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from pollama.convert.source import TensorSource
from pollama.convert.tensors import (
    F32,
    PlannedTensor,
    declare_tensors,
    gguf_name,
    output_type,
    permute_rotary_rows,
    read_as,
    write_file,
)
from pollama.convert.tokenizer import add_vocabulary, read_vocabulary
from pollama.errors import ConversionError, UnsupportedArchitecture

_LLAMA_FILE_TYPE_F16 = 1


@dataclass(frozen=True)
class _Arch:
    arch: gguf.MODEL_ARCH
    permute_qk: bool = False  # llama.cpp's interleaved rotary layout (``llama``)
    norm_plus_one: bool = False  # Gemma's ``x * (1 + w)`` norms
    drop_lm_head: bool = False  # llama.cpp's Gemma always ties the output to the embeddings
    needs_output: bool = False  # Phi3's loader requires ``output.weight`` even when tied


_ARCHS = {
    "LlamaForCausalLM": _Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "MistralForCausalLM": _Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "Qwen2ForCausalLM": _Arch(gguf.MODEL_ARCH.QWEN2),
    "Qwen3ForCausalLM": _Arch(gguf.MODEL_ARCH.QWEN3),
    "Gemma2ForCausalLM": _Arch(gguf.MODEL_ARCH.GEMMA2, norm_plus_one=True, drop_lm_head=True),
    "Gemma3ForCausalLM": _Arch(gguf.MODEL_ARCH.GEMMA3, norm_plus_one=True, drop_lm_head=True),
    "Phi3ForCausalLM": _Arch(gguf.MODEL_ARCH.PHI3, needs_output=True),
}

# Tensors a checkpoint may carry that llama.cpp computes itself.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "attention.masked_bias", "attention.bias")

_Transform = Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]


def convert(folder: Path, config: dict[str, Any], dst: Path) -> None:
    """Write the GGUF of the decoder model in ``folder`` (described by ``config``) to ``dst``."""
    architecture = str((config.get("architectures") or [""])[0])
    spec = _ARCHS.get(architecture)
    if spec is None:
        raise UnsupportedArchitecture(architecture)
    config = _text_config(config)
    vocab = read_vocabulary(folder, int(config.get("vocab_size") or 0))
    with TensorSource(folder) as source:
        plan = _plan(source, config, spec)
        writer = gguf.GGUFWriter(dst, gguf.MODEL_ARCH_NAMES[spec.arch])
        try:
            declare_tensors(writer, plan)  # before the metadata: the size label counts the declared parameters
            _add_general(writer, config)
            _add_hyperparameters(writer, config, spec)
            writer.add_vocab_size(len(vocab.tokens))
            add_vocabulary(writer, vocab)
            write_file(writer, plan)
        finally:
            writer.close()


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with a nested ``text_config`` (multimodal wrappers) folded in."""
    text = config.get("text_config")
    if isinstance(text, dict):
        return {**config, **text}
    return config


# --- tensors ---------------------------------------------------------------------------------------


def _plan(source: TensorSource, config: dict[str, Any], spec: _Arch) -> list[PlannedTensor]:
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    names = gguf.get_tensor_name_map(spec.arch, n_layers)
    plan: list[PlannedTensor] = []
    seen: set[str] = set()
    embed_name = ""
    for hf_name in source.names():
        if hf_name.endswith(_IGNORED_SUFFIXES):
            continue
        if spec.drop_lm_head and hf_name.startswith("lm_head."):
            continue
        name = gguf_name(names, hf_name, seen)
        if name == "token_embd.weight":
            embed_name = hf_name
        transform: _Transform | None = None
        if spec.permute_qk and name.endswith("attn_q.weight"):
            transform = _permuter(n_head)
        elif spec.permute_qk and name.endswith("attn_k.weight"):
            transform = _permuter(n_head_kv)
        elif spec.norm_plus_one and hf_name.endswith("norm.weight"):
            transform = _plus_one
        plan.append(_tensor(source, hf_name, name, transform))
    if spec.needs_output and "output.weight" not in seen and embed_name:
        plan.append(_tensor(source, embed_name, "output.weight", None))
    rope = config.get("rope_scaling")
    if isinstance(rope, dict):
        plan.extend(_rope_tensors(config, rope))
    if "token_embd.weight" not in seen:
        raise ConversionError("the model has no token embeddings")
    return plan


def _tensor(source: TensorSource, hf_name: str, name: str, transform: _Transform | None) -> PlannedTensor:
    """``hf_name`` as GGUF tensor ``name`` in its ``output_type`` (F32 for Gemma's shifted norms), transformed."""
    shape = source.shape(hf_name)
    kind = output_type(shape, source.dtype(hf_name), f32=transform is _plus_one)

    def produce() -> np.ndarray[Any, Any]:
        data = read_as(source, hf_name, kind)
        return transform(data) if transform is not None else data

    return PlannedTensor(name, shape, kind, produce)


def _permuter(heads: int) -> _Transform:
    """``permute_rotary_rows`` over ``heads`` heads, as a transform."""
    return lambda weights: permute_rotary_rows(weights, heads)


def _plus_one(weights: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return weights.astype(np.float32) + np.float32(1.0)


def _rope_tensors(config: dict[str, Any], rope: dict[str, Any]) -> list[PlannedTensor]:
    """Per-frequency factors llama.cpp reads as tensors: Llama 3's ``rope_freqs``, Phi3's long/short."""
    kind = str(rope.get("rope_type") or rope.get("type") or "")
    head_dim = _head_dim(config)
    rotary = int(head_dim * float(config.get("partial_rotary_factor", 1.0)))
    planned = []
    if kind == "llama3":
        factors = _llama3_factors(config, rope, rotary)
        planned.append(_constant("rope_freqs.weight", factors))
    elif kind in ("longrope", "su"):
        for key, name in (("long_factor", "rope_factors_long.weight"), ("short_factor", "rope_factors_short.weight")):
            values = np.asarray(rope.get(key) or [], dtype=np.float32)
            if values.shape != (rotary // 2,):
                raise ConversionError(f"rope_scaling.{key} must have {rotary // 2} values")
            planned.append(_constant(name, values))
    return planned


def _constant(name: str, values: np.ndarray[Any, Any]) -> PlannedTensor:
    return PlannedTensor(name, values.shape, F32, lambda: values)


def _llama3_factors(config: dict[str, Any], rope: dict[str, Any], rotary: int) -> np.ndarray[Any, Any]:
    """Llama 3.1's frequency-dependent scaling, as the divisor of each rotary frequency."""
    base = float(config.get("rope_theta", 10000.0))
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    original = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / base ** (np.arange(0, rotary, 2, dtype=np.float64) / rotary)
    low_wavelen, high_wavelen = original / low, original / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


# --- metadata --------------------------------------------------------------------------------------


def _head_dim(config: dict[str, Any]) -> int:
    head_dim = config.get("head_dim")
    if isinstance(head_dim, int) and head_dim > 0:
        return head_dim
    return int(config["hidden_size"]) // int(config["num_attention_heads"])


def _add_general(writer: gguf.GGUFWriter, config: dict[str, Any]) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    source_name = str(config.get("_name_or_path") or "").rstrip("/").rsplit("/", 1)[-1]
    if source_name:
        writer.add_name(source_name)
        writer.add_basename(source_name)
    with contextlib.suppress(ValueError, ZeroDivisionError):
        writer.add_size_label(gguf.size_label(*writer.get_total_parameter_count()))
    writer.add_file_type(_LLAMA_FILE_TYPE_F16)  # as Ollama's converter: always 1, BF16 tensors included
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_hyperparameters(writer: gguf.GGUFWriter, config: dict[str, Any], spec: _Arch) -> None:
    n_head = int(config["num_attention_heads"])
    head_dim = _head_dim(config)
    writer.add_context_length(int(config.get("max_position_embeddings") or 4096))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(int(head_dim * float(config.get("partial_rotary_factor", 1.0))))
    if "head_dim" in config or spec.arch in (gguf.MODEL_ARCH.GEMMA2, gguf.MODEL_ARCH.GEMMA3):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if spec.arch in (gguf.MODEL_ARCH.GEMMA2, gguf.MODEL_ARCH.GEMMA3):
        if config.get("sliding_window"):
            writer.add_sliding_window(int(config["sliding_window"]))
        if config.get("attn_logit_softcapping") is not None:
            writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
        if config.get("final_logit_softcapping") is not None:
            writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    if spec.arch == gguf.MODEL_ARCH.GEMMA3:
        if config.get("rope_local_base_freq"):
            writer.add_rope_freq_base_swa(float(config["rope_local_base_freq"]))
        layer_types = config.get("layer_types")
        if isinstance(layer_types, list) and layer_types:
            writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in layer_types])
        elif isinstance(config.get("sliding_window_pattern"), int):
            writer.add_sliding_window_pattern(int(config["sliding_window_pattern"]))
    rope = config.get("rope_scaling")
    if isinstance(rope, dict):
        _add_rope_scaling(writer, config, rope)


def _add_rope_scaling(writer: gguf.GGUFWriter, config: dict[str, Any], rope: dict[str, Any]) -> None:
    kind = str(rope.get("rope_type") or rope.get("type") or "")
    factor = rope.get("factor")
    original = rope.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
    if kind == "linear" and factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    elif kind == "yarn" and factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        if original:
            writer.add_rope_scaling_orig_ctx_len(int(original))
    elif kind in ("longrope", "su") and original:
        writer.add_rope_scaling_orig_ctx_len(int(original))
        scale = float(config.get("max_position_embeddings", original)) / float(original)
        attn = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(float(original)))
        writer.add_rope_scaling_attn_factors(attn)
