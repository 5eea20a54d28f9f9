"""Hugging Face-style Jinja chat templates: the prompt formatter of native mode (spec §8.1 item 4).

A model with no Go ``TEMPLATE`` whose GGUF carries ``tokenizer.chat_template`` is prompted through that
Jinja template, rendered the way ``transformers``' ``apply_chat_template`` does it (trim_blocks,
lstrip_blocks, the ``loopcontrols`` extension, ``tojson`` without ASCII escaping, ``raise_exception``,
``strftime_now``) with Ollama API messages converted to the shapes HF templates expect. This module owns
that rendering, the capabilities such a template advertises (``tools``/``thinking``) and its thinking
tags; parsing the model's output is :mod:`pollama.template.thinking` and
:mod:`pollama.template.toolcalls`.

The template comes from a downloaded file, so it is untrusted: it renders only in
``ImmutableSandboxedEnvironment``, and the compiled template is instrumented so that every loop
iteration, every piece of output (also output captured by ``{% set %}`` blocks and macros), every call,
filter and ``+ * ** % ~`` operation checks a time budget and a size limit, so loops that write nothing
are stopped too. A template that loops forever, recurses without end or builds a huge string fails
with :class:`~pollama.errors.TemplateLimitExceeded` (an ``InvalidRequest``: HTTP 400, message
``template: …`` naming the limit) instead of hanging the server or exhausting its memory. The
defaults are the Go engine's (:mod:`pollama.template.limits`); rendering belongs in a worker thread.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, cast

import jinja2
import jinja2.ext
import jinja2.nodes as nodes
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.utils import pass_context
from jinja2.visitor import NodeTransformer

from pollama.errors import TemplateExecError, TemplateLimitExceeded, TemplateParseError
from pollama.template.limits import (
    MAX_OUTPUT,
    TIME_LIMIT,
    Budget,
    describe_size,
    nesting_error,
    utf8_len,
)

#: Default time budget for one render, in seconds.
DEFAULT_TIME_LIMIT = TIME_LIMIT
#: Default cap on the bytes (UTF-8) one render may write (output captured by blocks included); strings
#: a template computes are held to the same number of characters.
DEFAULT_MAX_OUTPUT = MAX_OUTPUT
#: Most items a list, tuple or dict computed by a template may have.
MAX_ITEMS = 1 << 20

# Largest integer a template may compute, in bits (a prompt never needs more; repeated squaring does).
_MAX_INT_BITS = 100_000
# The largest ``indent`` accepted by ``tojson``.
_MAX_JSON_INDENT = 64
# Key of the per-render guard in the template context: not an identifier, so templates cannot name it.
_GUARD_KEY = "pollama:guard"
_TEMPLATE_FILENAME = "<chat template>"
_PRINTF_NUMBERS = re.compile(r"%[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?")


# --- per-render limits ----------------------------------------------------------------------------


class _Guard:
    """The budget of one render seen from the template: every instrumented operation calls into it."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.max_output = budget.max_output

    def tick(self) -> None:
        self.budget.check_time()

    def wrote(self, n: int) -> None:
        self.budget.wrote(n)
        self.tick()

    def size(self, n: int) -> None:
        """Refuse to build a string (or a list of strings' worth) of ``n`` characters."""
        if n > self.max_output:
            raise TemplateLimitExceeded(
                f"template: a computed value exceeds the output limit of {describe_size(self.max_output)}"
            )

    def items(self, n: int) -> None:
        """Refuse to build a list, tuple or dict of ``n`` items."""
        if n > MAX_ITEMS:
            raise TemplateLimitExceeded(f"template: a computed list exceeds the limit of {MAX_ITEMS} items")

    def int_arg(self, value: Any) -> None:
        """Refuse an integer argument so large it can only be meant to blow up the output."""
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > self.max_output:
            raise TemplateLimitExceeded(
                f"template: the number {value} exceeds the output limit of {describe_size(self.max_output)}"
            )

    def result(self, value: Any) -> Any:
        if isinstance(value, str):
            self.size(len(value))
        elif isinstance(value, (list, tuple, dict)):
            self.items(len(value))
        elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _MAX_INT_BITS:
            raise _int_error()
        return value

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.tick()
            yield item

    def format_spec(self, fmt: str, args: Iterable[Any]) -> None:
        """Refuse ``str.format`` field widths/precisions that would blow up the output."""
        for _, _, spec, _ in string.Formatter().parse(fmt):
            for number in re.findall(r"\d+", spec or ""):
                self.int_arg(int(number))
            if spec and "{" in spec:  # widths taken from the arguments
                for arg in args:
                    self.int_arg(arg)

    def printf(self, fmt: str, args: Any) -> None:
        """Refuse ``%``-format widths/precisions (literal or ``*``) that would blow up the output."""
        star = False
        for width, precision in _PRINTF_NUMBERS.findall(fmt):
            for number in (width, precision):
                if number.isdigit():
                    self.int_arg(int(number))
                star = star or number == "*"
        if star:  # widths taken from the arguments
            for arg in args if isinstance(args, tuple) else (args,):
                self.int_arg(arg)


