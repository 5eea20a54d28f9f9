"""Progress display for transfers (pull, push, export, import), drawn the way Ollama draws it.

One line per status (``pulling manifest``, ``verifying sha256 digest``...) with a spinner while it
is the current step, and one bar per layer digest::

    pulling 1324412dfe8c:  45% ▕███████████             ▏  44 MB/98 MB   12 MB/s      4s
    pulling 8f434346648f: 100% ▕████████████████████████▏  453 B

On a terminal the block is redrawn in place (``rich.live``); otherwise each status is printed once
and each bar once, when its layer is done, so logs stay readable. As in Ollama, a layer's first
zero-progress line (sent before its download starts) is not drawn.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from pollama.cli._output import human_bytes

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_BAR_WIDTH = 24


@dataclass
class _Line:
    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0
    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, int]] = field(default_factory=list)
    printed: bool = False

    @property
    def is_bar(self) -> bool:
        return bool(self.digest) and self.total > 0

    @property
    def done(self) -> bool:
        return self.is_bar and self.completed >= self.total

    def rate(self) -> float:
        """Bytes per second over the last few seconds."""
        if len(self.samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def render(self, spinner: str = "") -> str:
        if not self.is_bar:
            return f"{self.status} {spinner}".rstrip()
        label = self.status
        if label.startswith(("pulling ", "pushing ")) and len(label) > 20:
            label = label[:20]
        fraction = min(max(self.completed / self.total, 0.0), 1.0)
        filled = int(fraction * _BAR_WIDTH)
        bar = f"▕{'█' * filled}{' ' * (_BAR_WIDTH - filled)}▏"
        head = f"{label}: {fraction * 100:3.0f}% {bar}"
        if self.done:
            return f"{head} {human_bytes(self.total):>7}"
        sizes = f"{human_bytes(self.completed)}/{human_bytes(self.total)}"
        rate = self.rate()
        speed = f"{human_bytes(int(rate))}/s" if rate > 0 else ""
        eta = _eta((self.total - self.completed) / rate) if rate > 0 else ""
        return f"{head} {sizes:>15} {speed:>10} {eta:>7}".rstrip()


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds}s"


class TransferProgress:
    """Shows the progress objects of a pull/push stream; use as a context manager."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.interactive = self.console.is_terminal
        self.lines: list[_Line] = []
        self._by_key: dict[str, _Line] = {}
        self._live: Live | None = None
        self._final = False

    def __enter__(self) -> TransferProgress:
        if self.interactive:
            self._live = Live(self, console=self.console, refresh_per_second=10, transient=False)
            self._live.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __rich__(self) -> Group:
        frame = _SPINNER[int(time.monotonic() * 10) % len(_SPINNER)]
        rendered = []
        for i, line in enumerate(self.lines):
            current = i == len(self.lines) - 1 and not self._final
            rendered.append(Text(line.render(frame if current and not line.is_bar else "")))
        return Group(*rendered)

    def update(self, item: dict[str, Any]) -> None:
        """Show one ``{"status", "digest"?, "total"?, "completed"?}`` object."""
        status = str(item.get("status", ""))
        digest = str(item.get("digest") or "")
        total = int(item.get("total") or 0)
        completed = int(item.get("completed") or 0)
        if digest and total and completed == 0:
            return  # the announcement before a layer's transfer starts
        key = digest or status
        line = self._by_key.get(key)
        if line is None:
            line = _Line(status, digest, total)
            self._by_key[key] = line
            self.lines.append(line)
        line.total = total or line.total
        line.completed = completed
        now = time.monotonic()
        line.samples.append((now, completed))
        while len(line.samples) > 2 and now - line.samples[0][0] > 5:
            line.samples.pop(0)
        if self._live is None:
            self._print_finished()

    def _print_finished(self) -> None:
        for line in self.lines:
            if line.printed:
                continue
            if line.is_bar and not line.done:
                return  # keep the order: wait for this layer
            self.console.print(line.render(), soft_wrap=True)
            line.printed = True

    def close(self) -> None:
        """Stop redrawing, leaving the final state on screen."""
        self._final = True
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None
            return
        for line in self.lines:
            if not line.printed:
                self.console.print(line.render(), soft_wrap=True)
                line.printed = True
