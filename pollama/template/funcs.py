"""Template functions: Go's builtins (``text/template/funcs.go``) and Ollama's four extras.

Each function is a ``GoFunc`` that records its Go signature (parameter kinds and whether it is
variadic), because the executor converts and checks arguments the way Go's reflection does
before the call, and reports arity errors with Go's wording. Parameter kinds:

* ``"value"`` — a ``reflect.Value`` parameter: the function sees the raw value (``INVALID`` or
  ``Iface`` included);
* ``"any"`` — an ``interface{}`` parameter: interfaces are unwrapped, nil becomes ``None``;
* ``"string"`` — a ``string`` parameter.

A function fails by raising ``FuncError``; the executor reports ``error calling NAME: MSG``.
"""

from __future__ import annotations

import datetime
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pollama.template import gofmt, gojson, gostrconv
from pollama.template.values import (
    INVALID,
    GoMap,
    GoObject,
    GoSlice,
    GoStruct,
    Iface,
    SliceView,
    Uint8,
    indirect,
    indirect_interface,
    is_nil,
    kind,
    length,
    truth,
    type_name,
)

if TYPE_CHECKING:
    from pollama.template.exec import State


class FuncError(Exception):
    """A template function's error result (its ``str`` is the error text)."""


@dataclass(frozen=True, slots=True)
class GoFunc:
    """A callable with a Go signature. ``impl(state, *args)`` returns the Go result."""

    name: str
    params: tuple[str, ...]
    variadic: bool
    impl: Callable[..., Any]
    builtin: bool = False


# -- helpers -------------------------------------------------------------------------------------


def printable(v: Any) -> Any:
    """Go's ``printableValue`` for an ``any`` argument: nil prints as ``<no value>``."""
    if v is None or v is INVALID:
        return "<no value>"
    if isinstance(v, GoStruct) and v.go_pointer and not v.go_stringer:
        return Deref(v)
    return v


class Deref(GoStruct):
    """A pointer-to-struct printed as the struct itself (Go indirects pointers before printing)."""

    def __init__(self, ptr: GoStruct) -> None:
        self.ptr = ptr
        self.go_type = ptr.go_type.lstrip("*")

    def go_field_values(self) -> list[tuple[str, Any]]:
        return self.ptr.go_field_values()


def eval_args(args: tuple[Any, ...]) -> str:
    """Go's ``evalArgs``: ``fmt.Sprint`` of the arguments, each made printable."""
    if len(args) == 1 and type(args[0]) is str:
        return args[0]
    return gofmt.sprint([printable(a) for a in args])


