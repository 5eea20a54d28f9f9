"""Reading a GGUF file's header: metadata key/values and tensor descriptions, never the weights.

The ``gguf`` package defines the format (value types, quantization block sizes, file-type enums) and
we use its definitions. Its ``GGUFReader`` builds a numpy view of every element of every array,
which takes seconds on a tokenizer with 50k tokens; here the header is walked once with ``struct``
over an ``mmap`` and large arrays are skipped (kept as ``SkippedArray``) unless asked for.

The ``gguf`` package (and numpy, which it imports) is loaded on the first header read, not when
this module is imported: together they are about 17 MB of a server's memory that a server which
has not read a model yet does not need.
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pollama.errors import InvalidRequest

if TYPE_CHECKING:
    from gguf import GGUFValueType

# Arrays up to this many elements are always read; longer ones only when ``arrays="all"``.
SMALL_ARRAY = 64

# "GGUF" read as a little-endian uint32: the first four bytes of every GGUF file.
_MAGIC = b"GGUF"


@functools.cache
def gguf_format() -> ModuleType:
    """The ``gguf`` package (value types, quantization block sizes, file-type enums), imported once."""
    import gguf

    return gguf


@functools.cache
def _scalar_formats() -> dict[GGUFValueType, str]:
    """``struct`` formats of the GGUF scalar value types."""
    v = gguf_format().GGUFValueType
    return {
        v.UINT8: "B",
        v.INT8: "b",
        v.UINT16: "H",
        v.INT16: "h",
        v.UINT32: "I",
        v.INT32: "i",
        v.FLOAT32: "f",
        v.BOOL: "?",
        v.UINT64: "Q",
        v.INT64: "q",
        v.FLOAT64: "d",
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
            return str(gguf_format().GGMLQuantizationType(self.type).name)
        except ValueError:
            return f"type{self.type}"

    @property
    def n_bytes(self) -> int:
        """Bytes the tensor occupies in the file."""
        try:
            g = gguf_format()
            block, size = g.GGML_QUANT_SIZES[g.GGMLQuantizationType(self.type)]
        except (ValueError, KeyError):
            return 0
        return int(self.n_elements * size // block)


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


def parse_gguf_header(data: bytes, path: str | Path, *, arrays: str = "small") -> GGUFFile:
    """A GGUF header held in memory (``data``: the start of a file, at least up to its tensor
    data), parsed as ``read_gguf`` would parse the file at ``path``; ``file_size`` is then
    ``len(data)``. Raises as ``read_gguf`` does."""
    if len(data) < 24:
        raise NotGGUF()
    return _Parser(data, Path(path), len(data), read_all=arrays == "all").parse()


class _Parser:
    def __init__(self, buf: mmap.mmap | bytes, path: Path, size: int, *, read_all: bool) -> None:
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
        if self.buf[:4] != _MAGIC:
            raise NotGGUF()
        g = gguf_format()
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
            vtype = g.GGUFValueType(self._scalar("I"))
            metadata[key] = self._value(vtype)
        tensors = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar("I")
            shape = tuple(self._scalar(count_fmt) for _ in range(n_dims))
            ttype = self._scalar("I")
            offset = self._scalar("Q")
            tensors.append(TensorInfo(name, shape, ttype, offset))
        default = g.GGUF_DEFAULT_ALIGNMENT
        alignment = int(metadata.get("general.alignment", default) or default)
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

    def _skip_strings(self, count: int) -> None:
        """Step over ``count`` strings (a vocabulary: tens of thousands, so the loop is kept tight)."""
        length_at = struct.Struct(self.endian + "Q").unpack_from
        buf, pos = self.buf, self.pos
        for _ in range(count):
            pos += 8 + length_at(buf, pos)[0]
        if pos > self.size:
            raise ValueError("string runs past the end of the file")
        self.pos = pos

    def _value(self, vtype: GGUFValueType) -> Any:
        v = gguf_format().GGUFValueType
        if vtype == v.STRING:
            return self._string()
        if vtype == v.ARRAY:
            etype = v(self._scalar("I"))
            count = self._scalar("Q")
            return self._array(etype, count)
        value = self._scalar(_scalar_formats()[vtype])
        return _shortest_float32(value) if vtype == v.FLOAT32 else value

    def _array(self, etype: GGUFValueType, count: int) -> Any:
        keep = self.read_all or count <= SMALL_ARRAY
        v = gguf_format().GGUFValueType
        formats = _scalar_formats()
        if etype in formats:
            fmt = formats[etype]
            width = struct.calcsize(fmt)
            end = self.pos + width * count
            if end > self.size:
                raise ValueError("array runs past the end of the file")
            if keep:
                values: Any = list(struct.unpack_from(f"{self.endian}{count}{fmt}", self.buf, self.pos))
                if fmt == "f":
                    values = [_shortest_float32(x) for x in values]
            else:
                values = SkippedArray(etype, count)
            self.pos = end
            return values
        if etype == v.STRING:
            if keep:
                return [self._string() for _ in range(count)]
            self._skip_strings(count)
            return SkippedArray(etype, count)
        if etype == v.ARRAY:
            items = []
            for _ in range(count):
                inner = v(self._scalar("I"))
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
    return head == _MAGIC


def _shortest_float32(value: float) -> float:
    """The float32 ``value`` as its shortest decimal that reads back as the same float32.

    This is how Go prints a float32 (``1e-05``, not ``9.999999747378752e-06``), and so what Ollama
    shows for a GGUF's float metadata. The correctly rounded ``p``-digit decimal is the nearest one,
    so the first ``p`` whose rounding survives the float32 round trip gives the shortest.
    """
    packed = struct.pack("<f", value)
    if value != value or value in (float("inf"), float("-inf")):
        return value
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack("<f", candidate) == packed:
                return candidate
        except OverflowError:  # rounded past the largest float32
            continue
    return value
