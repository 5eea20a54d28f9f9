"""The Go template engine: every case of the golden corpus A, plus direct tests of the API."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest

from pollama.errors import TemplateExecError, TemplateParseError
from pollama.template import parse_template

try:
    from tests.conformance import run_engine_case
except ImportError:  # tests/ itself is on sys.path (pytest's rootdir insertion)
    from conformance import run_engine_case  # type: ignore[no-redef]


def _cases() -> list[dict[str, Any]]:
    from tests.conftest import conformance_cases

    return conformance_cases("gotemplate-engine.json")  # type: ignore[return-value]


CASES = _cases()


@pytest.mark.skipif(not CASES, reason="conformance corpus A not found")
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus_a(case: dict[str, Any]) -> None:
    if "output" in case:
        assert run_engine_case(case) == case["output"]
        return
    if case["error_kind"] == "parse":
        with pytest.raises(TemplateParseError) as err:
            parse_template(case["template"], missingkey=case["missingkey"])
    else:
        parse_template(case["template"], missingkey=case["missingkey"])  # parses fine
        with pytest.raises(TemplateExecError) as err:
            run_engine_case(case)
    assert str(err.value) == case["error_message"]
    assert err.value.full_message == case["error"]


def test_vars_are_lowercased_sorted_and_deduplicated() -> None:
    # Declarations do not count, uses do; chains like (.A).B are not walked; defines are.
    t = parse_template(
        '{{ define "x" }}{{ .Inner }}{{ end }}{{ range $i, $m := $.Messages }}{{ .Role }}'
        '{{ if .ToolCalls }}{{ (.A).B }}{{ $i }}{{ end }}{{ end }}{{ .role }}{{ template "x" . }}'
    )
    assert t.vars() == ["$", "$i", "inner", "messages", "role", "toolcalls"]


def test_vars_reject_template_call_without_argument() -> None:
    t = parse_template('{{ define "x" }}X{{ end }}{{ template "x" }}')
    assert t.execute(None) == "X"
    with pytest.raises(TemplateParseError, match="undefined template specified"):
        t.vars()


def test_clock_injection() -> None:
    t = parse_template('{{ currentDate }} {{ yesterdayDate "ignored" }}')
    assert t.execute(None, now=datetime.date(2024, 1, 1)) == "2024-01-01 2023-12-31"
    assert t.execute(None, now=datetime.datetime(2024, 3, 1, 23, 59)) == "2024-03-01 2024-02-29"
    today = datetime.date.today()
    assert t.execute(None).startswith(today.isoformat()) or datetime.date.today() != today


def test_ollama_functions_can_be_left_out() -> None:
    with pytest.raises(TemplateParseError, match='function "json" not defined'):
        parse_template("{{ json . }}", funcs=False)
    assert parse_template("{{ json . }}").execute({"b": 1, "a": "<"}) == '{"a":"\\u003c","b":1}'


def test_missingkey_modes() -> None:
    source = "[{{ .missing }}]"
    assert parse_template(source).execute({}) == "[<no value>]"
    assert parse_template(source, missingkey="default").execute({}) == "[<no value>]"
    with pytest.raises(TemplateExecError, match='map has no entry for key "missing"'):
        parse_template(source, missingkey="error").execute({})
    with pytest.raises(ValueError):
        parse_template(source, missingkey="bogus")


def test_go_number_and_string_printing() -> None:
    t = parse_template('{{ .f }} {{ .i }} {{ printf "%T %T %q" .f .i .s }} {{ len .s }} {{ slice .s 0 1 }}')
    assert t.execute({"f": 3.0, "i": 3, "s": "é"}) == '3 3 float64 int "é" 2 \ufffd'


def test_template_text_is_kept() -> None:
    assert parse_template("a{{ . }}").text == "a{{ . }}"


def test_chat_template_is_fast() -> None:
    source = (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    data = {"Messages": [{"Role": "user", "Content": "hi"}, {"Role": "assistant", "Content": "hello"}] * 5}
    start = time.perf_counter()
    for _ in range(20):
        parse_template(source).execute(data)
    assert (time.perf_counter() - start) / 20 < 0.010
