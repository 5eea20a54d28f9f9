"""Jinja chat templates (native mode, spec §8.1 item 4): the real SmolLM2 template from its GGUF, a
Gemma-style template, tools and thinking variables, and templates that fail, loop or explode."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pollama.errors import (
    InvalidRequest,
    TemplateExecError,
    TemplateLimitExceeded,
    TemplateParseError,
)
from pollama.gguf.reader import read_gguf
from pollama.server.errors import status_for
from pollama.template.jinja import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_TIME_LIMIT,
    ChatTemplate,
    jinja_capabilities,
    jinja_thinking_tags,
    render_chat_template,
    template_tokens,
)
from pollama.template.limits import MAX_OUTPUT, Budget

CONVERSATION = [
    {"role": "system", "content": "You are Bob."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How are you?"},
]

# --- SmolLM2: the template shipped in the GGUF -----------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_template(smollm2_gguf: Path) -> str:
    return str(read_gguf(smollm2_gguf).metadata["tokenizer.chat_template"])


def test_smollm2_chatml(smollm2_template: str) -> None:
    assert render_chat_template(smollm2_template, CONVERSATION) == (
        "<|im_start|>system\nYou are Bob.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nHow are you?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_default_system_prompt(smollm2_template: str) -> None:
    # SmolLM2's template adds its own system prompt when the first message is not a system message.
    assert render_chat_template(smollm2_template, CONVERSATION[1:], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nHow are you?<|im_end|>\n"
    )


def test_smollm2_capabilities_and_tokens(smollm2_gguf: Path, smollm2_template: str) -> None:
    assert jinja_capabilities(smollm2_template) == []
    assert jinja_thinking_tags(smollm2_template) is None
    assert template_tokens(read_gguf(smollm2_gguf, arrays="all").metadata) == ("<|im_start|>", "<|im_end|>")


# --- Gemma 3 270M: no chat template in the GGUF ------------------------------------------------------


def test_gemma3_270m_gguf_has_no_chat_template(gemma3_gguf: Path) -> None:
    # Such a model has neither a Go TEMPLATE nor a Jinja template: Ollama falls back to {{ .Prompt }}.
    metadata = read_gguf(gemma3_gguf).metadata
    assert metadata["general.architecture"] == "gemma3"
    assert "tokenizer.chat_template" not in metadata


# --- Gemma-style template ---------------------------------------------------------------------------

GEMMA_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
"""


def test_gemma_style_template() -> None:
    assert render_chat_template(GEMMA_TEMPLATE, CONVERSATION, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nYou are Bob.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nHow are you?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert (
        render_chat_template(GEMMA_TEMPLATE, CONVERSATION[1:2], bos_token="<bos>", add_generation_prompt=False)
        == "<bos><start_of_turn>user\nHi<end_of_turn>\n"
    )


def test_gemma_style_template_rejects_bad_role_order() -> None:
    with pytest.raises(TemplateExecError) as err:
        render_chat_template(GEMMA_TEMPLATE, [{"role": "assistant", "content": "I speak first"}])
    message = str(err.value)
    assert message.startswith("chat template raised an error")
    assert "Conversation roles must alternate user/assistant/user/assistant/..." in message


# --- tools and thinking -------------------------------------------------------------------------------

QWEN_TOOLS_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or \
(message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response name="' + message.name + '" id="' + message.tool_call_id + '">\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo actuelle",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "description": "City"}},
        },
    },
}


