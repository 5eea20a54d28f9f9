"""Go's ``fmt`` verbs ``%v`` and ``%#v`` for JSON-decoded values, as Ollama prints model parameters.

Ollama reads a model's ``params`` layer into ``map[string]any``, so every number is a ``float64``
and every list is ``[]any``; ``show --modelfile`` prints values with ``%v`` and ``/api/show``'s
``parameters`` text with ``%#v``. These helpers reproduce both for the Python values ``json``
gives back (``int`` is treated as the ``float64`` Go would have).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

_LOWER_HEX = "0123456789abcdef"
_SHORT_ESCAPES = MappingProxyType({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                                   "\t": "\\t", "\v": "\\v"})


def go_float(value: float) -> str:
    """``strconv.FormatFloat(v, 'g', -1, 64)``, which is what ``%v`` prints for a ``float64``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    # repr() gives the shortest digits that round-trip, as Go's shortest formatting does.
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    point = len(digit_tuple) + int(exponent)  # decimal point position relative to digits
    exp = point - 1
    if exp < -4 or exp >= 6:  # shortest %g switches to %e at precision 6
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def go_quote(text: str) -> str:
    """``strconv.Quote``: double quotes, Go escapes, printable Unicode kept as is."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        else:
            code = ord(ch)
            if code < 0x20 or code == 0x7F:
                out.append("\\x" + _LOWER_HEX[code >> 4] + _LOWER_HEX[code & 0xF])
            elif 0xD800 <= code <= 0xDFFF:  # not a valid rune: Go prints U+FFFD
                out.append("\\ufffd")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def go_value(value: Any) -> str:
    """``fmt.Sprintf("%v", value)`` for a value decoded from JSON."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return go_float(float(value))
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{go_value(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_value(item) for item in value) + "]"
    return str(value)


def go_syntax(value: Any) -> str:
    """``fmt.Sprintf("%#v", value)`` for a value decoded from JSON."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return go_float(float(value))
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{go_quote(str(k))}:{_nested_syntax(value[k])}" for k in sorted(value))
        return "map[string]interface {}{" + items + "}"
    if isinstance(value, (list, tuple)):
        return "[]interface {}{" + ", ".join(_nested_syntax(item) for item in value) + "}"
    return go_quote(str(value))


def _nested_syntax(value: Any) -> str:
    """``%#v`` of an element inside a container, where a nil shows its interface type."""
    return "interface {}(nil)" if value is None else go_syntax(value)