def _int_error() -> TemplateLimitExceeded:
    return TemplateLimitExceeded(f"template: a computed integer exceeds the limit of {_MAX_INT_BITS} bits")


def _guard(context: Context) -> _Guard | None:
    guard = context.get(_GUARD_KEY)
    return guard if isinstance(guard, _Guard) else None


def _len(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 0


# --- instrumentation of the parsed template ----------------------------------------------------


class _Instrument(NodeTransformer):
    """Rewrites a parsed template so loops, literal output and ``~`` go through the render guard."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)  # rewrites the children in place (and returns ``node`` itself)
        node.iter = nodes.Filter(node.iter, "pollama_iter", [], [], None, None, lineno=node.iter.lineno)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        # Literal text becomes a runtime constant so it passes through ``finalize`` (which counts it)
        # instead of being appended to output buffers unseen.
        node.nodes = [
            nodes.Const(child.data, lineno=child.lineno) if isinstance(child, nodes.TemplateData) else child
            for child in node.nodes
        ]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        items = nodes.Tuple(node.nodes, "load", lineno=node.lineno)
        return nodes.Filter(items, "pollama_concat", [], [], None, None, lineno=node.lineno)


class _GenerationExtension(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` (HF's assistant-mask marker) renders its body as is."""

    # jinja2 declares ``Extension.tags`` as a plain (instance-typed) attribute; ClassVar would clash with it.
    tags = {"generation"}  # noqa: RUF012

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


@pass_context
def _iter_filter(context: Context, iterable: Any) -> Any:
    guard = _guard(context)
    return iterable if guard is None else guard.iterate(iterable)


@pass_context
def _concat_filter(context: Context, items: tuple[Any, ...]) -> str:
    parts = [str(item) for item in items]
    guard = _guard(context)
    if guard is not None:
        guard.tick()
        guard.size(sum(len(part) for part in parts))
    return "".join(parts)


@pass_context
def _finalize(context: Context, value: Any) -> Any:
    guard = _guard(context)
    if guard is not None:
        text = "" if value is None else value
        guard.wrote(utf8_len(text if isinstance(text, str) else str(text)))
    return value


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """HF's ``tojson``: ``json.dumps`` without ASCII escaping (and without HTML escaping)."""
    if isinstance(indent, int) and indent > _MAX_JSON_INDENT:
        raise TemplateLimitExceeded(f"template: tojson indent {indent} exceeds the limit of {_MAX_JSON_INDENT}")
    if isinstance(indent, str) and len(indent) > _MAX_JSON_INDENT:
        raise TemplateLimitExceeded(f"template: tojson indent string exceeds the limit of {_MAX_JSON_INDENT}")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _RaisedByTemplate(Exception):
    """``raise_exception(message)`` was called by the template."""


def _raise_exception(message: Any = "") -> None:
    raise _RaisedByTemplate(str(message))


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a built-in filter so it checks the render guard before and after running."""
    # The filter may want the context, eval context or environment before the value.
    pass_arg = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    @pass_context
    def guarded(context: Context, *args: Any, **kwargs: Any) -> Any:
        guard = _guard(context)
        if guard is not None:
            guard.tick()
            args = _precheck_filter(guard, name, args, kwargs)
        if pass_arg == "context":
            args = (context, *args)
        elif pass_arg == "eval_context":
            args = (context.eval_ctx, *args)
        elif pass_arg == "environment":
            args = (context.environment, *args)
        result = func(*args, **kwargs)
        return result if guard is None else guard.result(result)

    guarded.__name__ = getattr(func, "__name__", name)
    return guarded


# Filters whose integer arguments size their result (a width, a count).
_SIZING_FILTERS = frozenset({"center", "indent", "batch", "slice"})
# Filters that turn a string into a list of its characters (or iterate over them to build one).
_ITEMIZING_FILTERS = frozenset(
    {
        "list",
        "unique",
        "batch",
        "slice",
        "map",
        "select",
        "reject",
        "selectattr",
        "rejectattr",
        "groupby",
        "sort",
        "dictsort",
    }
)


def _precheck_filter(guard: _Guard, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse filter calls whose result would be huge; returns the (possibly materialised) args."""
    value = args[0] if args else None
    rest = list(args[1:])
    if name in _SIZING_FILTERS:
        for arg in (*rest, *kwargs.values()):
            guard.int_arg(arg)
    if name in _ITEMIZING_FILTERS and isinstance(value, str):
        guard.items(len(value))
    if name == "replace" and isinstance(value, str) and len(rest) >= 2:
        _precheck_replace(guard, value, str(rest[0]), str(rest[1]))
    elif name == "join" and value is not None and not isinstance(value, str):
        value = list(guard.iterate(value))
        sep = rest[0] if rest else kwargs.get("d", "")
        guard.size(len(str(sep)) * max(len(value) - 1, 0) + sum(_len(v) for v in value))
        return (value, *rest)
    elif name == "sum" and isinstance(value, (list, tuple)):
        # Summing sequences copies the growing total once per item: quadratic, and not interruptible.
        total = sum(_len(v) for v in value)
        guard.items(total)
        if total * len(value) > 50 * MAX_ITEMS:
            raise TemplateLimitExceeded(f"template: summing sequences exceeds the limit of {50 * MAX_ITEMS} copies")
    elif name == "indent" and isinstance(value, str):
        width = rest[0] if rest else kwargs.get("width", 4)
        width_len = len(width) if isinstance(width, str) else int(width)
        guard.size(len(value) + (value.count("\n") + 1) * width_len)
    elif name == "wordwrap" and isinstance(value, str):
        wrapstring = rest[2] if len(rest) > 2 else kwargs.get("wrapstring") or "\n"
        guard.size(len(value) + (len(value) + 1) * len(str(wrapstring)))
    elif name == "format" and isinstance(value, str):
        guard.printf(value, tuple(rest))
    elif name == "center" and isinstance(value, str):
        guard.size(max(len(value), int(rest[0]) if rest else 80))
    return args


def _precheck_replace(guard: _Guard, text: str, old: str, new: str) -> None:
    count = len(text) + 1 if old == "" else text.count(old)
    guard.size(len(text) + count * max(len(new) - len(old), 0))


class _ChatTemplateEnvironment(ImmutableSandboxedEnvironment):
    """HF's chat-template environment, sandboxed and instrumented against runaway templates."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=_finalize,
            extensions=[jinja2.ext.loopcontrols, _GenerationExtension],
        )
        self.filters = {name: _guard_filter(name, func) for name, func in self.filters.items()}
        self.filters["tojson"] = _guard_filter("tojson", _tojson)
        self.filters["pollama_iter"] = _iter_filter
        self.filters["pollama_concat"] = _concat_filter
        self.globals["raise_exception"] = _raise_exception
        self.globals.pop("lipsum", None)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        tree = cast(nodes.Template, _Instrument().visit(tree))
        tree.set_environment(self)
        return tree

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        guard = _guard(context)
        if guard is not None:
            guard.tick()
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, str) and isinstance(times, int):
                        guard.size(len(seq) * max(times, 0))
                    elif isinstance(seq, (list, tuple)) and isinstance(times, int):
                        guard.items(len(seq) * max(times, 0))
                if (
                    isinstance(left, int)
                    and isinstance(right, int)
                    and left.bit_length() + right.bit_length() > _MAX_INT_BITS
                ):
                    raise _int_error()
            elif operator == "**":
                if (
                    isinstance(left, int)
                    and isinstance(right, int)
                    and right > 0
                    and abs(left) > 1
                    and right * left.bit_length() > _MAX_INT_BITS
                ):
                    raise _int_error()
            elif operator == "+":
                if isinstance(left, str) and isinstance(right, str):
                    guard.size(len(left) + len(right))
                elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
                    guard.items(len(left) + len(right))
            elif operator == "%" and isinstance(left, str):
                guard.printf(left, right)
        result = super().call_binop(context, operator, left, right)
        return result if guard is None else guard.result(result)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        guard = _guard(__context)
        if guard is not None:
            guard.tick()
            args = _precheck_call(guard, __obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        return result if guard is None else guard.result(result)


# ``str`` methods whose integer arguments size their result.
_SIZING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _precheck_call(guard: _Guard, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse calls of ``str`` methods whose result would be huge; returns the (materialised) args."""
    target = getattr(func, "__wrapped__", func)  # the sandbox wraps str.format/format_map
    owner = getattr(target, "__self__", None)
    if not isinstance(owner, str):
        return args
    name = getattr(target, "__name__", "")
    if name in _SIZING_METHODS:
        for arg in (*args, *kwargs.values()):
            guard.int_arg(arg)
    if name == "format":
        guard.format_spec(owner, (*args, *kwargs.values()))
    elif name == "format_map" and args and isinstance(args[0], Mapping):
        guard.format_spec(owner, args[0].values())
    elif name == "replace" and len(args) >= 2:
        _precheck_replace(guard, owner, str(args[0]), str(args[1]))
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        guard.size(len(owner) + owner.count("\t") * max(int(tabsize), 0))
    elif name == "join" and len(args) == 1 and not isinstance(args[0], str):
        items = list(guard.iterate(args[0]))
        guard.size(len(owner) * max(len(items) - 1, 0) + sum(_len(v) for v in items))
        return (items,)
    return args


# --- messages ------------------------------------------------------------------------------------


def _hf_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """One Ollama API message in the shape HF chat templates read."""
    out: dict[str, Any] = {"role": message.get("role", ""), "content": message.get("content") or ""}
    thinking = message.get("thinking")
    if thinking:
        out["reasoning_content"] = thinking
        out["thinking"] = thinking
    calls = message.get("tool_calls")
    if calls:
        converted = []
        for call in calls:
            function = call.get("function") or {}
            item: dict[str, Any] = {
                "type": "function",
                "function": {"name": function.get("name", ""), "arguments": function.get("arguments") or {}},
            }
            if call.get("id"):
                item["id"] = call["id"]
            converted.append(item)
        out["tool_calls"] = converted
    if message.get("tool_name"):
        out["name"] = message["tool_name"]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    return out


# --- the template ------------------------------------------------------------------------------


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line of the innermost template frame in a (jinja-rewritten) traceback."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class ChatTemplate:
    """A compiled Jinja chat template; compile once, render per request (renders are independent)."""

    def __init__(self, source: str) -> None:
        """Compile ``source``. Raises :class:`TemplateParseError` with Jinja's message and line."""
        self.source = source
        self._env = _ChatTemplateEnvironment()
        try:
            self._template = self._env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateParseError(f"chat template syntax error at line {exc.lineno}: {exc.message}") from None
        # Tracebacks through template code are rewritten to template lines under this name.
        self._template.filename = _TEMPLATE_FILENAME

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        bos_token: str = "",
        eos_token: str = "",
        enable_thinking: bool | None = None,
        reasoning_effort: str | None = None,
        extra: Mapping[str, Any] | None = None,
        now: datetime | None = None,
        time_limit: float = DEFAULT_TIME_LIMIT,
        max_output: int = DEFAULT_MAX_OUTPUT,
        budget: Budget | None = None,
    ) -> str:
        """Render the prompt for Ollama API ``messages`` (and ``tools``), as ``apply_chat_template`` would.

        ``enable_thinking``/``reasoning_effort`` are passed only when set, so templates can test
        ``is defined``; ``extra`` adds more variables. ``now`` fixes what ``strftime_now`` sees. A render
        that runs past ``time_limit`` seconds or writes more than ``max_output`` bytes fails with
        ``TemplateLimitExceeded``; a ``budget`` (whose clock started when it was made) replaces both.
        """
        clock = now

        def strftime_now(fmt: str) -> str:
            return (clock or datetime.now()).strftime(fmt)

        variables: dict[str, Any] = dict(extra or {})
        variables.update(
            {
                "messages": [_hf_message(m) for m in messages],
                "tools": [dict(t) for t in tools] if tools else None,
                "add_generation_prompt": add_generation_prompt,
                "bos_token": bos_token,
                "eos_token": eos_token,
                "strftime_now": strftime_now,
            }
        )
        if enable_thinking is not None:
            variables["enable_thinking"] = enable_thinking
        if reasoning_effort is not None:
            variables["reasoning_effort"] = reasoning_effort
        guard = _Guard(Budget(time_limit=time_limit, max_output=max_output) if budget is None else budget)
        variables[_GUARD_KEY] = guard

        parts: list[str] = []
        try:
            context = self._template.new_context(variables)
            for chunk in self._template.root_render_func(context):
                parts.append(chunk)
                guard.tick()
        except TemplateExecError:
            raise
        except Exception:  # noqa: BLE001 - _raise_exec_error turns every failure of untrusted code into one error
            self._raise_exec_error()
        return "".join(parts)

    def _raise_exec_error(self) -> None:
        try:
            self._env.handle_exception()  # re-raises with the traceback rewritten to template lines
        except TemplateExecError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of untrusted code becomes one error
            line = _template_line(exc.__traceback__)
            where = f" at line {line}" if line else ""
            if isinstance(exc, _RaisedByTemplate):
                raise TemplateExecError(f"chat template raised an error{where}: {exc}") from None
            if isinstance(exc, RecursionError):
                raise nesting_error() from None
            if isinstance(exc, MemoryError):
                raise TemplateLimitExceeded("template: rendering ran out of memory") from None
            if isinstance(exc, OverflowError) and "Range too big" in str(exc):
                raise TemplateLimitExceeded(f"template: range exceeds the limit of {MAX_RANGE} items") from None
            detail = str(exc) or type(exc).__name__
            raise TemplateExecError(f"chat template error{where}: {detail}") from None


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    enable_thinking: bool | None = None,
    reasoning_effort: str | None = None,
    extra: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
    max_output: int = DEFAULT_MAX_OUTPUT,
    budget: Budget | None = None,
) -> str:
    """Compile ``source`` and render it once (see :meth:`ChatTemplate.render`)."""
    return ChatTemplate(source).render(
        messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        enable_thinking=enable_thinking,
        reasoning_effort=reasoning_effort,
        extra=extra,
        now=now,
        time_limit=time_limit,
        max_output=max_output,
        budget=budget,
    )


