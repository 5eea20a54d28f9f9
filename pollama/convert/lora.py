"""PEFT LoRA adapters (``adapter_config.json`` + ``adapter_model.safetensors``) → a GGUF LoRA adapter for
the base model's architecture, as llama.cpp loads it with ``llama_adapter_lora_init``.

Each ``...<module>.lora_A.weight`` / ``lora_B.weight`` pair becomes ``<gguf name>.weight.lora_a`` /
``.lora_b`` under the base GGUF's tensor names (``gguf``'s ``TensorNameMap``), in PEFT's orientation
(A is rank × in, B is out × rank: llama.cpp wants exactly that). ``adapter.lora.alpha`` is PEFT's
``lora_alpha`` (made ``alpha·√r`` for rsLoRA, whose scale is alpha/√r), so llama.cpp's scale
``alpha / r`` equals PEFT's. For ``llama`` bases the rows of the Q and K updates (B) get the
rotary-pair permutation the base conversion applied to ``q_proj``/``k_proj``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from pollama.convert._safetensors import as_float32, load_tensor, read_index
from pollama.errors import ConversionError, UnsupportedArchitecture
from pollama.gguf import read_gguf

log = logging.getLogger(__name__)

# Base architectures whose tensor names are HF's llama-style ``model.layers.N.self_attn.q_proj``.
_ARCHITECTURES = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "gemma2": gguf.MODEL_ARCH.GEMMA2,
    "gemma3": gguf.MODEL_ARCH.GEMMA3,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
}
_LORA_NAME = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight$")


def convert(folder: Path, base_gguf: Path, dst: Path) -> None:
    """Write the GGUF LoRA of the PEFT adapter in ``folder`` for the model whose GGUF is ``base_gguf`` to ``dst``."""
    base = read_gguf(base_gguf)
    arch_name = base.architecture
    arch = _ARCHITECTURES.get(arch_name)
    if arch is None:
        raise UnsupportedArchitecture(arch_name)
    config = _adapter_config(folder)
    alpha = _alpha(config)
    sources = [folder / "adapter_model.safetensors"]
    if not sources[0].is_file():
        sources = sorted(folder.glob("*.safetensors"))
    if not sources:
        raise ConversionError("no adapter_model.safetensors found")
    entries = read_index(sources)
    n_layer = int(base.arch_value("block_count", 0) or 0)
    names = gguf.get_tensor_name_map(arch, n_layer)
    base_shapes = {t.name: tuple(int(d) for d in t.shape) for t in base.tensors}
    n_head = int(base.arch_value("attention.head_count", 0) or 0)
    n_head_kv = int(base.arch_value("attention.head_count_kv", n_head) or n_head)

    pairs: dict[str, dict[str, str]] = {}
    for source in entries:
        match = _LORA_NAME.match(source)
        if match is None:
            raise ConversionError(f"unexpected tensor '{source}' in the adapter (only LoRA A/B weights convert)")
        target = names.get_name(match["module"])
        if target is None:
            raise ConversionError(f"unexpected tensor '{source}' for {arch_name}")
        pairs.setdefault(target, {})[match["part"]] = source
    if not pairs:
        raise ConversionError("the adapter has no LoRA tensors")

    planned: list[tuple[str, str, str]] = []  # (gguf base name, A source, B source)
    for target, parts in sorted(pairs.items(), key=lambda kv: _order(kv[0])):
        if set(parts) != {"A", "B"}:
            raise ConversionError(f"{target} has lora_A without lora_B or the other way round")
        a, b = entries[parts["A"]], entries[parts["B"]]
        shape = base_shapes.get(f"{target}.weight")
        if shape is None:
            raise ConversionError(f"the base model has no tensor {target}.weight for the adapter")
        # The base's GGUF shape is [in, out]; A is [rank, in] and B [out, rank] in numpy order.
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise ConversionError(f"{target}: lora_A and lora_B shapes do not match")
        if a.shape[1] != shape[0] or b.shape[0] != shape[1]:
            raise ConversionError(f"{target}: the adapter's shape does not match the base model's")
        planned.append((target, parts["A"], parts["B"]))

    writer = gguf.GGUFWriter(dst, arch_name)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for target, a_name, b_name in planned:
            a, b = entries[a_name], entries[b_name]
            writer.add_tensor_info(f"{target}.weight.lora_a", a.shape, np.dtype(np.float32), 4 * math.prod(a.shape))
            writer.add_tensor_info(f"{target}.weight.lora_b", b.shape, np.dtype(np.float32), 4 * math.prod(b.shape))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for target, a_name, b_name in planned:
            a, b = entries[a_name], entries[b_name]
            writer.write_tensor_data(np.ascontiguousarray(as_float32(a, load_tensor(a))))
            rows = as_float32(b, load_tensor(b))
            if arch_name == "llama" and target.endswith((".attn_q", ".attn_k")):
                rows = _permute_rows(rows, n_head if target.endswith(".attn_q") else n_head_kv)
            writer.write_tensor_data(np.ascontiguousarray(rows, dtype=np.float32))
    except BaseException:
        writer.close()
        dst.unlink(missing_ok=True)
        raise
    writer.close()
    log.info("converted the LoRA adapter in %s to %s (%d tensors)", folder, dst, 2 * len(planned))


def _adapter_config(folder: Path) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError("adapter_config.json not found") from None
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read adapter_config.json: {exc}") from None
    if not isinstance(config, dict):
        raise ConversionError("adapter_config.json is not an object")
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise ConversionError(f"unsupported adapter type {peft_type!r}: only LoRA adapters convert")
    return config


def _alpha(config: dict[str, Any]) -> float:
    """The ``adapter.lora.alpha`` that makes llama.cpp's ``alpha / r`` PEFT's scale."""
    alpha = config.get("lora_alpha")
    if alpha is None:
        alpha = (config.get("lora_parameters") or {}).get("alpha")  # MLX-LM's adapter config
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise ConversionError("adapter_config.json has no lora_alpha")
    rank = config.get("r")
    if config.get("use_rslora") and isinstance(rank, int) and rank > 0:
        return float(alpha) * math.sqrt(rank)
    return float(alpha)


def _permute_rows(rows: np.ndarray[Any, Any], heads: int) -> np.ndarray[Any, Any]:
    """llama's Q/K row order in GGUF: within each head, the two rotary halves interleaved."""
    out = rows.shape[0]
    if heads <= 0 or out % (2 * heads):
        raise ConversionError("the adapter's Q/K rows do not split into the base model's heads")
    return rows.reshape(heads, 2, out // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return (int(parts[1]), name) if len(parts) > 1 and parts[0] == "blk" and parts[1].isdigit() else (-1, name)