def test_tools_template() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_abc12345", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        },
        {"role": "tool", "content": "18°C", "tool_name": "get_weather", "tool_call_id": "call_abc12345"},
    ]
    assert jinja_capabilities(QWEN_TOOLS_TEMPLATE) == ["tools"]
    assert render_chat_template(QWEN_TOOLS_TEMPLATE, messages, tools=[WEATHER_TOOL]) == (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "Météo actuelle", '
        '"parameters": {"type": "object", "required": ["city"], '
        '"properties": {"city": {"type": "string", "description": "City"}}}}}\n</tools><|im_end|>\n'
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        '<|im_start|>user\n<tool_response name="get_weather" id="call_abc12345">\n18°C\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    # Without tools the template takes its other branch (tools is None, not an empty list).
    assert render_chat_template(QWEN_TOOLS_TEMPLATE, messages[:1], tools=[]) == (
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    )


THINKING_TEMPLATE = """{%- for message in messages -%}
<|{{ message.role }}|>
{%- if message.reasoning_content %}<think>{{ message.reasoning_content }}</think>{% endif -%}
{{ message.content }}
{% endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{%- if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif -%}
{%- endif -%}
effort={{ reasoning_effort | default('unset') }} date={{ strftime_now('%Y-%m-%d') }} {{ custom }}"""


def test_thinking_variables_and_history() -> None:
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "thinking": "add"},
        {"role": "user", "content": "3+3?"},
    ]
    now = datetime(2025, 3, 4, 12, 0)
    assert jinja_capabilities(THINKING_TEMPLATE) == ["thinking"]
    assert jinja_thinking_tags(THINKING_TEMPLATE) == ("<think>", "</think>")
    rendered = render_chat_template(
        THINKING_TEMPLATE, messages, enable_thinking=False, reasoning_effort="high", now=now, extra={"custom": "x"}
    )
    assert rendered == (
        "<|user|>2+2?\n<|assistant|><think>add</think>4\n<|user|>3+3?\n"
        "<|assistant|><think></think>effort=high date=2025-03-04 x"
    )
    rendered = render_chat_template(THINKING_TEMPLATE, messages[:1], now=now)
    assert rendered == "<|user|>2+2?\n<|assistant|>effort=unset date=2025-03-04 "


def test_capabilities() -> None:
    assert jinja_capabilities("{% if tools %}{{ tools | tojson }}{% endif %}<think></think>") == ["tools", "thinking"]
    assert jinja_capabilities("{{ message.tool_call }}") == ["tools"]
    assert jinja_capabilities("<think> only opening") == []


def test_hf_conventions() -> None:
    source = (
        "{{ {'k': 'é<&>'} | tojson }} {{ [1, 2] | tojson(indent=2) }} "
        "{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}\n"
        "  {% if true %}\n  trimmed\n  {% endif %}\n{% generation %}gen{% endgeneration %}"
    )
    assert render_chat_template(source, []) == '{"k": "é<&>"} [\n  1,\n  2\n] 012  trimmed\ngen'


def test_large_numbers_and_ordinary_strings_still_render() -> None:
    source = (
        "{{ '%d' | format(1700000000) }} {{ '{}'.format(1700000000) }} {{ '%s' % 1700000000 }} "
        "{{ 2 ** 64 }} {{ ', '.join(messages | map(attribute='content')) }} {{ 'ab' * 3 }} "
        "{{ messages | map(attribute='role') | join('/') }} {{ 'x' | center(5) }}|"
    )
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert render_chat_template(source, messages) == (
        "1700000000 1700000000 1700000000 18446744073709551616 a, b ababab user/assistant   x  |"
    )


def test_template_cannot_modify_its_input() -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(TemplateExecError, match="unsafe"):
        render_chat_template("{{ messages.append({'role': 'user'}) }}", messages)
    assert messages == [{"role": "user", "content": "hi"}]


def test_compiled_template_renders_many_times() -> None:
    template = ChatTemplate(GEMMA_TEMPLATE)
    first = template.render(CONVERSATION)
    assert all(template.render(CONVERSATION) == first for _ in range(3))


# --- failures and runaway templates ----------------------------------------------------------------


def test_syntax_error() -> None:
    with pytest.raises(TemplateParseError) as err:
        render_chat_template("{% for m in messages %}\n{{ m.content }\n{% endfor %}", [])
    assert str(err.value).startswith("chat template syntax error at line 2: ")
    with pytest.raises(TemplateParseError, match="line 1: .*endfor"):
        ChatTemplate("{% for m in messages %}")


