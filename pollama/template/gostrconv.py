"""The parts of Go's ``strconv`` the template engine depends on, with Go's exact rules.

Owns: integer and float parsing with Go literal syntax (base prefixes, underscores, hex floats),
``Unquote``/``UnquoteChar`` for template string and character literals, ``Quote``/``QuoteRune``
for ``%q``, and Go's rune classification (``IsPrint``). Go strings are byte strings; here they are
Python ``str`` whose non-UTF-8 bytes are carried as ``surrogateescape`` code points, so
``to_bytes``/``from_bytes`` convert losslessly.
"""

from __future__ import annotations

import math
import re

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1


class SyntaxErr(ValueError):
    """``strconv.ErrSyntax``: the message is Go's ``invalid syntax``."""

    def __init__(self) -> None:
        super().__init__("invalid syntax")


def to_bytes(s: str) -> bytes:
    """The Go byte string behind ``s``."""
    return s.encode("utf-8", "surrogateescape")


def from_bytes(b: bytes) -> str:
    """A Go byte string as ``str`` (invalid UTF-8 kept as surrogate escapes)."""
    return b.decode("utf-8", "surrogateescape")


def byte_len(s: str) -> int:
    """``len(s)`` in Go: the number of bytes."""
    return len(s) if s.isascii() else len(to_bytes(s))


def is_escaped_byte(c: str) -> bool:
    """Whether ``c`` stands for a single invalid UTF-8 byte (a surrogate escape)."""
    return "\udc80" <= c <= "\udcff"


def is_print(c: str) -> bool:
    """Go's ``strconv.IsPrint``: letters, marks, numbers, punctuation, symbols and ASCII space."""
    if c == " ":
        return True
    if len(c) != 1 or 0xD800 <= ord(c) <= 0xDFFF:
        return False
    return c.isprintable()


_GO_SPACES = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def trim_space(s: str) -> str:
    """Go's ``strings.TrimSpace``: strip Unicode white space (``unicode.IsSpace``) at both ends."""
    return s.strip(_GO_SPACES)


# -- numbers -------------------------------------------------------------------------------------


def underscore_ok(s: str) -> bool:
    """Go's ``underscoreOK``: each ``_`` in a number literal sits between digits (or after a base prefix)."""
    saw = "^"
    i = 0
    if s[:1] in ("-", "+"):
        s = s[1:]
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "box":
        i = 2
        saw = "0"
        hexa = s[1].lower() == "x"
    while i < len(s):
        c = s[i]
        if "0" <= c <= "9" or (hexa and "a" <= c.lower() <= "f"):
            saw = "0"
        elif c == "_":
            if saw != "0":
                return False
            saw = "_"
        else:
            if saw == "_":
                return False
            saw = "!"
        i += 1
    return saw != "_"


def parse_uint(s: str) -> int:
    """``strconv.ParseUint(s, 0, 64)``; raises ``ValueError`` on syntax or range errors."""
    if not s:
        raise SyntaxErr()
    base = 10
    body = s
    if s[0] == "0":
        if len(s) >= 3 and s[1].lower() == "b":
            base, body = 2, s[2:]
        elif len(s) >= 3 and s[1].lower() == "o":
            base, body = 8, s[2:]
        elif len(s) >= 3 and s[1].lower() == "x":
            base, body = 16, s[2:]
        else:
            base, body = 8, s[1:]
    if "_" in s and not underscore_ok(s):
        raise SyntaxErr()
    body = body.replace("_", "")
    if base == 8 and body == "" and s == "0":
        return 0
    if not body:
        raise SyntaxErr()
    digits = "0123456789abcdef"[:base]
    for c in body.lower():
        if c not in digits:
            raise SyntaxErr()
    value = int(body, base)
    if value > _UINT64_MAX:
        raise ValueError("value out of range")
    return value


def parse_int(s: str) -> int:
    """``strconv.ParseInt(s, 0, 64)``."""
    if not s:
        raise SyntaxErr()
    neg = False
    body = s
    if s[0] in "+-":
        neg = s[0] == "-"
        body = s[1:]
    u = parse_uint(body)
    value = -u if neg else u
    if value < _INT64_MIN or value > _INT64_MAX:
        raise ValueError("value out of range")
    return value


_DEC_FLOAT = re.compile(r"[+-]?(?:[0-9_]+\.?[0-9_]*|\.[0-9_]+)(?:[eE][+-]?[0-9_]+)?\Z")
_HEX_FLOAT = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F_]+\.?[0-9a-fA-F_]*|\.[0-9a-fA-F_]+)[pP][+-]?[0-9_]+\Z")
_SPECIAL_FLOAT = re.compile(r"[+-]?(?:inf|infinity|nan)\Z", re.IGNORECASE)


