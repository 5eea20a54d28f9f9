"""``LoadSpec`` clamps absurd load options the way Ollama does, and says so in the log."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pollama.scheduler import LoadSpec


def make(**kw: object) -> LoadSpec:
    return LoadSpec(name="m", model_path=Path("/blobs/m"), **kw)  # type: ignore[arg-type]


def test_sane_options_are_kept_silently(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        spec = make(num_ctx=2048, num_batch=512, num_gpu=10, num_thread=1, num_parallel=2, main_gpu=0)
    assert (spec.num_ctx, spec.num_batch, spec.num_gpu, spec.num_thread, spec.num_parallel) == (2048, 512, 10, 1, 2)
    assert make(num_gpu=-1).num_gpu == -1 and make(num_thread=0).num_thread == 0
    assert caplog.records == []


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("num_thread", 1000, os.cpu_count() or 1),
        ("num_thread", -3, 0),  # like 0: as many as the machine has
        ("num_ctx", 1, 4),
        ("num_ctx", -100, 4),
        ("num_ctx", 2**40, (2**31 - 1)),
        ("num_batch", 10**9, 4096),  # never more than the context
        ("num_batch", 0, 1),
        ("num_gpu", -7, -1),  # auto
        ("num_gpu", 2**40, 999),  # all layers, without overflowing llama.cpp's int
        ("num_parallel", 0, 1),
    ],
)
def test_absurd_options_are_clamped_and_logged(
    caplog: pytest.LogCaptureFixture, option: str, value: int, expected: int
) -> None:
    with caplog.at_level(logging.WARNING, logger="pollama.scheduler.spec"):
        spec = make(**{option: value})
    assert getattr(spec, option) == expected
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"option {option}={value} is out of range for m; using {expected}"
    assert messages[1:] == (
        [f"option num_batch=512 is out of range for m; using {expected}"]
        if option == "num_ctx" and expected < 512
        else []
    )


def test_clamped_specs_compare_equal_so_they_share_a_runner() -> None:
    assert make(num_thread=1000) == make(num_thread=os.cpu_count() or 1)
    assert not make(num_batch=10**9, num_ctx=512).needs_reload(make(num_batch=512, num_ctx=512))
