"""The executor of Go's ``text/template`` (``text/template/exec.go``), rule for rule.

Owns walking a parsed tree over Go values: variables and their scopes, pipelines (digging one
level into interface values after each command), field and map access under the three
``missingkey`` modes, function and method calls with Go's argument conversion and arity checks,
``if``/``with``/``range`` (including ``break``/``continue`` and ranging over integers and maps in
sorted key order), ``{{template}}`` calls, printing, and Go's error messages with their location
(``template: :LINE:COL: executing "NAME" at <NODE>: ``).
"""

from __future__ import annotations

import datetime
from collections.abc import Generator, Iterator
from itertools import repeat
from typing import Any

from pollama.errors import TemplateExecError, TemplateLimitExceeded
from pollama.template import gofmt, gostrconv
from pollama.template.funcs import Deref, FuncError, GoFunc
from pollama.template.limits import MAX_NESTING, Budget, nesting_error, utf8_len
from pollama.template.nodes import (
    ActionNode,
    BoolNode,
    BreakNode,
    ChainNode,
    CommandNode,
    CommentNode,
    ContinueNode,
    DotNode,
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
)
from pollama.template.values import (
    INVALID,
    NIL_IFACE,
    GoMap,
    GoObject,
    GoSlice,
    GoStruct,
    Iface,
    Uint8,
    indirect,
    indirect_interface,
    is_true,
    kind,
    truth,
    type_name,
)

MAX_EXEC_DEPTH = 100000


class _Missing:
    """Go's ``missingVal``: no value was piped into a command."""

    __slots__ = ()


_MISSING: Any = _Missing()


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Output:
    """The output of one execution, counted against the budget as it is written.

    Pieces are joined every few hundred writes, so a render made of millions of one-byte writes
    keeps about its output size in memory, not a pointer per write.
    """

    __slots__ = ("budget", "chunks", "pieces")

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.chunks: list[str] = []
        self.pieces: list[str] = []

    def write(self, text: str) -> None:
        self.budget.wrote(utf8_len(text))
        pieces = self.pieces
        pieces.append(text)
        if len(pieces) >= 512:
            self.chunks.append("".join(pieces))
            pieces.clear()

    def getvalue(self) -> str:
        return "".join(self.chunks) + "".join(self.pieces)


# What a walker generator yields: walk ``node`` with this state and dot, then resume me.
_Request = tuple["State", Any, Node]
_Walker = Generator[_Request, None, None]


