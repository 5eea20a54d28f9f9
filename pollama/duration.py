"""Go durations and Ollama's ``keep_alive`` values.

Ollama reads durations with Go's ``time.ParseDuration`` (``"5m"``, ``"1h30m"``, ``"-1s"``, ``"0"``)
and its ``keep_alive`` field accepts either such a string or a number of seconds; any negative value
means "keep loaded forever". This module turns both into seconds (``math.inf`` for forever) and
formats seconds back the way Go prints a ``time.Duration``.
"""

from __future__ import annotations

import math
import re

from pollama.errors import InvalidRequest

FOREVER = math.inf

# Go's time.Duration is an int64 of nanoseconds: nothing longer exists in Ollama. A longer keep_alive is
# clamped to "forever" (Ollama's own forever is this same maximum), so no expiry instant can overflow a
# datetime (``/api/ps`` renders every expiry).
MAX_DURATION_NS = 2**63 - 1
MAX_SECONDS = MAX_DURATION_NS / 1e9

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_COMPONENT = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def _go_quote(s: str) -> str:
    """Quote ``s`` the way Go's ``strconv.Quote`` does for the ASCII cases that matter here."""
    out = []
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def parse_go_duration(text: str) -> int:
    """Parse a Go duration string into integer nanoseconds, raising ``ValueError`` with Go's message."""
    orig = text
    quoted = _go_quote(orig)
    neg = False
    if text and text[0] in "+-":
        neg = text[0] == "-"
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0
    while text:
        m = _COMPONENT.match(text)
        assert m is not None
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise ValueError(f"time: invalid duration {quoted}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _UNITS_NS:
            raise ValueError(f"time: unknown unit {_go_quote(unit)} in duration {quoted}")
        scale = _UNITS_NS[unit]
        value = int(whole or "0") * scale
        if frac:
            value += int(int(frac) * scale / (10 ** len(frac)))
        total += value
        if total > 2**63 - 1:
            raise ValueError(f"time: invalid duration {quoted}")
        text = text[m.end() :]
    return -total if neg else total


def format_go_duration(seconds: float) -> str:
    """Format seconds as Go's ``time.Duration.String()`` would (``"1m30s"``, ``"1.5s"``, ``"0s"``)."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(ns / 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(ns / 1_000_000)}ms"
    hours, rem = divmod(ns, 3600 * 1_000_000_000)
    minutes, rem = divmod(rem, 60 * 1_000_000_000)
    secs = rem / 1e9
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    out += f"{_trim(secs)}s"
    return out


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def keep_alive_seconds(value: object) -> float | None:
    """Turn a request's ``keep_alive`` into seconds: ``None`` if absent, ``FOREVER`` if negative.

    Numbers are seconds; strings are Go durations (a bare ``"300"`` is an error, as in Ollama).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest(f"Unsupported type: '{type(value).__name__}'")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float: as long as a duration can be
            seconds = MAX_SECONDS if value > 0 else -MAX_SECONDS
        if math.isnan(seconds):
            raise InvalidRequest("json: cannot unmarshal number NaN into Go value of type float64")
    elif isinstance(value, str):
        try:
            seconds = parse_go_duration(value) / 1e9
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    else:
        raise InvalidRequest(f"Unsupported type: '{type(value).__name__}'")
    return FOREVER if seconds < 0 or seconds >= MAX_SECONDS else seconds