def test_runtime_error_names_the_chat_template() -> None:
    with pytest.raises(TemplateExecError, match=r"^chat template error at line 2: 'nope' is undefined"):
        render_chat_template("ok\n{{ nope.attribute }}", [])
    with pytest.raises(TemplateExecError, match="^chat template"):
        render_chat_template("{{ 1 / 0 }}", [])


def _limit_error(source: str, **limits: Any) -> TemplateLimitExceeded:
    """Render ``source`` expecting a limit error; returns it after checking its class and status."""
    with pytest.raises(TemplateLimitExceeded) as err:
        render_chat_template(source, [], **limits)
    assert isinstance(err.value, InvalidRequest) and isinstance(err.value, TemplateExecError)
    assert status_for(err.value) == 400
    assert str(err.value).startswith("template: ")
    return err.value


def test_endless_loop_is_stopped_within_the_default_budget() -> None:
    # A loop that writes nothing is stopped by the time limit, which the loop itself checks.
    source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    err = _limit_error(source)
    assert str(err) == "template: execution exceeded the time limit of 2s"
    assert DEFAULT_TIME_LIMIT == 2.0
    assert time.monotonic() - started < DEFAULT_TIME_LIMIT + 1


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(10**12) %}x{% endfor %}",
        "{% for c in 'abcdefgh' * 500000 %}{% for i in range(100000) %}{% endfor %}{% endfor %}",
        "{% macro f() %}{% for i in range(100000) %}{{ caller() }}{% endfor %}{% endmacro %}"
        "{% call f() %}{% for j in range(100000) %}{% endfor %}{% endcall %}",
        "{% macro forever(n) %}{{ forever(n + 1) }}{% endmacro %}{{ forever(0) }}",
        "{% set ns = namespace(i=0) %}{% for m in [1] recursive %}{{ loop([1]) }}{% endfor %}",
        "{% set ns = namespace(n=0) %}{% for i in range(100000) %}{% for j in range(100000) %}"
        "{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for c in 'x' * 1000000 %}{% endfor %}{% endfor %}",
    ],
)
def test_huge_or_endless_loops_are_stopped(source: str) -> None:
    started = time.monotonic()
    err = _limit_error(source, time_limit=0.3)
    assert re.fullmatch(
        r"template: (execution exceeded the time limit of 0\.3s"
        r"|nesting exceeds the depth this template engine supports"
        r"|range exceeds the limit of 100000 items)",
        str(err),
    ), str(err)
    assert time.monotonic() - started < 3


def test_recursion_is_a_limit_error() -> None:
    err = _limit_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")
    assert str(err) == "template: nesting exceeds the depth this template engine supports"


