"""Ollama's prompt building: every case of the golden corpus B, truncation, and template introspection."""

from __future__ import annotations

from typing import Any

import pytest

from pollama.errors import TemplateExecError, TemplatePanic, TemplateParseError
from pollama.template import (
    PromptRequest,
    build_prompt,
    parse_template,
    template_capabilities,
    thinking_tags,
    tool_call_tag,
)

try:
    from tests.conformance import run_chat_case
except ImportError:  # tests/ itself is on sys.path (pytest's rootdir insertion)
    from conformance import run_chat_case  # type: ignore[no-redef]

ERRORS = {"parse": TemplateParseError, "exec": TemplateExecError, "panic": TemplatePanic}


def _cases() -> list[dict[str, Any]]:
    from tests.conftest import conformance_cases

    return conformance_cases("gotemplate-chat.json")  # type: ignore[return-value]


CASES = _cases()
needs_corpus = pytest.mark.skipif(not CASES, reason="conformance corpus B not found")


def _template(name: str) -> str:
    return next(c["template"] for c in CASES if c["template_name"] == name)


@needs_corpus
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus_b(case: dict[str, Any]) -> None:
    if "output" in case:
        assert run_chat_case(case) == case["output"]
        return
    with pytest.raises(ERRORS[case["error_kind"]]) as err:
        run_chat_case(case)
    assert err.value.full_message == case["error"]


@needs_corpus
def test_corpus_vars_match_ollama() -> None:
    # Ollama reports Vars() after appending {{ .Response }} to templates that use neither
    # .Messages nor .Response; parse_template itself never changes the template.
    for case in CASES:
        if case.get("error_kind") != "parse" and "vars" in case:
            names = parse_template(case["template"]).vars()
            if "messages" not in names and "response" not in names:
                names = sorted([*names, "response"])
            assert names == case["vars"], case["name"]


# -- truncation ------------------------------------------------------------------------------------

CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def _words(texts: list[str]) -> list[int]:
    return [len(text.split()) for text in texts]


def _chat(*messages: tuple[str, str], images: dict[int, list[str]] | None = None) -> PromptRequest:
    msgs: list[dict[str, Any]] = [{"role": r, "content": c} for r, c in messages]
    for i, imgs in (images or {}).items():
        msgs[i]["images"] = imgs
    return PromptRequest(messages=msgs)


def test_truncation_keeps_everything_that_fits() -> None:
    req = _chat(("system", "be brief"), ("user", "one two three"), ("assistant", "four"), ("user", "five"))
    full = build_prompt(parse_template(CHATML), req)
    assert build_prompt(parse_template(CHATML), req, num_ctx=1000, count_tokens=_words) == full


def test_truncation_drops_oldest_but_keeps_system_and_last() -> None:
    req = _chat(
        ("system", "be brief"), ("user", "a b c d e f g h i j"), ("assistant", "k l m n o p"), ("user", "last question")
    )
    t = parse_template(CHATML)
    prompt = build_prompt(t, req, num_ctx=12, count_tokens=_words)
    assert prompt == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nlast question<|im_end|>\n<|im_start|>assistant\n"
    )
    middle = build_prompt(t, req, num_ctx=18, count_tokens=_words)
    assert "k l m n o p" in middle and "a b c" not in middle and "be brief" in middle


def test_truncation_keeps_last_message_even_if_too_long() -> None:
    req = _chat(("user", "old"), ("user", "x " * 50))
    prompt = build_prompt(parse_template(CHATML), req, num_ctx=5, count_tokens=_words)
    assert "old" not in prompt and prompt.count("x") == 50


def test_truncation_counts_image_tokens_and_retags() -> None:
    req = _chat(("user", "first"), ("assistant", "ok"), ("user", "second"), images={0: ["aGk="], 2: ["aGk="]})
    t = parse_template(CHATML)
    assert "[img-0]first" in build_prompt(t, req, num_ctx=100, count_tokens=_words, image_tokens=0)
    prompt = build_prompt(t, req, num_ctx=100, count_tokens=_words, image_tokens=60)
    assert "first" not in prompt and "[img-0]second" in prompt


# -- request handling --------------------------------------------------------------------------------


def test_legacy_template_gets_response_appended_and_pruned() -> None:
    t = parse_template("[INST] {{ .Prompt }} [/INST]")
    req = _chat(("user", "hi"), ("assistant", "hello"), ("user", "bye"))
    assert build_prompt(t, req) == "[INST] hi [/INST]hello[INST] bye [/INST]"


