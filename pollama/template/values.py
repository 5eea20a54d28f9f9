"""Go values as the template engine sees them: a small model of Go's ``reflect.Value``.

Owns the mapping between Python objects and Go types:

* ``INVALID`` is the zero ``reflect.Value`` (what Go prints as ``<no value>``).
* ``Iface(x)`` is a value whose static type is ``interface {}`` (a map element, a list element,
  an ``any`` struct field); ``Iface(None)`` is a nil interface. Go digs one level into such values
  at the end of every pipeline, and names them ``interface {}`` in error messages.
* Plain Python values are concrete Go values: ``str`` is ``string``, ``bool``, ``int``, ``float``
  (``float64``), ``complex`` (``complex128``), ``Uint8`` (``uint8``), ``list`` (``[]interface {}``),
  ``dict`` (``map[string]interface {}``), ``bytes`` (``[]uint8``). ``None`` appears only as the
  nil interface inside containers and as an untyped-nil function argument.
* ``GoStruct``, ``GoSlice`` and ``GoMap`` carry named Go types (structs, pointers to structs,
  typed slices and maps, possibly nil), with optional methods, ``String()`` and JSON encodings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


class _Invalid:
    """The zero ``reflect.Value``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "INVALID"

    def __bool__(self) -> bool:
        return False


INVALID: Any = _Invalid()


class Iface:
    """A value held in a Go ``interface {}`` slot; ``v is None`` means a nil interface."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __repr__(self) -> str:
        return f"Iface({self.v!r})"


NIL_IFACE = Iface(None)


def iface(v: Any) -> Iface:
    """Wrap a container element of static type ``interface {}``."""
    return NIL_IFACE if v is None else Iface(v)


class Uint8(int):
    """A Go ``uint8`` (a byte from indexing a string or byte slice)."""

    __slots__ = ()


class SliceView(list):  # type: ignore[type-arg]
    """A ``[]interface {}`` made by slicing: remembers Go's capacity (the rest of the backing array)."""

    __slots__ = ("backing", "cap", "offset")

    def __init__(self, items: list[Any], backing: list[Any], offset: int, cap: int) -> None:
        super().__init__(items)
        self.backing = backing
        self.offset = offset
        self.cap = cap


class GoObject:
    """Base of every named Go value. Subclasses set ``go_type`` and ``go_kind``."""

    go_type: str = ""
    go_kind: str = ""
    # Go method name -> Python attribute name. Methods take positional Go values.
    go_methods: ClassVar[dict[str, str]] = {}
    # Whether the type implements fmt.Stringer (then ``go_string`` is its ``String()``).
    go_stringer: ClassVar[bool] = False
    go_comparable: ClassVar[bool] = False

    def go_string(self) -> str:
        raise NotImplementedError

    def go_json(self) -> str:
        """The value's ``encoding/json`` form (already encoded)."""
        raise NotImplementedError

    def go_method(self, name: str) -> Callable[..., Any] | None:
        attr = self.go_methods.get(name)
        return getattr(self, attr) if attr else None


class GoStruct(GoObject):
    """A Go struct value, or (``go_pointer``) a non-nil pointer to one.

    Subclasses list ``go_fields`` in declaration order and the fields whose static type is
    ``interface {}`` in ``go_iface_fields``; field values live in same-named attributes.
    """

    go_fields: ClassVar[tuple[str, ...]] = ()
    go_iface_fields: ClassVar[frozenset[str]] = frozenset()
    go_pointer: ClassVar[bool] = False

    @property
    def go_kind(self) -> str:  # type: ignore[override]
        return "ptr" if self.go_pointer else "struct"

    def go_field(self, name: str) -> tuple[bool, Any]:
        """(found, value) of an exported field, interface fields wrapped in ``Iface``."""
        if name not in self.go_fields:
            return False, INVALID
        value = getattr(self, name)
        if name in self.go_iface_fields:
            return True, iface(value)
        return True, value

    def go_field_values(self) -> list[tuple[str, Any]]:
        return [(name, self.go_field(name)[1]) for name in self.go_fields]


