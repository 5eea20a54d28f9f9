"""Output tensors shared by the converters: the type each is written as, reading it in that type from a
``TensorSource``, llama.cpp's rotary row order, and streaming a planned list of them into a GGUF.

A converter plans every output tensor first (``PlannedTensor``: GGUF name, shape, type and a
``produce`` callable that reads and transforms it), declares them all so the header and tensor
table can be written, then produces and writes one tensor at a time, dropping each before the next,
so memory stays near the largest tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from pollama.convert.source import TensorSource
from pollama.errors import ConversionError

F32 = gguf.GGMLQuantizationType.F32
F16 = gguf.GGMLQuantizationType.F16
BF16 = gguf.GGMLQuantizationType.BF16
_NUMPY_TYPES: dict[gguf.GGMLQuantizationType, Any] = {F32: np.float32, F16: np.float16, BF16: np.uint16}


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its GGUF name, shape (PyTorch order), type, and how to read it in that type."""

    name: str
    shape: tuple[int, ...]
    kind: gguf.GGMLQuantizationType
    produce: Callable[[], np.ndarray[Any, Any]]


def output_type(shape: tuple[int, ...], stored: str, *, f32: bool = False) -> gguf.GGMLQuantizationType:
    """The type a tensor is written as, as Ollama's converter: 1-D (or ``f32``) → F32, BF16 stays BF16, else F16."""
    if f32 or len(shape) <= 1:
        return F32
    return BF16 if stored == "BF16" else F16


def read_as(source: TensorSource, name: str, kind: gguf.GGMLQuantizationType) -> np.ndarray[Any, Any]:
    """Tensor ``name`` of ``source`` as ``kind`` (F32, F16, or BF16 as its ``uint16`` bits), with one copy at most."""
    stored = source.dtype(name)
    if kind == F32:
        return source.load(name)
    if kind == BF16:
        if stored != "BF16":
            raise ConversionError(f"tensor {name!r}: {stored} cannot be written as BF16")
        return source.raw(name)
    if stored == "BF16":
        return source.load(name).astype(np.float16)
    data = source.raw(name)
    return data if data.dtype == np.float16 else data.astype(np.float16)


def from_source(source: TensorSource, hf_name: str, name: str, *, f32: bool = False) -> PlannedTensor:
    """``hf_name`` of ``source`` written unchanged as GGUF tensor ``name``, in its ``output_type``."""
    shape = source.shape(hf_name)
    kind = output_type(shape, source.dtype(hf_name), f32=f32)
    return PlannedTensor(name, shape, kind, lambda: read_as(source, hf_name, kind))


def gguf_name(names: gguf.TensorNameMap, hf_name: str, seen: set[str], *, lookup: str | None = None) -> str:
    """The GGUF name of tensor ``hf_name`` (looked up as ``lookup`` when given), added to ``seen``.

    ``ConversionError`` when ``names`` has no name for it or an earlier tensor took that name.
    """
    name = names.get_name(lookup or hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ConversionError(f"cannot map tensor {hf_name!r} to a GGUF name")
    if name in seen:
        raise ConversionError(f"duplicate tensor name '{name}' was found for this model")
    seen.add(name)
    return name


def permute_rotary_rows(weights: np.ndarray[Any, Any], heads: int) -> np.ndarray[Any, Any]:
    """Hugging Face's rotary halves per head (``[x0..x(d/2-1), y0..]``) → llama.cpp's pairs (``[x0, y0, ...]``)."""
    rows = weights.shape[0]
    if heads <= 0 or rows % (2 * heads):
        raise ConversionError(f"{rows} rows do not split into {heads} rotary heads")
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def declare_tensors(writer: gguf.GGUFWriter, plan: list[PlannedTensor]) -> None:
    """Add every planned tensor's name, shape and type to ``writer``'s tensor table."""
    for item in plan:
        dtype = np.dtype(_NUMPY_TYPES[item.kind])
        count = int(np.prod(item.shape, dtype=np.int64)) if item.shape else 1
        writer.add_tensor_info(item.name, item.shape, dtype, count * dtype.itemsize, raw_dtype=item.kind)


def write_file(writer: gguf.GGUFWriter, plan: list[PlannedTensor]) -> None:
    """Write the header, metadata and tensor table, then each tensor of ``plan`` (declared already) in turn."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for item in plan:
        data = np.ascontiguousarray(item.produce(), dtype=_NUMPY_TYPES[item.kind])
        writer.write_tensor_data(data)
        del data
    writer.flush()