def parse_float(s: str) -> float:
    """``strconv.ParseFloat(s, 64)``: Go literal syntax; out-of-range values are errors."""
    if _SPECIAL_FLOAT.match(s):
        if s.lower().lstrip("+-").startswith("nan"):
            if s[0] in "+-":
                raise SyntaxErr()
            return math.nan
        return -math.inf if s[0] == "-" else math.inf
    if _HEX_FLOAT.match(s):
        if "_" in s and not underscore_ok(s):
            raise SyntaxErr()
        body = s.replace("_", "")
        sign = -1.0 if body[0] == "-" else 1.0
        body = body.lstrip("+-")
        try:
            value = float.fromhex(body)
        except OverflowError:
            raise ValueError("value out of range") from None
        return sign * value
    if not _DEC_FLOAT.match(s) or not any(c.isdigit() for c in s):
        raise SyntaxErr()
    if "_" in s and not underscore_ok(s):
        raise SyntaxErr()
    value = float(s.replace("_", ""))
    if math.isinf(value):
        raise ValueError("value out of range")
    return value


# -- quoting -------------------------------------------------------------------------------------

_SIMPLE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _append_escaped_rune(out: list[str], c: str, quote: str, ascii_only: bool) -> None:
    if c == quote or c == "\\":
        out.append("\\" + c)
        return
    if is_escaped_byte(c):
        out.append(f"\\x{ord(c) - 0xDC00:02x}")
        return
    cp = ord(c)
    if ascii_only:
        if cp < 0x80 and is_print(c):
            out.append(c)
            return
    elif is_print(c):
        out.append(c)
        return
    if c in _SIMPLE_ESCAPES:
        out.append(_SIMPLE_ESCAPES[c])
    elif cp < 0x20 or cp == 0x7F:
        out.append(f"\\x{cp:02x}")
    elif 0xD800 <= cp <= 0xDFFF or cp > 0x10FFFF:
        out.append("\\ufffd")
    elif cp < 0x10000:
        out.append(f"\\u{cp:04x}")
    else:
        out.append(f"\\U{cp:08x}")


def quote(s: str, ascii_only: bool = False) -> str:
    """``strconv.Quote`` (or ``QuoteToASCII``)."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    out = ['"']
    for c in s:
        _append_escaped_rune(out, c, '"', ascii_only)
    out.append('"')
    return "".join(out)


def quote_rune(cp: int, ascii_only: bool = False) -> str:
    """``strconv.QuoteRune``: invalid code points become U+FFFD."""
    if cp < 0 or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        cp = 0xFFFD
    out = ["'"]
    _append_escaped_rune(out, chr(cp), "'", ascii_only)
    out.append("'")
    return "".join(out)


def can_backquote(s: str) -> bool:
    """``strconv.CanBackquote``."""
    for c in s:
        if c == "`" or c == "\ufeff" or is_escaped_byte(c):
            return False
        if c < " " and c != "\t":
            return False
        if c == "\x7f":
            return False
    return True


def unquote_char(s: str, i: int, quote_char: str) -> tuple[int, bool, int]:
    """``strconv.UnquoteChar`` on ``s[i:]``: (value, is_byte, next index)."""
    if i >= len(s):
        raise SyntaxErr()
    c = s[i]
    if c == quote_char and quote_char in "'\"":
        raise SyntaxErr()
    if c != "\\":
        if is_escaped_byte(c):
            return ord(c) - 0xDC00, True, i + 1
        return ord(c), False, i + 1
    if i + 1 >= len(s):
        raise SyntaxErr()
    c = s[i + 1]
    i += 2
    simple = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}
    if c in simple:
        return simple[c], False, i
    if c in "xuU":
        n = {"x": 2, "u": 4, "U": 8}[c]
        digits = s[i : i + n]
        if len(digits) < n or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise SyntaxErr()
        value = int(digits, 16)
        i += n
        if c == "x":
            return value, True, i
        if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
            raise SyntaxErr()
        return value, False, i
    if "0" <= c <= "7":
        digits = s[i - 1 : i + 2]
        if len(digits) < 3 or any(d not in "01234567" for d in digits):
            raise SyntaxErr()
        value = int(digits, 8)
        if value > 255:
            raise SyntaxErr()
        return value, True, i + 2
    if c in "'\"":
        if c != quote_char:
            raise SyntaxErr()
        return ord(c), False, i
    raise SyntaxErr()


def unquote(s: str) -> str:
    """``strconv.Unquote`` for the two string literal forms templates allow."""
    if len(s) < 2:
        raise SyntaxErr()
    q = s[0]
    if q != s[-1]:
        raise SyntaxErr()
    body = s[1:-1]
    if q == "`":
        if "`" in body:
            raise SyntaxErr()
        return body.replace("\r", "")
    if q != '"':
        raise SyntaxErr()
    if "\\" not in body and '"' not in body and "\n" not in body:
        return body
    if "\n" in body:
        raise SyntaxErr()
    buf = bytearray()
    i = 0
    while i < len(body):
        value, is_byte, i = unquote_char(body, i, '"')
        if is_byte:
            buf.append(value)
        else:
            buf.extend(chr(value).encode("utf-8", "surrogatepass"))
    return from_bytes(bytes(buf))
