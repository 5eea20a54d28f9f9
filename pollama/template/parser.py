"""The parser of Go's ``text/template`` (``text/template/parse/parse.go``), rule for rule.

Owns turning lexer items into trees: the main template plus every ``{{define}}``/``{{block}}``
template, with Go's checks made at parse time (undefined functions and variables, ``break``
outside ``range``, duplicate definitions, malformed literals) and Go's error messages. Nesting
deeper than Python's recursion limit allows (a few hundred levels; Go has no such limit) fails
with ``TemplateLimitExceeded`` instead of ``RecursionError``.
"""

from __future__ import annotations

from collections.abc import Collection

from pollama.errors import TemplateParseError
from pollama.template import gostrconv
from pollama.template import lexer as L
from pollama.template.limits import Budget, nesting_error
from pollama.template.nodes import (
    ActionNode,
    BoolNode,
    BreakNode,
    ChainNode,
    CommandNode,
    CommentNode,
    ContinueNode,
    DotNode,
    ElseNode,
    EndNode,
    FieldNode,
    IdentifierNode,
    IfNode,
    ListNode,
    NilNode,
    Node,
    NumberNode,
    PipeNode,
    RangeNode,
    StringNode,
    TemplateNode,
    TextNode,
    VariableNode,
    WithNode,
    is_empty_tree,
)

_MAX_STACK_DEPTH = 10000