# --- what a template advertises -------------------------------------------------------------------


def jinja_capabilities(source: str) -> list[str]:
    """Capabilities a native-mode Jinja template advertises (spec §9.1/§9.2), in Ollama's order."""
    capabilities = []
    if "tools" in source or "tool_call" in source:
        capabilities.append("tools")
    if jinja_thinking_tags(source) is not None:
        capabilities.append("thinking")
    return capabilities


def jinja_thinking_tags(source: str) -> tuple[str, str] | None:
    """``("<think>", "</think>")`` when the template mentions both tags, else ``None``."""
    if "<think>" in source and "</think>" in source:
        return "<think>", "</think>"
    return None


def template_tokens(metadata: Mapping[str, Any]) -> tuple[str, str]:
    """The ``(bos_token, eos_token)`` strings a chat template is rendered with, from GGUF metadata.

    Needs ``tokenizer.ggml.tokens`` read in full (``read_gguf(path, arrays="all")``); a token that
    cannot be looked up is ``""``.
    """
    tokens = metadata.get("tokenizer.ggml.tokens")

    def token(key: str) -> str:
        index = metadata.get(key)
        if isinstance(tokens, list) and isinstance(index, int) and 0 <= index < len(tokens):
            return str(tokens[index])
        return ""

    return token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
