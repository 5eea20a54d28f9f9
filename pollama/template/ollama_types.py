"""The Go types Ollama hands to chat templates, built from Ollama API request dicts.

Owns what templates see of a request: ``*template.templateMessage`` (``Role``, ``Content``,
``Thinking``, ``Images``, ``ToolCalls``, ``ToolName``, ``ToolCallID``), tool calls
(``ID``, ``Function{Index, Name, Arguments}``) and tools (``Type``, ``Items``,
``Function{Name, Description, Parameters{Type, Defs, Items, Required, Properties}}``), with the
printing (``String()`` as JSON where Ollama has it, Go struct syntax elsewhere), JSON field
order and omission rules, and ``ToTypeScriptType`` of tool properties.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar

from pollama.template.gofmt import sprint
from pollama.template.gojson import encode_string, marshal
from pollama.template.values import GoMap, GoSlice, GoStruct, NilPointer, json_numbers_to_float


def _json_object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(encode_string(k) + ":" + v for k, v in pairs) + "}"


def _or_empty_json(m: GoMap) -> str:
    return "{}" if m.items is None else m.go_json()


# -- tool calls ----------------------------------------------------------------------------------


class ToolCallFunctionArguments(GoMap):
    """``api.ToolCallFunctionArguments``: decoded JSON arguments; prints as JSON (``{}`` if absent)."""

    go_stringer = True
    go_methods: ClassVar[dict[str, str]] = {"String": "go_string", "Len": "go_len"}

    def __init__(self, items: dict[str, Any] | None) -> None:
        super().__init__("api.ToolCallFunctionArguments", items, elem_iface=True)

    def go_string(self) -> str:
        return _or_empty_json(self)

    def go_len(self) -> int:
        return len(self)


class ToolCallFunction(GoStruct):
    """``api.ToolCallFunction``."""

    go_type = "api.ToolCallFunction"
    go_fields = ("Index", "Name", "Arguments")

    def __init__(self, index: int, name: str, arguments: ToolCallFunctionArguments) -> None:
        self.Index = index
        self.Name = name
        self.Arguments = arguments

    def go_json(self) -> str:
        return _json_object(
            [("index", str(self.Index)), ("name", encode_string(self.Name)), ("arguments", self.Arguments.go_json())]
        )


class ToolCall(GoStruct):
    """``api.ToolCall``."""

    go_type = "api.ToolCall"
    go_fields = ("ID", "Function")

    def __init__(self, call_id: str, function: ToolCallFunction) -> None:
        self.ID = call_id
        self.Function = function

    def go_json(self) -> str:
        pairs = [("id", encode_string(self.ID))] if self.ID else []
        pairs.append(("function", self.Function.go_json()))
        return _json_object(pairs)

    @classmethod
    def from_api(cls, call: dict[str, Any]) -> ToolCall:
        fn = call.get("function") or {}
        raw_args = fn.get("arguments")
        args = ToolCallFunctionArguments(None if raw_args is None else json_numbers_to_float(dict(raw_args)))
        return cls(
            str(call.get("id") or ""), ToolCallFunction(int(fn.get("index") or 0), str(fn.get("name") or ""), args)
        )


# -- messages ------------------------------------------------------------------------------------


class ImageData(bytes):
    """``api.ImageData``: raw image bytes (prints as Go byte-slice syntax)."""

    go_type = "api.ImageData"


class TemplateMessage(GoStruct):
    """``*template.templateMessage``: one collated chat message as templates see it."""

    go_type = "*template.templateMessage"
    go_pointer = True
    go_fields = ("Role", "Content", "Thinking", "Images", "ToolCalls", "ToolName", "ToolCallID")

    def __init__(
        self,
        role: str,
        content: str,
        thinking: str = "",
        images: list[bytes] | None = None,
        tool_calls: list[ToolCall] | None = None,
        tool_name: str = "",
        tool_call_id: str = "",
    ) -> None:
        self.Role = role
        self.Content = content
        self.Thinking = thinking
        self.Images = GoSlice("[]api.ImageData", [ImageData(b) for b in images] if images else None)
        self.ToolCalls = GoSlice("[]api.ToolCall", list(tool_calls) if tool_calls else None)
        self.ToolName = tool_name
        self.ToolCallID = tool_call_id

    def go_json(self) -> str:
        return _json_object([(name, marshal(getattr(self, name))) for name in self.go_fields])


# -- tools ---------------------------------------------------------------------------------------


def _type_name_to_ts(json_type: str) -> str:
    return {
        "string": "string",
        "number": "number",
        "integer": "number",
        "boolean": "boolean",
        "array": "any[]",
        "object": "Record<string, any>",
        "null": "null",
    }.get(json_type, "any")


class PropertyType(GoSlice):
    """``api.PropertyType``: one JSON-schema type or a list of them."""

    go_stringer = True
    go_methods: ClassVar[dict[str, str]] = {"String": "go_string"}

    def __init__(self, types: list[str] | None) -> None:
        super().__init__("api.PropertyType", types)

    def go_string(self) -> str:
        items: list[str] = self.items or []
        if len(items) == 0:
            return ""
        if len(items) == 1:
            return items[0]
        return sprint([GoSlice("[]string", list(items))])

    def go_json(self) -> str:
        items = self.items or []
        if len(items) == 1:
            return encode_string(items[0])
        return "[" + ",".join(encode_string(t) for t in items) + "]"

    @classmethod
    def from_api(cls, raw: Any) -> PropertyType:
        if raw is None:
            return cls(None)
        if isinstance(raw, str):
            return cls([raw])
        return cls([str(t) for t in raw])


class ToolPropertiesMap(GoStruct):
    """``*api.ToolPropertiesMap``: a nested ``properties`` object, kept in request order."""

    go_type = "*api.ToolPropertiesMap"
    go_pointer = True
    go_stringer = True
    go_methods: ClassVar[dict[str, str]] = {"Len": "go_len", "String": "go_string"}

    def __init__(self, props: dict[str, ToolProperty]) -> None:
        self.props = props

    def go_len(self) -> int:
        return len(self.props)

    def go_json(self) -> str:
        return _json_object([(k, v.go_json()) for k, v in self.props.items()])

    def go_string(self) -> str:
        return self.go_json()

    def go_field_values(self) -> list[tuple[str, Any]]:
        return []


class ToolProperty(GoStruct):
    """``api.ToolProperty``: one parameter of a tool."""

    go_type = "api.ToolProperty"
    go_fields = ("AnyOf", "Type", "Items", "Description", "Enum", "Properties", "Required")
    go_iface_fields = frozenset({"Items"})
    go_methods: ClassVar[dict[str, str]] = {"ToTypeScriptType": "to_typescript_type"}

    def __init__(
        self,
        any_of: list[ToolProperty] | None = None,
        types: PropertyType | None = None,
        items: Any = None,
        description: str = "",
        enum: list[Any] | None = None,
        properties: ToolPropertiesMap | None = None,
        required: list[str] | None = None,
    ) -> None:
        self.AnyOf = GoSlice("[]api.ToolProperty", any_of)
        self.Type = types if types is not None else PropertyType(None)
        self.Items = items
        self.Description = description
        self.Enum = GoSlice("[]interface {}", enum, elem_iface=True)
        self.Properties = properties
        self.Required = GoSlice("[]string", required)

    def go_field(self, name: str) -> tuple[bool, Any]:
        if name == "Properties" and self.Properties is None:
            return True, NilPointer("*api.ToolPropertiesMap", {"Len": lambda: 0})
        return super().go_field(name)

    def to_typescript_type(self) -> str:
        if self.AnyOf.items:
            return " | ".join(p.to_typescript_type() for p in self.AnyOf.items)
        types = self.Type.items or []
        if not types:
            return "any"
        return " | ".join(_type_name_to_ts(t) for t in types)

    def go_json(self) -> str:
        pairs: list[tuple[str, str]] = []
        if self.AnyOf.items:
            pairs.append(("anyOf", self.AnyOf.go_json()))
        if self.Type.items:
            pairs.append(("type", self.Type.go_json()))
        if self.Items is not None:
            pairs.append(("items", marshal(self.Items)))
        if self.Description:
            pairs.append(("description", encode_string(self.Description)))
        if self.Enum.items:
            pairs.append(("enum", self.Enum.go_json()))
        if self.Properties is not None:
            pairs.append(("properties", self.Properties.go_json()))
        if self.Required.items:
            pairs.append(("required", self.Required.go_json()))
        return _json_object(pairs)

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> ToolProperty:
        any_of = raw.get("anyOf")
        props = raw.get("properties")
        enum = raw.get("enum")
        required = raw.get("required")
        items = raw.get("items")
        return cls(
            any_of=[cls.from_api(p) for p in any_of] if any_of else None,
            types=PropertyType.from_api(raw.get("type")),
            items=None if items is None else json_numbers_to_float(items),
            description=str(raw.get("description") or ""),
            enum=json_numbers_to_float(list(enum)) if enum else None,
            properties=ToolPropertiesMap({k: cls.from_api(v if isinstance(v, dict) else {}) for k, v in props.items()})
            if isinstance(props, dict)
            else None,
            required=[str(r) for r in required] if required else None,
        )


class TemplateProperties(GoMap):
    """The tool's top-level properties: a map sorted by name, printing as JSON (``{}`` if absent)."""

    go_stringer = True
    go_methods: ClassVar[dict[str, str]] = {"String": "go_string"}

    def __init__(self, items: dict[str, ToolProperty] | None) -> None:
        super().__init__("map[string]api.ToolProperty", items, zero=ToolProperty)

    def go_string(self) -> str:
        return _or_empty_json(self)


