"""Parse-tree nodes of Go's ``text/template`` (``text/template/parse/node.go``).

Owns the node types, their positions (character offsets into the template source, used for
error locations), their ``String()`` forms (Go prints these in ``executing "" at <...>``) and
deep copies (Ollama prunes a copy of the tree for its legacy prompt path).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any


class Node:
    """Base of all nodes."""

    __slots__ = ()
    pos: int  # character offset of the node in the template source

    def __str__(self) -> str:
        raise NotImplementedError

    def copy(self) -> Node:
        """A deep copy of this node and everything under it (without recursion, so any depth works)."""
        return _copy_tree(self)


@dataclass(eq=False, slots=True)
class ListNode(Node):
    pos: int
    nodes: list[Node] = field(default_factory=list)

    def __str__(self) -> str:
        return "".join(str(n) for n in self.nodes)


@dataclass(eq=False, slots=True)
class TextNode(Node):
    pos: int
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(eq=False, slots=True)
class CommentNode(Node):
    pos: int
    text: str

    def __str__(self) -> str:
        return "{{" + self.text + "}}"


@dataclass(eq=False, slots=True)
class IdentifierNode(Node):
    pos: int
    ident: str

    def __str__(self) -> str:
        return self.ident


@dataclass(eq=False, slots=True)
class VariableNode(Node):
    pos: int
    ident: list[str]

    def __str__(self) -> str:
        return ".".join(self.ident)


@dataclass(eq=False, slots=True)
class DotNode(Node):
    pos: int

    def __str__(self) -> str:
        return "."


@dataclass(eq=False, slots=True)
class NilNode(Node):
    pos: int

    def __str__(self) -> str:
        return "nil"


@dataclass(eq=False, slots=True)
class FieldNode(Node):
    pos: int
    ident: list[str]

    def __str__(self) -> str:
        return "".join("." + i for i in self.ident)


@dataclass(eq=False, slots=True)
class ChainNode(Node):
    pos: int
    node: Node
    field: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        inner = f"({self.node})" if isinstance(self.node, PipeNode) else str(self.node)
        return inner + "".join("." + f for f in self.field)


@dataclass(eq=False, slots=True)
class BoolNode(Node):
    pos: int
    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(eq=False, slots=True)
class NumberNode(Node):
    pos: int
    text: str
    is_int: bool = False
    is_uint: bool = False
    is_float: bool = False
    is_complex: bool = False
    int64: int = 0
    uint64: int = 0
    float64: float = 0.0
    complex128: complex = 0j

    def __str__(self) -> str:
        return self.text


@dataclass(eq=False, slots=True)
class StringNode(Node):
    pos: int
    quoted: str
    text: str

    def __str__(self) -> str:
        return self.quoted


@dataclass(eq=False, slots=True)
class CommandNode(Node):
    pos: int
    args: list[Node] = field(default_factory=list)

    def __str__(self) -> str:
        parts = []
        for a in self.args:
            parts.append(f"({a})" if isinstance(a, PipeNode) else str(a))
        return " ".join(parts)


@dataclass(eq=False, slots=True)
class PipeNode(Node):
    pos: int
    line: int
    is_assign: bool = False
    decl: list[VariableNode] = field(default_factory=list)
    cmds: list[CommandNode] = field(default_factory=list)

    def __str__(self) -> str:
        s = ""
        if self.decl:
            s = ", ".join(str(v) for v in self.decl) + (" = " if self.is_assign else " := ")
        return s + " | ".join(str(c) for c in self.cmds)


@dataclass(eq=False, slots=True)
class ActionNode(Node):
    pos: int
    line: int
    pipe: PipeNode

    def __str__(self) -> str:
        return "{{" + str(self.pipe) + "}}"


@dataclass(eq=False, slots=True)
class BranchNode(Node):
    """Common shape of ``if``, ``range`` and ``with``."""

    pos: int
    line: int
    pipe: PipeNode
    list: ListNode
    else_list: ListNode | None = None

    keyword = ""

    def __str__(self) -> str:
        s = "{{" + self.keyword + " " + str(self.pipe) + "}}" + str(self.list)
        if self.else_list is not None:
            s += "{{else}}" + str(self.else_list)
        return s + "{{end}}"


class IfNode(BranchNode):
    __slots__ = ()
    keyword = "if"


class RangeNode(BranchNode):
    __slots__ = ()
    keyword = "range"


class WithNode(BranchNode):
    __slots__ = ()
    keyword = "with"


@dataclass(eq=False, slots=True)
class TemplateNode(Node):
    pos: int
    line: int
    name: str
    pipe: PipeNode | None

    def __str__(self) -> str:
        from pollama.template.gostrconv import quote

        if self.pipe is None:
            return "{{template " + quote(self.name) + "}}"
        return "{{template " + quote(self.name) + " " + str(self.pipe) + "}}"


@dataclass(eq=False, slots=True)
class BreakNode(Node):
    pos: int
    line: int

    def __str__(self) -> str:
        return "{{break}}"


@dataclass(eq=False, slots=True)
class ContinueNode(Node):
    pos: int
    line: int

    def __str__(self) -> str:
        return "{{continue}}"


@dataclass(eq=False, slots=True)
class EndNode(Node):
    """``{{end}}``: produced by the parser, never stored in a tree."""

    pos: int

    def __str__(self) -> str:
        return "{{end}}"


@dataclass(eq=False, slots=True)
class ElseNode(Node):
    """``{{else}}``: produced by the parser, never stored in a tree."""

    pos: int
    line: int

    def __str__(self) -> str:
        return "{{else}}"


def is_empty_tree(n: Any) -> bool:
    """Go's ``parse.IsEmptyTree``: only whitespace text and comments."""
    if n is None:
        return True
    if isinstance(n, ListNode):
        return all(is_empty_tree(c) for c in n.nodes)
    if isinstance(n, CommentNode):
        return True
    if isinstance(n, TextNode):
        from pollama.template.gostrconv import trim_space

        return trim_space(n.text) == ""
    return False


def _copy_tree(root: Node) -> Node:
    # Pass 1 clones every reachable node shallowly; pass 2 points the clones' fields at the clones.
    clones: dict[int, Node] = {}
    originals: list[Node] = []
    pending: list[Node] = [root]
    while pending:
        n = pending.pop()
        if id(n) in clones:
            continue
        clones[id(n)] = copy.copy(n)
        originals.append(n)
        for f in fields(n):  # type: ignore[arg-type]
            value = getattr(n, f.name)
            if isinstance(value, Node):
                pending.append(value)
            elif isinstance(value, list):
                pending.extend(v for v in value if isinstance(v, Node))
    for n in originals:
        clone = clones[id(n)]
        for f in fields(n):  # type: ignore[arg-type]
            value = getattr(n, f.name)
            if isinstance(value, Node):
                setattr(clone, f.name, clones[id(value)])
            elif isinstance(value, list):
                setattr(clone, f.name, [clones[id(v)] if isinstance(v, Node) else v for v in value])
    return clones[id(root)]
