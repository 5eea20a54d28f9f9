"""The generic streaming tool-call parser (spec §9.2) for models without a built-in parser.

The model's template says how a tool call starts (a *tag*: ``<tool_call>``, ``[TOOL_CALLS]``, or ``{``
when the call is bare JSON). :class:`ToolCallParser` streams the text before the tag as content, then
finds calls in what follows: the earliest declared tool name, and the first balanced JSON object that
parses, from which the arguments are taken. Every decision is made only once it cannot change with
more output, so however the output is cut into chunks the result is the same as for the whole text.

Calls are Ollama API dicts: ``{"id": "call_…", "function": {"index": n, "name": …, "arguments": {…}}}``.
"""

from __future__ import annotations

import enum
import json
import secrets
import string
from collections.abc import Callable, Iterable
from typing import Any

_ID_ALPHABET = string.ascii_lowercase + string.digits
_BRACKETS = {"{": "}", "[": "]"}


def new_tool_call_id() -> str:
    """A fresh tool call id: ``call_`` and 8 random lowercase letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


class _State(enum.Enum):
    LOOKING_FOR_TAG = "looking for tag"
    TOOL_CALLING = "tool calling"
    DONE = "done"


class _Skip:
    """A JSON object that names a tool but has no usable arguments: consumed, not a call."""


_SKIP = _Skip()


def _as_object(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _find_arguments(obj: dict[str, Any], name: str) -> tuple[dict[str, Any] | None, bool]:
    """``(arguments, found)`` in ``obj``: ``arguments``/``parameters`` of an object with a ``name``,
    the value under the tool's name, or the same search in nested objects and arrays."""
    if "name" in obj:
        for key in ("arguments", "parameters"):
            args = _as_object(obj.get(key))
            if args is not None:
                return args, True
        return None, True
    if name in obj:
        args = _as_object(obj[name])
        if args is not None:
            return args, True
    for value in obj.values():
        children = value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, dict):
                args, found = _find_arguments(child, name)
                if found:
                    return args, True
    return None, False


