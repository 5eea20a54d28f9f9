"""Everything the CLI prints: Ollama's tables, human sizes and times, streamed answers, ``show``'s
metadata values (transfer progress is in ``_progress``)."""

from __future__ import annotations

import json
import math
import os
import sys
from datetime import UTC, datetime
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
        zone = rest[len(digits) :]
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


_METADATA_WIDTH = 10  # Ollama shows an array only as far as it fits in this many columns


def _as_decoded_json(value: Any) -> Any:
    """``value`` as Go holds a decoded JSON value: every number a ``float64``."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, list):
        return [_as_decoded_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_decoded_json(item) for key, item in value.items()}
    return value


def metadata_value(value: Any) -> str:
    """A ``model_info`` value as ``ollama show -v`` prints it in the Metadata section.

    Booleans ``true``/``false``, strings as they are, numbers as Go's ``%g`` of a ``float64``
    (``1e+06``), arrays as Go's ``%v`` (``[a b c]``) shortened to the items that fit in 10 columns
    (counting ``, `` between them, the first item always shown) followed by ``...+N more]``; any other
    type is printed as its Go type name, as Ollama's ``%T`` does.
    """
    from pollama.template.gofmt import sprintf

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return sprintf("%g", [float(value)])
    if isinstance(value, list):
        shown, width = 0, 1
        for i, item in enumerate(value):
            item_width = _text_width(sprintf("%v", [_as_decoded_json(item)])) + (2 if i > 0 else 0)
            if i > 0 and width + item_width > _METADATA_WIDTH:
                break
            width += item_width
            shown += 1
        text = sprintf("%v", [[_as_decoded_json(item) for item in value[:shown]]])
        if shown < len(value):
            return text.removesuffix("]") + f" ...+{len(value) - shown} more]"
        return text
    if value is None:
        return "<nil>"
    return "map[string]interface {}" if isinstance(value, dict) else type(value).__name__


def go_list(values: list[Any]) -> str:
    """Go's ``fmt.Sprint`` of a slice of numbers: ``[576 49152]`` (a tensor's shape in ``show -v``)."""
    return "[" + " ".join(str(v) for v in values) + "]"


def section(title: str, rows: list[list[str]]) -> str:
    """A ``show`` section: ``  Title`` then rows indented under it, then a blank line."""
    return f"  {title}\n" + table([["", *row] for row in rows]) + "\n"


# --- run: streamed answers, thinking, stats ----------------------------------------------------------

COLOR_GREY = "\x1b[38;5;245m"
COLOR_BOLD = "\x1b[1m"
COLOR_DEFAULT = "\x1b[0m"


def _char_width(ch: str) -> int:
    from wcwidth import wcwidth

    return max(wcwidth(ch), 0)


def _text_width(text: str) -> int:
    return sum(_char_width(ch) for ch in text)


def terminal_width(stream: IO[str]) -> int:
    """Columns of the terminal behind ``stream``; 0 when it is not a terminal (80 if it cannot say)."""
    try:
        if not stream.isatty():
            return 0
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 0


class WordWrapper:
    """Ollama's ``displayResponse``: prints streamed text, wrapping words at the terminal width - 5.

    When a character would pass the margin, the word being typed is taken back (``ESC[nD`` +
    ``ESC[K``) and printed again on a new line. Words longer than the line are broken where they are.
    Wrapping is off when ``width`` is below 10 (e.g. output is not a terminal).
    """

    def __init__(self, stream: IO[str] | None = None, width: int | None = None) -> None:
        self.stream = stream or sys.stdout
        self.width = terminal_width(self.stream) if width is None else width
        self.line_length = 0
        self.word = ""

    def reset(self) -> None:
        """Start a new block (after the thinking block closes)."""
        self.line_length = 0
        self.word = ""

    def write(self, content: str, wrap: bool = True) -> None:
        """Print ``content``, wrapped if ``wrap``."""
        if not content:
            return
        width = self.width
        if not wrap or width < 10:
            self.stream.write(content)
            self.stream.flush()
            return
        out: list[str] = []
        for ch in content:
            ch_width = _char_width(ch)
            if self.line_length + 1 > width - 5:
                word_width = _text_width(self.word)
                if word_width > width - 10:
                    # a word longer than the line: break it where it is
                    out.append(ch)
                    self.word = ""
                    self.line_length = 0
                    continue
                if word_width > 0:
                    out.append(f"\x1b[{word_width}D")
                out.append("\x1b[K\n")
                out.append(self.word + ch)
                if ch in " \t\n\r" or ch_width >= 2:
                    self.word = ""
                else:
                    self.word += ch
                self.line_length = word_width + ch_width
                continue
            out.append(ch)
            self.line_length += ch_width
            if ch_width >= 2 or ch in " \t":
                self.word = ""
            elif ch in "\n\r":
                self.line_length = 0
                self.word = ""
            else:
                self.word += ch
        self.stream.write("".join(out))
        self.stream.flush()


def thinking_opening(plain: bool) -> str:
    """``Thinking...`` line that opens a thinking block (grey bold on a terminal, then grey text)."""
    text = "Thinking...\n"
    return text if plain else COLOR_GREY + COLOR_BOLD + text + COLOR_DEFAULT + COLOR_GREY


def thinking_closing(plain: bool) -> str:
    """``...done thinking.`` and a blank line, closing a thinking block."""
    text = "...done thinking.\n\n"
    return text if plain else COLOR_GREY + COLOR_BOLD + text + COLOR_DEFAULT


def tool_calls_text(tool_calls: list[dict[str, Any]], plain: bool) -> str:
    """How Ollama's CLI shows tool calls the model made (the CLI registers no tools)."""
    explanation = values = ""
    out = ""
    if not plain:
        explanation, values = COLOR_GREY + COLOR_BOLD, COLOR_DEFAULT
        out += explanation
    for i, call in enumerate(tool_calls):
        function = call.get("function") or {}
        arguments = json.dumps(function.get("arguments") or {}, separators=(",", ":"), ensure_ascii=False)
        if i > 0:
            out += "\n"
        out += (
            f"  Model called a non-existent function '{values}{function.get('name', '')}{explanation}()' "
            f"with arguments: {values}{arguments}{explanation}"
        )
    if not plain:
        out += COLOR_DEFAULT
    return out


_STATS_LABEL = 22


def format_stats(metrics: dict[str, Any]) -> str:
    """Ollama's ``--verbose`` block for a final response's metrics; only non-zero lines are printed.

    Durations print like Go's ``time.Duration`` (``1.234567s``, ``52.3ms``) and rates with two
    decimals, labels padded to 22 columns.
    """
    from pollama.duration import format_go_duration

    def ns(key: str) -> int:
        return int(metrics.get(key) or 0)

    def line(label: str, value: str) -> str:
        return f"{label:<{_STATS_LABEL}}{value}\n"

    out = ""
    if ns("total_duration") > 0:
        out += line("total duration:", format_go_duration(ns("total_duration") / 1e9))
    if ns("load_duration") > 0:
        out += line("load duration:", format_go_duration(ns("load_duration") / 1e9))
    if ns("prompt_eval_count") > 0:
        out += line("prompt eval count:", f"{ns('prompt_eval_count')} token(s)")
    if ns("prompt_eval_duration") > 0:
        out += line("prompt eval duration:", format_go_duration(ns("prompt_eval_duration") / 1e9))
        rate = ns("prompt_eval_count") / (ns("prompt_eval_duration") / 1e9)
        out += line("prompt eval rate:", f"{rate:.2f} tokens/s")
    if ns("eval_count") > 0:
        out += line("eval count:", f"{ns('eval_count')} token(s)")
    if ns("eval_duration") > 0:
        out += line("eval duration:", format_go_duration(ns("eval_duration") / 1e9))
        rate = ns("eval_count") / (ns("eval_duration") / 1e9)
        out += line("eval rate:", f"{rate:.2f} tokens/s")
    return out


class Spinner:
    """Ollama's waiting spinner on stderr (only when stderr is a terminal), cleared when stopped."""

    _FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, stream: IO[str] | None = None) -> None:
        import threading

        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            tty = self.stream.isatty()
        except (ValueError, AttributeError):
            tty = False
        if tty:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        i = 0
        while not self._stop.wait(0.1 if i else 0.0):
            self.stream.write("\r" + self._FRAMES[i % len(self._FRAMES)] + " \x1b[K")
            self.stream.flush()
            i += 1

    def stop(self) -> None:
        """Stop spinning and clear the line (idempotent)."""
        if self._thread is None or self._stop.is_set():
            self._stop.set()
            return
        self._stop.set()
        self._thread.join()
        self.stream.write("\r\x1b[K")
        self.stream.flush()


# --- ps ------------------------------------------------------------------------------------------------


def processor_label(size: int, size_vram: int) -> str:
    """The PROCESSOR column of ``ps``: ``100% CPU``, ``100% GPU``, ``48%/52% CPU/GPU`` or ``Unknown``."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = _round_half_away((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def _round_half_away(value: float) -> int:
    """Go's ``math.Round`` (halves away from zero)."""
    return math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)


def ps_table(models: list[dict[str, Any]], prefix: str = "", *, now: datetime | None = None) -> str:
    """The ``ps`` table: ``NAME ID SIZE PROCESSOR CONTEXT UNTIL`` for ``/api/ps`` models."""
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        name = str(m.get("name", ""))
        if prefix and not name.startswith(prefix):
            continue
        size = int(m.get("size") or 0)
        expires = parse_time(str(m.get("expires_at") or ""))
        current = now or datetime.now(UTC)
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        if expires is not None and current > expires:
            until = "Stopping..."
        else:
            until = human_time(expires, "Never", now=current)
        rows.append(
            [
                name,
                str(m.get("digest", ""))[:12],
                human_bytes(size),
                processor_label(size, int(m.get("size_vram") or 0)),
                str(int(m.get("context_length") or 0)),
                until,
            ]
        )
    return table(rows)
