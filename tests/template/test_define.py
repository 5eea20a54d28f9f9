"""Go's ``{{define}}``, ``{{template}}`` and ``{{block}}``: parsing, redefinition, execution and the recursion limit.

Expected values are Go's ``text/template`` (Go 1.27), as in the conformance corpus: outputs byte for byte,
errors as Go's full text (``full_message``) and without location (``str``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pollama.errors import (
    InvalidRequest,
    TemplateExecError,
    TemplateLimitExceeded,
    TemplateParseError,
)
from pollama.template import Budget, parse_template
from pollama.template import exec as template_exec


def _render(source: str, data: Any = None, **budget: Any) -> str:
    return parse_template(source).execute(data, budget=Budget(**budget) if budget else None)


@pytest.mark.parametrize(
    ("source", "data", "output"),
    [
        ('{{define "x"}}X{{end}}{{template "x"}}', None, "X"),
        ('{{template "x"}}{{define "x"}}X{{end}}', None, "X"),  # defined later in the text
        ('{{define "n"}}<{{.name}}>{{end}}{{template "n" .user}}', {"user": {"name": "Ada"}}, "<Ada>"),
        ('{{define "t"}}[{{.}}]{{end}}{{template "t"}}', 5, "[<no value>]"),  # no pipeline: dot is nil
        ('{{define "t"}}{{$}}{{end}}{{template "t" .name}}', {"name": "Ada"}, "Ada"),  # $ is the argument
        ('{{template "t" $x := 5}}{{$x}}{{define "t"}}[{{.}}]{{end}}', None, "[5]5"),  # its variables persist
        ("{{define `raw`}}r{{end}}{{template `raw`}}", None, "r"),
        ('{{define "a"}}A{{template "b" .}}{{end}}{{define "b"}}B{{.}}{{end}}{{template "a" 7}}', None, "AB7"),
        (
            '{{define "r"}}{{if .}}{{index . 0}}{{template "r" (slice . 1)}}{{end}}{{end}}{{template "r" .}}',
            [1, 2, 3],
            "123",
        ),
        ('{{define "t"}}{{range .}}{{if eq . 2}}{{break}}{{end}}{{.}}{{end}}{{end}}{{template "t" .}}', [1, 2, 3], "1"),
        (
            '{{range .}}{{template "t" .}}{{end}}{{define "t"}}{{if eq . 2}}two{{else}}{{.}}{{end}}{{end}}',
            [1, 2],
            "1two",
        ),
        ('{{define "x"}}X{{end}}', None, ""),  # a definition alone prints nothing
        # block = define + template
        ('{{block "b" .}}[{{.}}]{{end}}', 3, "[3]"),
        ('{{range .}}{{block "x" .}}({{.}}){{end}}{{end}}', ["a", "b"], "(a)(b)"),
        ('{{block "b" $v := 3}}{{.}}{{end}}{{$v}}', None, "33"),
        # an empty (whitespace, comments) definition never replaces a non-empty one, and is replaced by one
        ('{{define "a"}}{{end}}{{define "a"}}x{{end}}{{template "a"}}', None, "x"),
        ('{{define "a"}}x{{end}}{{define "a"}} \n\t{{end}}{{template "a"}}', None, "x"),
        ('{{define "a"}}x{{end}}{{define "a"}}{{/* c */}} {{end}}{{template "a"}}', None, "x"),
        ('{{define "a"}}x{{end}}{{define "a"}}\u00a0\u2003{{end}}{{template "a"}}', None, "x"),  # bytes.TrimSpace
        ('{{block "b" .}} {{end}}{{define "b"}}over{{end}}', None, "over"),
        # a non-empty definition of "" replaces an empty main template
        ('{{define ""}}abc{{end}}', None, "abc"),
        ('{{define ""}}abc{{end}}  \n', None, "abc"),
        ('{{- define "t" -}}\n  T\n{{- end -}}\n[{{ template "t" }}]', None, "[T]"),
    ],
)
def test_go_outputs(source: str, data: Any, output: str) -> None:
    assert _render(source, data) == output


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('{{define "a"}}1{{end}}{{define "a"}}2{{end}}', 'template: multiple definition of template "a"'),
        ('{{define "b"}}override{{end}}{{block "b" .}}default{{end}}', 'template: multiple definition of template "b"'),
        ('{{define "a"}}x{{end}}{{define "a"}}{{if 1}}{{end}}{{end}}', 'template: multiple definition of template "a"'),
        ('{{define ""}}abc{{end}}z', 'template: multiple definition of template ""'),
        ('{{if true}}{{define "x"}}X{{end}}{{end}}', "unexpected <define> in command"),
        ('{{define "a"}}{{define "b"}}{{end}}{{end}}', "unexpected <define> in command"),
        ("{{define 1}}x{{end}}", 'unexpected "1" in define clause'),
        ('{{define "a" 1}}x{{end}}', 'unexpected "1" in define clause'),
        ('{{define "x"}}{{if true}}{{end}}', "unexpected EOF"),
        ("{{template}}", 'unexpected "}}" in template clause'),
        ("{{template .x}}", 'unexpected ".x" in template clause'),
        ('{{block "b"}}x{{end}}', "missing value for block clause"),
        ('{{$x := 1}}{{define "t"}}{{$x}}{{end}}', 'undefined variable "$x"'),
        ('{{block "b" .}}{{$v}}{{end}}', 'undefined variable "$v"'),
        ('{{define "t"}}{{break}}{{end}}', "{{break}} outside {{range}}"),
        ('{{range 3}}{{template "t"}}{{end}}{{define "t"}}{{continue}}{{end}}', "{{continue}} outside {{range}}"),
    ],
)
def test_go_parse_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateParseError) as err:
        parse_template(source)
    assert str(err.value) == message
    assert err.value.full_message == f"template: :1: {message}"


@pytest.mark.parametrize(
    ("source", "error"),
    [
        (
            '{{ template "nope" }}',
            'template: :1:12: executing "" at <{{template "nope"}}>: template "nope" not defined',
        ),
        (
            '{{define "t"}}{{.x.y}}{{end}}{{template "t" 3}}',
            'template: :1:18: executing "t" at <.x.y>: can\'t evaluate field x in type int',
        ),
        (
            '{{define "t"}}x{{end}}{{template "t" 1 2}}',
            'template: :1:37: executing "" at <1>: can\'t give argument to non-function 1',
        ),
        (
            '{{define "t"}}\n{{template "u"}}{{end}}{{template "t"}}',
            'template: :2:11: executing "t" at <{{template "u"}}>: template "u" not defined',
        ),
    ],
)
def test_go_exec_errors(source: str, error: str) -> None:
    template = parse_template(source)
    with pytest.raises(TemplateExecError) as err:
        template.execute(None)
    assert err.value.full_message == error


_BOMB = '{{define "r"}}{{template "r" .}}{{end}}{{template "r" .}}'
_GUARDED_BOMB = '{{define "r"}}{{if .}}{{template "r" .}}{{end}}{{end}}{{template "r" .}}'


@pytest.mark.parametrize(
    ("source", "error"),
    [
        (_BOMB, 'template: :1:25: executing "r" at <{{template "r" .}}>: exceeded maximum template depth (100000)'),
        (
            _GUARDED_BOMB,
            'template: :1:33: executing "r" at <{{template "r" .}}>: exceeded maximum template depth (100000)',
        ),
    ],
)
def test_recursion_stops_at_go_maximum_depth(source: str, error: str) -> None:
    # Go's maxExecDepth, Go's message and location, and no RecursionError or crash on the way down,
    # in a worker thread with the default stack size (as the server renders): walking keeps its own
    # stack on the heap, so no large thread stack is needed.
    result: list[BaseException] = []

    def work() -> None:
        try:
            _render(source, 1, time_limit=60)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=work)
    worker.start()
    worker.join(60)
    assert not worker.is_alive()
    err = result[0]
    assert isinstance(err, TemplateLimitExceeded)
    assert err.full_message == error
    assert str(err) == "exceeded maximum template depth (100000)"
    assert isinstance(err, InvalidRequest)
    assert time.monotonic() - started < 30


def test_recursion_bomb_with_default_budget_is_stopped_promptly() -> None:
    started = time.monotonic()
    with pytest.raises(TemplateLimitExceeded) as err:
        _render(_GUARDED_BOMB, 1)
    assert str(err.value) in (
        "exceeded maximum template depth (100000)",
        "template: execution exceeded the time limit of 2s",
    )
    assert time.monotonic() - started < 4


def test_recursion_with_blocks_per_level_stops_at_the_block_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Several nested blocks per level: the limit on active blocks (which bounds memory), not
    # Python's stack, ends it (lowered here so the test is quick; the real limit is 250000).
    assert template_exec.MAX_NESTING == 250_000
    monkeypatch.setattr(template_exec, "MAX_NESTING", 3000)
    source = '{{define "r"}}{{range 1}}{{with 1}}{{template "r" 1}}{{end}}{{end}}{{end}}{{template "r" 1}}'
    with pytest.raises(TemplateLimitExceeded) as err:
        _render(source)
    assert str(err.value) == "template: nesting exceeds the limit of 3000 levels"


def test_depth_limit_is_counted_like_go(monkeypatch: pytest.MonkeyPatch) -> None:
    # Go errors when a template at depth maxExecDepth calls another: with a limit of 5, a chain of
    # 4 nested calls below the main template's first one completes and a chain of 5 does not.
    monkeypatch.setattr(template_exec, "MAX_EXEC_DEPTH", 5)
    source = '{{define "r"}}{{if .}}{{template "r" (slice . 1)}}{{end}}{{end}}{{template "r" .}}'
    assert _render(source, [1, 2, 3, 4]) == ""
    with pytest.raises(TemplateLimitExceeded, match=r"^exceeded maximum template depth \(5\)$"):
        _render(source, [1, 2, 3, 4, 5])
