"""The generic streaming thinking parser (spec §9.1) and stripping think blocks from history.

A model whose template wraps reasoning in tags (``<think>``…``</think>``) writes them into its output;
:class:`ThinkingParser` splits the streamed text into ``thinking`` and ``content`` as it arrives, holding
back only what might still turn out to be (part of) a tag, so that however the output is cut into
chunks the concatenated result is the same. Ollama uses it when the request's ``think`` is truthy and
the tags are known (inferred from a Go template, or ``<think>`` in a Jinja template).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any


class ThinkingState(enum.Enum):
    """Where the parser is in the output (Ollama's ``thinkingState``)."""

    LOOKING_FOR_OPENING = "looking for opening"
    THINKING_STARTED_EATING_WHITESPACE = "thinking started, eating whitespace"
    THINKING = "thinking"
    THINKING_DONE_EATING_WHITESPACE = "thinking done, eating whitespace"
    THINKING_DONE = "thinking done"


def _overlap(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ThinkingParser:
    """Splits streamed model output into ``(thinking, content)`` deltas.

    * Looking for the opening tag: leading whitespace is ignored; text that starts with the tag enters
      thinking (whitespace after the tag is eaten); text that is still a prefix of the tag, or only
      whitespace, is held back; anything else means the model skipped thinking, and everything
      (untrimmed) is content from then on.
    * Thinking: text is thinking until the closing tag; a suffix that could begin the closing tag is
      held back. Whitespace right after the closing tag is eaten; the rest is content.
    * Done: everything is content.

    ``started=True`` is for prompts that already end with the opening tag (the template prefilled it).
    """

    def __init__(self, opening: str = "<think>", closing: str = "</think>", *, started: bool = False) -> None:
        if not opening or not closing:
            raise ValueError("thinking tags must not be empty")
        self.opening = opening
        self.closing = closing
        self._state = ThinkingState.THINKING_STARTED_EATING_WHITESPACE if started else ThinkingState.LOOKING_FOR_OPENING
        self._buffer = ""

    @property
    def state(self) -> ThinkingState:
        """The parser's current state."""
        return self._state

    def add(self, chunk: str) -> tuple[str, str]:
        """Feed the next piece of output; returns the ``(thinking, content)`` now known."""
        self._buffer += chunk
        thinking: list[str] = []
        content: list[str] = []
        again = True
        while again:
            think, text, again = self._eat()
            thinking.append(think)
            content.append(text)
        return "".join(thinking), "".join(content)

    def finish(self) -> tuple[str, str]:
        """End of output: flush what was held back (a partial tag is plain text after all)."""
        held, self._buffer = self._buffer, ""
        state, self._state = self._state, ThinkingState.THINKING_DONE
        if state is ThinkingState.LOOKING_FOR_OPENING:
            return "", held
        if state is ThinkingState.THINKING:
            return held, ""
        if state is ThinkingState.THINKING_DONE:
            return "", held
        return "", ""  # only whitespace that would have been eaten

    def _eat(self) -> tuple[str, str, bool]:
        """One state-machine step over the buffer: ``(thinking, content, run again)``."""
        buffer = self._buffer
        trimmed = buffer.lstrip()
        state = self._state
        if state is ThinkingState.LOOKING_FOR_OPENING:
            if trimmed.startswith(self.opening):
                after = trimmed[len(self.opening) :].lstrip()
                self._buffer = after
                self._state = ThinkingState.THINKING if after else ThinkingState.THINKING_STARTED_EATING_WHITESPACE
                return "", "", True
            if not trimmed or self.opening.startswith(trimmed):
                return "", "", False
            self._state = ThinkingState.THINKING_DONE
            self._buffer = ""
            return "", buffer, False
        if state is ThinkingState.THINKING_STARTED_EATING_WHITESPACE:
            if not trimmed:
                self._buffer = ""
                return "", "", False
            self._state = ThinkingState.THINKING
            self._buffer = trimmed
            return "", "", True
        if state is ThinkingState.THINKING:
            index = buffer.find(self.closing)
            if index >= 0:
                remaining = buffer[index + len(self.closing) :].lstrip()
                self._buffer = ""
                self._state = (
                    ThinkingState.THINKING_DONE if remaining else ThinkingState.THINKING_DONE_EATING_WHITESPACE
                )
                return buffer[:index], remaining, False
            keep = _overlap(buffer, self.closing)
            self._buffer = buffer[len(buffer) - keep :] if keep else ""
            return buffer[: len(buffer) - keep], "", False
        if state is ThinkingState.THINKING_DONE_EATING_WHITESPACE:
            self._buffer = ""
            if trimmed:
                self._state = ThinkingState.THINKING_DONE
            return "", trimmed, False
        self._buffer = ""
        return "", buffer, False


def split_thinking(
    text: str, opening: str = "<think>", closing: str = "</think>", *, started: bool = False
) -> tuple[str, str]:
    """``(thinking, content)`` of a whole output, exactly as streaming it through the parser gives."""
    parser = ThinkingParser(opening, closing, started=started)
    thinking, content = parser.add(text)
    more_thinking, more_content = parser.finish()
    return thinking + more_thinking, content + more_content


def strip_thinking(text: str, opening: str = "<think>", closing: str = "</think>") -> str:
    """``text`` without its leading think block, as Ollama strips it from earlier assistant turns.

    Like Ollama this feeds the parser without finishing it, so an unclosed think block (or text that
    is only whitespace or a partial tag) leaves nothing.
    """
    return ThinkingParser(opening, closing).add(text)[1]


def strip_thinking_from_history(
    messages: Sequence[Mapping[str, Any]], opening: str = "<think>", closing: str = "</think>"
) -> list[dict[str, Any]]:
    """Copies of ``messages`` with think blocks stripped from assistant messages before the last user
    message (Ollama does this for the ``qwen3`` family and ``deepseek-r1``, spec §2.3)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    out = []
    for i, message in enumerate(messages):
        copy = dict(message)
        if copy.get("role") == "assistant" and i < last_user:
            copy["content"] = strip_thinking(str(copy.get("content") or ""), opening, closing)
        out.append(copy)
    return out
