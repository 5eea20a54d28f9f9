"""The generic streaming tool-call parser (spec §9.2) on realistic model outputs, and the same result
however the output is cut into chunks."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest

from pollama.template.toolcalls import ToolCallParser, extract_arguments, new_tool_call_id

TOOLS = ["get_weather", "get_time", "get"]


def counter_ids() -> Callable[[], str]:
    numbers = itertools.count()
    return lambda: f"call_{next(numbers):08d}"


def feed(tag: str, chunks: list[str], names: list[str] = TOOLS) -> tuple[str, list[dict[str, Any]]]:
    parser = ToolCallParser(tag, names, id_factory=counter_ids())
    content = ""
    calls: list[dict[str, Any]] = []
    for chunk in chunks:
        text, found = parser.add(chunk)
        content += text
        calls += found
    text, found = parser.finish()
    return content + text, calls + found


def call(index: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"call_{index:08d}", "function": {"index": index, "name": name, "arguments": arguments}}


CASES: list[tuple[str, str, str, str, list[dict[str, Any]]]] = [
    # (id, tag, output, expected content, expected calls)
    (
        "qwen",
        "<tool_call>",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "",
        [call(0, "get_weather", {"city": "Paris"})],
    ),
    (
        "qwen-content-first-two-calls",
        "<tool_call>",
        'Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}\n</tool_call>',
        "Let me look that up.\n",
        [call(0, "get_weather", {"city": "Paris"}), call(1, "get_time", {"timezone": "Europe/Paris"})],
    ),
    (
        "mistral",
        "[TOOL_CALLS]",
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
        '{"name": "get_time", "arguments": {}}]',
        "",
        [call(0, "get_weather", {"city": "Paris", "unit": "celsius"}), call(1, "get_time", {})],
    ),
    (
        "llama3-bare-json",
        "{",
        '{"name": "get_weather", "parameters": {"city": "San Francisco, CA"}}',
        "",
        [call(0, "get_weather", {"city": "San Francisco, CA"})],
    ),
    (
        "llama3-leading-space-and-trailing-text",
        "{",
        '\n\n{"name": "get_time", "parameters": {"timezone": "UTC"}} That is all.',
        "\n\n That is all.",
        [call(0, "get_time", {"timezone": "UTC"})],
    ),
    (
        "arguments-as-json-string",
        "<tool_call>",
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\", \\"days\\": 3}"}</tool_call>',
        "",
        [call(0, "get_weather", {"city": "Oslo", "days": 3})],
    ),
    (
        "nested-and-braces-in-strings",
        "<tool_call>",
        '<tool_call>{"name": "get_weather", "arguments": {"where": {"city": "Paris", '
        '"note": "use } and { and \\" here"}, "list": [1, {"a": "]"}]}}</tool_call>',
        "",
        [
            call(
                0,
                "get_weather",
                {"where": {"city": "Paris", "note": 'use } and { and " here'}, "list": [1, {"a": "]"}]},
            )
        ],
    ),
    (
        "value-under-tool-name",
        "[TOOL_CALLS]",
        '[TOOL_CALLS] {"get_weather": {"city": "Rome"}}',
        "",
        [call(0, "get_weather", {"city": "Rome"})],
    ),
    (
        "nested-call-object",
        "<tool_call>",
        '<tool_call>{"tool_calls": [{"type": "function", "function": {"name": "get_time", '
        '"arguments": {"tz": "CET"}}}]}',
        "",
        [call(0, "get_time", {"tz": "CET"})],
    ),
    (
        "bare-arguments-object",
        "<tool_call>",
        '<tool_call>get_weather {"city": "Lima"}',
        "",
        [call(0, "get_weather", {"city": "Lima"})],
    ),
    (
        "longest-name-wins",
        "<tool_call>",
        '<tool_call>{"name": "get_time", "arguments": {}}',
        "",
        [call(0, "get_time", {})],
    ),
    (
        "not-a-tool-call-with-brace-tag",
        "{",
        '{"answer": 42, "text": "not a call"} and more text',
        '{"answer": 42, "text": "not a call"} and more text',
        [],
    ),
    (
        "prose-before-brace",
        "{",
        'Sure! Here is JSON: {"name": "get_weather", "parameters": {"city": "Paris"}}',
        'Sure! Here is JSON: {"name": "get_weather", "parameters": {"city": "Paris"}}',
        [],
    ),
    (
        "unclosed-brace-is-content",
        "{",
        '{"name": "get_weather", "parameters": {"city": "Par',
        '{"name": "get_weather", "parameters": {"city": "Par',
        [],
    ),
    (
        "no-tag-at-all",
        "<tool_call>",
        "The weather in Paris is sunny. <tool",
        "The weather in Paris is sunny. <tool",
        [],
    ),
    ("bracket-tag-plain-list", "[", "[1, 2, 3] are the numbers", "[1, 2, 3] are the numbers", []),
    (
        "name-without-arguments-is-not-a-call",
        "<tool_call>",
        '<tool_call>{"name": "get_time"}</tool_call><tool_call>{"name": "get_weather", "arguments": {"city": "Bern"}}',
        "",
        [call(0, "get_weather", {"city": "Bern"})],
    ),
]


@pytest.mark.parametrize(("tag", "text", "content", "calls"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_whole_output(tag: str, text: str, content: str, calls: list[dict[str, Any]]) -> None:
    assert feed(tag, [text]) == (content, calls)


@pytest.mark.parametrize(("tag", "text", "content", "calls"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_split_gives_the_same_result(tag: str, text: str, content: str, calls: list[dict[str, Any]]) -> None:
    expected = (content, calls)
    assert feed(tag, list(text)) == expected
    for i in range(len(text) + 1):
        assert feed(tag, [text[:i], text[i:]]) == expected, i
    # Three pieces: every first cut against a spread of second cuts.
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1, 7):
            assert feed(tag, [text[:i], text[i:j], text[j:]]) == expected, (i, j)


def test_content_streams_before_the_tag_and_holds_back_a_partial_tag() -> None:
    parser = ToolCallParser("<tool_call>", ["get_weather"], id_factory=counter_ids())
    assert parser.add("Checking") == ("Checking", [])
    assert parser.add(" now <tool_") == (" now ", [])
    assert parser.add('call>{"name": "get_weather", ') == ("", [])
    assert parser.add('"arguments": {"city": "Paris"}}') == ("", [call(0, "get_weather", {"city": "Paris"})])
    assert parser.add("</tool_call>") == ("", [])
    assert parser.finish() == ("", [])


def test_waits_for_a_longer_name() -> None:
    parser = ToolCallParser("<tool_call>", ["get", "get_weather"], id_factory=counter_ids())
    assert parser.add('<tool_call>{"name": "get') == ("", [])
    assert parser.add('_weather", "arguments": {"city": "Paris"}}') == ("", [call(0, "get_weather", {"city": "Paris"})])


def test_after_a_bare_json_call_the_rest_is_content() -> None:
    parser = ToolCallParser("{", ["get_weather"], id_factory=counter_ids())
    content, calls = parser.add('{"name": "get_weather", "parameters": {"city": "Paris"}}')
    assert (content, len(calls)) == ("", 1)
    assert parser.add(" {not json") == (" {not json", [])


def test_default_ids() -> None:
    parser = ToolCallParser("<tool_call>", ["get_weather"])
    _, calls = parser.add('<tool_call>{"name": "get_weather", "arguments": {}}')
    assert re.fullmatch(r"call_[a-z0-9]{8}", calls[0]["id"])
    assert re.fullmatch(r"call_[a-z0-9]{8}", new_tool_call_id())
    assert new_tool_call_id() != new_tool_call_id()


def test_extract_arguments() -> None:
    assert extract_arguments({"name": "f", "arguments": {"a": 1}}, "f") == {"a": 1}
    assert extract_arguments({"name": "f", "parameters": '{"a": 1}'}, "f") == {"a": 1}
    assert extract_arguments({"name": "f"}, "f") is None
    assert extract_arguments({"f": {"a": 1}}, "f") == {"a": 1}
    assert extract_arguments({"calls": [{"name": "f", "arguments": {"b": 2}}]}, "f") == {"b": 2}
    assert extract_arguments({"city": "Paris"}, "f") == {"city": "Paris"}
