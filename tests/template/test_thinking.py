"""The generic streaming thinking parser: each state of spec §9.1, and the same result however the
output is cut into chunks."""

from __future__ import annotations

import pytest

from pollama.template.thinking import (
    ThinkingParser,
    ThinkingState,
    split_thinking,
    strip_thinking,
    strip_thinking_from_history,
)


def feed(
    chunks: list[str], opening: str = "<think>", closing: str = "</think>", *, started: bool = False
) -> tuple[str, str]:
    parser = ThinkingParser(opening, closing, started=started)
    thinking = content = ""
    for chunk in chunks:
        t, c = parser.add(chunk)
        thinking += t
        content += c
    t, c = parser.finish()
    return thinking + t, content + c


def splits(text: str) -> list[list[str]]:
    """Every way to cut ``text`` once or twice, and character by character."""
    out = [[text], list(text)]
    n = len(text)
    out += [[text[:i], text[i:]] for i in range(n + 1)]
    out += [[text[:i], text[i:j], text[j:]] for i in range(n + 1) for j in range(i, n + 1)]
    return out


CASES = [
    # (text, opening, closing, started, expected thinking, expected content)
    ("<think>Let me think.</think>The answer is 4.", "<think>", "</think>", False, "Let me think.", "The answer is 4."),
    ("The answer is 4.", "<think>", "</think>", False, "", "The answer is 4."),
    ("  \n<think>\n  Hmm, 2+2.\n</think>\n\n  Four.", "<think>", "</think>", False, "Hmm, 2+2.\n", "Four."),
    ("  Four, <think>no</think>", "<think>", "</think>", False, "", "  Four, <think>no</think>"),
    (
        "<think>I am still thinking when the output ends",
        "<think>",
        "</think>",
        False,
        "I am still thinking when the output ends",
        "",
    ),
    (
        "<think>a < b and </thin is not a tag</think>x",
        "<think>",
        "</think>",
        False,
        "a < b and </thin is not a tag",
        "x",
    ),
    ("\n\nreasoning here</think>\n\nDone.", "<think>", "</think>", True, "reasoning here", "Done."),
    ("<thinking>x</thinking>", "<think>", "</think>", False, "", "<thinking>x</thinking>"),
    ("<think></think>   ", "<think>", "</think>", False, "", ""),
    ("◁think▷深く考える◁/think▷答え", "◁think▷", "◁/think▷", False, "深く考える", "答え"),
    (
        "<|channel|>thought<|message|>plan<|end|> result",
        "<|channel|>thought<|message|>",
        "<|end|>",
        False,
        "plan",
        "result",
    ),
    ("<thi", "<think>", "</think>", False, "", "<thi"),
    ("   ", "<think>", "</think>", False, "", "   "),
]


@pytest.mark.parametrize(("text", "opening", "closing", "started", "thinking", "content"), CASES)
def test_whole_text(text: str, opening: str, closing: str, started: bool, thinking: str, content: str) -> None:
    assert split_thinking(text, opening, closing, started=started) == (thinking, content)


@pytest.mark.parametrize(("text", "opening", "closing", "started", "thinking", "content"), CASES)
def test_every_split_gives_the_same_result(
    text: str, opening: str, closing: str, started: bool, thinking: str, content: str
) -> None:
    for chunks in splits(text):
        assert feed(chunks, opening, closing, started=started) == (thinking, content), chunks


def test_streams_thinking_before_the_closing_tag_arrives() -> None:
    parser = ThinkingParser()
    assert parser.add("  <thi") == ("", "")
    assert parser.state is ThinkingState.LOOKING_FOR_OPENING
    assert parser.add("nk>\n") == ("", "")
    assert parser.state is ThinkingState.THINKING_STARTED_EATING_WHITESPACE
    assert parser.add("First, ") == ("First, ", "")
    assert parser.add("add.</th") == ("add.", "")  # the partial closing tag is held back
    assert parser.add("ink>  ") == ("", "")
    assert parser.state is ThinkingState.THINKING_DONE_EATING_WHITESPACE
    assert parser.add("\n4") == ("", "4")
    assert parser.add(" is it") == ("", " is it")
    assert parser.finish() == ("", "")


def test_content_without_thinking_is_streamed_untrimmed() -> None:
    parser = ThinkingParser()
    assert parser.add("  ") == ("", "")
    assert parser.add(" Hello") == ("", "   Hello")
    assert parser.state is ThinkingState.THINKING_DONE
    assert parser.add("<think>") == ("", "<think>")


def test_empty_tags_are_refused() -> None:
    with pytest.raises(ValueError):
        ThinkingParser("", "</think>")


def test_strip_thinking_like_ollama() -> None:
    assert strip_thinking("<think>plan</think>\n\nAnswer") == "Answer"
    assert strip_thinking("Plain answer") == "Plain answer"
    assert strip_thinking("<think>never closed") == ""


def test_strip_thinking_from_history_only_before_the_last_user_message() -> None:
    messages = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "<think>easy</think>2"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>prefill"},
    ]
    out = strip_thinking_from_history(messages)
    assert [m["content"] for m in out] == ["1+1?", "2", "2+2?", "<think>prefill"]
    assert messages[1]["content"] == "<think>easy</think>2"  # the input is not modified