def extract_arguments(obj: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The arguments of a call to ``name`` found in JSON object ``obj``; ``None`` when ``obj`` names a
    call but carries no arguments object (Ollama does not recognise such a call)."""
    args, found = _find_arguments(obj, name)
    return args if found else obj


class ToolCallParser:
    """Splits streamed model output into content and tool calls.

    ``tag`` is the text that starts tool calling (``{`` when the template has none);
    ``tool_names`` the declared tools. ``add`` returns ``(content delta, completed calls)``; ``finish``
    flushes at the end of output.

    Deliberate difference from Ollama: a partial tag held back when the output ends (``"... <tool"``)
    is returned as content by :meth:`finish` instead of being lost, and names are matched at the end
    of output without waiting for a longer name that can no longer come.
    """

    def __init__(self, tag: str, tool_names: Iterable[str], *, id_factory: Callable[[], str] | None = None) -> None:
        self.tag = tag or "{"
        self._names = [name for name in dict.fromkeys(tool_names) if name]
        self._longest = max((len(name) for name in self._names), default=0)
        self._new_id = id_factory or new_tool_call_id
        self._close = _BRACKETS.get(self.tag)  # set for the bracket tags ``{`` and ``[``
        self._state = _State.LOOKING_FOR_TAG
        self._calls = 0
        # Looking for the tag: text held back because it may be the start of the tag.
        self._held = ""
        # Tool calling: the output from the tag on, and where the unparsed part starts.
        self._region = ""
        self._pos = 0
        # Bracket tags: scan state of the outer bracket, and where it closes (index past it).
        self._outer_scan = 0
        self._outer_depth = 0
        self._outer_in_string = False
        self._outer_escaped = False
        self._outer_end: int | None = None
        # The first JSON object after ``_pos``: scan state, and the object once found.
        self._reset_object_scan()

    def _reset_object_scan(self) -> None:
        self._obj_scan = self._pos
        self._obj_depth = 0
        self._obj_start = -1
        self._obj_in_string = False
        self._obj_escaped = False
        self._obj_found: tuple[dict[str, Any], int] | None = None

    @property
    def calls_found(self) -> int:
        """How many calls were returned so far."""
        return self._calls

    # --- streaming -------------------------------------------------------------------------------

    def add(self, chunk: str) -> tuple[str, list[dict[str, Any]]]:
        """Feed the next piece of output; returns ``(content, calls)`` completed by it."""
        if self._state is _State.DONE:
            return chunk, []
        content = ""
        if self._state is _State.LOOKING_FOR_TAG:
            text = self._held + chunk
            index, found = self._find_tag(text)
            if index < 0:
                content, self._held = text, ""
            else:
                content, self._held = text[:index], text[index:]
            # With ``{``/``[`` tags, only output that starts with the tag may be a tool call.
            if self._close is not None and content.strip():
                self._state = _State.DONE
                content, self._held = content + self._held, ""
                return content, []
            if not found:
                return content, []
            self._state = _State.TOOL_CALLING
            self._region, self._held = self._held, ""
            self._pos = 0
            self._reset_object_scan()
        else:
            self._region += chunk
        calls, tail = self._parse(final=False)
        return content + tail, calls

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """End of output: the last calls, and leftover text that turned out to be content."""
        state, self._state = self._state, _State.DONE
        if state is _State.LOOKING_FOR_TAG:
            held, self._held = self._held, ""
            return held, []
        if state is _State.DONE:
            return "", []
        self._state = _State.TOOL_CALLING
        calls, tail = self._parse(final=True)
        if self._state is _State.TOOL_CALLING and self._close is not None and self._calls == 0:
            tail += self._region
        self._state = _State.DONE
        self._region = ""
        return tail, calls

    # --- tag --------------------------------------------------------------------------------------

    def _find_tag(self, text: str) -> tuple[int, bool]:
        """Where the tag (or a partial tag at the very end) starts, and whether it is complete."""
        index = text.find(self.tag)
        if index >= 0:
            return index, True
        for size in range(min(len(text), len(self.tag) - 1), 0, -1):
            if text.endswith(self.tag[:size]):
                return len(text) - size, False
        return -1, False

    # --- calls ------------------------------------------------------------------------------------

    def _parse(self, *, final: bool) -> tuple[list[dict[str, Any]], str]:
        """Take every call now complete; for bracket tags, finish once the outer bracket closed."""
        limit = len(self._region)
        closed = False
        if self._close is not None:
            end = self._scan_outer()
            if end is not None:
                limit, closed = end, True
        calls = []
        while True:
            result = self._next_call(limit, final=final or closed)
            if result is None:
                break
            if isinstance(result, dict):
                calls.append(result)
        tail = ""
        if closed:
            # Nothing in the brackets was a call: they were content after all.
            tail = self._region if self._calls == 0 else self._region[limit:]
            self._state = _State.DONE
            self._region = ""
        return calls, tail

    def _scan_outer(self) -> int | None:
        """Index just past the bracket that closes the tag's bracket (string aware), once seen."""
        if self._outer_end is not None:
            return self._outer_end
        region, opening, closing = self._region, self.tag, self._close
        i = self._outer_scan
        depth, in_string, escaped = self._outer_depth, self._outer_in_string, self._outer_escaped
        while i < len(region):
            c = region[i]
            i += 1
            if in_string:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == '"':
                    in_string = False
            elif c == '"' and depth > 0:
                in_string = True
            elif c == opening:
                depth += 1
            elif c == closing:
                depth -= 1
                if depth == 0:
                    self._outer_end = i
                    break
        self._outer_scan = i
        self._outer_depth, self._outer_in_string, self._outer_escaped = depth, in_string, escaped
        return self._outer_end

    def _next_call(self, limit: int, *, final: bool) -> dict[str, Any] | _Skip | None:
        """The next complete call before ``limit`` (``_SKIP`` for a consumed non-call), or ``None``."""
        match = self._find_name(limit, final=final)
        if match is None:
            return None
        name, name_end = match
        found = self._find_object(limit)
        if found is None:
            return None
        obj, obj_end = found
        self._pos = max(name_end, obj_end)
        self._reset_object_scan()
        arguments = extract_arguments(obj, name)
        if arguments is None:
            return _SKIP
        call = {"id": self._new_id(), "function": {"index": self._calls, "name": name, "arguments": arguments}}
        self._calls += 1
        return call

    def _find_name(self, limit: int, *, final: bool) -> tuple[str, int] | None:
        """The earliest declared tool name after ``_pos`` (longest on ties) and where it ends.

        Unless ``final``, waits while the text ends with the start of a name that would begin at or
        before that match (it could still become an earlier or longer name)."""
        region, pos = self._region, self._pos
        best: str | None = None
        best_at = -1
        for name in self._names:
            at = region.find(name, pos, limit)
            if at >= 0 and (best is None or at < best_at or (at == best_at and len(name) > len(best))):
                best, best_at = name, at
        if best is None:
            return None
        if not final:
            for size in range(max(1, limit - best_at), min(limit - pos, self._longest) + 1):
                tail = region[limit - size : limit]
                if any(len(tail) < len(name) and name.startswith(tail) for name in self._names):
                    return None
        return best, best_at + len(best)

    def _find_object(self, limit: int) -> tuple[dict[str, Any], int] | None:
        """The first balanced JSON object after ``_pos`` that parses, and the index just past it."""
        if self._obj_found is not None:
            return self._obj_found if self._obj_found[1] <= limit else None
        region = self._region
        i = self._obj_scan
        depth, start = self._obj_depth, self._obj_start
        in_string, escaped = self._obj_in_string, self._obj_escaped
        while i < limit:
            c = region[i]
            i += 1
            if in_string:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == '"':
                    in_string = False
            elif c == '"' and depth > 0:
                in_string = True
            elif c == "{":
                if depth == 0:
                    start = i - 1
                depth += 1
            elif c == "}" and depth > 0:
                depth -= 1
                if depth == 0:
                    try:
                        obj = json.loads(region[start:i])
                    except ValueError:
                        obj = None
                    if isinstance(obj, dict):
                        self._obj_found = (obj, i)
                        break
                    start = -1
        self._obj_scan = i
        self._obj_depth, self._obj_start = depth, start
        self._obj_in_string, self._obj_escaped = in_string, escaped
        return self._obj_found