_VALUE = "template: a computed value exceeds the output limit of 16 MiB"
_OUTPUT = "template: output exceeds the limit of 16 MiB"
_ITEMS = "template: a computed list exceeds the limit of 1048576 items"
_TIME = "template: execution exceeded the time limit of 2s"  # whichever limit a loaded machine hits first


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% for i in range(100000) %}{{ 'x' * 200 }}{% endfor %}", _OUTPUT),
        ("{% for i in range(100000) %}" + "x" * 400 + "{% endfor %}", _OUTPUT),  # literal text counts too
        (
            "{% set captured %}{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxx{% endfor %}"
            "{% endfor %}{% endset %}",
            (_OUTPUT, _TIME),
        ),
        ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", _VALUE),
        ("{% set ns = namespace(s=[1]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", _ITEMS),
        ("{{ 'x' * 10**9 }}", _VALUE),
        ("{{ 'x' * 17000000 }}", _VALUE),
        ("{{ 'x' | center(10**9) }}", "template: the number 1000000000 exceeds the output limit of 16 MiB"),
        ("{{ 'x'.ljust(10**9) }}", "template: the number 1000000000 exceeds the output limit of 16 MiB"),
        ("{{ '{:>999999999}'.format(1) }}", "template: the number 999999999 exceeds the output limit of 16 MiB"),
        ("{{ '%0999999999d' % 1 }}", "template: the number 999999999 exceeds the output limit of 16 MiB"),
        ("{{ 'abc' | replace('', 'y' * 8000000) }}", _VALUE),
        ("{{ ('\t' * 1000000).expandtabs(1000000) }}", _VALUE),
        ("{{ 7 ** 10000000 }}", "template: a computed integer exceeds the limit of 100000 bits"),
        ("{{ '{:>{}}'.format(1, 10**9) }}", "template: the number 1000000000 exceeds the output limit of 16 MiB"),
        ("{{ '%*d' % (10**9, 1) }}", "template: the number 1000000000 exceeds the output limit of 16 MiB"),
        ("{{ 'a b c d' | wordwrap(1, wrapstring='z' * 4000000) }}", _VALUE),
        ("{{ ''.join(['y' * 4000000] * 1000) }}", _VALUE),
        ("{{ (['y' * 4000000] * 1000) | join }}", _VALUE),
        ("{{ ([[1] * 1000] * 4000) | sum(start=[]) }}", _ITEMS),
        ("{{ ('x' * 16000000) | list | length }}", _ITEMS),
        ("{{ ((range(100000) | list) * 11) | length }}", _ITEMS),
        ("{{ range(1000000) | list | length }}", "template: range exceeds the limit of 100000 items"),
        ("{{ {'a': 1} | tojson(indent=1000) }}", "template: tojson indent 1000 exceeds the limit of 64"),
    ],
)
def test_huge_output_is_stopped(source: str, message: str | tuple[str, ...]) -> None:
    started = time.monotonic()
    assert str(_limit_error(source)) in ((message,) if isinstance(message, str) else message)
    assert time.monotonic() - started < 3


def test_output_limit_is_a_parameter() -> None:
    source = "{% for i in range(100) %}0123456789{% endfor %}"
    assert len(render_chat_template(source, [], max_output=1000)) == 1000
    assert str(_limit_error(source, max_output=999)) == "template: output exceeds the limit of 999 bytes"
    assert DEFAULT_MAX_OUTPUT == MAX_OUTPUT == 16 * 1024 * 1024


def test_output_limit_counts_utf8_bytes() -> None:
    assert render_chat_template("{{ 'é' * 500 }}", [], max_output=1000) == "é" * 500
    assert str(_limit_error("{{ 'é' * 501 }}", max_output=1000)) == "template: output exceeds the limit of 1000 bytes"


def test_prompt_over_the_output_cap_is_a_400_naming_the_limit() -> None:
    # A 17 MiB message renders past the cap: a 400 that names the limit, not a 500.
    big = "x" * (17 * 1024 * 1024)
    started = time.monotonic()
    with pytest.raises(TemplateLimitExceeded) as err:
        render_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}", [{"role": "user", "content": big}])
    assert str(err.value) == "template: output exceeds the limit of 16 MiB"
    assert status_for(err.value) == 400
    assert time.monotonic() - started < 3


def test_legitimate_prompt_of_a_few_mib_renders() -> None:
    content = "word " * (1024 * 1024)  # 5 MiB
    out = render_chat_template(
        "{% for m in messages %}{{ m.content }}{% endfor %}", [{"role": "user", "content": content}]
    )
    assert out == content


def test_a_budget_replaces_the_time_and_output_limits() -> None:
    source = "{% for i in range(100) %}0123456789{% endfor %}"
    assert len(render_chat_template(source, [], budget=Budget(max_output=1000))) == 1000
    with pytest.raises(TemplateLimitExceeded, match=r"^template: output exceeds the limit of 999 bytes$"):
        render_chat_template(source, [], budget=Budget(max_output=999))
    ticks = iter([0.0] + [5.0] * 100)
    with pytest.raises(TemplateLimitExceeded, match=r"^template: execution exceeded the time limit of 1s$"):
        render_chat_template(source, [], budget=Budget(time_limit=1, clock=lambda: next(ticks)))
