"""PromptBuilder: which template a request gets, what the prompt implies about the output, context,
fitting, and that rendering happens in a worker thread."""

from __future__ import annotations

import asyncio

import pytest

from pollama.errors import TemplateExecError
from pollama.template import PromptRequest
from pollama.template.builder import ModelTemplates, PromptBuilder, RenderedPrompt

CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
JINJA = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}{% if tools %} tools:{{ tools | length }}{% endif %}"
    "{% if enable_thinking is defined %} think={{ enable_thinking }}{% endif %}"
)
THINKING = (
    "{{- range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}"
    "{{ if .ToolCalls }}<tool_call>{{ range .ToolCalls }}{{ json .Function }}{{ end }}</tool_call>"
    "{{ end }}{{ end }}{{ if .Tools }}{{ json .Tools }}{{ end }}"
)
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def chat(*contents: str, **fields: object) -> PromptRequest:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(contents)]
    return PromptRequest(messages=messages, **fields)  # type: ignore[arg-type]


def test_go_template_with_model_system_and_messages() -> None:
    model = ModelTemplates(
        template=CHATML,
        system="Be brief.",
        messages=[{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}],
    )
    prompt = PromptBuilder().build(model, chat("Hi"))
    assert prompt == RenderedPrompt(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nearlier<|im_end|>\n<|im_start|>assistant\n"
        "ok<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_jinja_template_when_the_model_has_no_go_template() -> None:
    model = ModelTemplates(chat_template=JINJA, system="sys")
    prompt = PromptBuilder().build(model, chat("Hi", tools=TOOLS, think=False))
    assert prompt.text == "[system] sys\n[user] Hi\n[assistant] tools:1 think=False"
    assert prompt.thinking_tags is None and prompt.tool_tag == "{"


def test_go_template_wins_over_jinja_unless_told_otherwise() -> None:
    model = ModelTemplates(template=CHATML, chat_template=JINJA)
    assert PromptBuilder().build(model, chat("Hi")).text.startswith("<|im_start|>user")
    assert PromptBuilder(prefer_go=False).build(model, chat("Hi")).text.startswith("[user] Hi")


def test_plain_prompt_without_any_template() -> None:
    req = PromptRequest(endpoint="generate", prompt="Once upon a time", system="ignored by {{ .Prompt }}")
    assert PromptBuilder().build(ModelTemplates(), req).text == "Once upon a time"


def test_raw_and_request_template() -> None:
    model = ModelTemplates(template=CHATML, system="Be brief.")
    raw = PromptRequest(endpoint="generate", prompt="<b>as is</b>")
    assert PromptBuilder().build(model, raw, raw=True).text == "<b>as is</b>"
    req = PromptRequest(endpoint="generate", prompt="Q")
    assert PromptBuilder().build(model, req, template="{{ .System }}: {{ .Prompt }}").text == "Be brief.: Q"


def test_thinking_and_tool_tags_come_from_the_template() -> None:
    model = ModelTemplates(template=THINKING)
    plain = PromptBuilder().build(model, chat("Hi"))
    assert plain.thinking_tags == ("<think>", "</think>") and plain.tool_tag is None  # no tools in the request
    assert PromptBuilder().build(model, chat("Hi", tools=TOOLS)).tool_tag == "<tool_call>"


def test_context_goes_in_front_and_model_messages_stay_out() -> None:
    model = ModelTemplates(template=CHATML, messages=[{"role": "user", "content": "earlier"}])
    req = PromptRequest(endpoint="generate", prompt="next")

    async def detokenize(tokens: list[int]) -> str:
        return "".join(chr(t) for t in tokens)

    prompt = asyncio.run(PromptBuilder().render(model, req, context=[ord(c) for c in "SO FAR|"], detokenize=detokenize))
    assert prompt.text == "SO FAR|<|im_start|>user\nnext<|im_end|>\n<|im_start|>assistant\n"


def test_fitting_counts_only_what_may_not_fit() -> None:
    model = ModelTemplates(template=CHATML)
    req = chat("a " * 50, "b", "c")
    counted: list[list[str]] = []

    async def count(texts: list[str]) -> list[int]:
        counted.append(texts)
        return [len(text) for text in texts]

    async def build(num_ctx: int) -> str:
        return (await PromptBuilder().render(model, req, num_ctx=num_ctx, count_tokens=count)).text

    assert "a a a" in asyncio.run(build(1000)) and counted == []  # fits by its byte length: nothing counted
    short = asyncio.run(build(100))
    assert "a a a" not in short and short.startswith("<|im_start|>assistant\nb<|im_end|>")
    assert [len(texts) for texts in counted] == [1]  # the full prompt; the next candidate fits by its bytes


def test_render_leaves_the_event_loop_free() -> None:
    model = ModelTemplates(template="{{ range 300000 }}{{ end }}{{ .Prompt }}")
    req = PromptRequest(endpoint="generate", prompt="x")

    async def main() -> tuple[float, float, str]:
        gaps: list[float] = []
        loop = asyncio.get_running_loop()
        render = asyncio.ensure_future(PromptBuilder().render(model, req))
        started = last = loop.time()
        while not render.done():
            await asyncio.sleep(0.005)
            gaps.append(loop.time() - last)
            last = loop.time()
        return max(gaps), loop.time() - started, (await render).text

    gap, elapsed, text = asyncio.run(main())
    assert text == "x" and elapsed > 0.1 and gap < elapsed / 2, (gap, elapsed)


def test_template_errors_propagate_from_the_worker() -> None:
    model = ModelTemplates(template="{{ .Messages.Nope }}")
    with pytest.raises(TemplateExecError):
        asyncio.run(PromptBuilder().render(model, chat("Hi")))
