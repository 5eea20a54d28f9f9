"""The Modelfile parser: every corpus C case (commands, errors, ``format``) plus the rules behind them."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from pollama.errors import ModelfileError
from pollama.modelfile import Command, format_modelfile, parse_modelfile

try:
    from tests.conformance import parse_modelfile_case
except ModuleNotFoundError:  # plain `pytest` (not `python -m pytest`) leaves the repo root off sys.path
    from conformance import parse_modelfile_case  # type: ignore[no-redef]
from tests.conftest import conformance_cases

CASES: list[dict[str, Any]] = conformance_cases("modelfile.json")  # type: ignore[assignment]
INVALID = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", '
    '"renderer", "parser", "parameter", "message", or "requires"'
)
ROLE = 'message role must be one of "system", "user", or "assistant"'


def source_of(case: dict[str, Any]) -> str | bytes:
    return base64.b64decode(case["modelfile_b64"]) if "modelfile_b64" in case else case["modelfile"]


def parsed(text: str | bytes) -> list[list[str]]:
    return [[c.name, c.args] for c in parse_modelfile(text)]


def error_of(text: str | bytes) -> str:
    with pytest.raises(ModelfileError) as info:
        parse_modelfile(text)
    return str(info.value)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus_case(case: dict[str, Any]) -> None:
    expect = case["expect"]
    if isinstance(expect, dict):
        with pytest.raises(Exception) as info:
            parse_modelfile_case(case)
        assert expect["error"] in str(info.value)
        assert isinstance(info.value, ModelfileError)
    else:
        assert parse_modelfile_case(case) == expect


@pytest.mark.parametrize("case", [c for c in CASES if "format" in c], ids=[c["name"] for c in CASES if "format" in c])
def test_corpus_format(case: dict[str, Any]) -> None:
    assert format_modelfile(parse_modelfile(source_of(case))) == case["format"]


def test_commands_are_frozen_values() -> None:
    (command,) = parse_modelfile("FROM x")
    assert command == Command("model", "x")
    with pytest.raises(AttributeError):
        command.name = "other"  # type: ignore[misc]


# --- rules the corpus pins down, checked on new inputs ---------------------------------------------


def test_bytes_and_text_agree() -> None:
    text = "FROM foo\nSYSTEM héllo wörld\nPARAMETER stop </s>\n"
    assert parsed(text) == parsed(text.encode()) == [["model", "foo"], ["system", "héllo wörld"], ["stop", "</s>"]]


def test_boms() -> None:
    text = "# c\nFROM foo\nSYSTEM ü\n"
    expected = [["model", "foo"], ["system", "ü"]]
    assert parsed(b"\xef\xbb\xbf" + text.encode()) == expected
    assert parsed("\ufeff" + text) == expected
    assert parsed(b"\xff\xfe" + text.encode("utf-16-le")) == expected
    assert parsed(b"\xfe\xff" + text.encode("utf-16-be")) == expected
    # Without a BOM, UTF-16 is read as UTF-8: the NUL after "F" ends the keyword.
    assert error_of("FROM foo\n".encode("utf-16-le")) == f"(line 1): {INVALID}"


def test_invalid_utf8_becomes_one_replacement_per_byte() -> None:
    assert parsed(b"FROM foo\nSYSTEM a\xe2\x82b\xffc\n")[1] == ["system", "a\ufffd\ufffdb\ufffdc"]


def test_unprintable_characters_dropped_even_in_quotes() -> None:
    text = 'FROM foo\nSYSTEM """a\u200b\u00a0\x1b\u2028b\n\tc\u3000"""\n'
    assert parsed(text)[1] == ["system", "ab\n\tc"]


def test_unprintable_character_before_a_keyword_is_ignored() -> None:
    assert parsed("\u00a0FROM foo\n\x07SYSTEM s\n") == [["model", "foo"], ["system", "s"]]


def test_keywords_case_insensitive_and_separated_by_tab() -> None:
    assert parsed("from\tfoo\nPaRaMeTeR\tnum_ctx\t\t8\n") == [["model", "foo"], ["num_ctx", "8"]]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("FROM foo\n\n\nBOGUS x\n", 4),
        ("FROM foo\r\nBOGUS x\r\n", 3),  # CR and LF each count
        ("FROM foo\rBOGUS x\r", 2),
        ("FROM foo\nFROM\n", 3),  # the newline right after the keyword is counted first
        ("FROM foo\nFR0M x\n", 2),
        ("FROM foo\nFROM:x\n", 2),
    ],
)
def test_invalid_command_line_numbers(text: str, line: int) -> None:
    assert error_of(text) == f"(line {line}): {INVALID}"


@pytest.mark.parametrize("role", ["tool", "User", "SYSTEM", "assistants"])
def test_message_roles_exact(role: str) -> None:
    assert error_of(f"FROM foo\n\nMESSAGE {role} hi\n") == f"(line 3): {ROLE}"


def test_extra_blank_before_role_or_parameter_name() -> None:
    # The second blank ends an empty role/name, exactly as in Ollama's state machine.
    assert error_of("FROM foo\nMESSAGE  user hi\n") == f"(line 2): {ROLE}"
    assert parsed("FROM foo\nPARAMETER  num_ctx 8\n")[1] == ["", "num_ctx 8"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM foo\nPARAMETER top-k 1\n", "unexpected EOF: top"),
        ("FROM foo\nPARAMETER seed\n", "unexpected EOF: seed"),
        ("FROM foo\nPARAMETER \n", "unexpected EOF: "),
        ("FROM foo\nMESSAGE user:\n", "unexpected EOF: user"),
        ("FROM foo\nPARAMETER", "unexpected EOF"),
        ("FROM foo\nSYS", "unexpected EOF"),
        ('FROM foo\nSYSTEM """abc""', "unexpected EOF"),
        ('FROM foo\nSYSTEM "a" b\n', "unexpected EOF"),
    ],
)
def test_unexpected_eof(text: str, message: str) -> None:
    assert error_of(text) == message


