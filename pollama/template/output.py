"""Parsing a model's streamed output into content, thinking and tool calls.

``OutputParser`` chains the two streaming parsers beside it: the thinking parser (``thinking.py``)
takes the reasoning out first, then the tool-call parser (``toolcalls.py``) takes the calls out of
what is left. Which of them run is decided by what the prompt implied (the thinking tags and the
tool-call tag the template uses) and by the request (``think`` and the declared tools).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pollama.template.thinking import ThinkingParser
from pollama.template.toolcalls import ToolCallParser


@dataclass
class ParsedOutput:
    """One piece of parsed output."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls)


class OutputParser:
    """Splits a generation's text, as it streams, into ``ParsedOutput`` pieces.

    ``thinking_tags`` are used only when ``think`` is truthy; a prompt that already ends with the
    opening tag (the template prefilled it) starts inside the thinking. Tool calls are parsed only
    when the request declared ``tools`` and the template has a ``tool_tag``.
    """

    def __init__(
        self,
        *,
        prompt: str = "",
        think: bool | str | None = None,
        thinking_tags: tuple[str, str] | None = None,
        tool_tag: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self._thinker: ThinkingParser | None = None
        if thinking_tags and think not in (None, False):
            opening, closing = thinking_tags
            self._thinker = ThinkingParser(opening, closing, started=prompt.rstrip().endswith(opening))
        self._tools: ToolCallParser | None = None
        if tools and tool_tag:
            names = [str(t.get("function", {}).get("name", "")) for t in tools]
            self._tools = ToolCallParser(tool_tag, [n for n in names if n])

    def add(self, text: str) -> ParsedOutput:
        """The parsed part of the next piece of output (text that may still be a tag is held back)."""
        out = ParsedOutput(content=text)
        if self._thinker is not None:
            out.thinking, out.content = self._thinker.add(text)
        if self._tools is not None and out.content:
            out.content, out.tool_calls = self._tools.add(out.content)
        return out

    def finish(self) -> ParsedOutput:
        """Whatever was held back, once the output has ended."""
        out = ParsedOutput()
        if self._thinker is not None:
            out.thinking, out.content = self._thinker.finish()
        if self._tools is not None:
            more, calls = self._tools.add(out.content) if out.content else ("", [])
            rest, last = self._tools.finish()
            out.content = more + rest
            out.tool_calls = calls + last
        return out
