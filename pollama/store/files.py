"""Crash-safe file writes and Go-compatible JSON for everything the store puts on disk.

A file is written under a temporary name in its final directory, flushed and fsynced, then renamed
into place with ``os.replace`` and the directory fsynced: a reader sees the old file or the new one,
never half of either, and a crash leaves only a temporary file that start-up pruning removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_PREFIX = ".tmp-"


def temp_name(directory: Path, hint: str = "") -> Path:
    """A fresh temporary path in ``directory`` (same file system as the final name)."""
    return directory / f"{TEMP_PREFIX}{hint}{secrets.token_hex(8)}"


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Open a temporary file that replaces ``path`` only if the ``with`` block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path.parent)
    with open(tmp, "xb") as fh:
        try:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.chmod(tmp, mode)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            fh.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path, mode=mode) as fh:
        fh.write(data)


def go_json(value: Any) -> bytes:
    """Encode as Go's ``json.NewEncoder(w).Encode`` does: compact, ``<>&`` and U+2028/9 escaped,
    integral floats without a fraction, and a trailing newline."""
    text = json.dumps(_go_numbers(value), separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return (text + "\n").encode("utf-8")


def _go_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_go_numbers(v) for v in value]
    return value
