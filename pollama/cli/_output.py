"""Everything the CLI prints: Ollama's tables, human sizes and times, and progress lines."""

from __future__ import annotations

import math
import sys
import time
from datetime import datetime
from typing import IO, Any


def human_bytes(n: int) -> str:
    """Ollama's ``format.HumanBytes`` (decimal units): ``98 MB``, ``4.7 GB``, ``512 B``."""
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if n >= scale:
            value = n / scale
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{n} B"


def _human_duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600 / 24 / 365)} years"


def human_time(moment: datetime | None, zero: str = "Never", *, now: datetime | None = None) -> str:
    """Ollama's ``format.HumanTime``: ``2 minutes ago``, ``4 minutes from now``, ``Forever``."""
    if moment is None:
        return zero
    current = now or datetime.now(moment.tzinfo)
    delta = (current - moment).total_seconds()
    if delta / 3600 / 24 / 365 < -20:
        return "Forever"
    if delta < 0:
        return _human_duration(-delta) + " from now"
    return _human_duration(delta) + " ago"


def parse_time(text: str) -> datetime | None:
    """Parse an RFC 3339 timestamp from the API (nanoseconds tolerated)."""
    if not text:
        return None
    main, dot, rest = text.partition(".")
    if dot:
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits):]
        text = f"{main}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def table(rows: list[list[str]], *, padding: str = "    ") -> str:
    """Rows aligned into left-justified columns separated by ``padding`` (Ollama's tables)."""
    if not rows:
        return ""
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(max(map(len, rows)))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append(padding.join(cells).rstrip())
    return "\n".join(lines) + "\n"


def section(title: str, rows: list[list[str]]) -> str:
    """A ``show`` section: ``  Title`` then rows indented under it, then a blank line."""
    return f"  {title}\n" + table([["", *row] for row in rows]) + "\n"


class ProgressPrinter:
    """Prints progress lines of create/pull/push: one line per status; on a terminal, a status
    with a total is redrawn in place as a percentage bar."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = ""
        self._open_line = False
        self._last_draw = 0.0

    def update(self, item: dict[str, Any]) -> None:
        """Show one progress object."""
        status = str(item.get("status", ""))
        total = item.get("total")
        completed = item.get("completed") or 0
        if total:
            line = f"{status} {_bar(int(completed), int(total))}"
            if self.tty:
                now = time.monotonic()
                if status == self._last and now - self._last_draw < 0.1 and completed < total:
                    return
                self._last_draw = now
                self.stream.write("\r\x1b[K" + line)
                self._open_line = True
                self._last = status
                self.stream.flush()
                return
            if status == self._last:
                return
        elif status == self._last:
            return
        else:
            line = status
        self._end_line()
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last = status

    def _end_line(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False

    def close(self) -> None:
        """Finish any line being redrawn."""
        self._end_line()
        self.stream.flush()


def _bar(completed: int, total: int, width: int = 25) -> str:
    fraction = min(max(completed / total, 0.0), 1.0) if total else 0.0
    filled = int(fraction * width)
    return f"{fraction * 100:3.0f}% ▕{'█' * filled}{' ' * (width - filled)}▏ {human_bytes(completed)}/{human_bytes(total)}"
