"""Reading the tensors of a Hugging Face model folder, one at a time, straight from its safetensors files.

A folder holds ``model.safetensors``, or shards listed by ``model.safetensors.index.json`` (any other
``*.safetensors`` are read too when there is no index). A safetensors file is an 8-byte little-endian
header length, a JSON header (``{name: {"dtype", "shape", "data_offsets"}}``) and the raw data. Only headers are read up
front; a tensor is read from its file when asked for, into an array of its own that the caller drops
before asking for the next one, so the converter's memory stays near one tensor whatever the model's
size (a memory map would keep every page read so far resident). BF16 has no numpy dtype: ``raw`` gives
its bits as ``uint16`` (enough to copy or reorder it exactly), ``load`` widens it to F32.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pollama.errors import ConversionError

_NUMPY_TYPES: dict[str, Any] = {
    "BF16": np.uint16,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "U8": np.uint8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "BOOL": np.bool_,
}
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


class TensorSource:
    """The tensors of a folder's safetensors files, by their Hugging Face names.

    ``names()`` in file order, ``shape(name)``, ``dtype(name)`` (the safetensors type: ``BF16``,
    ``F16``, ``F32``...), ``raw(name)`` (a new array in the stored type, BF16 as ``uint16``) and
    ``load(name)`` (a new F32 array). ``close()`` (or ``with``) closes the files. ``files`` reads
    just those files of the folder (a PEFT adapter's ``adapter_model.safetensors``) instead.
    """

    def __init__(self, folder: Path, files: list[Path] | None = None) -> None:
        self.folder = folder
        self._entries: dict[str, _Entry] = {}
        self._files: dict[Path, io.FileIO] = {}
        for file in _tensor_files(folder) if files is None else files:
            self._read_header(file)
        if not self._entries:
            raise ConversionError("no safetensors files found")

    def _read_header(self, file: Path) -> None:
        try:
            with file.open("rb") as fh:
                raw_length = fh.read(8)
                if len(raw_length) != 8:
                    raise ConversionError(f"{file.name}: not a safetensors file")
                (length,) = struct.unpack("<Q", raw_length)
                if length > _MAX_HEADER:
                    raise ConversionError(f"{file.name}: not a safetensors file")
                header = json.loads(fh.read(length))
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{file.name}: not a safetensors file ({exc})") from None
        if not isinstance(header, dict):
            raise ConversionError(f"{file.name}: not a safetensors file")
        base = 8 + length
        size = file.stat().st_size
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape = str(info["dtype"]), tuple(int(d) for d in info["shape"])
                start, end = info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ConversionError(f"{file.name}: bad header entry for {name!r}") from None
            if name in self._entries:
                raise ConversionError(f"duplicate tensor name '{name}' was found for this model")
            if base + int(end) > size or int(start) > int(end):
                raise ConversionError(f"{file.name}: tensor {name!r} lies outside the file")
            self._entries[name] = _Entry(file, dtype, shape, base + int(start), base + int(end))

    def names(self) -> list[str]:
        """Every tensor name, in the order the files list them."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, outermost dimension first (PyTorch order)."""
        return self._entry(name).shape

    def dtype(self, name: str) -> str:
        """The stored type as safetensors names it (``BF16``, ``F16``, ``F32``, ...)."""
        return self._entry(name).dtype

    def raw(self, name: str) -> np.ndarray[Any, Any]:
        """A new array of the stored values (BF16 as their ``uint16`` bits), read from the file."""
        entry = self._entry(name)
        numpy_type = _NUMPY_TYPES.get(entry.dtype)
        if numpy_type is None:
            raise ConversionError(f"tensor {name!r}: unsupported data type {entry.dtype}")
        count = int(np.prod(entry.shape, dtype=np.int64)) if entry.shape else 1
        array = np.empty(count, dtype=numpy_type)
        view = memoryview(array.data).cast("B")
        if entry.end - entry.start != len(view):
            raise ConversionError(f"tensor {name!r}: {entry.end - entry.start} bytes for shape {list(entry.shape)}")
        fh = self._open(entry.file)
        fh.seek(entry.start)
        done = 0
        while done < len(view):
            got = fh.readinto(view[done:])
            if not got:
                raise ConversionError(f"{entry.file.name}: truncated")
            done += got
        return array.reshape(entry.shape)

    def load(self, name: str) -> np.ndarray[Any, Any]:
        """The tensor widened to F32 (a new array)."""
        values = self.raw(name)
        if self.dtype(name) == "BF16":
            return bf16_to_f32(values)
        return values.astype(np.float32)

    def close(self) -> None:
        """Close every file."""
        files, self._files = self._files, {}
        for fh in files.values():
            fh.close()

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise ConversionError(f"tensor {name!r} not found") from None

    def _open(self, file: Path) -> io.FileIO:
        fh = self._files.get(file)
        if fh is None:
            fh = io.FileIO(file, "r")
            self._files[file] = fh
        return fh


def bf16_to_f32(bits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """BF16 values given as their ``uint16`` bits, widened exactly to F32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """F32 values rounded to nearest-even BF16, as ``uint16`` bits (NaN stays NaN)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def _tensor_files(folder: Path) -> list[Path]:
    """The safetensors files of ``folder``: the index's shards in order, else every ``*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = list(dict.fromkeys(str(v) for v in weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ConversionError("model.safetensors.index.json: no weight_map") from None
        files = []
        for shard in shards:
            path = folder / shard
            if "/" in shard or "\\" in shard or shard.startswith(".") or not path.is_file():
                raise ConversionError(f"model.safetensors.index.json names a missing file: {shard}")
            files.append(path)
        return files
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())
