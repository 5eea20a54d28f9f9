"""Parsed Go templates: ``parse_template`` and the ``Template`` object.

Owns the public face of the engine: parsing with Go's options (``missingkey`` mode, Ollama's
extra functions), executing with JSON-ish or typed data, an injectable clock and a
:class:`~pollama.template.limits.Budget`, and Ollama's ``Vars()`` identifier scan.

Parsing and executing are CPU-bound and their cost is chosen by the template's author: call them
from a worker thread, never on an event loop. Every execution is bounded by a budget (steps, wall
time, output bytes; see :mod:`pollama.template.limits`), and neither deep nesting nor
``{{template}}`` recursion can overflow the stack: past a limit the call raises
``TemplateLimitExceeded`` (HTTP 400).
"""

from __future__ import annotations

import datetime
from typing import Any

from pollama.errors import TemplateParseError
from pollama.template.exec import render
from pollama.template.funcs import BUILTINS, OLLAMA_FUNCS, GoFunc
from pollama.template.limits import Budget
from pollama.template.nodes import (
    ActionNode,
    BranchNode,
    CommandNode,
    FieldNode,
    ListNode,
    Node,
    PipeNode,
    TemplateNode,
    VariableNode,
)
from pollama.template.parser import parse
from pollama.template.values import INVALID, from_json

MISSINGKEY_MODES = ("default", "invalid", "zero", "error")


class Template:
    """A parsed template named ``""`` together with the templates it defines."""

    def __init__(self, text: str, trees: dict[str, ListNode], funcs: dict[str, GoFunc], missingkey: str) -> None:
        self.text = text
        self.trees = trees
        self.funcs = funcs
        self.missingkey = "default" if missingkey == "invalid" else missingkey
        self._vars: list[str] | None = None

    @property
    def root(self) -> ListNode:
        """The main template's node list."""
        return self.trees[""]

    def execute(
        self, data: Any, *, now: datetime.date | datetime.datetime | None = None, budget: Budget | None = None
    ) -> str:
        """Render with ``data`` as dot. Raises ``TemplateExecError`` with Go's message.

        ``data`` may be JSON-ish Python values (converted per Go's rules) or typed Go values;
        ``now`` fixes the clock used by ``currentDate``/``yesterdayDate``. ``budget`` bounds steps,
        wall time and output (default: a fresh ``Budget()``, i.e. ``MAX_STEPS``, ``TIME_LIMIT``,
        ``MAX_OUTPUT``); pass one ``Budget`` to several calls to bound them together. Past it,
        ``TemplateLimitExceeded`` (a ``TemplateExecError`` and an ``InvalidRequest``).
        """
        value = INVALID if data is None else from_json(data)
        return render(
            self.root,
            value,
            text=self.text,
            trees=self.trees,
            funcs=self.funcs,
            missingkey=self.missingkey,
            now=now,
            budget=budget,
        )

    def vars(self) -> list[str]:
        """Ollama's ``Vars()``: every identifier used, lower-cased, de-duplicated and sorted.

        Raises ``TemplateParseError("undefined template specified")`` for a ``{{template "x"}}``
        without an argument, as Ollama's parser does.
        """
        if self._vars is None:
            names: list[str] = []
            for tree in self.trees.values():
                for node in tree.nodes:
                    names.extend(identifiers(node))
            self._vars = sorted({n.lower() for n in names})
        return list(self._vars)

    def derive(
        self,
        root: ListNode,
        *,
        funcs: dict[str, GoFunc] | None = None,
        missingkey: str | None = None,
        keep_definitions: bool = True,
    ) -> Template:
        """A template sharing this one's source with a different main tree or options."""
        trees = dict(self.trees) if keep_definitions else {}
        trees[""] = root
        return Template(
            self.text,
            trees,
            self.funcs if funcs is None else funcs,
            self.missingkey if missingkey is None else missingkey,
        )


def identifiers(node: Node) -> list[str]:
    """Ollama's ``Identifiers``: field and variable names used by ``node``."""
    if isinstance(node, ListNode):
        out: list[str] = []
        for n in node.nodes:
            out.extend(identifiers(n))
        return out
    if isinstance(node, TemplateNode):
        if node.pipe is None:
            raise TemplateParseError("undefined template specified")
        return identifiers(node.pipe)
    if isinstance(node, ActionNode):
        return identifiers(node.pipe)
    if isinstance(node, BranchNode):
        out = identifiers(node.pipe)
        out.extend(identifiers(node.list))
        if node.else_list is not None:
            out.extend(identifiers(node.else_list))
        return out
    if isinstance(node, PipeNode):
        out = []
        for cmd in node.cmds:
            out.extend(identifiers(cmd))
        return out
    if isinstance(node, CommandNode):
        out = []
        for arg in node.args:
            out.extend(identifiers(arg))
        return out
    if isinstance(node, (FieldNode, VariableNode)):
        return list(node.ident)
    return []


def function_set(ollama: bool) -> dict[str, GoFunc]:
    """Go's builtins, plus Ollama's ``json``/``currentDate``/``yesterdayDate``/``toTypeScriptType``."""
    return {**BUILTINS, **OLLAMA_FUNCS} if ollama else dict(BUILTINS)


def parse_template(
    text: str, *, missingkey: str = "zero", funcs: bool = True, budget: Budget | None = None
) -> Template:
    """Parse ``text`` as Go's ``template.New("").Option("missingkey=...").Funcs(...).Parse(text)``.

    ``funcs=True`` registers Ollama's four extra functions. Raises ``TemplateParseError``. Parsing
    runs against ``budget``'s time limit (default: a fresh ``Budget()``, 2 s), past which it raises
    ``TemplateLimitExceeded``; nesting deeper than the parser can recurse raises it too.
    """
    if missingkey not in MISSINGKEY_MODES:
        raise ValueError(f'unrecognized option: "missingkey={missingkey}"')
    fset = function_set(funcs)
    trees = parse(text, fset, Budget() if budget is None else budget)
    return Template(text, trees, fset, missingkey)
