"""Reading a GGUF file's header: metadata key/values and tensor descriptions, never the weights.

The ``gguf`` package defines the format (value types, quantization block sizes, file-type enums) and
we use its definitions. Its ``GGUFReader`` builds a numpy view of every element of every array,
which takes seconds on a tokenizer with 50k tokens; here the header is walked once with ``struct``
over an ``mmap`` and large arrays are skipped (kept as ``SkippedArray``) unless asked for.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from pollama.errors import InvalidRequest

# Arrays up to this many elements are always read; longer ones only when ``arrays="all"``.
SMALL_ARRAY = 64

_SCALAR = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


class NotGGUF(InvalidRequest):
    """The file is not a GGUF file (Ollama's message)."""

    def __init__(self) -> None:
        super().__init__("supplied file was not in GGUF format")


@dataclass(frozen=True)
class SkippedArray:
    """A long metadata array that was not read: its element type and length are known."""

    element_type: GGUFValueType
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's description from the header."""

    name: str
    shape: tuple[int, ...]
    type: int
    offset: int

    @property
    def n_elements(self) -> int:
        """Number of elements (product of the shape)."""
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    @property
    def type_name(self) -> str:
        """The ggml type's name (``Q4_K``, ``F16``, ...)."""
        try:
            return GGMLQuantizationType(self.type).name
        except ValueError:
            return f"type{self.type}"

    @property
    def n_bytes(self) -> int:
        """Bytes the tensor occupies in the file."""
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.type)]
        except (ValueError, KeyError):
            return 0
        return self.n_elements * size // block


@dataclass
class GGUFFile:
    """A parsed GGUF header."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0

    @property
    def architecture(self) -> str:
        """``general.architecture`` (empty if absent)."""
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """A value under the architecture prefix, e.g. ``arch_value("context_length")``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def parameter_count(self) -> int:
        """Sum of all tensors' element counts (Ollama's ``general.parameter_count``)."""
        return sum(t.n_elements for t in self.tensors)

    @property
    def kind(self) -> str:
        """``general.type`` (``model``, ``adapter``, ``projector``, ``mmproj``...); ``model`` if absent."""
        return str(self.metadata.get("general.type", "model"))


def read_gguf(path: str | Path, *, arrays: str = "small") -> GGUFFile:
    """Parse the header of the GGUF file at ``path``.

    ``arrays`` is ``"small"`` (read arrays of up to ``SMALL_ARRAY`` elements, skip longer ones) or
    ``"all"``. Raises ``NotGGUF`` if the file is not GGUF, ``InvalidRequest`` if it is truncated.
    """
    path = Path(path)
    with path.open("rb") as fh:
        size = path.stat().st_size
        if size < 24:
            raise NotGGUF()
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _Parser(mm, path, size, read_all=arrays == "all").parse()


class _Parser:
    def __init__(self, buf: mmap.mmap, path: Path, size: int, *, read_all: bool) -> None:
        self.buf = buf
        self.view = memoryview(buf)
        self.path = path
        self.size = size
        self.pos = 0
        self.read_all = read_all
        self.endian = "<"

    def parse(self) -> GGUFFile:
        try:
            return self._parse()
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, InvalidRequest):
                raise
            raise InvalidRequest(f"invalid GGUF file {self.path.name}: {exc}") from None
        finally:
            self.view.release()

    def _parse(self) -> GGUFFile:
        magic = struct.unpack_from("<I", self.buf, 0)[0]
        if magic != GGUF_MAGIC:
            raise NotGGUF()
        version = struct.unpack_from("<I", self.buf, 4)[0]
        if version & 0xFFFF == 0:  # written on a big-endian machine
            self.endian = ">"
            version = struct.unpack_from(">I", self.buf, 4)[0]
        if version not in (1, 2, 3):
            raise InvalidRequest(f"unsupported GGUF version {version}")
        self.pos = 8
        count_fmt = "I" if version == 1 else "Q"
        n_tensors = self._scalar(count_fmt)
        n_kv = self._scalar(count_fmt)
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            vtype = GGUFValueType(self._scalar("I"))
            metadata[key] = self._value(vtype)
        tensors = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar("I")
            shape = tuple(self._scalar(count_fmt) for _ in range(n_dims))
            ttype = self._scalar("I")
            offset = self._scalar("Q")
            tensors.append(TensorInfo(name, shape, ttype, offset))
        alignment = int(metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT) or GGUF_DEFAULT_ALIGNMENT)
        data_offset = -(-self.pos // alignment) * alignment
        return GGUFFile(self.path, version, metadata, tensors, data_offset, self.size)

    def _scalar(self, fmt: str) -> Any:
        value = struct.unpack_from(self.endian + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        length = self._scalar("Q")
        end = self.pos + length
        if end > self.size:
            raise ValueError("string runs past the end of the file")
        text = bytes(self.view[self.pos : end]).decode("utf-8", errors="replace")
        self.pos = end
        return text

    def _skip_string(self) -> None:
        length = self._scalar("Q")
        self.pos += length
        if self.pos > self.size:
            raise ValueError("string runs past the end of the file")

    def _value(self, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return self._string()
        if vtype == GGUFValueType.ARRAY:
            etype = GGUFValueType(self._scalar("I"))
            count = self._scalar("Q")
            return self._array(etype, count)
        value = self._scalar(_SCALAR[vtype])
        if vtype == GGUFValueType.FLOAT32:
            # The shortest text that round-trips as float32, as Go prints a float32 (1e-05, not 9.99e-06).
            value = float(str(np.float32(value)))
        return value

    def _array(self, etype: GGUFValueType, count: int) -> Any:
        keep = self.read_all or count <= SMALL_ARRAY
        if etype in _SCALAR:
            fmt = _SCALAR[etype]
            width = struct.calcsize(fmt)
            end = self.pos + width * count
            if end > self.size:
                raise ValueError("array runs past the end of the file")
            if keep:
                dtype = np.dtype(self.endian + ("?" if fmt == "?" else fmt))
                array = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
                values = [float(str(v)) for v in array] if fmt == "f" else array.tolist()
            else:
                values = SkippedArray(etype, count)
            self.pos = end
            return values
        if etype == GGUFValueType.STRING:
            if keep:
                return [self._string() for _ in range(count)]
            for _ in range(count):
                self._skip_string()
            return SkippedArray(etype, count)
        if etype == GGUFValueType.ARRAY:
            items = []
            for _ in range(count):
                inner = GGUFValueType(self._scalar("I"))
                items.append(self._array(inner, self._scalar("Q")))
            return items if keep else SkippedArray(etype, count)
        raise ValueError(f"unknown array element type {etype}")


def is_gguf(path: str | Path) -> bool:
    """True if the file starts with the GGUF magic."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return len(head) == 4 and struct.unpack("<I", head)[0] == GGUF_MAGIC
