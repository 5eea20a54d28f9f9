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

import functools
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from pollama.convert.source import TensorSource
from pollama.convert.tensors import F32, PlannedTensor, declare_tensors, permute_rotary_rows, write_file
from pollama.errors import ConversionError, UnsupportedArchitecture
from pollama.gguf import GGUFFile, read_gguf

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
    files = [folder / "adapter_model.safetensors"]
    if not files[0].is_file():
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError("no adapter_model.safetensors found")
    with TensorSource(folder, files) as source:
        plan = _plan(source, base, arch)
        writer = gguf.GGUFWriter(dst, arch_name)
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            declare_tensors(writer, plan)
            write_file(writer, plan)
        except BaseException:
            writer.close()
            dst.unlink(missing_ok=True)
            raise
        writer.close()
    log.info("converted the LoRA adapter in %s to %s (%d tensors)", folder, dst, len(plan))


def _plan(source: TensorSource, base: GGUFFile, arch: gguf.MODEL_ARCH) -> list[PlannedTensor]:
    """The ``.lora_a`` / ``.lora_b`` pair of every adapted base tensor, checked against the base's shapes."""
    arch_name = base.architecture
    n_layer = int(base.arch_value("block_count", 0) or 0)
    names = gguf.get_tensor_name_map(arch, n_layer)
    base_shapes = {t.name: tuple(int(d) for d in t.shape) for t in base.tensors}
    n_head = int(base.arch_value("attention.head_count", 0) or 0)
    n_head_kv = int(base.arch_value("attention.head_count_kv", n_head) or n_head)

    pairs: dict[str, dict[str, str]] = {}
    for hf_name in source.names():
        match = _LORA_NAME.match(hf_name)
        if match is None:
            raise ConversionError(f"unexpected tensor '{hf_name}' in the adapter (only LoRA A/B weights convert)")
        target = names.get_name(match["module"])
        if target is None:
            raise ConversionError(f"unexpected tensor '{hf_name}' for {arch_name}")
        pairs.setdefault(target, {})[match["part"]] = hf_name
    if not pairs:
        raise ConversionError("the adapter has no LoRA tensors")

    plan: list[PlannedTensor] = []
    for target, parts in sorted(pairs.items(), key=lambda kv: _order(kv[0])):
        if set(parts) != {"A", "B"}:
            raise ConversionError(f"{target} has lora_A without lora_B or the other way round")
        a_name, b_name = parts["A"], parts["B"]
        a, b = source.shape(a_name), source.shape(b_name)
        shape = base_shapes.get(f"{target}.weight")
        if shape is None:
            raise ConversionError(f"the base model has no tensor {target}.weight for the adapter")
        # The base's GGUF shape is [in, out]; A is [rank, in] and B [out, rank] in numpy order.
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise ConversionError(f"{target}: lora_A and lora_B shapes do not match")
        if a[1] != shape[0] or b[0] != shape[1]:
            raise ConversionError(f"{target}: the adapter's shape does not match the base model's")
        heads = 0
        if arch_name == "llama" and target.endswith((".attn_q", ".attn_k")):
            heads = n_head if target.endswith(".attn_q") else n_head_kv
        plan.append(PlannedTensor(f"{target}.weight.lora_a", a, F32, functools.partial(source.load, a_name)))
        plan.append(PlannedTensor(f"{target}.weight.lora_b", b, F32, functools.partial(_lora_b, source, b_name, heads)))
    return plan


def _lora_b(source: TensorSource, name: str, heads: int) -> np.ndarray[Any, Any]:
    """B as F32, its rows in llama.cpp's rotary order when ``heads`` is set (llama's Q and K)."""
    rows = source.load(name)
    if not heads:
        return rows
    try:
        return permute_rotary_rows(rows, heads)
    except ConversionError:
        raise ConversionError("the adapter's Q/K rows do not split into the base model's heads") from None


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


def _order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return (int(parts[1]), name) if len(parts) > 1 and parts[0] == "blk" and parts[1].isdigit() else (-1, name)