def html_escape(s: str) -> str:
    """``template.HTMLEscapeString``."""
    if not any(c in s for c in "'\"&<>\0"):
        return s
    return (
        s.replace("&", "&amp;")
        .replace("\0", "\ufffd")
        .replace('"', "&#34;")
        .replace("'", "&#39;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )


_JS_SPECIAL = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026", "=": "\\u003D"}


def js_escape(s: str) -> str:
    """``template.JSEscapeString``."""
    out = []
    for c in s:
        if c in _JS_SPECIAL:
            out.append(_JS_SPECIAL[c])
        elif c < " ":
            out.append(f"\\u{ord(c):04X}")
        elif c < "\x80" or gostrconv.is_escaped_byte(c) or gostrconv.is_print(c):
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04X}")
    return "".join(out)


def query_escape(s: str) -> str:
    """``url.QueryEscape``."""
    return urllib.parse.quote_plus(gostrconv.to_bytes(s), safe="")


# -- builtins ------------------------------------------------------------------------------------


def _f_html(_: State, *args: Any) -> str:
    return html_escape(eval_args(args))


def _f_js(_: State, *args: Any) -> str:
    return js_escape(eval_args(args))


def _f_urlquery(_: State, *args: Any) -> str:
    return query_escape(eval_args(args))


def _f_print(_: State, *args: Any) -> str:
    return gofmt.sprint(list(args))


def _f_println(_: State, *args: Any) -> str:
    return gofmt.sprintln(list(args))


def _f_printf(_: State, fmt: str, *args: Any) -> str:
    return gofmt.sprintf(fmt, list(args))


def _index_arg(index: Any, cap: int) -> int:
    t = type(index)
    if t is int or t is Uint8:
        x = int(index)
    elif index is INVALID:
        raise FuncError("cannot index slice/array with nil")
    else:
        raise FuncError(f"cannot index slice/array with type {type_name(index)}")
    if x < 0 or x > cap:
        raise FuncError(f"index out of range: {x}")
    return x


def _element(item: Any, x: int) -> Any:
    t = type(item)
    if t is str:
        b = gostrconv.to_bytes(item)
        if x >= len(b):
            raise FuncError("reflect: string index out of range")
        return Uint8(b[x])
    if t is bytes:
        if x >= len(item):
            raise FuncError("reflect: slice index out of range")
        return Uint8(item[x])
    if isinstance(item, GoSlice):
        if x >= len(item):
            raise FuncError("reflect: slice index out of range")
        return item.elem(x)
    if x >= len(item):
        raise FuncError("reflect: slice index out of range")
    v = item[x]
    return Iface(v)


def _f_index(_: State, item: Any, *indexes: Any) -> Any:
    item = indirect_interface(item)
    if item is INVALID:
        raise FuncError("index of untyped nil")
    for index in indexes:
        index = indirect_interface(index)
        item, nil = indirect(item)
        if nil:
            raise FuncError("index of nil pointer")
        k = kind(item)
        if k in ("slice", "string"):
            x = _index_arg(index, length(item) or 0)
            item = _element(item, x)
        elif k == "map":
            if index is INVALID:
                raise FuncError("value is nil; should be of type string")
            if type(index) is not str:
                raise FuncError(f"value has type {type_name(index)}; should be string")
            if isinstance(item, GoMap):
                found, v = item.lookup(index)
                item = v if found else item.zero_elem()
            else:
                item = Iface(item[index]) if index in item else Iface(None)
        else:
            raise FuncError(f"can't index item of type {type_name(item)}")
    return item


def _capacity(item: Any) -> int:
    if isinstance(item, GoSlice):
        return item.cap
    if isinstance(item, SliceView):
        return item.cap
    return len(item)


def _subslice(item: Any, i: int, j: int, k: int | None) -> Any:
    if type(item) is str:
        return gostrconv.from_bytes(gostrconv.to_bytes(item)[i:j])
    if isinstance(item, bytes):
        return item[i:j]
    if isinstance(item, GoSlice):
        base = item.backing if item.backing is not None else (item.items or [])
        off = item.offset
        new = item.with_items(base[off + i : off + j], (k if k is not None else item.cap) - i)
        new.backing = base
        new.offset = off + i
        return new
    base = item.backing if isinstance(item, SliceView) else item
    off = item.offset if isinstance(item, SliceView) else 0
    cap = (k if k is not None else _capacity(item)) - i
    return SliceView(base[off + i : off + j], base, off + i, cap)


def _f_slice(_: State, item: Any, *indexes: Any) -> Any:
    item = indirect_interface(item)
    if item is INVALID:
        raise FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise FuncError(f"too many slice indexes: {len(indexes)}")
    k = kind(item)
    if k == "string":
        if len(indexes) == 3:
            raise FuncError("cannot 3-index slice a string")
        cap = gostrconv.byte_len(item)
    elif k == "slice":
        cap = _capacity(item)
    else:
        raise FuncError(f"can't slice item of type {type_name(item)}")
    idx = [0, length(item) or 0, 0]
    for i, index in enumerate(indexes):
        idx[i] = _index_arg(index, cap)
    if idx[0] > idx[1]:
        raise FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) < 3:
        return _subslice(item, idx[0], idx[1], None)
    if idx[1] > idx[2]:
        raise FuncError(f"invalid slice index: {idx[1]} > {idx[2]}")
    return _subslice(item, idx[0], idx[1], idx[2])


def _f_len(_: State, item: Any) -> int:
    item, nil = indirect(item)
    if nil:
        raise FuncError("len of nil pointer")
    if item is INVALID:
        raise FuncError("reflect: call of reflect.Value.Type on zero Value")
    n = length(item)
    if n is None:
        raise FuncError(f"len of type {type_name(item)}")
    return n


def _f_call(_: State, name: str, fn: Any, *args: Any) -> Any:
    fn = indirect_interface(fn)
    if fn is INVALID:
        raise FuncError("call of nil")
    raise FuncError(f"non-function {name} of type {type_name(fn)}")


def _f_not(_: State, arg: Any) -> bool:
    return not truth(arg)


def _basic_kind(v: Any) -> str | None:
    t = type(v)
    if t is bool:
        return "bool"
    if t is int:
        return "int"
    if t is Uint8:
        return "uint"
    if t is float:
        return "float"
    if t is str:
        return "string"
    if t is complex:
        return "complex"
    return None


def _comparable(v: Any) -> bool:
    if isinstance(v, (list, dict, bytes, GoSlice, GoMap)):
        return False
    if isinstance(v, GoStruct):
        return v.go_pointer or v.go_comparable
    return True


def format_reflect(v: Any, verb: str) -> str:
    """``fmt.Sprintf("%"+verb, reflectValue)``."""
    return gofmt.format_value(v, verb)


def _f_eq(_: State, arg1: Any, *arg2: Any) -> bool:
    arg1 = indirect_interface(arg1)
    if not arg2:
        raise FuncError("missing argument for comparison")
    k1 = _basic_kind(arg1)
    for arg in arg2:
        arg = indirect_interface(arg)
        k2 = _basic_kind(arg)
        result = False
        if k1 != k2:
            if k1 == "int" and k2 == "uint":
                result = arg1 >= 0 and arg1 == arg
            elif k1 == "uint" and k2 == "int":
                result = arg >= 0 and arg1 == arg
            elif arg1 is not INVALID and arg is not INVALID:
                raise FuncError(f"incompatible types for comparison: {type_name(arg1)} and {type_name(arg)}")
        elif k1 is not None:
            result = arg1 == arg
        else:
            if not (kind(arg1) == kind(arg) or arg1 is INVALID or arg is INVALID):
                raise FuncError(
                    f"non-comparable types {format_reflect(arg1, 's')}: {type_name(arg1)}, "
                    f"{type_name(arg)}: {format_reflect(arg, 'v')}"
                )
            if is_nil(arg1) or is_nil(arg):
                result = is_nil(arg) == is_nil(arg1)
            else:
                if not _comparable(arg):
                    raise FuncError(f"non-comparable type {format_reflect(arg, 's')}: {type_name(arg)}")
                result = arg1 is arg or arg1 == arg
        if result:
            return True
    return False


