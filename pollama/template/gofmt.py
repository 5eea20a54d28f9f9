"""Go's ``fmt`` printing (``Sprint``, ``Sprintln``, ``Sprintf``) and ``strconv`` float formatting.

Owns how Go values become text: the ``%v`` forms of maps, slices, structs and nil, shortest
round-trip floats, every verb with its flags, width and precision, the error markers
(``%!d(string=x)``, ``%!s(MISSING)``, ``%!(EXTRA ...)``, ``%!(NOVERB)``, ``%!v(BADINDEX)``), and
``fmt.Stringer`` handling. The structure mirrors ``fmt/print.go`` and ``fmt/format.go`` so that
flag state leaks into error markers exactly as in Go (``%.2f`` of ``3`` is ``%!f(int=03)``).
"""

from __future__ import annotations

import math
import struct
from typing import Any

from pollama.template import gostrconv
from pollama.template.values import (
    INVALID,
    GoMap,
    GoObject,
    GoSlice,
    GoStruct,
    Iface,
    NilPointer,
    Uint8,
    type_name,
)

_LDIGITS = "0123456789abcdefx"
_UDIGITS = "0123456789ABCDEFX"

# -- strconv.FormatFloat -------------------------------------------------------------------------


def _shortest_digits(x: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of ``abs(x)`` and the decimal point position."""
    r = repr(abs(x))
    if "e" in r:
        mant, e = r.split("e")
        exp = int(e)
    else:
        mant, exp = r, 0
    ip, _, fp = mant.partition(".")
    digits = ip + fp
    dp = len(ip) + exp
    stripped = digits.lstrip("0")
    dp -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    if not digits:
        dp = 0
    return digits, dp


def _fixed_digits(x: float, n: int) -> tuple[str, int]:
    """``abs(x)`` correctly rounded to ``n`` significant digits (trailing zeros trimmed)."""
    if x == 0:
        return "", 0
    s = f"{abs(x):.{n - 1}e}"
    mant, e = s.split("e")
    digits = mant.replace(".", "").rstrip("0")
    return digits, int(e) + 1


def _fmt_e(neg: bool, digits: str, dp: int, prec: int, ch: str) -> str:
    out = ["-"] if neg else []
    out.append(digits[0] if digits else "0")
    if prec > 0:
        out.append(".")
        frac = digits[1 : 1 + prec]
        out.append(frac + "0" * (prec - len(frac)))
    out.append(ch)
    exp = dp - 1 if digits else 0
    out.append("-" if exp < 0 else "+")
    exp = abs(exp)
    out.append(f"{exp:02d}")
    return "".join(out)


def _fmt_f(neg: bool, digits: str, dp: int, prec: int) -> str:
    out = ["-"] if neg else []
    if dp > 0:
        intpart = digits[:dp]
        out.append(intpart + "0" * (dp - len(intpart)))
    else:
        out.append("0")
    if prec > 0:
        out.append(".")
        for i in range(1, prec + 1):
            j = dp + i - 1
            out.append(digits[j] if 0 <= j < len(digits) else "0")
    return "".join(out)


def format_float(x: float, fmt: str, prec: int) -> str:
    """``strconv.FormatFloat(x, fmt, prec, 64)`` for fmt in e E f F g G x X b."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    neg = math.copysign(1.0, x) < 0
    if fmt in "xX":
        return _format_hex_float(x, fmt, prec)
    if fmt == "b":
        bits = struct.unpack("<Q", struct.pack("<d", x))[0]
        biased = (bits >> 52) & 0x7FF
        mant = bits & ((1 << 52) - 1)
        if biased == 0:
            exp = 1 - 1075
        else:
            mant |= 1 << 52
            exp = biased - 1075
        return f"{'-' if neg else ''}{mant}p{exp:+d}"
    shortest = prec < 0
    if shortest:
        digits, dp = _shortest_digits(x)
        if fmt in "eE":
            prec = max(len(digits) - 1, 0)
        elif fmt in "fF":
            prec = max(len(digits) - dp, 0)
        else:
            prec = len(digits)
    elif fmt in "fF":
        s = f"{abs(x):.{prec}f}"
        return ("-" + s) if neg else s
    elif fmt in "eE":
        digits, dp = _fixed_digits(x, prec + 1)
    else:
        if prec == 0:
            prec = 1
        digits, dp = _fixed_digits(x, prec)
    if fmt in "eE":
        return _fmt_e(neg, digits, dp, prec, fmt)
    if fmt in "fF":
        return _fmt_f(neg, digits, dp, prec)
    # %g / %G
    eprec = prec
    if eprec > len(digits) and len(digits) >= dp:
        eprec = len(digits)
    if shortest:
        eprec = 6
    exp = dp - 1
    if exp < -4 or exp >= eprec:
        if prec > len(digits):
            prec = len(digits)
        return _fmt_e(neg, digits, dp, prec - 1, "e" if fmt == "g" else "E")
    if prec > dp:
        prec = len(digits)
    return _fmt_f(neg, digits, dp, max(prec - dp, 0))


def _format_hex_float(x: float, fmt: str, prec: int) -> str:
    neg = math.copysign(1.0, x) < 0
    a = abs(x)
    if a == 0:
        mant, exp = 0, 0
    else:
        m, e = math.frexp(a)  # a = m * 2**e, 0.5 <= m < 1
        mant = int(m * (1 << 53))  # 53-bit integer mantissa, top bit set
        exp = e - 1
        if mant < (1 << 52):  # subnormal: normalise
            while mant < (1 << 52):
                mant <<= 1
                exp -= 1
    frac = mant & ((1 << 52) - 1)
    hexfrac = f"{frac:013x}"
    if prec < 0:
        hexfrac = hexfrac.rstrip("0")
    else:
        # round to prec hex digits (round half to even)
        if prec < 13:
            shift = (13 - prec) * 4
            full = mant
            q, r = divmod(full, 1 << shift)
            half = 1 << (shift - 1)
            if r > half or (r == half and q & 1):
                q += 1
            if q >> (53 - shift) >= 2:
                q >>= 1
                exp += 1
            frac = q & ((1 << (prec * 4)) - 1) if prec > 0 else 0
            hexfrac = f"{frac:0{prec}x}" if prec > 0 else ""
        else:
            hexfrac = hexfrac + "0" * (prec - 13)
    lead = "1" if a != 0 else "0"
    s = f"{'-' if neg else ''}0x{lead}{'.' + hexfrac if hexfrac else ''}p{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return s.upper().replace("0X", "0X") if fmt == "X" else s


# -- the printer ---------------------------------------------------------------------------------


class _Printer:
    """One ``fmt.pp``: an output buffer plus the flags of the verb being printed."""

    __slots__ = (
        "arg",
        "buf",
        "erroring",
        "good_arg_num",
        "minus",
        "plus",
        "plus_v",
        "prec",
        "prec_present",
        "reordered",
        "sharp",
        "sharp_v",
        "space",
        "value",
        "wid",
        "wid_present",
        "zero",
    )

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.clear_flags()
        self.arg: Any = None
        self.value: Any = INVALID
        self.erroring = False
        self.reordered = False
        self.good_arg_num = True

    def clear_flags(self) -> None:
        self.wid = 0
        self.prec = 0
        self.wid_present = False
        self.prec_present = False
        self.minus = False
        self.plus = False
        self.sharp = False
        self.space = False
        self.zero = False
        self.plus_v = False
        self.sharp_v = False

    def result(self) -> str:
        return "".join(self.buf)

    # -- padding (format.go) ----------------------------------------------------------------

    def write_padding(self, n: int) -> None:
        if n <= 0:
            return
        self.buf.append(("0" if self.zero and not self.minus else " ") * n)

    def pad(self, s: str) -> None:
        if not self.wid_present or self.wid == 0:
            self.buf.append(s)
            return
        width = self.wid - len(s)  # one character per rune (or per invalid byte), as Go counts
        if not self.minus:
            self.write_padding(width)
            self.buf.append(s)
        else:
            self.buf.append(s)
            self.write_padding(width)

    def pad_string(self, s: str) -> None:
        self.pad(s)

    # -- low-level formatters ----------------------------------------------------------------

    def fmt_boolean(self, v: bool) -> None:
        self.pad_string("true" if v else "false")

    def fmt_integer(self, u: int, base: int, signed: bool, verb: str, digits: str) -> None:
        negative = signed and u < 0
        if negative:
            u = -u
        elif not signed and u < 0:
            u &= (1 << 64) - 1
        prec = 0
        if self.prec_present:
            prec = self.prec
            if prec == 0 and u == 0:
                old = self.zero
                self.zero = False
                self.write_padding(self.wid)
                self.zero = old
                return
        elif self.zero and not self.minus and self.wid_present:
            prec = self.wid
            if negative or self.plus or self.space:
                prec -= 1
        if base == 10:
            s = str(u)
        elif base == 16:
            s = format(u, "x")
            if digits is _UDIGITS:
                s = s.upper()
        elif base == 8:
            s = format(u, "o")
        else:
            s = format(u, "b")
        if len(s) < prec:
            s = "0" * (prec - len(s)) + s
        if self.sharp:
            if base == 2:
                s = "0b" + s
            elif base == 8:
                if s[0] != "0":
                    s = "0" + s
            elif base == 16:
                s = "0" + digits[16] + s
        if verb == "O":
            s = "0o" + s
        if negative:
            s = "-" + s
        elif self.plus:
            s = "+" + s
        elif self.space:
            s = " " + s
        old = self.zero
        self.zero = False
        self.pad(s)
        self.zero = old

    def fmt_unicode(self, u: int) -> None:
        prec = 4
        if self.prec_present and self.prec > 4:
            prec = self.prec
        s = "U+" + format(u & ((1 << 64) - 1), "X").rjust(prec, "0")
        if self.sharp and 0 <= u <= 0x10FFFF and gostrconv.is_print(chr(u)) and not (0xD800 <= u <= 0xDFFF):
            s += " '" + chr(u) + "'"
        old = self.zero
        self.zero = False
        self.pad(s)
        self.zero = old

    def fmt_c(self, u: int) -> None:
        if u < 0 or u > 0x10FFFF or 0xD800 <= u <= 0xDFFF:
            u = 0xFFFD
        self.pad(chr(u))

    def fmt_qc(self, u: int) -> None:
        if u < 0 or u > 0x10FFFF:
            u = 0xFFFD
        self.pad(gostrconv.quote_rune(u, self.plus))

    def fmt_float(self, v: float, verb: str, prec: int) -> None:
        if self.prec_present:
            prec = self.prec
        num = format_float(v, verb, prec)
        if num[0] in "+-":
            sign, body = num[0], num[1:]
        else:
            sign, body = "+", num
        if self.space and sign == "+" and not self.plus:
            sign = " "
        if body[0] in "IN":
            old = self.zero
            self.zero = False
            if body[0] == "N" and not self.space and not self.plus:
                self.pad(body)
            else:
                self.pad(sign + body)
            self.zero = old
            return
        if self.sharp and verb != "b":
            body = self._sharp_float(body, verb, prec)
        if self.plus or sign != "+":
            if self.zero and not self.minus and self.wid_present and self.wid > len(body) + 1:
                self.buf.append(sign)
                self.write_padding(self.wid - len(body) - 1)
                self.buf.append(body)
                return
            self.pad(sign + body)
            return
        self.pad(body)

    @staticmethod
    def _sharp_float(body: str, verb: str, prec: int) -> str:
        """The ``#`` flag: always print a decimal point and keep %g's trailing zeros."""
        digits = 0
        if verb in "vgGx":
            digits = 6 if prec == -1 else prec
        tail = ""
        has_point = False
        saw_nonzero = False
        i = 0
        while i < len(body):
            c = body[i]
            if c == ".":
                has_point = True
            elif c in "pP" or (c in "eE" and verb not in "xX"):
                tail = body[i:]
                body = body[:i]
                break
            else:
                if c != "0":
                    saw_nonzero = True
                if saw_nonzero:
                    digits -= 1
            i += 1
        if not has_point:
            if body == "0":
                digits -= 1
            body += "."
        if digits > 0:
            body += "0" * digits
        return body + tail

    def fmt_s(self, s: str) -> None:
        if self.prec_present:
            s = s[: self.prec]
        self.pad_string(s)

    def fmt_sbx(self, b: bytes, digits: str) -> None:
        length = len(b)
        if self.prec_present and self.prec < length:
            length = self.prec
        width = 2 * length
        if width > 0:
            if self.space:
                if self.sharp:
                    width *= 2
                width += length - 1
            elif self.sharp:
                width += 2
        else:
            if self.wid_present:
                self.write_padding(self.wid)
            return
        if self.wid_present and self.wid > width and not self.minus:
            self.write_padding(self.wid - width)
        out = []
        if self.sharp:
            out.append("0" + digits[16])
        for i in range(length):
            if self.space and i > 0:
                out.append(" ")
                if self.sharp:
                    out.append("0" + digits[16])
            c = b[i]
            out.append(digits[c >> 4] + digits[c & 0xF])
        self.buf.append("".join(out))
        if self.wid_present and self.wid > width and self.minus:
            self.write_padding(self.wid - width)

    def fmt_q(self, s: str) -> None:
        if self.prec_present:
            s = s[: self.prec]
        if self.sharp and gostrconv.can_backquote(s):
            self.pad_string("`" + s + "`")
            return
        self.pad_string(gostrconv.quote(s, self.plus))

    # -- print.go ----------------------------------------------------------------------------

    def bad_verb(self, verb: str) -> None:
        self.erroring = True
        self.buf.append("%!" + verb + "(")
        if self.arg is not None:
            self.buf.append(type_name(self.arg) + "=")
            self.print_arg(self.arg, "v")
        elif self.value is not INVALID:
            self.buf.append(type_name(self.value) + "=")
            self.print_value(self.value, "v", 0)
        else:
            self.buf.append("<nil>")
        self.buf.append(")")
        self.erroring = False

    def fmt_bool(self, v: bool, verb: str) -> None:
        if verb in "tv":
            self.fmt_boolean(v)
        else:
            self.bad_verb(verb)

    def fmt_0x64(self, v: int, leading0x: bool) -> None:
        sharp = self.sharp
        self.sharp = leading0x
        self.fmt_integer(v, 16, False, "v", _LDIGITS)
        self.sharp = sharp

    def fmt_int(self, v: int, signed: bool, verb: str) -> None:
        if verb == "v":
            if self.sharp_v and not signed:
                self.fmt_0x64(v, True)
            else:
                self.fmt_integer(v, 10, signed, verb, _LDIGITS)
        elif verb == "d":
            self.fmt_integer(v, 10, signed, verb, _LDIGITS)
        elif verb == "b":
            self.fmt_integer(v, 2, signed, verb, _LDIGITS)
        elif verb in "oO":
            self.fmt_integer(v, 8, signed, verb, _LDIGITS)
        elif verb == "x":
            self.fmt_integer(v, 16, signed, verb, _LDIGITS)
        elif verb == "X":
            self.fmt_integer(v, 16, signed, verb, _UDIGITS)
        elif verb == "c":
            self.fmt_c(v)
        elif verb == "q":
            self.fmt_qc(v)
        elif verb == "U":
            self.fmt_unicode(v)
        else:
            self.bad_verb(verb)

    def fmt_flt(self, v: float, verb: str) -> None:
        if verb == "v":
            self.fmt_float(v, "g", -1)
        elif verb in "bgGxX":
            if self.sharp_v:
                self.fmt_float(v, "g", -1)
            else:
                self.fmt_float(v, verb, -1)
        elif verb in "feEF":
            self.fmt_float(v, "f" if verb == "F" else verb, 6)
        else:
            self.bad_verb(verb)

    def fmt_complex(self, v: complex, verb: str) -> None:
        if verb in "vbgGxXfFeE":
            old_plus = self.plus
            self.buf.append("(")
            self.fmt_flt(v.real, verb)
            self.plus = True
            self.fmt_flt(v.imag, verb)
            self.buf.append("i)")
            self.plus = old_plus
        else:
            self.bad_verb(verb)

    def fmt_string(self, v: str, verb: str) -> None:
        if verb == "v":
            if self.sharp_v:
                self.fmt_q(v)
            else:
                self.fmt_s(v)
        elif verb == "s":
            self.fmt_s(v)
        elif verb == "x":
            self.fmt_sbx(gostrconv.to_bytes(v), _LDIGITS)
        elif verb == "X":
            self.fmt_sbx(gostrconv.to_bytes(v), _UDIGITS)
        elif verb == "q":
            self.fmt_q(v)
        else:
            self.bad_verb(verb)

    def fmt_bytes(self, v: bytes, verb: str, type_string: str, is_nil: bool = False) -> None:
        if verb in "vd":
            if self.sharp_v:
                self.buf.append(type_string)
                if is_nil:
                    self.buf.append("(nil)")
                    return
                self.buf.append("{")
                for i, c in enumerate(v):
                    if i > 0:
                        self.buf.append(", ")
                    self.fmt_0x64(c, True)
                self.buf.append("}")
            else:
                self.buf.append("[")
                for i, c in enumerate(v):
                    if i > 0:
                        self.buf.append(" ")
                    self.fmt_integer(c, 10, False, verb, _LDIGITS)
                self.buf.append("]")
        elif verb == "s":
            self.fmt_s(gostrconv.from_bytes(v))
        elif verb == "x":
            self.fmt_sbx(v, _LDIGITS)
        elif verb == "X":
            self.fmt_sbx(v, _UDIGITS)
        elif verb == "q":
            self.fmt_q(gostrconv.from_bytes(v))
        else:
            self.print_value(v, verb, 0)

    def fmt_pointer(self, value: Any, verb: str) -> None:
        if verb in "vpbodxX":
            s = "0xc000010000"
            if verb == "v" and self.sharp_v:
                self.buf.append("(" + type_name(value) + ")(" + s + ")")
            else:
                self.pad(s)
        else:
            self.bad_verb(verb)

    def handle_methods(self, verb: str) -> bool:
        if self.erroring:
            return False
        arg = self.arg
        if verb == "w":
            self.bad_verb(verb)
            return True
        if self.sharp_v:
            return False
        if verb in "vsxXq" and isinstance(arg, GoObject) and arg.go_stringer:
            self.fmt_string(arg.go_string(), verb)
            return True
        return False

    def print_arg(self, arg: Any, verb: str) -> None:
        self.arg = arg
        self.value = INVALID
        if arg is None:
            if verb in "Tv":
                self.pad_string("<nil>")
            else:
                self.bad_verb(verb)
            return
        if verb == "T":
            self.fmt_s(type_name(arg))
            return
        if verb == "p":
            if (isinstance(arg, GoStruct) and arg.go_pointer) or isinstance(arg, (GoMap, GoSlice, list, dict)):
                self.fmt_pointer(arg, verb)
            else:
                self.bad_verb(verb)
            return
        if self._print_basic(arg, verb):
            return
        if type(arg) is bytes:
            self.fmt_bytes(arg, verb, "[]byte")
        elif not self.handle_methods(verb):
            self.print_value(arg, verb, 0)

    def _print_basic(self, value: Any, verb: str) -> bool:
        """Format a string, integer, bool, float, byte or complex value (the type switch Go's
        ``printArg`` and ``printValue`` share); False for any other type."""
        t = type(value)
        if t is str:
            self.fmt_string(value, verb)
        elif t is int:
            self.fmt_int(value, True, verb)
        elif t is bool:
            self.fmt_bool(value, verb)
        elif t is float:
            self.fmt_flt(value, verb)
        elif t is Uint8:
            self.fmt_int(value, False, verb)
        elif t is complex:
            self.fmt_complex(value, verb)
        else:
            return False
        return True

    def print_value(self, value: Any, verb: str, depth: int) -> None:
        if depth > 0 and value is not INVALID:
            inner = value.v if isinstance(value, Iface) else value
            if inner is not None:
                self.arg = inner
                if self.handle_methods(verb):
                    return
        self.arg = None
        self.value = value
        if self._print_basic(value, verb):
            return
        if value is INVALID:
            if depth == 0:
                self.fmt_s("<invalid reflect.Value>")
            elif verb == "v":
                self.fmt_s("<nil>")
            else:
                self.bad_verb(verb)
        elif isinstance(value, Iface):
            if value.v is None:
                if self.sharp_v:
                    self.buf.append("interface {}(nil)")
                else:
                    self.buf.append("<nil>")
            else:
                self.print_value(value.v, verb, depth + 1)
        elif isinstance(value, (dict, GoMap)):
            self._print_map(value, verb, depth)
        elif isinstance(value, GoStruct):
            if value.go_pointer:
                if depth == 0:
                    self.buf.append("&")
                    self._print_struct(value, verb, depth + 1)
                else:
                    self.fmt_pointer(value, verb)
            else:
                self._print_struct(value, verb, depth)
        elif isinstance(value, (list, bytes, GoSlice)):
            self._print_slice(value, verb, depth)
        elif isinstance(value, NilPointer):
            if verb == "v" and not self.sharp_v:
                self.pad("<nil>")
            elif verb == "v":
                self.buf.append("(" + value.go_type + ")(nil)")
            elif verb in "pbodxX":
                self.fmt_integer(0, 16, False, verb, _LDIGITS) if verb != "p" else self.pad("0x0")
            else:
                self.bad_verb(verb)
        else:
            self.buf.append("?" + type(value).__name__)

    def _print_map(self, value: Any, verb: str, depth: int) -> None:
        if isinstance(value, GoMap):
            items = value.sorted_items()
            tname, nil = value.go_type, value.items is None
        else:
            items = [(k, Iface(v) if v is not None else Iface(None)) for k, v in sorted(value.items())]
            tname, nil = "map[string]interface {}", False
        if self.sharp_v:
            self.buf.append(tname)
            if nil:
                self.buf.append("(nil)")
                return
            self.buf.append("{")
        else:
            self.buf.append("map[")
        for i, (k, v) in enumerate(items):
            if i > 0:
                self.buf.append(", " if self.sharp_v else " ")
            self.print_value(k, verb, depth + 1)
            self.buf.append(":")
            self.print_value(v, verb, depth + 1)
        self.buf.append("}" if self.sharp_v else "]")

    def _print_struct(self, value: GoStruct, verb: str, depth: int) -> None:
        if self.sharp_v:
            self.buf.append(value.go_type.lstrip("*"))
        self.buf.append("{")
        for i, (name, v) in enumerate(value.go_field_values()):
            if i > 0:
                self.buf.append(", " if self.sharp_v else " ")
            if self.plus_v or self.sharp_v:
                self.buf.append(name + ":")
            self.print_value(v, verb, depth + 1)
        self.buf.append("}")

    def _print_slice(self, value: Any, verb: str, depth: int) -> None:
        if isinstance(value, bytes):
            if verb in "sqxX":
                self.fmt_bytes(value, verb, "[]uint8")
                return
            elems: list[Any] = [Uint8(c) for c in value]
            tname, nil = "[]uint8", False
        elif isinstance(value, GoSlice):
            if verb in "sqxX" and value.go_type in ("[]uint8", "[]byte", "api.ImageData"):
                self.fmt_bytes(bytes(value.items or b""), verb, value.go_type)
                return
            elems = list(value.elems())
            tname, nil = value.go_type, value.items is None
        else:
            elems = [Iface(v) if v is not None else Iface(None) for v in value]
            tname, nil = "[]interface {}", False
        if self.sharp_v:
            self.buf.append(tname)
            if nil:
                self.buf.append("(nil)")
                return
            self.buf.append("{")
            for i, v in enumerate(elems):
                if i > 0:
                    self.buf.append(", ")
                self.print_value(v, verb, depth + 1)
            self.buf.append("}")
        else:
            self.buf.append("[")
            for i, v in enumerate(elems):
                if i > 0:
                    self.buf.append(" ")
                self.print_value(v, verb, depth + 1)
            self.buf.append("]")

    # -- Printf --------------------------------------------------------------------------------

    def arg_number(self, arg_num: int, fmt: str, i: int, num_args: int) -> tuple[int, int, bool]:
        if len(fmt) <= i or fmt[i] != "[":
            return arg_num, i, False
        self.reordered = True
        index, wid, ok = _parse_arg_number(fmt[i:])
        if ok and 0 <= index < num_args:
            return index, i + wid, True
        self.good_arg_num = False
        return arg_num, i + wid, ok

    def do_printf(self, fmt: str, a: list[Any]) -> None:
        end = len(fmt)
        arg_num = 0
        after_index = False
        self.reordered = False
        i = 0
        while i < end:
            self.good_arg_num = True
            lasti = i
            while i < end and fmt[i] != "%":
                i += 1
            if i > lasti:
                self.buf.append(fmt[lasti:i])
            if i >= end:
                break
            i += 1
            self.clear_flags()
            simple_done = False
            while i < end:
                c = fmt[i]
                if c == "#":
                    self.sharp = True
                elif c == "0":
                    self.zero = True
                elif c == "+":
                    self.plus = True
                elif c == "-":
                    self.minus = True
                elif c == " ":
                    self.space = True
                else:
                    if "a" <= c <= "z" and arg_num < len(a):
                        if c == "v":
                            self.sharp_v = self.sharp
                            self.sharp = False
                            self.plus_v = self.plus
                            self.plus = False
                        self.print_arg(a[arg_num], c)
                        arg_num += 1
                        i += 1
                        simple_done = True
                    break
                i += 1
            if simple_done:
                continue
            arg_num, i, after_index = self.arg_number(arg_num, fmt, i, len(a))
            if i < end and fmt[i] == "*":
                i += 1
                self.wid, self.wid_present, arg_num = _int_from_arg(a, arg_num)
                if not self.wid_present:
                    self.buf.append("%!(BADWIDTH)")
                if self.wid < 0:
                    self.wid = -self.wid
                    self.minus = True
                    self.zero = False
                after_index = False
            else:
                self.wid, self.wid_present, i = _parsenum(fmt, i, end)
                if after_index and self.wid_present:
                    self.good_arg_num = False
            if i + 1 < end and fmt[i] == ".":
                i += 1
                if after_index:
                    self.good_arg_num = False
                arg_num, i, after_index = self.arg_number(arg_num, fmt, i, len(a))
                if i < end and fmt[i] == "*":
                    i += 1
                    self.prec, self.prec_present, arg_num = _int_from_arg(a, arg_num)
                    if self.prec < 0:
                        self.prec = 0
                        self.prec_present = False
                    if not self.prec_present:
                        self.buf.append("%!(BADPREC)")
                    after_index = False
                else:
                    self.prec, self.prec_present, i = _parsenum(fmt, i, end)
                    if not self.prec_present:
                        self.prec = 0
                        self.prec_present = True
            if not after_index:
                arg_num, i, after_index = self.arg_number(arg_num, fmt, i, len(a))
            if i >= end:
                self.buf.append("%!(NOVERB)")
                break
            verb = fmt[i]
            i += 1
            if verb == "%":
                self.buf.append("%")
            elif not self.good_arg_num:
                self.buf.append("%!" + verb + "(BADINDEX)")
            elif arg_num >= len(a):
                self.buf.append("%!" + verb + "(MISSING)")
            elif verb == "w":
                self.bad_verb_w(a[arg_num])
                arg_num += 1
            else:
                if verb == "v":
                    self.sharp_v = self.sharp
                    self.sharp = False
                    self.plus_v = self.plus
                    self.plus = False
                self.print_arg(a[arg_num], verb)
                arg_num += 1
        if not self.reordered and arg_num < len(a):
            self.clear_flags()
            self.buf.append("%!(EXTRA ")
            for j, arg in enumerate(a[arg_num:]):
                if j > 0:
                    self.buf.append(", ")
                if arg is None:
                    self.buf.append("<nil>")
                else:
                    self.buf.append(type_name(arg) + "=")
                    self.print_arg(arg, "v")
            self.buf.append(")")

    def bad_verb_w(self, arg: Any) -> None:
        # Sprintf does not support %w: it is reported like any bad verb.
        self.arg = arg
        self.value = INVALID
        self.bad_verb("w")


def _parsenum(s: str, start: int, end: int) -> tuple[int, bool, int]:
    if start >= end:
        return 0, False, end
    num = 0
    isnum = False
    i = start
    while i < end and "0" <= s[i] <= "9":
        if num > 1_000_000:
            return 0, False, end
        num = num * 10 + ord(s[i]) - 48
        isnum = True
        i += 1
    return num, isnum, i


def _parse_arg_number(fmt: str) -> tuple[int, int, bool]:
    if len(fmt) < 3:
        return 0, 1, False
    for i in range(1, len(fmt)):
        if fmt[i] == "]":
            width, ok, newi = _parsenum(fmt, 1, i)
            if not ok or newi != i:
                return 0, i + 1, False
            return width - 1, i + 1, True
    return 0, 1, False


def _int_from_arg(a: list[Any], arg_num: int) -> tuple[int, bool, int]:
    num, is_int, new_arg_num = 0, False, arg_num
    if arg_num < len(a):
        v = a[arg_num]
        if type(v) is int or type(v) is Uint8:
            num, is_int = int(v), True
        new_arg_num = arg_num + 1
        if num > 1_000_000 or num < -1_000_000:
            num, is_int = 0, False
    return num, is_int, new_arg_num


# -- public entry points -------------------------------------------------------------------------


def sprint(args: list[Any]) -> str:
    """``fmt.Sprint``: a space between operands when neither is a string."""
    p = _Printer()
    prev_string = False
    for i, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if i > 0 and not is_string and not prev_string:
            p.buf.append(" ")
        p.print_arg(arg, "v")
        prev_string = is_string
    return p.result()


def sprintln(args: list[Any]) -> str:
    """``fmt.Sprintln``: operands always separated by spaces, then a newline."""
    p = _Printer()
    for i, arg in enumerate(args):
        if i > 0:
            p.buf.append(" ")
        p.print_arg(arg, "v")
    p.buf.append("\n")
    return p.result()


def sprintf(fmt: str, args: list[Any]) -> str:
    """``fmt.Sprintf``."""
    p = _Printer()
    p.do_printf(fmt, args)
    return p.result()


def sprint_value(value: Any) -> str:
    """``fmt.Sprint`` of one value given as a reflect-style value (used for ``%v`` of Values)."""
    p = _Printer()
    p.print_value(value, "v", 0)
    return p.result()


def format_value(value: Any, verb: str) -> str:
    """Format a reflect-style value with a bare verb (``%s`` of a ``reflect.Value``)."""
    from pollama.template.values import indirect_interface

    inner = indirect_interface(value)
    if inner is INVALID:
        return "<invalid reflect.Value>"
    return sprintf("%" + verb, [inner])