class GoSlice(GoObject):
    """A typed Go slice; ``items is None`` is a nil slice."""

    go_kind = "slice"

    def __init__(self, go_type: str, items: list[Any] | None, elem_iface: bool = False, cap: int | None = None) -> None:
        self.go_type = go_type
        self.items = items
        self.elem_iface = elem_iface
        self.cap = cap if cap is not None else len(self)
        self.backing: list[Any] | None = None  # set on re-slices: the array the items live in
        self.offset = 0

    def __len__(self) -> int:
        return 0 if self.items is None else len(self.items)

    def elem(self, i: int) -> Any:
        assert self.items is not None
        v = self.items[i]
        return iface(v) if self.elem_iface else v

    def elems(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self.elem(i)

    def with_items(self, items: list[Any], cap: int) -> GoSlice:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.items = items
        new.cap = cap
        return new

    def go_json(self) -> str:
        from pollama.template.gojson import marshal

        if self.items is None:
            return "null"
        return "[" + ",".join(marshal(v) for v in self.items) + "]"


class GoMap(GoObject):
    """A typed Go map with string keys; ``items is None`` is a nil map."""

    go_kind = "map"

    def __init__(
        self,
        go_type: str,
        items: dict[str, Any] | None,
        elem_iface: bool = False,
        zero: Callable[[], Any] | None = None,
    ) -> None:
        self.go_type = go_type
        self.items = items
        self.elem_iface = elem_iface
        self.zero = zero

    def __len__(self) -> int:
        return 0 if self.items is None else len(self.items)

    def lookup(self, key: str) -> tuple[bool, Any]:
        if self.items is None or key not in self.items:
            return False, INVALID
        v = self.items[key]
        return True, (iface(v) if self.elem_iface else v)

    def zero_elem(self) -> Any:
        if self.elem_iface:
            return NIL_IFACE
        return self.zero() if self.zero else INVALID

    def sorted_items(self) -> list[tuple[str, Any]]:
        if not self.items:
            return []
        return [(k, iface(v) if self.elem_iface else v) for k, v in sorted(self.items.items())]

    def go_json(self) -> str:
        from pollama.template.gojson import marshal

        if self.items is None:
            return "null"
        return marshal(self.items)


class NilPointer(GoObject):
    """A nil pointer of a named type (``*api.ToolPropertiesMap(nil)``): false, prints ``<nil>``.

    ``methods`` maps Go method names to callables that accept a nil receiver.
    """

    go_kind = "ptr"

    def __init__(self, go_type: str, methods: dict[str, Callable[..., Any]] | None = None) -> None:
        self.go_type = go_type
        self._nil_methods = methods or {}

    def go_method(self, name: str) -> Callable[..., Any] | None:
        return self._nil_methods.get(name)

    def go_json(self) -> str:
        return "null"


# -- type names and kinds ------------------------------------------------------------------------


def type_name(v: Any) -> str:
    """``reflect.TypeOf(v).String()`` for a concrete value (``<nil>`` for nil)."""
    if v is None:
        return "<nil>"
    t = type(v)
    if t is str:
        return "string"
    if t is bool:
        return "bool"
    if t is int:
        return "int"
    if t is float:
        return "float64"
    if t is Uint8:
        return "uint8"
    if t is list:
        return "[]interface {}"
    if t is dict:
        return "map[string]interface {}"
    if t is bytes:
        return "[]uint8"
    if t is complex:
        return "complex128"
    if isinstance(v, Iface):
        return "interface {}"
    if isinstance(v, GoObject):
        return v.go_type
    if isinstance(v, list):
        return "[]interface {}"
    if isinstance(v, bytes):
        return str(getattr(v, "go_type", "[]uint8"))
    if isinstance(v, int):
        return "int"
    return type(v).__name__


def kind(v: Any) -> str:
    """The Go ``reflect.Kind`` of a value, as a lower-case name."""
    t = type(v)
    if t is str:
        return "string"
    if t is bool:
        return "bool"
    if t is int:
        return "int"
    if t is float:
        return "float64"
    if t is Uint8:
        return "uint8"
    if t is list or t is bytes:
        return "slice"
    if t is dict:
        return "map"
    if t is complex:
        return "complex128"
    if v is INVALID:
        return "invalid"
    if isinstance(v, Iface):
        return "interface"
    if isinstance(v, GoObject):
        return v.go_kind
    if isinstance(v, (list, bytes)):
        return "slice"
    return "invalid"


def indirect_interface(v: Any) -> Any:
    """Go's ``indirectInterface``: the concrete value in an interface, or ``INVALID`` if nil."""
    if isinstance(v, Iface):
        return INVALID if v.v is None else v.v
    return v


def indirect(v: Any) -> tuple[Any, bool]:
    """Go's ``indirect``: follow interfaces and pointers; ``(value, is_nil)``."""
    while True:
        if isinstance(v, Iface):
            if v.v is None:
                return v, True
            v = v.v
            continue
        if isinstance(v, NilPointer):
            return v, True
        return v, False


def is_nil(v: Any) -> bool:
    """Go's ``isNil`` in ``funcs.go``: invalid, or a nil chan/func/interface/map/pointer/slice."""
    if v is INVALID:
        return True
    if isinstance(v, Iface):
        return v.v is None
    if isinstance(v, (GoSlice, GoMap)):
        return v.items is None
    return isinstance(v, NilPointer)


def length(v: Any) -> int | None:
    """``Value.Len()`` for strings, slices and maps (bytes for strings); ``None`` otherwise."""
    t = type(v)
    if t is str:
        from pollama.template.gostrconv import byte_len

        return byte_len(v)
    if t is list or t is dict or t is bytes:
        return len(v)
    if isinstance(v, (GoSlice, GoMap, list, bytes)):
        return len(v)
    return None


def is_true(v: Any) -> tuple[bool, bool]:
    """Go's ``isTrue``: (truth, ok) — zero values are false."""
    if v is INVALID:
        return False, True
    t = type(v)
    if t is bool:
        return v, True
    if t is str or t is list or t is dict or t is bytes:
        return len(v) > 0, True
    if t is int or t is float or t is Uint8 or t is complex:
        return v != 0, True
    if isinstance(v, Iface):
        return v.v is not None, True
    if isinstance(v, (GoSlice, GoMap)):
        return len(v) > 0, True
    if isinstance(v, GoStruct):
        return True, True
    if isinstance(v, NilPointer):
        return False, True
    if isinstance(v, (list, bytes)):
        return len(v) > 0, True
    return False, False


def truth(v: Any) -> bool:
    """Go's ``truth`` helper in ``funcs.go``."""
    return is_true(indirect_interface(v))[0]


def from_json(value: Any) -> Any:
    """Convert decoded JSON (dict/list/str/int/float/bool/None) to Go values.

    Integers beyond int64 become ``float64`` as Go's decoder into ``any`` with the README's rule.
    """
    t = type(value)
    if t is dict:
        return {str(k): from_json(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [from_json(v) for v in value]
    if t is int and not (INT64_MIN <= value <= INT64_MAX):
        return float(value)
    return value


def json_numbers_to_float(value: Any) -> Any:
    """Go's default JSON decoding into ``any``: every number becomes ``float64``."""
    t = type(value)
    if t is dict:
        return {k: json_numbers_to_float(v) for k, v in value.items()}
    if t is list:
        return [json_numbers_to_float(v) for v in value]
    if t is int:
        return float(value)
    return value
