"""Reading tensors out of ``*.safetensors`` files one at a time, memory-mapped (F32, F16 and BF16).

The header is parsed here rather than through ``safetensors.safe_open(framework="numpy")``, which
cannot hand out BF16 tensors without PyTorch; a BF16 tensor comes back as its raw ``uint16`` words.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pollama.errors import ConversionError

_DTYPES: dict[str, Any] = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are: its file, dtype name, shape and byte range."""

    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_index(paths: list[Path]) -> dict[str, TensorEntry]:
    """Every tensor in ``paths`` by name; a name found twice is an error."""
    entries: dict[str, TensorEntry] = {}
    for path in paths:
        for name, entry in _read_header(path).items():
            if name in entries:
                raise ConversionError(f"duplicate tensor name '{name}' was found for this model")
            entries[name] = entry
    return entries


def load_tensor(entry: TensorEntry) -> np.ndarray[Any, Any]:
    """The tensor's values, memory-mapped (BF16 as raw ``uint16``)."""
    dtype = _DTYPES.get(entry.dtype)
    if dtype is None:
        raise ConversionError(f"unsupported safetensors dtype {entry.dtype}")
    count = int(np.prod(entry.shape)) if entry.shape else 1
    if count * np.dtype(dtype).itemsize != entry.end - entry.start:
        raise ConversionError(f"tensor data size does not match its shape in {entry.path.name}")
    data = np.memmap(entry.path, dtype=dtype, mode="r", offset=entry.start, shape=(count,))
    return data.reshape(entry.shape)


def as_float32(entry: TensorEntry, data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``data`` (as ``load_tensor`` returned it for ``entry``) widened to float32."""
    if entry.dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(data, dtype=np.float32)


def _read_header(path: Path) -> dict[str, TensorEntry]:
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ConversionError(f"{path.name} is not a safetensors file")
            (size,) = struct.unpack("<Q", head)
            if size > _MAX_HEADER:
                raise ConversionError(f"{path.name} is not a safetensors file")
            header = json.loads(f.read(size))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ConversionError):
            raise
        raise ConversionError(f"cannot read {path.name}: {exc}") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path.name} is not a safetensors file")
    base = 8 + size
    out: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
            out[name] = TensorEntry(path, str(info["dtype"]), shape, base + start, base + end)
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"bad tensor entry '{name}' in {path.name}") from None
    return out
