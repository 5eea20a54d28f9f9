"""Transfer progress lines (pull, push, create) in Ollama's shape, kept by ``rich.progress``."""

from __future__ import annotations

import io

from pollama.cli._progress import TransferProgress

A = "sha256:1324412dfe8c" + "0" * 52
B = "sha256:8f434346648f" + "0" * 52
MB = 1_000_000


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _pull_events(progress: TransferProgress, clock: _Clock) -> None:
    progress.update({"status": "pulling manifest"})
    progress.update({"status": f"pulling {A[7:19]}", "digest": A, "total": 98 * MB, "completed": 0})
    for second, done in ((1, 10 * MB), (2, 20 * MB)):
        clock.now = second
        progress.update({"status": f"pulling {A[7:19]}", "digest": A, "total": 98 * MB, "completed": done})


def test_lines_off_a_terminal_are_printed_once_when_done() -> None:
    out = io.StringIO()
    clock = _Clock()
    with TransferProgress(out, clock=clock) as progress:
        _pull_events(progress, clock)
        assert out.getvalue() == "pulling manifest\n"  # the layer waits until it is complete
        # 78 MB left at 10 MB/s: 7s, truncated as Ollama does; the line fills 79 of 80 columns.
        assert progress.lines()[1] == "pulling 1324412dfe8c:  20% ▕███               ▏  20 MB/98 MB    10 MB/s      7s"
        assert len(progress.lines()[1]) == 79
        progress.update({"status": f"pulling {A[7:19]}", "digest": A, "total": 98 * MB, "completed": 98 * MB})
        progress.update({"status": f"pulling {B[7:19]}", "digest": B, "total": 453, "completed": 453})
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            progress.update({"status": status})
    assert out.getvalue() == (
        "pulling manifest\n"
        "pulling 1324412dfe8c: 100% ▕██████████████████▏  98 MB\n"
        "pulling 8f434346648f: 100% ▕██████████████████▏  453 B\n"
        "verifying sha256 digest\n"
        "writing manifest\n"
        "success\n"
    )


def test_create_upload_is_one_line_that_counts_up() -> None:
    out = io.StringIO()
    with TransferProgress(out) as progress:
        for percent in (0, 50, 100):
            progress.message(A, f"copying file {A} {percent}%")
        assert out.getvalue() == ""  # the line may still change
        progress.update({"status": "parsing GGUF"})
        assert out.getvalue() == f"copying file {A} 100%\nparsing GGUF\n"
        progress.update({"status": "success"})
    assert out.getvalue() == f"copying file {A} 100%\nparsing GGUF\nsuccess\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_block_is_redrawn_and_left_on_screen() -> None:
    out = _Terminal()
    clock = _Clock()
    progress = TransferProgress(out, clock=clock)
    assert progress.interactive
    with progress:
        _pull_events(progress, clock)
        progress.update({"status": "success"})
    screen = out.getvalue()
    assert "\x1b[2K" in screen  # lines erased and drawn again in place
    final = [line.rstrip() for line in screen.rsplit("\x1b[2K", 1)[-1].removesuffix("\x1b[?25h").splitlines()]
    assert final == [
        "pulling manifest",
        "pulling 1324412dfe8c:  20% ▕███               ▏  20 MB/98 MB    10 MB/s      7s",
        "success",
    ]