class State:
    """One execution (Go's ``state``): output, variable stack, current node for errors.

    A ``{{template}}`` call gets a new state sharing the output, budget and definitions, as Go's
    ``newState := *s`` does.
    """

    __slots__ = ("budget", "depth", "funcs", "missingkey", "name", "node", "now", "out", "text", "trees", "vars")

    def __init__(
        self,
        *,
        text: str,
        trees: dict[str, ListNode],
        funcs: dict[str, GoFunc],
        missingkey: str,
        now: datetime.date | datetime.datetime | None,
        name: str = "",
        budget: Budget | None = None,
        out: _Output | None = None,
    ) -> None:
        self.text = text
        self.trees = trees
        self.funcs = funcs
        self.missingkey = missingkey
        self.now = now
        self.name = name
        self.node: Node | None = None
        self.vars: list[list[Any]] = []
        self.depth = 0
        self.budget = Budget() if budget is None else budget
        self.out = _Output(self.budget) if out is None else out

    # -- errors --------------------------------------------------------------------------------

    def at(self, node: Node) -> None:
        self.node = node

    def location(self) -> str:
        if self.node is None:
            return f"template: {self.name}: "
        pos = self.node.pos
        before = self.text[:pos]
        nl = before.rfind("\n")
        line = 1 + before.count("\n")
        col = len(gostrconv.to_bytes(before[nl + 1 :]))
        return f"template: :{line}:{col}: executing {gostrconv.quote(self.name)} at <{self.node}>: "

    def errorf(self, message: str) -> None:
        raise TemplateExecError(message, location=self.location())

    # -- variables -----------------------------------------------------------------------------

    def set_var(self, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        self.errorf(f"undefined variable: {name}")

    def var_value(self, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        self.errorf(f"undefined variable: {name}")

    # -- walking -------------------------------------------------------------------------------
    #
    # Go's walk recurses; here every node that contains other nodes is a generator that yields
    # (state, dot, child) requests to ``_drive``, which keeps the suspended walkers on an explicit
    # stack. Nesting and ``{{template}}`` recursion (down to Go's limit of 100000 calls) therefore
    # use heap memory, not Python's recursion limit or the thread's C stack. ``break`` and
    # ``continue`` are exceptions thrown into the walkers from the inside out, up to their range.

    def enter(self, dot: Any, node: Node) -> _Walker | None:
        """Start walking ``node``: leaves are done at once, containers return their walker."""
        self.node = node
        t = type(node)
        if t is TextNode:
            self.out.write(node.text)  # type: ignore[attr-defined]
        elif t is ActionNode:
            pipe = node.pipe  # type: ignore[attr-defined]
            val = self.eval_pipeline(dot, pipe)
            if not pipe.decl:
                self.print_value(node, val)
        elif t is ListNode:
            if node.nodes:  # type: ignore[attr-defined]
                return self.walk_list(dot, node)  # type: ignore[arg-type]
        elif t is IfNode or t is WithNode:
            return self.walk_if_or_with(t is WithNode, dot, node)  # type: ignore[arg-type]
        elif t is RangeNode:
            return self.walk_range(dot, node)  # type: ignore[arg-type]
        elif t is TemplateNode:
            return self.walk_template(dot, node)  # type: ignore[arg-type]
        elif t is BreakNode:
            raise _Break
        elif t is ContinueNode:
            raise _Continue
        elif t is CommentNode:
            pass
        else:
            self.errorf(f"unknown node: {node}")
        return None

    def walk_list(self, dot: Any, node: ListNode, mark: int = -1) -> _Walker:
        """Walk a list's nodes; with ``mark`` >= 0, drop the variables declared past it at the end."""
        step = self.budget.step
        try:
            for n in node.nodes:
                t = type(n)
                if t is TextNode:
                    step()
                    self.node = n
                    self.out.write(n.text)  # type: ignore[attr-defined]
                elif t is ActionNode:
                    step()
                    self.node = n
                    pipe = n.pipe  # type: ignore[attr-defined]
                    val = self.eval_pipeline(dot, pipe)
                    if not pipe.decl:
                        self.print_value(n, val)
                else:
                    yield self, dot, n
        finally:
            if mark >= 0:
                del self.vars[mark:]

    def walk_if_or_with(self, is_with: bool, dot: Any, node: IfNode | WithNode) -> _Walker | None:
        # No walker of its own: the chosen branch's walker drops the pipeline's variables when done.
        mark = len(self.vars)
        val = self.eval_pipeline(dot, node.pipe)
        ok_truth, ok = is_true(indirect_interface(val))
        if not ok:
            self.errorf(f"if/with can't use {gofmt.sprint_value(val)}")
        branch = node.list if ok_truth else node.else_list
        if branch is None or not branch.nodes:
            del self.vars[mark:]
            return None
        return self.walk_list(val if is_with and ok_truth else dot, branch, mark)

    def walk_range(self, dot: Any, r: RangeNode) -> _Walker:
        self.at(r)
        mark0 = len(self.vars)
        try:
            val, _ = indirect(self.eval_pipeline(dot, r.pipe))
            mark = len(self.vars)
            decl = r.pipe.decl
            assign = r.pipe.is_assign

            k = kind(val)
            iterations: Iterator[tuple[Any, Any]] | None = None
            if k == "slice":
                if isinstance(val, GoSlice):
                    elems = list(val.elems())
                elif isinstance(val, bytes):
                    elems = [Uint8(b) for b in val]
                else:
                    elems = [NIL_IFACE if v is None else Iface(v) for v in val]
                if elems:
                    iterations = enumerate(elems)
            elif k == "map":
                if isinstance(val, GoMap):
                    items = val.sorted_items()
                else:
                    items = [(key, NIL_IFACE if v is None else Iface(v)) for key, v in sorted(val.items())]
                if items:
                    iterations = iter(items)
            elif k in ("int", "uint8"):
                if len(decl) > 1:
                    self.errorf(f"can't use {gofmt.sprint_value(val)} to iterate over more than one variable")
                n = int(val)
                if n > 0:
                    typ = type(val)
                    iterations = zip(repeat(INVALID), map(typ, range(n)))
            elif k != "invalid":
                self.errorf(f"range can't iterate over {gofmt.sprint_value(val)}")
            if iterations is not None:
                for index, elem in iterations:
                    try:
                        if decl:
                            self._bind(decl, assign, index, elem)
                        yield self, elem, r.list
                    except _Continue:
                        pass
                    except _Break:
                        return
                    finally:
                        del self.vars[mark:]
                return
            if r.else_list is not None:
                yield self, dot, r.else_list
        finally:
            del self.vars[mark0:]

    def _bind(self, decl: list[VariableNode], assign: bool, index: Any, elem: Any) -> None:
        """Set a range's variables for one iteration (with two, the index comes first)."""
        if assign:
            self.set_var(decl[0].ident[0], index if len(decl) > 1 else elem)
        else:
            self.vars[-1][1] = elem
        if len(decl) > 1:
            if assign:
                self.set_var(decl[1].ident[0], elem)
            else:
                self.vars[-2][1] = index

    def walk_template(self, dot: Any, t: TemplateNode) -> _Walker | None:
        self.at(t)
        tree = self.trees.get(t.name)
        if tree is None:
            self.errorf(f"template {gostrconv.quote(t.name)} not defined")
        if self.depth >= MAX_EXEC_DEPTH:
            raise TemplateLimitExceeded(f"exceeded maximum template depth ({MAX_EXEC_DEPTH})", location=self.location())
        dot = self.eval_pipeline(dot, t.pipe)
        assert tree is not None
        new = State(
            text=self.text,
            trees=self.trees,
            funcs=self.funcs,
            missingkey=self.missingkey,
            now=self.now,
            name=t.name,
            budget=self.budget,
            out=self.out,
        )
        new.depth = self.depth + 1
        new.vars = [["$", dot]]
        return new.enter(dot, tree)

    # -- evaluation ----------------------------------------------------------------------------

    def eval_pipeline(self, dot: Any, pipe: PipeNode | None) -> Any:
        if pipe is None:
            return INVALID
        self.node = pipe
        value = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
            if type(value) is Iface:
                value = INVALID if value.v is None else value.v
        for var in pipe.decl:
            if pipe.is_assign:
                self.set_var(var.ident[0], value)
            else:
                self.vars.append([var.ident[0], value])
        return value

    def not_a_function(self, args: list[Node] | None, final: Any) -> None:
        if (args is not None and len(args) > 1) or final is not _MISSING:
            assert args is not None
            self.errorf(f"can't give argument to non-function {args[0]}")

    def eval_command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        t = type(first)
        if t is FieldNode:
            return self.eval_field_node(dot, first, cmd.args, final)  # type: ignore[arg-type]
        if t is ChainNode:
            return self.eval_chain_node(dot, first, cmd.args, final)  # type: ignore[arg-type]
        if t is IdentifierNode:
            return self.eval_function(dot, first, cmd, cmd.args, final)  # type: ignore[arg-type]
        if t is PipeNode:
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)  # type: ignore[arg-type]
        if t is VariableNode:
            return self.eval_variable_node(dot, first, cmd.args, final)  # type: ignore[arg-type]
        self.node = first
        self.not_a_function(cmd.args, final)
        if t is BoolNode:
            return first.value  # type: ignore[attr-defined]
        if t is DotNode:
            return dot
        if t is NilNode:
            self.errorf("nil is not a command")
        if t is NumberNode:
            return self.ideal_constant(first)  # type: ignore[arg-type]
        if t is StringNode:
            return first.text  # type: ignore[attr-defined]
        self.errorf(f"can't evaluate command {gostrconv.quote(str(first))}")

    def ideal_constant(self, c: NumberNode) -> Any:
        self.node = c
        if c.is_complex:
            return c.complex128
        text = c.text
        is_hex_int = len(text) > 2 and text[0] == "0" and text[1] in "xX" and not any(ch in text for ch in "pP")
        is_rune = text[:1] == "'"
        if c.is_float and not is_hex_int and not is_rune and any(ch in text for ch in ".eEpP"):
            return c.float64
        if c.is_int:
            return c.int64
        if c.is_uint:
            self.errorf(f"{text} overflows int")
        return INVALID

    def eval_field_node(self, dot: Any, field: FieldNode, args: list[Node] | None, final: Any) -> Any:
        self.node = field
        return self.eval_field_chain(dot, dot, field, field.ident, args, final)

    def eval_chain_node(self, dot: Any, chain: ChainNode, args: list[Node] | None, final: Any) -> Any:
        self.node = chain
        if not chain.field:
            self.errorf("internal error: no fields in evalChainNode")
        if isinstance(chain.node, NilNode):
            self.errorf(f"indirection through explicit nil in {chain}")
        pipe = self.eval_arg(dot, None, chain.node)
        return self.eval_field_chain(dot, pipe, chain, chain.field, args, final)

    def eval_variable_node(self, dot: Any, variable: VariableNode, args: list[Node] | None, final: Any) -> Any:
        self.node = variable
        value = self.var_value(variable.ident[0])
        if len(variable.ident) == 1:
            self.not_a_function(args, final)
            return value
        return self.eval_field_chain(dot, value, variable, variable.ident[1:], args, final)

    def eval_field_chain(
        self, dot: Any, receiver: Any, node: Node, ident: list[str], args: list[Node] | None, final: Any
    ) -> Any:
        n = len(ident)
        for i in range(n - 1):
            receiver = self.eval_field(dot, ident[i], node, None, _MISSING, receiver)
        return self.eval_field(dot, ident[n - 1], node, args, final, receiver)

    def eval_function(self, dot: Any, node: IdentifierNode, cmd: Node, args: list[Node] | None, final: Any) -> Any:
        self.node = node
        name = node.ident
        fn = self.funcs.get(name)
        if fn is None:
            self.errorf(f"{gostrconv.quote(name)} is not a defined function")
        assert fn is not None
        return self.eval_call(dot, fn, fn.builtin, cmd, name, args, final)

    def eval_field(
        self, dot: Any, field_name: str, node: Node, args: list[Node] | None, final: Any, receiver: Any
    ) -> Any:
        if receiver is INVALID:
            if self.missingkey == "error":
                self.errorf(f"nil data; no entry for key {gostrconv.quote(field_name)}")
            return INVALID
        typ = type_name(receiver)
        rv, nil = indirect(receiver)
        if nil and type(rv) is Iface:
            self.errorf(f"nil pointer evaluating {typ}.{field_name}")
        if isinstance(rv, GoObject):
            method = rv.go_method(field_name)
            if method is not None:
                fn = GoFunc(field_name, (), False, lambda _state, *a: method(*a))
                return self.eval_call(dot, fn, False, node, field_name, args, final)
        has_args = (args is not None and len(args) > 1) or final is not _MISSING
        if isinstance(rv, GoStruct):
            found, value = rv.go_field(field_name)
            if found:
                if has_args:
                    self.errorf(f"{field_name} has arguments but cannot be invoked as function")
                return value
        elif type(rv) is dict or isinstance(rv, GoMap):
            if has_args:
                self.errorf(f"{field_name} is not a method but has arguments")
            if isinstance(rv, GoMap):
                found, value = rv.lookup(field_name)
                if found:
                    return value
                zero = rv.zero_elem()
            else:
                if field_name in rv:
                    v = rv[field_name]
                    return NIL_IFACE if v is None else Iface(v)
                zero = NIL_IFACE
            if self.missingkey == "zero":
                return zero
            if self.missingkey == "error":
                self.errorf(f"map has no entry for key {gostrconv.quote(field_name)}")
            return INVALID
        self.errorf(f"can't evaluate field {field_name} in type {typ}")

    def eval_call(
        self, dot: Any, fn: GoFunc, is_builtin: bool, node: Node, name: str, args: list[Node] | None, final: Any
    ) -> Any:
        call_args = args[1:] if args is not None else []
        params = fn.params
        num_in = len(call_args) + (0 if final is _MISSING else 1)
        if fn.variadic:
            num_fixed = len(params) - 1
            if num_in < num_fixed:
                self.errorf(f"wrong number of args for {name}: want at least {len(params) - 1} got {len(call_args)}")
        else:
            num_fixed = len(call_args)
            if num_in != len(params):
                self.errorf(f"wrong number of args for {name}: want {len(params)} got {num_in}")

        if is_builtin and (name == "and" or name == "or"):
            v: Any = INVALID
            want = name == "or"
            for arg in call_args:
                v = self.eval_arg(dot, "value", arg)
                if truth(v) == want:
                    return v
            if final is not _MISSING:
                v = self.validate_type(final, "value")
            return v

        argv: list[Any] = []
        i = 0
        while i < num_fixed and i < len(call_args):
            argv.append(self.eval_arg(dot, params[i], call_args[i]))
            i += 1
        if fn.variadic:
            elem = params[-1]
            while i < len(call_args):
                argv.append(self.eval_arg(dot, elem, call_args[i]))
                i += 1
        if final is not _MISSING:
            if fn.variadic:
                t = params[num_in - 1] if num_in - 1 < num_fixed else params[-1]
            else:
                t = params[-1]
            argv.append(self.validate_type(final, t))
        if is_builtin and name == "call":
            if call_args:
                callee = str(call_args[0])
            else:
                callee = final if type(final) is str else f"<{type_name(indirect_interface(final))} Value>"
            argv.insert(0, callee)
        try:
            result = fn.impl(self, *argv)
        except FuncError as err:
            self.node = node
            self.errorf(f"error calling {name}: {err}")
        if type(result) is str and len(result) > 4096:
            # A string grown by a function (``print $s $s`` in a loop doubles it) is refused at the
            # output limit even if it is never printed; building it took time, so look at the clock.
            self.budget.check_value(utf8_len(result))
            self.budget.check_time()
        return result

    def validate_type(self, value: Any, typ: str | None) -> Any:
        if typ is None:
            return value
        if typ == "value":
            return value
        if typ == "any":
            if value is INVALID:
                return None
            if type(value) is Iface:
                return value.v
            return value
        # typ == "string"
        if value is INVALID:
            self.errorf("invalid value; expected string")
        if type(value) is str:
            return value
        if type(value) is Iface and value.v is not None:
            value = value.v
            if type(value) is str:
                return value
        self.errorf(f"wrong type for value; expected string; got {type_name(value)}")

    def eval_arg(self, dot: Any, typ: str | None, n: Node) -> Any:
        self.node = n
        t = type(n)
        if t is DotNode:
            return self.validate_type(dot, typ)
        if t is NilNode:
            if typ == "value":
                return INVALID
            if typ == "any":
                return None
            self.errorf(f"cannot assign nil to {typ}")
        if t is FieldNode:
            return self.validate_type(self.eval_field_node(dot, n, [n], _MISSING), typ)  # type: ignore[arg-type]
        if t is VariableNode:
            return self.validate_type(self.eval_variable_node(dot, n, None, _MISSING), typ)  # type: ignore[arg-type]
        if t is PipeNode:
            return self.validate_type(self.eval_pipeline(dot, n), typ)  # type: ignore[arg-type]
        if t is IdentifierNode:
            return self.validate_type(self.eval_function(dot, n, n, None, _MISSING), typ)  # type: ignore[arg-type]
        if t is ChainNode:
            return self.validate_type(self.eval_chain_node(dot, n, None, _MISSING), typ)  # type: ignore[arg-type]
        if typ == "string":
            if t is StringNode:
                return n.text  # type: ignore[attr-defined]
            self.errorf(f"expected string; found {n}")
        return self.eval_empty_interface(dot, n)

    def eval_empty_interface(self, dot: Any, n: Node) -> Any:
        self.node = n
        t = type(n)
        if t is BoolNode:
            return n.value  # type: ignore[attr-defined]
        if t is NumberNode:
            return self.ideal_constant(n)  # type: ignore[arg-type]
        if t is StringNode:
            return n.text  # type: ignore[attr-defined]
        self.errorf(f"can't handle assignment of {n} to empty interface argument")

    # -- printing ------------------------------------------------------------------------------

    def print_value(self, node: Node, value: Any) -> None:
        self.node = node
        t = type(value)
        if t is str:
            self.out.write(value)
            return
        if value is INVALID:
            self.out.write("<no value>")
            return
        if isinstance(value, GoStruct) and value.go_pointer and not value.go_stringer:
            value = Deref(value)  # Go prints the struct a pointer points to (unless *T has String)
        self.out.write(gofmt.sprint([value]))


def _drive(walker: _Walker) -> None:
    """Run ``walker`` and every walker it asks for, on an explicit stack, until all are done.

    ``break``/``continue`` travel outwards by being thrown into the enclosing walkers; any other
    error ends the execution at once (the suspended walkers are simply dropped).
    """
    stack = [walker]
    try:
        _run(stack)
    finally:
        stack.clear()  # an error leaves suspended walkers: free them now, not with the traceback


def _run(stack: list[_Walker]) -> None:
    signal: BaseException | None = None
    while stack:
        top = stack[-1]
        try:
            if signal is None:
                request = next(top)
            else:
                thrown, signal = signal, None
                request = top.throw(thrown)
        except StopIteration:
            stack.pop()
            continue
        except (_Break, _Continue) as exc:
            stack.pop()
            signal = exc.with_traceback(None)
            continue
        state, dot, node = request
        state.budget.step()
        try:
            child = state.enter(dot, node)
        except (_Break, _Continue) as exc:
            signal = exc.with_traceback(None)
            continue
        if child is not None:
            stack.append(child)
            if len(stack) > MAX_NESTING:
                raise nesting_error(MAX_NESTING)


def render(
    root: ListNode,
    data: Any,
    *,
    text: str,
    trees: dict[str, ListNode],
    funcs: dict[str, GoFunc],
    missingkey: str,
    now: datetime.date | datetime.datetime | None,
    budget: Budget | None = None,
) -> str:
    """Execute ``root`` with ``data`` as dot; returns the output (Ollama discards partial output).

    ``budget`` bounds steps, time and output (a fresh default :class:`Budget` when omitted); past it
    the render stops with :class:`~pollama.errors.TemplateLimitExceeded`.
    """
    state = State(text=text, trees=trees, funcs=funcs, missingkey=missingkey, now=now, budget=budget)
    state.vars = [["$", data]]
    state.budget.check_time()
    try:
        walker = state.enter(data, root)
        if walker is not None:
            _drive(walker)
    except RecursionError:
        raise nesting_error() from None
    out = state.out.getvalue()
    if not out.isascii() and any("\udc80" <= c <= "\udcff" for c in out):
        out = "".join("\ufffd" if "\udc80" <= c <= "\udcff" else c for c in out)
    return out