def test_no_from_line() -> None:
    assert error_of("") == "no FROM line"
    assert error_of("# only\n   \n") == "no FROM line"
    assert error_of("PARAMETER seed 1\nLICENSE x") == "no FROM line"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain words  here  ", "plain words  here"),
        ('"  spaced  "', "  spaced  "),
        ('""', ""),
        ('""""""', ""),
        ('"""a"b"""', 'a"b'),
        ('"a"b"', 'a"b'),
        ('"hello" "world"', 'hello" "world'),
        ("'single'", "'single'"),
        ("x # not a comment", "x # not a comment"),
        ('"""\nmulti\n  line\n"""', "\nmulti\n  line\n"),
        ('"first\nsecond"', "first\nsecond"),
        ('"""x\n"y"\n"""', 'x\n"y"\n'),
    ],
)
def test_value_quoting(value: str, expected: str) -> None:
    assert parsed(f"FROM foo\nSYSTEM {value}\nLICENSE next\n") == [
        ["model", "foo"],
        ["system", expected],
        ["license", "next"],
    ]


def test_double_quoted_value_ends_at_first_line_ending_with_quote() -> None:
    # `"a` stays open, `"a\nb"` closes it, and `c"` is then read as an instruction.
    assert error_of('FROM foo\nSYSTEM "a\nb"\nc"\n') == f"(line 4): {INVALID}"


def test_comments_only_where_an_instruction_starts() -> None:
    text = "# top\n  # indented\nFROM foo # trailing\n#SYSTEM no\n"
    assert parsed(text) == [["model", "foo # trailing"]]


def test_message_content_keeps_colons_and_role_prefix() -> None:
    assert parsed('FROM foo\nMESSAGE assistant """a: b\nc"""\n')[1] == ["message", "assistant: a: b\nc"]


def test_value_at_eof_without_newline() -> None:
    assert parsed('FROM foo\nTEMPLATE """{{ .Prompt }}"""') == [["model", "foo"], ["template", "{{ .Prompt }}"]]
    assert parsed("FROM foo\nMESSAGE user hi") == [["model", "foo"], ["message", "user: hi"]]
