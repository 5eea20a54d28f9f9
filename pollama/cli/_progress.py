"""Progress display for transfers (pull, push, create, export, import), drawn the way Ollama draws it.

One line per status (``pulling manifest``, ``verifying sha256 digest``...) with a spinner while it
is the current step, and one bar per layer digest::

    pulling 1324412dfe8c:  45% ▕████████          ▏  44 MB/98 MB    12 MB/s      4s
    pulling 8f434346648f: 100% ▕██████████████████▏  453 B

(the bar stretches to the terminal's width; 80 columns, as above, off a terminal).

Each line is a ``rich.progress`` task: rich keeps the completed counts, measures speed and time
left, and on a terminal redraws the block in place. Only the line's text is pollama's
(``_OllamaColumn``). Off a terminal nothing is redrawn: each status is printed once and each bar
once, when its layer is done, so logs stay readable. As in Ollama, a layer's first zero-progress
line (sent before its transfer starts) is not drawn.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn, Task, TaskID
from rich.text import Text

from pollama.cli._output import human_bytes

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_LABEL_WIDTH = 20  # ``pulling <12 hex>`` and ``pushing <12 hex>``, as Ollama cuts layer labels
DEFAULT_WIDTH = 80  # Ollama's width when it cannot ask the terminal (and pollama's for logs)


def _eta(seconds: float) -> str:
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60}s"
    return f"{whole}s"


def render_line(task: Task, *, spinner: str = "", width: int = DEFAULT_WIDTH) -> str:
    """The text of one progress line: a status (with ``spinner``) or a layer bar laid out as Ollama's
    ``progress.Bar`` does: ``<label>: <percent>`` then the bar, stretched so that the line fills
    ``width`` columns, then sizes, speed and time left in fixed-width fields."""
    status = task.description
    total = int(task.total or 0)
    if not task.fields.get("bar") or total <= 0:
        return f"{status} {spinner}".rstrip()
    label = status
    if label.startswith(("pulling ", "pushing ")) and len(label) > _LABEL_WIDTH:
        label = label[:_LABEL_WIDTH]
    completed = int(task.completed)
    fraction = min(max(completed / total, 0.0), 1.0)
    head = f"{label}: {fraction * 100:3.0f}%"
    rate = task.speed or 0.0
    if completed >= total:
        tail = f"{human_bytes(total):>6}" + " " * 7 + " " * 10 + " " * 8
    else:
        tail = f"{human_bytes(completed):>6}/{human_bytes(total):<6}"
        if rate > 0:
            tail += f"  {human_bytes(int(rate)):>6}/s  {_eta((total - completed) / rate):>6}"
        else:
            tail += " " * 18
    bar_width = max(width - len(head) - len(tail) - 5, 0)
    filled = int(bar_width * fraction)
    return f"{head} ▕{'█' * filled}{' ' * (bar_width - filled)}▏ {tail}".rstrip()


class _OllamaColumn(ProgressColumn):
    """The whole line in one column; the last status line spins until the display closes."""

    def __init__(self, display: TransferProgress) -> None:
        super().__init__()
        self._display = display

    def render(self, task: Task) -> Text:
        spinning = task.id == self._display.current and not self._display.closed
        frame = _SPINNER[int(time.monotonic() * 10) % len(_SPINNER)] if spinning else ""
        line = render_line(task, spinner=frame, width=self._display.console.width)
        return Text(line, no_wrap=True, overflow="crop")


class TransferProgress:
    """Shows the progress objects of a pull/push/create stream; use as a context manager."""

    def __init__(self, stream: IO[str] | None = None, *, clock: Callable[[], float] | None = None) -> None:
        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.interactive = self.console.is_terminal
        self.closed = False
        self.current: TaskID | None = None
        self._progress = Progress(
            _OllamaColumn(self),
            console=self.console,
            auto_refresh=self.interactive,
            refresh_per_second=10,
            speed_estimate_period=5.0,
            disable=not self.interactive,
            get_time=clock,
        )
        self._by_key: dict[str, TaskID] = {}
        self._printed: set[TaskID] = set()

    def __enter__(self) -> TransferProgress:
        self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def update(self, item: dict[str, Any]) -> None:
        """Show one ``{"status", "digest"?, "total"?, "completed"?}`` object."""
        status = str(item.get("status", ""))
        digest = str(item.get("digest") or "")
        total = int(item.get("total") or 0)
        completed = int(item.get("completed") or 0)
        if digest and total and completed == 0:
            return  # the announcement before a layer's transfer starts
        key = digest or status
        task_id = self._by_key.get(key)
        if task_id is None:
            bar = bool(digest) and total > 0
            task_id = self._progress.add_task(status, total=total or None, bar=bar)
            self._by_key[key] = task_id
            self.current = None if bar else task_id  # as in Ollama, any new line stops the spinner
        self._progress.update(task_id, total=total or None, completed=completed)
        if not self.interactive:
            self._print_finished()

    def message(self, key: str, text: str) -> None:
        """Show ``text`` on the status line ``key``, replacing what it said (a spinner line whose message
        changes, like create's ``copying file <digest> 45%``). Off a terminal the line is printed once,
        with its last text, when another line follows it or the display closes."""
        task_id = self._by_key.get(key)
        if task_id is None:
            task_id = self._progress.add_task(text, total=None, bar=False, deferred=True)
            self._by_key[key] = task_id
            self.current = task_id
        else:
            self._progress.update(task_id, description=text)
        if not self.interactive:
            self._print_finished()

    def lines(self) -> list[str]:
        """The text every line shows now (without spinners)."""
        return [render_line(task) for task in self._progress.tasks]

    def _print_finished(self) -> None:
        for task in self._progress.tasks:
            if task.id in self._printed:
                continue
            if task.fields.get("bar") and task.completed < (task.total or 0):
                return  # keep the order: wait for this layer
            if task.fields.get("deferred") and task is self._progress.tasks[-1]:
                return  # its text may still change
            self.console.print(render_line(task), soft_wrap=True)
            self._printed.add(task.id)

    def close(self) -> None:
        """Stop redrawing, leaving the final state on screen (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self.interactive:
            self._progress.refresh()
            self._progress.stop()
            return
        for task in self._progress.tasks:
            if task.id not in self._printed:
                self.console.print(render_line(task), soft_wrap=True)
                self._printed.add(task.id)