class ToolFunctionParameters(GoStruct):
    """The tool function's ``parameters`` schema."""

    go_type = "template.templateToolFunctionParameters"
    go_fields = ("Type", "Defs", "Items", "Required", "Properties")
    go_iface_fields = frozenset({"Defs", "Items"})

    def __init__(
        self, typ: str, defs: Any, items: Any, required: list[str] | None, properties: TemplateProperties
    ) -> None:
        self.Type = typ
        self.Defs = defs
        self.Items = items
        self.Required = GoSlice("[]string", required)
        self.Properties = properties

    def go_json(self) -> str:
        pairs = [("type", encode_string(self.Type))]
        if self.Defs is not None:
            pairs.append(("$defs", marshal(self.Defs)))
        if self.Items is not None:
            pairs.append(("items", marshal(self.Items)))
        if self.Required.items:
            pairs.append(("required", self.Required.go_json()))
        pairs.append(("properties", self.Properties.go_json()))
        return _json_object(pairs)


class ToolFunction(GoStruct):
    """A tool's ``function``."""

    go_type = "template.templateToolFunction"
    go_fields = ("Name", "Description", "Parameters")

    def __init__(self, name: str, description: str, parameters: ToolFunctionParameters) -> None:
        self.Name = name
        self.Description = description
        self.Parameters = parameters

    def go_json(self) -> str:
        return _json_object(
            [
                ("name", encode_string(self.Name)),
                ("description", encode_string(self.Description)),
                ("parameters", self.Parameters.go_json()),
            ]
        )