def _f_ne(state: State, arg1: Any, arg2: Any) -> bool:
    return not _f_eq(state, arg1, arg2)


def _f_lt(_: State, arg1: Any, arg2: Any) -> bool:
    arg1 = indirect_interface(arg1)
    k1 = _basic_kind(arg1)
    if k1 is None:
        raise FuncError("invalid type for comparison")
    arg2 = indirect_interface(arg2)
    k2 = _basic_kind(arg2)
    if k2 is None:
        raise FuncError("invalid type for comparison")
    if k1 != k2:
        if k1 == "int" and k2 == "uint":
            return bool(arg1 < 0 or arg1 < arg2)
        if k1 == "uint" and k2 == "int":
            return bool(arg2 >= 0 and arg1 < arg2)
        raise FuncError(f"incompatible types for comparison: {type_name(arg1)} and {type_name(arg2)}")
    if k1 in ("bool", "complex"):
        raise FuncError("invalid type for comparison")
    if k1 == "string":
        return (
            gostrconv.to_bytes(arg1) < gostrconv.to_bytes(arg2)
            if not (arg1.isascii() and arg2.isascii())
            else arg1 < arg2
        )
    return bool(arg1 < arg2)


def _f_le(state: State, arg1: Any, arg2: Any) -> bool:
    if _f_lt(state, arg1, arg2):
        return True
    return _f_eq(state, arg1, arg2)


def _f_gt(state: State, arg1: Any, arg2: Any) -> bool:
    return not _f_le(state, arg1, arg2)


def _f_ge(state: State, arg1: Any, arg2: Any) -> bool:
    return not _f_lt(state, arg1, arg2)


def _unreachable(_: State, *args: Any) -> Any:
    raise AssertionError("and/or are evaluated by the executor")


def _builtin(name: str, params: tuple[str, ...], variadic: bool, impl: Callable[..., Any]) -> GoFunc:
    return GoFunc(name, params, variadic, impl, builtin=True)


BUILTINS: dict[str, GoFunc] = {
    f.name: f
    for f in (
        _builtin("and", ("value", "value"), True, _unreachable),
        _builtin("call", ("value", "value"), True, _f_call),
        _builtin("html", ("any",), True, _f_html),
        _builtin("index", ("value", "value"), True, _f_index),
        _builtin("slice", ("value", "value"), True, _f_slice),
        _builtin("js", ("any",), True, _f_js),
        _builtin("len", ("value",), False, _f_len),
        _builtin("not", ("value",), False, _f_not),
        _builtin("or", ("value", "value"), True, _unreachable),
        _builtin("print", ("any",), True, _f_print),
        _builtin("printf", ("string", "any"), True, _f_printf),
        _builtin("println", ("any",), True, _f_println),
        _builtin("urlquery", ("any",), True, _f_urlquery),
        _builtin("eq", ("value", "value"), True, _f_eq),
        _builtin("ge", ("value", "value"), False, _f_ge),
        _builtin("gt", ("value", "value"), False, _f_gt),
        _builtin("le", ("value", "value"), False, _f_le),
        _builtin("lt", ("value", "value"), False, _f_lt),
        _builtin("ne", ("value", "value"), False, _f_ne),
    )
}

# -- Ollama's functions --------------------------------------------------------------------------


def _today(state: State) -> datetime.date:
    now = state.now
    if now is None:
        return datetime.date.today()
    if isinstance(now, datetime.datetime):
        return now.date()
    return now


def _f_json(_: State, v: Any) -> str:
    try:
        return gojson.marshal(v)
    except gojson.UnsupportedValue:
        return ""


def _f_current_date(state: State, *args: str) -> str:
    return _today(state).isoformat()


def _f_yesterday_date(state: State, *args: str) -> str:
    return (_today(state) - datetime.timedelta(days=1)).isoformat()


def _f_to_typescript_type(_: State, v: Any) -> str:
    if isinstance(v, GoObject) and v.go_type in ("api.ToolProperty", "*api.ToolProperty"):
        method = v.go_method("ToTypeScriptType")
        if method is not None:
            return str(method())
    return "any"


OLLAMA_FUNCS: dict[str, GoFunc] = {
    f.name: f
    for f in (
        GoFunc("json", ("any",), False, _f_json),
        GoFunc("currentDate", ("string",), True, _f_current_date),
        GoFunc("yesterdayDate", ("string",), True, _f_yesterday_date),
        GoFunc("toTypeScriptType", ("any",), False, _f_to_typescript_type),
    )
}
