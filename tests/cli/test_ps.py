"""``pollama ps``, ``stop`` and ``rm`` of a loaded model, against a real server; and the ps table's rules."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import ServerProcess


def _cli(
    server: ServerProcess, *args: str, input: str = "", timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``pollama ARGS``, with stdin given explicitly (an inherited stdin might never reach EOF)."""
    return server.cli(*args, input=input, timeout=timeout)


@pytest.fixture(scope="module")
def quick(smollm2_server: ServerProcess) -> Iterator[str]:
    """``quick``: smollm2 with at most 8 tokens per answer."""
    with smollm2_server.client() as c:
        r = c.post(
            "/api/create",
            json={
                "model": "quick",
                "from": "smollm2",
                "stream": False,
                "parameters": {"num_predict": 8, "temperature": 0},
            },
        )
        assert r.status_code == 200, r.text
    yield "quick"


def _rows(output: str) -> list[list[str]]:
    return [line.split("    ") for line in output.splitlines()]


def _loaded(server: ServerProcess) -> list[str]:
    with server.client() as c:
        return [m["name"] for m in c.get("/api/ps").json()["models"]]


def _wait_unloaded(server: ServerProcess, name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while name in _loaded(server):
        assert time.monotonic() < deadline, f"{name} still loaded"
        time.sleep(0.2)


def test_ps_after_run_then_stop(smollm2_server: ServerProcess, quick: str) -> None:
    run = _cli(smollm2_server, "run", quick, "Hi")
    assert run.returncode == 0, run.stderr
    ps = _cli(smollm2_server, "ps")
    assert ps.returncode == 0, ps.stderr
    lines = ps.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(line for line in lines[1:] if line.startswith("quick:latest"))
    assert "100% CPU" in row
    assert "    2048    " in row
    assert row.endswith("minutes from now")
    # columns line up under the header
    header = lines[0]
    for column in ("ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"):
        start = header.index(column)
        assert row[start - 1] == " " and row[start] != " ", (column, header, row)

    with smollm2_server.client() as c:
        digest = next(m["digest"] for m in c.get("/api/tags").json()["models"] if m["name"] == "quick:latest")
    assert digest[:12] in row

    filtered = _cli(smollm2_server, "ps", "qu")
    assert [line.split()[0] for line in filtered.stdout.splitlines()[1:]] == ["quick:latest"]
    assert _cli(smollm2_server, "ps", "zzz").stdout.splitlines()[1:] == []

    stop = _cli(smollm2_server, "stop", quick)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout == ""
    _wait_unloaded(smollm2_server, "quick:latest")
    ps = _cli(smollm2_server, "ps")
    assert not any(line.startswith("quick:latest") for line in ps.stdout.splitlines())


def test_stop_unknown_model(smollm2_server: ServerProcess) -> None:
    result = _cli(smollm2_server, "stop", "no-such-model")
    assert result.returncode == 1
    assert result.stderr == 'Error: couldn\'t find model "no-such-model" to stop\n'


def test_stop_a_model_that_is_not_loaded_is_quiet(smollm2_server: ServerProcess, quick: str) -> None:
    _wait_unloaded(smollm2_server, "quick:latest")
    result = _cli(smollm2_server, "stop", quick)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""


def test_rm_stops_a_loaded_model_first(smollm2_server: ServerProcess, quick: str) -> None:
    assert _cli(smollm2_server, "cp", quick, "doomed").returncode == 0
    assert _cli(smollm2_server, "run", "doomed", "Hi").returncode == 0
    assert "doomed:latest" in _loaded(smollm2_server)
    result = _cli(smollm2_server, "rm", "doomed")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "deleted 'doomed'\n"
    assert "Warning" not in result.stderr
    _wait_unloaded(smollm2_server, "doomed:latest")


# --- the table's rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "vram", "label"),
    [
        (1000, 0, "100% CPU"),
        (1000, 1000, "100% GPU"),
        (1000, 1500, "Unknown"),
        (0, 10, "Unknown"),
        (1000, 480, "52%/48% CPU/GPU"),
        (1000, 995, "1%/99% CPU/GPU"),
        (1000, 5, "100%/0% CPU/GPU"),
        (8, 7, "13%/87% CPU/GPU"),  # Go's math.Round rounds the half away from zero
    ],
)
def test_processor_column(size: int, vram: int, label: str) -> None:
    from pollama.cli._output import processor_label

    assert processor_label(size, vram) == label


def test_until_column_and_layout() -> None:
    from pollama.cli._output import ps_table

    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    models = [
        {
            "name": "a:latest",
            "digest": "0123456789abcdef",
            "size": 123_456_789,
            "size_vram": 0,
            "context_length": 2048,
            "expires_at": (now + timedelta(minutes=4, seconds=59)).isoformat(),
        },
        {
            "name": "bb:latest",
            "digest": "fedcba9876543210",
            "size": 4_700_000_000,
            "size_vram": 4_700_000_000,
            "context_length": 8192,
            "expires_at": "2318-03-31T00:00:00Z",
        },
        {
            "name": "c:latest",
            "digest": "00ff00ff00ff00ff",
            "size": 1000,
            "size_vram": 0,
            "context_length": 4096,
            "expires_at": (now - timedelta(seconds=1)).isoformat(),
        },
        {
            "name": "d:latest",
            "digest": "00ff00ff00ff00ff",
            "size": 1000,
            "size_vram": 0,
            "context_length": 4096,
            "expires_at": (now + timedelta(hours=1, minutes=2)).isoformat(),
        },
    ]
    assert ps_table(models, now=now) == (
        "NAME         ID              SIZE      PROCESSOR    CONTEXT    UNTIL\n"
        "a:latest     0123456789ab    123 MB    100% CPU     2048       4 minutes from now\n"
        "bb:latest    fedcba987654    4.7 GB    100% GPU     8192       Forever\n"
        "c:latest     00ff00ff00ff    1 KB      100% CPU     4096       Stopping...\n"
        "d:latest     00ff00ff00ff    1 KB      100% CPU     4096       About an hour from now\n"
    )
    assert ps_table(models, "b", now=now).splitlines()[1:] == [
        "bb:latest    fedcba987654    4.7 GB    100% GPU     8192       Forever"
    ]
