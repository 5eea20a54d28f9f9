"""What a Go chat template reveals about its model: capabilities, thinking tags, tool-call tag.

Owns Ollama's template heuristics: ``tools``/``insert`` capabilities from the identifiers a
template uses, thinking-tag inference (``thinking.InferTags``: the text around ``{{ .Thinking }}``
inside a ``range`` over ``.Messages``) and the generic tool parser's tag (``parseTag``: the first
literal text inside ``{{ if .ToolCalls }}``).
"""

from __future__ import annotations

from collections.abc import Callable

from pollama.template.gostrconv import trim_space
from pollama.template.nodes import (
    ActionNode,
    BranchNode,
    CommandNode,
    FieldNode,
    IfNode,
    ListNode,
    Node,
    PipeNode,
    RangeNode,
    TemplateNode,
    TextNode,
    VariableNode,
    WithNode,
)
from pollama.template.template import Template


def _visit(n: Node | None, enter: Callable[[Node], bool], exit_: Callable[[Node], None] | None = None) -> None:
    """Ollama's ``templateVisit``: depth-first over lists, branches, actions, pipes and commands."""
    if n is None or not enter(n):
        return
    if isinstance(n, ListNode):
        for c in n.nodes:
            _visit(c, enter, exit_)
    elif isinstance(n, BranchNode):
        _visit(n.pipe, enter, exit_)
        _visit(n.list, enter, exit_)
        _visit(n.else_list, enter, exit_)
    elif isinstance(n, (ActionNode, TemplateNode)):
        _visit(n.pipe, enter, exit_)
    elif isinstance(n, PipeNode):
        for cmd in n.cmds:
            _visit(cmd, enter, exit_)
    elif isinstance(n, CommandNode):
        for a in n.args:
            _visit(a, enter, exit_)
    if exit_ is not None:
        exit_(n)


def _range_uses_field(r: RangeNode, name: str) -> bool:
    found = False

    def enter(n: Node) -> bool:
        nonlocal found
        if (isinstance(n, FieldNode) and n.ident and n.ident[0] == name) or (
            isinstance(n, VariableNode) and len(n.ident) > 1 and n.ident[1] == name
        ):
            found = True
        return True

    _visit(r.pipe, enter)
    return found


def thinking_tags(t: Template) -> tuple[str, str] | None:
    """The (opening, closing) tags around thinking text, e.g. ``("<think>", "</think>")``, or ``None``.

    Finds ``.Thinking`` inside a ``range`` over ``.Messages``; in the nearest enclosing node list,
    the first node's text is the opening tag and the last node's text the closing tag.
    """
    ancestors: list[Node] = []
    opening = closing = ""

    def enter(n: Node) -> bool:
        nonlocal opening, closing
        ancestors.append(n)
        if isinstance(n, FieldNode) and n.ident and n.ident[0] == "Thinking":
            rng = next((a for a in reversed(ancestors) if isinstance(a, RangeNode)), None)
            if rng is None or not _range_uses_field(rng, "Messages"):
                return True
            lst = next((a for a in reversed(ancestors) if isinstance(a, ListNode)), None)
            if lst is not None and lst.nodes:
                first, last = lst.nodes[0], lst.nodes[-1]
                if isinstance(first, TextNode):
                    opening = trim_space(first.text)
                if isinstance(last, TextNode):
                    closing = trim_space(last.text)
        return True

    def exit_(n: Node) -> None:
        ancestors.pop()

    _visit(t.root, enter, exit_)
    if opening and closing:
        return opening, closing
    return None


def _is_tool_calls_if(n: IfNode) -> bool:
    return any(isinstance(a, FieldNode) and "ToolCalls" in a.ident for cmd in n.pipe.cmds for a in cmd.args)


def _find_tool_calls_if(nodes: list[Node]) -> IfNode | None:
    for n in nodes:
        if isinstance(n, IfNode):
            if _is_tool_calls_if(n):
                return n
            found = _find_tool_calls_if(n.list.nodes)
            if found is None and n.else_list is not None:
                found = _find_tool_calls_if(n.else_list.nodes)
            if found is not None:
                return found
        elif isinstance(n, ListNode):
            found = _find_tool_calls_if(n.nodes)
            if found is not None:
                return found
        elif isinstance(n, (RangeNode, WithNode)):
            found = _find_tool_calls_if(n.list.nodes)
            if found is None and n.else_list is not None:
                found = _find_tool_calls_if(n.else_list.nodes)
            if found is not None:
                return found
    return None


def _find_text(nodes: list[Node]) -> TextNode | None:
    for n in nodes:
        if isinstance(n, TextNode):
            if trim_space(n.text) == "":
                continue
            return n
        if isinstance(n, BranchNode):
            found = _find_text(n.list.nodes)
            if found is None and n.else_list is not None:
                found = _find_text(n.else_list.nodes)
            return found
        if isinstance(n, ActionNode):
            return None
    return None


def tool_call_tag(t: Template) -> str | None:
    """The text a model emits before tool calls (``<tool_call>``, ``[TOOL_CALLS]``), ``{`` if unknown.

    ``None`` when the template does not use ``.Tools`` (no tool support).
    """
    if "tools" not in t.vars():
        return None
    block = _find_tool_calls_if(t.root.nodes)
    if block is None:
        return "{"
    text = _find_text(block.list.nodes)
    if text is None:
        return "{"
    tag = text.text.replace("\r\n", "\n").split("{", 1)[0]
    tag = trim_space(tag)
    return tag or "{"


def template_capabilities(t: Template) -> list[str]:
    """Capabilities a Go template grants: ``tools`` (uses ``.Tools``), ``insert`` (``.Suffix``),
    ``thinking`` (thinking tags can be inferred)."""
    names = t.vars()
    caps = []
    if "tools" in names:
        caps.append("tools")
    if "suffix" in names:
        caps.append("insert")
    if thinking_tags(t) is not None:
        caps.append("thinking")
    return caps
