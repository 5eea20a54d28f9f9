"""Tiny random-weight Hugging Face folders of the decoder families, for the converter tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import save_safetensors, to_bf16_bits
from tests.convert.convert_reference import byte_level_alphabet

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS, VOCAB = 64, 4, 2, 96, 2, 300
TOKENS = [5, 77, 200, 13, 260, 42, 99, 150, 7, 31]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

BASE: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "intermediate_size": FFN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "vocab_size": VOCAB,
    "tie_word_embeddings": False,
}

# architecture → (config overrides, stored dtype)
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "LlamaForCausalLM": (
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,  # so that the scaled frequencies show within 10 tokens
            },
            "head_dim": 16,
        },
        "BF16",
    ),
    "MistralForCausalLM": ({"sliding_window": 4096, "rope_theta": 1000000.0}, "BF16"),
    "Qwen2ForCausalLM": ({"tie_word_embeddings": True, "rms_norm_eps": 1e-5}, "F16"),
    "Qwen3ForCausalLM": ({"head_dim": 32, "tie_word_embeddings": True}, "F32"),
    "Gemma2ForCausalLM": (
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "sliding_window": 4,
            "hidden_activation": "gelu_pytorch_tanh",
            "tie_word_embeddings": True,
        },
        "BF16",
    ),
    "Gemma3ForCausalLM": (
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 4,
            "sliding_window_pattern": 2,  # layer 0 slides (local rope base), layer 1 is global
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "hidden_activation": "gelu_pytorch_tanh",
            "tie_word_embeddings": True,
        },
        "F16",
    ),
    "Phi3ForCausalLM": ({"rope_theta": 10000.0}, "F32"),
}


def _tensors(arch: str, config: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray[Any, Any]]:
    head_dim = config.get("head_dim") or HIDDEN // HEADS
    gemma = arch.startswith("Gemma")
    q, kv = HEADS * head_dim, KV_HEADS * head_dim

    def matrix(rows: int, cols: int) -> np.ndarray[Any, Any]:
        return rng.normal(0.0, 1.0 / np.sqrt(cols), (rows, cols)).astype(np.float32)

    def norm(size: int) -> np.ndarray[Any, Any]:
        centre = 0.0 if gemma else 1.0  # Gemma stores w for x * (1 + w)
        return (centre + rng.normal(0.0, 0.1, size)).astype(np.float32)

    out = {"model.embed_tokens.weight": rng.normal(0.0, 1.0, (VOCAB, HIDDEN)).astype(np.float32)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = norm(HIDDEN)
        out[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
        if gemma:
            out[p + "pre_feedforward_layernorm.weight"] = norm(HIDDEN)
            out[p + "post_feedforward_layernorm.weight"] = norm(HIDDEN)
        if arch == "Phi3ForCausalLM":
            out[p + "self_attn.qkv_proj.weight"] = matrix(q + 2 * kv, HIDDEN)
            out[p + "mlp.gate_up_proj.weight"] = matrix(2 * FFN, HIDDEN)
        else:
            out[p + "self_attn.q_proj.weight"] = matrix(q, HIDDEN)
            out[p + "self_attn.k_proj.weight"] = matrix(kv, HIDDEN)
            out[p + "self_attn.v_proj.weight"] = matrix(kv, HIDDEN)
            out[p + "mlp.gate_proj.weight"] = matrix(FFN, HIDDEN)
            out[p + "mlp.up_proj.weight"] = matrix(FFN, HIDDEN)
        if arch == "Qwen2ForCausalLM":
            for m, size in (("q", q), ("k", kv), ("v", kv)):
                out[p + f"self_attn.{m}_proj.bias"] = rng.normal(0.0, 0.5, size).astype(np.float32)
        if arch in ("Qwen3ForCausalLM", "Gemma3ForCausalLM"):
            out[p + "self_attn.q_norm.weight"] = norm(head_dim)
            out[p + "self_attn.k_norm.weight"] = norm(head_dim)
        out[p + "self_attn.o_proj.weight"] = matrix(HIDDEN, q)
        out[p + "mlp.down_proj.weight"] = matrix(HIDDEN, FFN)
    out["model.norm.weight"] = norm(HIDDEN)
    if not config["tie_word_embeddings"]:
        out["lm_head.weight"] = matrix(VOCAB, HIDDEN)
    return out


def _tokenizer(folder: Path) -> None:
    """A byte-level BPE: the 256 bytes, a few merges, three special tokens (padded to VOCAB by the converter)."""
    alphabet = byte_level_alphabet()
    vocab = {alphabet[b]: b for b in range(256)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("a", "n")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    added = [{"id": len(vocab) + i, "content": t, "special": True} for i, t in enumerate(SPECIALS)]
    tokenizer = {
        "added_tokens": added,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "model": {"type": "BPE", "vocab": vocab, "merges": [list(m) for m in merges]},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False})
    )


def tiny_hf_folder(tmp_path: Path, arch: str) -> tuple[Path, dict[str, Any]]:
    """A folder (config, one safetensors file, tokenizer) of a two-layer ``arch`` model, and its config."""
    overrides, dtype = CASES[arch]
    config = {**BASE, **overrides, "architectures": [arch]}
    tensors = _tensors(arch, config, np.random.default_rng(sum(map(ord, arch))))
    stored: dict[str, tuple[str, object]] = {}
    for name, values in tensors.items():
        if values.ndim == 1 or dtype == "F32":
            # what the converter writes as F16 must be exactly representable in F16
            kind = "F32"
            stored[name] = (kind, values if values.ndim == 1 else values.astype(np.float16).astype(np.float32))
        elif dtype == "BF16":
            stored[name] = ("BF16", to_bf16_bits(values))
        else:
            stored[name] = ("F16", values.astype(np.float16))
    folder = tmp_path / arch
    folder.mkdir()
    save_safetensors(folder / "model.safetensors", stored)
    (folder / "config.json").write_text(json.dumps(config))
    _tokenizer(folder)
    return folder, config