class Tool(GoStruct):
    """One tool; prints as its JSON."""

    go_type = "template.templateTool"
    go_fields = ("Type", "Items", "Function")
    go_iface_fields = frozenset({"Items"})
    go_stringer = True
    go_methods: ClassVar[dict[str, str]] = {"String": "go_string"}

    def __init__(self, typ: str, items: Any, function: ToolFunction) -> None:
        self.Type = typ
        self.Items = items
        self.Function = function

    def go_string(self) -> str:
        return self.go_json()

    def go_json(self) -> str:
        pairs = [("type", encode_string(self.Type))]
        if self.Items is not None:
            pairs.append(("items", marshal(self.Items)))
        pairs.append(("function", self.Function.go_json()))
        return _json_object(pairs)

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Tool:
        fn = raw.get("function") or {}
        params = fn.get("parameters") or {}
        props = params.get("properties")
        required = params.get("required")
        items = params.get("items")
        defs = params.get("$defs")
        parameters = ToolFunctionParameters(
            str(params.get("type") or ""),
            None if defs is None else json_numbers_to_float(defs),
            None if items is None else json_numbers_to_float(items),
            [str(r) for r in required] if required else None,
            TemplateProperties(
                {k: ToolProperty.from_api(v if isinstance(v, dict) else {}) for k, v in props.items()}
                if isinstance(props, dict)
                else None
            ),
        )
        tool_items = raw.get("items")
        return cls(
            str(raw.get("type") or ""),
            None if tool_items is None else json_numbers_to_float(tool_items),
            ToolFunction(str(fn.get("name") or ""), str(fn.get("description") or ""), parameters),
        )


class Tools(GoSlice):
    """The request's tool list (nil when the request had none); prints as JSON."""

    go_stringer = True
    go_methods: ClassVar[dict[str, str]] = {"String": "go_string"}

    def __init__(self, tools: list[Tool] | None) -> None:
        super().__init__("template.templateTools", tools)

    def go_string(self) -> str:
        return self.go_json()

    @classmethod
    def from_api(cls, raw: list[dict[str, Any]] | None) -> Tools:
        if raw is None:
            return cls(None)
        return cls([Tool.from_api(t) for t in raw])


def decode_image(data: str | bytes) -> bytes:
    """An API image (base64 text, or raw bytes) as bytes."""
    if isinstance(data, bytes):
        return data
    return base64.b64decode(data)
