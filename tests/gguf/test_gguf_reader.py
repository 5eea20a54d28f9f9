"""The GGUF header reader: float metadata as Go prints a float32, and the ``gguf`` package (with
numpy) kept out of a server until it reads its first header."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest

from pollama.errors import InvalidRequest
from pollama.gguf import NotGGUF, parse_gguf_header, read_gguf
from pollama.gguf.reader import _shortest_float32
from tests.conftest import imported_by_a_started_app


def test_float32_values_read_as_their_shortest_round_trip_text() -> None:
    # numpy's float32 repr is the independent reference (the shortest text that reads back the same).
    rng = random.Random(7)
    words = [rng.getrandbits(32) for _ in range(20000)]
    values = [struct.unpack("<f", struct.pack("<I", w))[0] for w in words]
    values += [1e-05, 1e-06, 0.1, 10000.0, 500000.0, 1 / 3, -2.5e-07, 0.0, -0.0, 3.4028234663852886e38]
    # As the reader has them: float32 values widened to Python floats.
    finite = [struct.unpack("<f", struct.pack("<f", v))[0] for v in values if np.isfinite(np.float32(v))]
    assert [_shortest_float32(v) for v in finite] == [float(str(np.float32(v))) for v in finite]
    assert str(_shortest_float32(struct.unpack("<f", struct.pack("<f", 1e-5))[0])) == "1e-05"


def test_smollm2_header_metadata(smollm2_gguf: Path) -> None:
    gguf = read_gguf(smollm2_gguf)
    assert gguf.architecture == "llama"
    assert gguf.arch_value("rope.freq_base") == 100000.0
    assert gguf.arch_value("attention.layer_norm_rms_epsilon") == 1e-05
    assert gguf.parameter_count == 134_515_008
    assert gguf.tensors[0].type_name in {"Q4_1", "Q6_K", "Q8_0", "F32"}


def test_a_header_in_memory_parses_as_its_file(smollm2_gguf: Path) -> None:
    """``parse_gguf_header`` on a file's first bytes (header and padding, no tensor data) gives what
    ``read_gguf`` gives for the file, but for the size; cut short, it is an error, not a guess."""
    whole = read_gguf(smollm2_gguf)
    with smollm2_gguf.open("rb") as fh:
        head = fh.read(whole.data_offset)
    parsed = parse_gguf_header(head, smollm2_gguf)
    assert parsed.file_size == whole.data_offset
    assert parsed.metadata == whole.metadata and parsed.tensors == whole.tensors
    assert (parsed.path, parsed.version, parsed.data_offset) == (whole.path, whole.version, whole.data_offset)
    with pytest.raises(InvalidRequest, match="invalid GGUF file"):
        parse_gguf_header(head[: len(head) // 2], smollm2_gguf)
    with pytest.raises(NotGGUF):
        parse_gguf_header(b"GGML" + head[4:], smollm2_gguf)


def test_a_started_app_has_not_imported_gguf_or_numpy() -> None:
    assert imported_by_a_started_app("gguf", "numpy") == [False, False]