def test_panic_when_response_is_cut_inside_a_branch_with_else() -> None:
    t = parse_template("{{ .Prompt }}{{ if .System }}{{ .Response }}{{ else }}-{{ end }}")
    with pytest.raises(TemplatePanic) as err:
        build_prompt(t, _chat(("user", "hi")))
    assert err.value.full_message == "panic: interface conversion: parse.Node is nil, not *parse.ListNode"


def test_generate_suffix_path() -> None:
    t = parse_template("<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>")
    req = PromptRequest(endpoint="generate", prompt="def f():", suffix="return 1")
    assert build_prompt(t, req) == "<PRE> def f(): <SUF>return 1 <MID>"


def test_think_fields() -> None:
    t = parse_template("{{ range .Messages }}{{ end }}{{ .Think }} {{ .ThinkLevel }} {{ .IsThinkSet }}")
    assert build_prompt(t, PromptRequest(messages=[{"role": "user", "content": "x"}], think="low")) == "true low true"
    assert build_prompt(t, PromptRequest(messages=[{"role": "user", "content": "x"}])) == "false  false"


# -- introspection -------------------------------------------------------------------------------


@needs_corpus
def test_tool_call_tags_of_real_templates() -> None:
    assert tool_call_tag(parse_template(_template("ollama-history/qwen3"))) == "<tool_call>"
    assert tool_call_tag(parse_template(_template("ollama-history/qwen2.5"))) == "<tool_call>"
    assert tool_call_tag(parse_template(_template("ollama-history/mistral"))) == "[TOOL_CALLS] ["
    assert tool_call_tag(parse_template(_template("ollama-history/nemotron"))) == "<toolcall>"
    assert tool_call_tag(parse_template(_template("ollama-history/llama3.2"))) == "{"
    assert tool_call_tag(parse_template(_template("custom/tools-print"))) == "{"
    assert tool_call_tag(parse_template(_template("ollama/chatml"))) is None


def test_tool_call_tag_cuts_before_json() -> None:
    t = parse_template('{{ .Tools }}{{ range .Messages }}{{ if .ToolCalls }}[TOOL_CALLS] {"a"{{ end }}{{ end }}')
    assert tool_call_tag(t) == "[TOOL_CALLS]"


@needs_corpus
def test_thinking_tags_and_capabilities_of_real_templates() -> None:
    think = parse_template(_template("custom/think-flags"))
    assert thinking_tags(think) == ("<think>", "</think>")
    assert template_capabilities(think) == ["thinking"]
    assert thinking_tags(parse_template(_template("ollama/chatml"))) is None
    assert template_capabilities(parse_template(_template("ollama/chatml"))) == []
    assert template_capabilities(parse_template(_template("ollama-history/qwen2.5"))) == ["tools", "insert"]


def test_thinking_tags_need_a_range_over_messages() -> None:
    assert thinking_tags(parse_template("{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}")) is None
    t = parse_template("{{ range $.Messages }}{{ if .Thinking }}<think>\n{{ .Thinking }}\n</think>{{ end }}{{ end }}")
    assert thinking_tags(t) == ("<think>", "</think>")


def test_truncation_counts_in_growing_batches_oldest_first() -> None:
    messages = [("user" if i % 2 == 0 else "assistant", f"m{i} " + "w " * 9) for i in range(30)]
    req = _chat(*messages, ("user", "last"))
    t = parse_template(CHATML)
    batches: list[int] = []

    def count(texts: list[str]) -> list[int]:
        batches.append(len(texts))
        return _words(texts)

    prompt = build_prompt(t, req, num_ctx=25, count_tokens=count)
    assert prompt.startswith("<|im_start|>assistant\nm29 ") and prompt.count("<|im_start|>") == 3
    assert batches == [1, 2, 4, 8, 15]  # 30 candidates; the first that fits is the newest one


def test_generate_suffix_tools_are_nil() -> None:
    # Ollama's generate handler fills no tool list next to a suffix: Go's nil prints (and marshals) as null,
    # while a plain generate request has an empty list.
    t = parse_template("{{ range .Messages }}{{ .Content }}{{ end }}|{{ .Tools }}|{{ json .Tools }}|{{ len .Tools }}")
    suffix_only = PromptRequest(endpoint="generate", prompt="", suffix="return x")
    assert build_prompt(t, suffix_only) == "|null|null|0"
    assert build_prompt(t, PromptRequest(endpoint="generate", prompt="hi")) == "hi|[]|[]|0"
