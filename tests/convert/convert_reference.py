"""Independent references for the converter tests: a safetensors reader and the Hugging Face forward
passes of the decoder families in numpy, written from the transformers modelling code's semantics
(half-split rotary embeddings, Gemma's ``1 + w`` norms, Phi3's fused projections), never from the
converter's own code or output."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

_TYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


def load_folder(folder: Path) -> dict[str, np.ndarray[Any, Any]]:
    """Every tensor of every ``*.safetensors`` file in ``folder``, as F32."""
    out: dict[str, np.ndarray[Any, Any]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        raw = path.read_bytes()
        length = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + length])
        base = 8 + length
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            values = np.frombuffer(raw[base + start : base + end], dtype=_TYPES[info["dtype"]]).reshape(info["shape"])
            if info["dtype"] == "BF16":
                values = (values.astype(np.uint32) << 16).view(np.float32)
            out[name] = values.astype(np.float32)
    return out


def log_softmax(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Row-wise log-softmax in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _rms(x: np.ndarray[Any, Any], weight: np.ndarray[Any, Any], eps: float, *, gemma: bool) -> np.ndarray[Any, Any]:
    normed = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    return normed * ((1.0 + weight) if gemma else weight)


def _inv_freq(config: dict[str, Any], base: float, rotary: int) -> np.ndarray[Any, Any]:
    """transformers' rotary frequencies, with Llama 3's scaling (``_compute_llama3_parameters``) if configured."""
    inv_freq = 1.0 / base ** (np.arange(0, rotary, 2, dtype=np.float64) / rotary)
    rope = config.get("rope_scaling") or {}
    if rope.get("rope_type") != "llama3":
        return inv_freq
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    original = rope["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return np.where(medium, smoothed, scaled)


def _rotate(
    x: np.ndarray[Any, Any], positions: np.ndarray[Any, Any], inv_freq: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """transformers' ``apply_rotary_pos_emb``: the first dims, halves rotated against each other."""
    rotary = 2 * len(inv_freq)
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1)[:, None, :]
    rot, rest = x[..., :rotary], x[..., rotary:]
    half = rotary // 2
    rotated = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return np.concatenate([rot * cos + rotated * sin, rest], axis=-1).astype(np.float32)


def _gelu_tanh(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _silu(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return x / (1.0 + np.exp(-x))


def forward(config: dict[str, Any], w: dict[str, np.ndarray[Any, Any]], tokens: list[int]) -> np.ndarray[Any, Any]:
    """Logits at every position of ``tokens`` for the Hugging Face model ``config`` describes."""
    arch = config["architectures"][0]
    gemma = arch.startswith("Gemma")
    hidden = config["hidden_size"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or hidden // n_head
    rotary = int(head_dim * config.get("partial_rotary_factor", 1.0))
    eps = config.get("rms_norm_eps", 1e-6)
    n = len(tokens)
    positions = np.arange(n)
    x = w["model.embed_tokens.weight"][tokens].astype(np.float32)
    if gemma:
        x = x * np.float32(math.sqrt(hidden))
    scale = (config.get("query_pre_attn_scalar") or head_dim) ** -0.5
    mask = np.tril(np.ones((n, n), dtype=bool))
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sliding = gemma and config.get("sliding_window") and _is_sliding(config, i)
        base = config.get("rope_theta", 10000.0)
        if arch == "Gemma3ForCausalLM" and sliding:
            base = config.get("rope_local_base_freq", 10000.0)
        h = _rms(x, w[p + "input_layernorm.weight"], eps, gemma=gemma)
        if arch == "Phi3ForCausalLM":
            qkv = h @ w[p + "self_attn.qkv_proj.weight"].T
            q, k, v = np.split(qkv, [n_head * head_dim, (n_head + n_kv) * head_dim], axis=-1)
        else:
            q, k, v = (h @ w[p + f"self_attn.{m}_proj.weight"].T for m in "qkv")
            if p + "self_attn.q_proj.bias" in w:
                q, k, v = (t + w[p + f"self_attn.{m}_proj.bias"] for t, m in zip((q, k, v), "qkv", strict=True))
        q = q.reshape(n, n_head, head_dim)
        k = k.reshape(n, n_kv, head_dim)
        v = v.reshape(n, n_kv, head_dim)
        if p + "self_attn.q_norm.weight" in w:
            q = _rms(q, w[p + "self_attn.q_norm.weight"], eps, gemma=gemma)
            k = _rms(k, w[p + "self_attn.k_norm.weight"], eps, gemma=gemma)
        inv_freq = _inv_freq(config, base, rotary)
        q = _rotate(q, positions, inv_freq)
        k = _rotate(k, positions, inv_freq)
        group = n_head // n_kv
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) * scale
        if config.get("attn_logit_softcapping"):
            cap = config["attn_logit_softcapping"]
            scores = np.tanh(scores / cap) * cap
        allowed = mask
        if sliding:
            allowed = mask & (positions[:, None] - positions[None, :] < config["sliding_window"])
        scores = np.where(allowed[None], scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n, n_head * head_dim)
        out = attn @ w[p + "self_attn.o_proj.weight"].T
        if gemma:
            out = _rms(out, w[p + "post_attention_layernorm.weight"], eps, gemma=True)
            x = x + out
            h = _rms(x, w[p + "pre_feedforward_layernorm.weight"], eps, gemma=True)
        else:
            x = x + out
            h = _rms(x, w[p + "post_attention_layernorm.weight"], eps, gemma=False)
        if arch == "Phi3ForCausalLM":
            gate, up = np.split(h @ w[p + "mlp.gate_up_proj.weight"].T, 2, axis=-1)
        else:
            gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        act = _gelu_tanh(gate) if gemma else _silu(gate)
        mlp = (act * up) @ w[p + "mlp.down_proj.weight"].T
        if gemma:
            mlp = _rms(mlp, w[p + "post_feedforward_layernorm.weight"], eps, gemma=True)
        x = (x + mlp).astype(np.float32)
    x = _rms(x, w["model.norm.weight"], eps, gemma=gemma)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    logits = x @ head.T
    if config.get("final_logit_softcapping"):
        cap = config["final_logit_softcapping"]
        logits = np.tanh(logits / cap) * cap
    return logits.astype(np.float32)


def _is_sliding(config: dict[str, Any], layer: int) -> bool:
    """Gemma2: even layers slide; Gemma3: all but every ``sliding_window_pattern``-th layer."""
    if config["architectures"][0] == "Gemma2ForCausalLM":
        return layer % 2 == 0
    pattern = config.get("sliding_window_pattern", 6)
    return (layer + 1) % pattern != 0


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet: each byte → the printable character that stands for it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out
