"""Budgets of Go template executions: steps, wall time, output size and nesting, each a 400 naming the limit."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from pollama.errors import InvalidRequest, TemplateExecError, TemplateLimitExceeded
from pollama.server.errors import status_for
from pollama.template import MAX_OUTPUT, MAX_STEPS, TIME_LIMIT, Budget, parse_template

MiB = 1024 * 1024


def _limit_error(source: str, data: Any = None, budget: Budget | None = None) -> TemplateLimitExceeded:
    template = parse_template(source)
    with pytest.raises(TemplateLimitExceeded) as err:
        template.execute(data, budget=budget)
    assert isinstance(err.value, InvalidRequest) and isinstance(err.value, TemplateExecError)
    assert status_for(err.value) == 400
    return err.value


def test_defaults() -> None:
    assert (10_000_000, 2.0, 16 * MiB) == (MAX_STEPS, TIME_LIMIT, MAX_OUTPUT)
    budget = Budget()
    assert (budget.max_steps, budget.time_limit, budget.max_output) == (MAX_STEPS, TIME_LIMIT, MAX_OUTPUT)


@pytest.mark.parametrize(
    "source",
    [
        "{{ range 300000000 }}{{ end }}",
        "{{range 100000}}{{range 100000}}{{end}}{{end}}",
        "{{range $i := 100000}}{{range $j := 100000}}{{if 0}}{{end}}{{end}}{{end}}",
        '{{define "loop"}}{{range 100000}}{{end}}{{end}}{{range 100000}}{{template "loop"}}{{end}}',
    ],
)
def test_loops_that_write_nothing_stop_at_the_time_limit(source: str) -> None:
    started = time.monotonic()
    err = _limit_error(source)
    elapsed = time.monotonic() - started
    assert str(err) == "template: execution exceeded the time limit of 2s"
    assert err.full_message == str(err)
    assert TIME_LIMIT <= elapsed < TIME_LIMIT + 1.5


def test_time_limit_is_checked_by_the_loop_itself() -> None:
    # An injected clock that advances one second per reading: the loop reads it every few hundred
    # steps, so a 1.5 s budget ends after two readings, long before the loop would.
    ticks: Iterator[int] = iter(range(1_000_000))
    budget = Budget(time_limit=1.5, clock=lambda: float(next(ticks)))
    err = _limit_error("{{ range 300000000 }}{{ end }}", budget=budget)
    assert str(err) == "template: execution exceeded the time limit of 1.5s"
    assert budget.steps < 1000


def test_step_limit() -> None:
    assert parse_template("{{range 500}}{{end}}").execute(None, budget=Budget(max_steps=1000)) == ""
    err = _limit_error("{{range 2000}}{{end}}", budget=Budget(max_steps=1000))
    assert str(err) == "template: execution exceeded the step limit of 1000 steps"


def test_output_cap_stops_while_writing_without_allocating_the_output() -> None:
    # 200 MB asked for: stopped at 16 MiB, and memory never holds much more than the cap.
    source = '{{ range 200 }}{{ printf "%1000000d" 0 }}{{ end }}'
    tracemalloc.start()
    try:
        started = time.monotonic()
        err = _limit_error(source)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err) == "template: output exceeds the limit of 16 MiB"
    assert peak < 24 * MiB
    assert elapsed < 3


def test_many_small_writes_keep_memory_near_the_output_size() -> None:
    # One byte per write: no pointer per write is kept (for 16 M writes that would be 128 MB; for
    # the 128 Ki writes here, 1 MiB against 128 KiB of output).
    tracemalloc.start()
    try:
        err = _limit_error("{{ range 200000000 }}x{{ end }}", budget=Budget(max_output=128 * 1024, time_limit=30))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err) == "template: output exceeds the limit of 128 KiB"
    assert peak < 600 * 1024


def test_output_cap_is_a_parameter_counted_in_utf8_bytes() -> None:
    template = parse_template("{{ . }}")
    assert template.execute("0123456789", budget=Budget(max_output=10)) == "0123456789"
    assert template.execute("ééééé", budget=Budget(max_output=10)) == "ééééé"
    err = _limit_error("{{ . }}", "ééééé!", Budget(max_output=10))
    assert str(err) == "template: output exceeds the limit of 10 bytes"
    err = _limit_error("{{ . }}", "x" * (512 * 1024 + 1), Budget(max_output=512 * 1024))
    assert str(err) == "template: output exceeds the limit of 512 KiB"


def test_a_computed_string_is_held_to_the_cap_even_if_never_printed() -> None:
    source = '{{ $s := "xx" }}{{ range 60 }}{{ $s = print $s $s }}{{ end }}'
    tracemalloc.start()
    try:
        started = time.monotonic()
        err = _limit_error(source)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err) == "template: a computed value exceeds the output limit of 16 MiB"
    assert peak < 4 * 16 * MiB
    assert elapsed < 3


def test_one_budget_spans_several_executions() -> None:
    template = parse_template("{{ . }}")
    budget = Budget(max_output=15)
    assert template.execute("0123456789", budget=budget) == "0123456789"
    with pytest.raises(TemplateLimitExceeded, match=r"^template: output exceeds the limit of 15 bytes$"):
        template.execute("0123456789", budget=budget)


def test_a_spent_budget_fails_before_rendering() -> None:
    ticks = iter([0.0, 5.0])
    budget = Budget(time_limit=1, clock=lambda: next(ticks))
    with pytest.raises(TemplateLimitExceeded, match=r"^template: execution exceeded the time limit of 1s$"):
        parse_template("x").execute(None, budget=budget)


def test_legitimate_prompt_of_a_few_mib_renders() -> None:
    messages = [{"Role": "user", "Content": "word " * 100_000}] * 10  # 5 MB of content
    source = "{{ range .Messages }}<|{{ .Role }}|>{{ .Content }}{{ end }}"
    out = parse_template(source).execute({"Messages": messages})
    assert len(out) == 10 * (len("<|user|>") + 500_000)


@pytest.mark.parametrize(
    "source",
    [
        "{{if 1}}" * 5000 + "x" + "{{end}}" * 5000,
        "{{" + "(" * 5000 + "1" + ")" * 5000 + "}}",
        "{{" + "(print " * 5000 + "1" + ")" * 5000 + "}}",
    ],
)
def test_nesting_beyond_the_stack_is_a_limit_error_not_a_crash(source: str) -> None:
    with pytest.raises(TemplateLimitExceeded) as err:
        parse_template(source)
    assert str(err.value) == "template: nesting exceeds the depth this template engine supports"
    assert status_for(err.value) == 400


def test_deep_but_parseable_nesting_executes_and_copies() -> None:
    # 150 levels parse; executing and copying them (Ollama's legacy path prunes a copy) once
    # failed with RecursionError at about 60 levels.
    template = parse_template("{{if 1}}" * 150 + "{{.}}" + "{{end}}" * 150)
    assert template.execute("x") == "x"
    copy = template.root.copy()
    assert str(copy) == str(template.root) and copy is not template.root


def test_parsing_a_huge_template_stops_at_the_time_limit() -> None:
    # 1 M actions (5 MB): parsing alone would take many seconds (and a gigabyte of tokens).
    source = "{{.}}" * 1_000_000
    started = time.monotonic()
    with pytest.raises(TemplateLimitExceeded) as err:
        parse_template(source)
    assert str(err.value) == "template: parsing exceeded the time limit of 2s"
    assert status_for(err.value) == 400
    assert time.monotonic() - started < TIME_LIMIT + 1.5
    with pytest.raises(TemplateLimitExceeded, match=r"^template: parsing exceeded the time limit of 0\.1s$"):
        parse_template(source, budget=Budget(time_limit=0.1))