class _ParseFailure(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class _Stream:
    """The lexer output shared by the main tree and the trees of its definitions."""

    def __init__(self, items: list[L.Item], budget: Budget | None = None) -> None:
        self.items = items
        self.i = 0
        self.budget = budget

    def next_item(self) -> L.Item:
        if self.i < len(self.items):
            item = self.items[self.i]
            self.i += 1
            if self.budget is not None and self.i % 256 == 0:
                self.budget.check_time("parsing")
            return item
        last = self.items[-1]
        return L.Item(L.EOF, last.pos, "EOF", last.line)


class _Tree:
    """Parsing state of one template (Go's ``parse.Tree``)."""

    def __init__(self, name: str, stream: _Stream, funcs: Collection[str], tree_set: dict[str, ListNode]) -> None:
        self.name = name
        self.stream = stream
        self.funcs = funcs
        self.tree_set = tree_set
        self.token: list[L.Item] = [L.Item(L.EOF, 0, "", 1)] * 3
        self.peek_count = 0
        self.vars: list[str] = ["$"]
        self.action_line = 0
        self.range_depth = 0
        self.stack_depth = 0
        self.root: ListNode | None = None

    # -- token buffer --------------------------------------------------------------------------

    def next(self) -> L.Item:
        if self.peek_count > 0:
            self.peek_count -= 1
        else:
            self.token[0] = self.stream.next_item()
        return self.token[self.peek_count]

    def backup(self) -> None:
        self.peek_count += 1

    def backup2(self, t1: L.Item) -> None:
        self.token[1] = t1
        self.peek_count = 2

    def backup3(self, t2: L.Item, t1: L.Item) -> None:
        self.token[1] = t1
        self.token[2] = t2
        self.peek_count = 3

    def peek(self) -> L.Item:
        if self.peek_count > 0:
            return self.token[self.peek_count - 1]
        self.peek_count = 1
        self.token[0] = self.stream.next_item()
        return self.token[0]

    def next_non_space(self) -> L.Item:
        while True:
            token = self.next()
            if token.typ != L.SPACE:
                return token

    def peek_non_space(self) -> L.Item:
        token = self.next_non_space()
        self.backup()
        return token

    # -- errors --------------------------------------------------------------------------------

    def errorf(self, message: str) -> None:
        raise _ParseFailure(message, self.token[0].line)

    def expect(self, expected: int, context: str) -> L.Item:
        token = self.next_non_space()
        if token.typ != expected:
            self.unexpected(token, context)
        return token

    def expect_one_of(self, e1: int, e2: int, context: str) -> L.Item:
        token = self.next_non_space()
        if token.typ != e1 and token.typ != e2:
            self.unexpected(token, context)
        return token

    def unexpected(self, token: L.Item, context: str) -> None:
        if token.typ == L.ERROR:
            extra = ""
            if self.action_line != 0 and self.action_line != token.line:
                extra = f" in action started at :{self.action_line}"
                if token.val.endswith(" action"):
                    extra = extra[len(" in action") :]
            self.errorf(f"{token}{extra}")
        self.errorf(f"unexpected {token} in {context}")

    # -- structure -----------------------------------------------------------------------------

    def add(self) -> None:
        assert self.root is not None
        existing = self.tree_set.get(self.name)
        if existing is None or is_empty_tree(existing):
            self.tree_set[self.name] = self.root
            return
        if not is_empty_tree(self.root):
            self.errorf(f"template: multiple definition of template {gostrconv.quote(self.name)}")

    def parse(self) -> None:
        self.root = ListNode(self.peek().pos)
        while self.peek().typ != L.EOF:
            if self.peek().typ == L.LEFT_DELIM:
                delim = self.next()
                if self.next_non_space().typ == L.DEFINE:
                    new = _Tree("definition", self.stream, self.funcs, self.tree_set)
                    new.parse_definition()
                    continue
                self.backup2(delim)
            n = self.text_or_action()
            if isinstance(n, (EndNode, ElseNode)):
                self.errorf(f"unexpected {n}")
            self.root.nodes.append(n)

    def parse_definition(self) -> None:
        context = "define clause"
        name = self.expect_one_of(L.STRING, L.RAW_STRING, context)
        try:
            self.name = gostrconv.unquote(name.val)
        except ValueError as err:
            self.errorf(str(err))
        self.expect(L.RIGHT_DELIM, context)
        self.root, end = self.item_list()
        if not isinstance(end, EndNode):
            self.errorf(f"unexpected {end} in {context}")
        self.add()

    def item_list(self) -> tuple[ListNode, Node]:
        lst = ListNode(self.peek_non_space().pos)
        while self.peek_non_space().typ != L.EOF:
            n = self.text_or_action()
            if isinstance(n, (EndNode, ElseNode)):
                return lst, n
            lst.nodes.append(n)
        self.errorf("unexpected EOF")
        raise AssertionError

    def text_or_action(self) -> Node:
        token = self.next_non_space()
        if token.typ == L.TEXT:
            return TextNode(token.pos, token.val)
        if token.typ == L.LEFT_DELIM:
            self.action_line = token.line
            try:
                return self.action()
            finally:
                self.action_line = 0
        if token.typ == L.COMMENT:
            return CommentNode(token.pos, token.val)
        self.unexpected(token, "input")
        raise AssertionError

    def action(self) -> Node:
        token = self.next_non_space()
        typ = token.typ
        if typ == L.BLOCK:
            return self.block_control()
        if typ == L.BREAK:
            return self.break_control(token.pos, token.line)
        if typ == L.CONTINUE:
            return self.continue_control(token.pos, token.line)
        if typ == L.ELSE:
            return self.else_control()
        if typ == L.END:
            return self.end_control()
        if typ == L.IF:
            return IfNode(*self.parse_control("if"))
        if typ == L.RANGE:
            return RangeNode(*self.parse_control("range"))
        if typ == L.TEMPLATE:
            return self.template_control()
        if typ == L.WITH:
            return WithNode(*self.parse_control("with"))
        self.backup()
        token = self.peek()
        return ActionNode(token.pos, token.line, self.pipeline("command", L.RIGHT_DELIM))

    def break_control(self, pos: int, line: int) -> Node:
        token = self.next_non_space()
        if token.typ != L.RIGHT_DELIM:
            self.unexpected(token, "{{break}}")
        if self.range_depth == 0:
            self.errorf("{{break}} outside {{range}}")
        return BreakNode(pos, line)

    def continue_control(self, pos: int, line: int) -> Node:
        token = self.next_non_space()
        if token.typ != L.RIGHT_DELIM:
            self.unexpected(token, "{{continue}}")
        if self.range_depth == 0:
            self.errorf("{{continue}} outside {{range}}")
        return ContinueNode(pos, line)

    def pipeline(self, context: str, end: int) -> PipeNode:
        token = self.peek_non_space()
        pipe = PipeNode(token.pos, token.line)
        while True:  # "decls:" in Go
            v = self.peek_non_space()
            if v.typ != L.VARIABLE:
                break
            self.next()
            token_after_variable = self.peek()
            nxt = self.peek_non_space()
            if nxt.typ in (L.ASSIGN, L.DECLARE):
                pipe.is_assign = nxt.typ == L.ASSIGN
                self.next_non_space()
                pipe.decl.append(VariableNode(v.pos, v.val.split(".")))
                self.vars.append(v.val)
            elif nxt.typ == L.CHAR and nxt.val == ",":
                self.next_non_space()
                pipe.decl.append(VariableNode(v.pos, v.val.split(".")))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().typ in (L.VARIABLE, L.RIGHT_DELIM, L.RIGHT_PAREN):
                        continue
                    self.errorf("range can only initialize variables")
                self.errorf(f"too many declarations in {context}")
            elif token_after_variable.typ == L.SPACE:
                self.backup3(v, token_after_variable)
            else:
                self.backup2(v)
            break
        while True:
            token = self.next_non_space()
            if token.typ == end:
                self.check_pipeline(pipe, context)
                return pipe
            if token.typ in (
                L.BOOL,
                L.CHAR_CONSTANT,
                L.COMPLEX,
                L.DOT,
                L.FIELD,
                L.IDENTIFIER,
                L.NUMBER,
                L.NIL,
                L.RAW_STRING,
                L.STRING,
                L.VARIABLE,
                L.LEFT_PAREN,
            ):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                self.unexpected(token, context)

    def check_pipeline(self, pipe: PipeNode, context: str) -> None:
        if not pipe.cmds:
            self.errorf(f"missing value for {context}")
        for i, c in enumerate(pipe.cmds[1:]):
            if isinstance(c.args[0], (BoolNode, DotNode, NilNode, NumberNode, StringNode)):
                self.errorf(f"non executable command in pipeline stage {i + 2}")

    def parse_control(self, context: str) -> tuple[int, int, PipeNode, ListNode, ListNode | None]:
        saved = len(self.vars)
        try:
            pipe = self.pipeline(context, L.RIGHT_DELIM)
            if context == "range":
                self.range_depth += 1
            lst, nxt = self.item_list()
            if context == "range":
                self.range_depth -= 1
            else_list: ListNode | None = None
            if isinstance(nxt, ElseNode):
                if context == "if" and self.peek().typ == L.IF:
                    self.next()
                    else_list = ListNode(nxt.pos)
                    else_list.nodes.append(IfNode(*self.parse_control("if")))
                elif context == "with" and self.peek().typ == L.WITH:
                    self.next()
                    else_list = ListNode(nxt.pos)
                    else_list.nodes.append(WithNode(*self.parse_control("with")))
                else:
                    else_list, nxt = self.item_list()
                    if not isinstance(nxt, EndNode):
                        self.errorf(f"expected end; found {nxt}")
            return pipe.pos, pipe.line, pipe, lst, else_list
        finally:
            del self.vars[saved:]

    def end_control(self) -> Node:
        return EndNode(self.expect(L.RIGHT_DELIM, "end").pos)

    def else_control(self) -> Node:
        peek = self.peek_non_space()
        if peek.typ in (L.IF, L.WITH):
            return ElseNode(peek.pos, peek.line)
        token = self.expect(L.RIGHT_DELIM, "else")
        return ElseNode(token.pos, token.line)

    def block_control(self) -> Node:
        context = "block clause"
        token = self.next_non_space()
        name = self.parse_template_name(token, context)
        pipe = self.pipeline(context, L.RIGHT_DELIM)
        block = _Tree(name, self.stream, self.funcs, self.tree_set)
        block.root, end = block.item_list()
        if not isinstance(end, EndNode):
            self.errorf(f"unexpected {end} in {context}")
        block.add()
        return TemplateNode(token.pos, token.line, name, pipe)

    def template_control(self) -> Node:
        context = "template clause"
        token = self.next_non_space()
        name = self.parse_template_name(token, context)
        pipe: PipeNode | None = None
        if self.next_non_space().typ != L.RIGHT_DELIM:
            self.backup()
            pipe = self.pipeline(context, L.RIGHT_DELIM)
        return TemplateNode(token.pos, token.line, name, pipe)

    def parse_template_name(self, token: L.Item, context: str) -> str:
        if token.typ in (L.STRING, L.RAW_STRING):
            try:
                return gostrconv.unquote(token.val)
            except ValueError as err:
                self.errorf(str(err))
        self.unexpected(token, context)
        raise AssertionError

    def command(self) -> CommandNode:
        cmd = CommandNode(self.peek_non_space().pos)
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            token = self.next()
            if token.typ == L.SPACE:
                continue
            if token.typ in (L.RIGHT_DELIM, L.RIGHT_PAREN):
                self.backup()
            elif token.typ == L.PIPE:
                pass
            else:
                self.unexpected(token, "operand")
            break
        if not cmd.args:
            self.errorf("empty command")
        return cmd

    def operand(self) -> Node | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == L.FIELD:
            chain = ChainNode(self.peek().pos, node)
            while self.peek().typ == L.FIELD:
                chain.field.append(self.next().val[1:])
            if isinstance(node, FieldNode):
                return FieldNode(chain.pos, [*node.ident, *chain.field])
            if isinstance(node, VariableNode):
                return VariableNode(chain.pos, [*node.ident, *chain.field])
            if isinstance(node, (BoolNode, StringNode, NumberNode, NilNode, DotNode)):
                self.errorf(f"unexpected . after term {gostrconv.quote(str(node))}")
            return chain
        return node

    def term(self) -> Node | None:
        token = self.next_non_space()
        typ = token.typ
        if typ == L.IDENTIFIER:
            if token.val not in self.funcs:
                self.errorf(f"function {gostrconv.quote(token.val)} not defined")
            return IdentifierNode(token.pos, token.val)
        if typ == L.DOT:
            return DotNode(token.pos)
        if typ == L.NIL:
            return NilNode(token.pos)
        if typ == L.VARIABLE:
            return self.use_var(token.pos, token.val)
        if typ == L.FIELD:
            return FieldNode(token.pos, token.val[1:].split("."))
        if typ == L.BOOL:
            return BoolNode(token.pos, token.val == "true")
        if typ in (L.CHAR_CONSTANT, L.COMPLEX, L.NUMBER):
            try:
                return new_number(token.pos, token.val, typ)
            except ValueError as err:
                self.errorf(str(err))
        if typ == L.LEFT_PAREN:
            if self.stack_depth >= _MAX_STACK_DEPTH:
                self.errorf("max expression depth exceeded")
            self.stack_depth += 1
            try:
                return self.pipeline("parenthesized pipeline", L.RIGHT_PAREN)
            finally:
                self.stack_depth -= 1
        if typ in (L.STRING, L.RAW_STRING):
            try:
                text = gostrconv.unquote(token.val)
            except ValueError as err:
                self.errorf(str(err))
            return StringNode(token.pos, token.val, text)
        self.backup()
        return None

    def use_var(self, pos: int, name: str) -> Node:
        v = VariableNode(pos, name.split("."))
        if v.ident[0] in self.vars:
            return v
        self.errorf(f"undefined variable {gostrconv.quote(v.ident[0])}")
        raise AssertionError


def new_number(pos: int, text: str, typ: int) -> NumberNode:
    """Go's ``newNumber``: classify a numeric literal; raises ``ValueError`` with Go's message."""
    n = NumberNode(pos, text)
    if typ == L.CHAR_CONSTANT:
        value, _, end = gostrconv.unquote_char(text, 1, "'")
        if text[end:] != "'":
            raise ValueError(f"malformed character constant: {text}")
        n.int64 = n.uint64 = value
        n.float64 = float(value)
        n.is_int = n.is_uint = n.is_float = True
        return n
    if typ == L.COMPLEX:
        try:
            c = complex(text[:-1].replace("_", "") + "j")
        except ValueError:
            raise ValueError(f"strconv.ParseFloat: parsing {gostrconv.quote(text)}: invalid syntax") from None
        n.is_complex = True
        n.complex128 = c
        _simplify_complex(n)
        return n
    if text.endswith("i"):
        try:
            f = gostrconv.parse_float(text[:-1])
        except ValueError:
            pass
        else:
            n.is_complex = True
            n.complex128 = complex(0, f)
            _simplify_complex(n)
            return n
    u = None
    try:
        u = gostrconv.parse_uint(text)
        n.is_uint = True
        n.uint64 = u
    except ValueError:
        pass
    try:
        i = gostrconv.parse_int(text)
        n.is_int = True
        n.int64 = i
        if i == 0:
            n.is_uint = True
            n.uint64 = u or 0
    except ValueError:
        pass
    if n.is_int:
        n.is_float = True
        n.float64 = float(n.int64)
    elif n.is_uint:
        n.is_float = True
        n.float64 = float(n.uint64)
    else:
        try:
            f = gostrconv.parse_float(text)
        except ValueError:
            pass
        else:
            if not any(c in text for c in ".eEpP"):
                raise ValueError(f"integer overflow: {gostrconv.quote(text)}")
            n.is_float = True
            n.float64 = f
            if f == f and abs(f) != float("inf"):
                if -(1 << 63) <= f < (1 << 63) and float(int(f)) == f:
                    n.is_int = True
                    n.int64 = int(f)
                if 0 <= f < (1 << 64) and float(int(f)) == f:
                    n.is_uint = True
                    n.uint64 = int(f)
    if not (n.is_int or n.is_uint or n.is_float):
        raise ValueError(f"illegal number syntax: {gostrconv.quote(text)}")
    return n


def _simplify_complex(n: NumberNode) -> None:
    if n.complex128.imag == 0:
        n.is_float = True
        n.float64 = n.complex128.real
        f = n.float64
        if f == f and abs(f) != float("inf"):
            if -(1 << 63) <= f < (1 << 63) and float(int(f)) == f:
                n.is_int = True
                n.int64 = int(f)
            if 0 <= f < (1 << 64) and float(int(f)) == f:
                n.is_uint = True
                n.uint64 = int(f)


def parse(text: str, funcs: Collection[str], budget: Budget | None = None) -> dict[str, ListNode]:
    """Parse ``text`` as the template named ``""``; returns every tree by name.

    Raises ``TemplateParseError`` with Go's message; its location is ``template: :LINE: ``. With a
    ``budget``, parsing past its time limit raises ``TemplateLimitExceeded``.
    """
    stream = _Stream(L.lex(text, budget), budget)
    tree_set: dict[str, ListNode] = {}
    tree = _Tree("", stream, funcs, tree_set)
    try:
        tree.parse()
        tree.add()
    except _ParseFailure as err:
        raise TemplateParseError(err.message, location=f"template: :{err.line}: ") from None
    except RecursionError:
        # Go's parser recurses on a growable stack; ours stops where Python's recursion limit does.
        raise nesting_error() from None
    return tree_set
