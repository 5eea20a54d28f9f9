"""Go's ``encoding/json.Marshal`` for the values templates see.

Owns JSON text as Go writes it: sorted map keys, HTML-safe escaping of ``<`` ``>`` ``&`` and
U+2028/U+2029, Go's float format (plain decimals from 1e-6 up to 1e21, exponent form outside,
``e-7`` not ``e-07``), base64 for byte slices, and ``null`` for nil. Named Go types supply their
own encoding through ``GoObject.go_json``. Unsupported values (NaN, infinities, complex numbers)
raise ``UnsupportedValue``, which the ``json`` template function turns into ``""``.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

from pollama.template.gofmt import format_float
from pollama.template.values import INVALID, GoObject, Iface

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


class UnsupportedValue(ValueError):
    """``json: unsupported value``/``unsupported type``."""


def encode_string(s: str) -> str:
    """A Go JSON string literal with HTML escaping."""
    out = json.dumps(s, ensure_ascii=False)
    if "<" in out:
        out = out.replace("<", "\\u003c")
    if ">" in out:
        out = out.replace(">", "\\u003e")
    if "&" in out:
        out = out.replace("&", "\\u0026")
    if not out.isascii():
        out = out.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        out = _ESCAPED_BYTE.sub("\\\\ufffd", out)
    return out


def encode_float(f: float) -> str:
    """Go's JSON float encoding."""
    if math.isnan(f) or math.isinf(f):
        raise UnsupportedValue(f"json: unsupported value: {format_float(f, 'g', -1)}")
    a = abs(f)
    fmt = "f"
    if a != 0 and (a < 1e-6 or a >= 1e21):
        fmt = "e"
    s = format_float(f, fmt, -1)
    if fmt == "e":
        n = len(s)
        if n >= 4 and s[n - 4] == "e" and s[n - 3] == "-" and s[n - 2] == "0":
            s = s[: n - 2] + s[n - 1]
    return s


def marshal(v: Any) -> str:
    """``json.Marshal(v)`` as text."""
    if v is None or v is INVALID:
        return "null"
    t = type(v)
    if t is str:
        return encode_string(v)
    if t is bool:
        return "true" if v else "false"
    if t is float:
        return encode_float(v)
    if t is dict:
        return "{" + ",".join(encode_string(k) + ":" + marshal(v[k]) for k in sorted(v)) + "}"
    if t is list:
        return "[" + ",".join(marshal(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, Iface):
        return marshal(v.v)
    if isinstance(v, bytes):
        return '"' + base64.b64encode(v).decode("ascii") + '"'
    if isinstance(v, GoObject):
        return v.go_json()
    if isinstance(v, list):
        return "[" + ",".join(marshal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(encode_string(k) + ":" + marshal(v[k]) for k in sorted(v)) + "}"
    raise UnsupportedValue(f"json: unsupported type: {type(v).__name__}")
