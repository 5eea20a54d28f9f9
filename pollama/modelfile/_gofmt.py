"""Go's ``fmt`` verbs ``%v`` and ``%#v`` for JSON-decoded values, as Ollama prints model parameters.

Ollama reads a model's ``params`` layer into ``map[string]any``, so every number is a ``float64``
and every list is ``[]any``; ``show --modelfile`` prints values with ``%v`` and ``/api/show``'s
``parameters`` text with ``%#v``. These helpers reproduce both for the Python values ``json``
gives back (``int`` is treated as the ``float64`` Go would have).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pollama.template.gofmt import format_float
from pollama.template.gostrconv import quote

# U+DC80..U+DCFF are how the template engine carries raw bytes; here they are just invalid characters.
_BYTE_ESCAPE = re.compile("[\udc80-\udcff]")


def go_float(value: float) -> str:
    """``strconv.FormatFloat(v, 'g', -1, 64)``, which is what ``%v`` prints for a ``float64``."""
    return format_float(value, "g", -1)


def go_quote(text: str) -> str:
    """``strconv.Quote`` of a string that came from JSON or decoded text, where every lone surrogate
    is an invalid character printed as ``\\ufffd`` (``quote`` does so for all the others)."""
    return quote(_BYTE_ESCAPE.sub("\ud800", text))


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
