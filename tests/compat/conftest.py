"""Fixtures of the real-client suite: the base URLs the clients point at, and ``smollm2-tools``, a
second model made from SmolLM2's GGUF with a tools-aware ChatML template."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerProcess

# ChatML that renders the tools in a system turn and tool calls as <tool_call>{...}</tool_call>
# (Hermes/Qwen style), so that the model has the ``tools`` capability and the generic tool-call
# parser looks for ``<tool_call>``. A trailing assistant message is left open (prefill).
TOOLS_TEMPLATE = """
{{- if .Tools }}<|im_start|>system
You can call functions. To call one, answer with \
<tool_call>{"name": <function-name>, "arguments": <args-object>}</tool_call>
<tools>
{{- range .Tools }}
{{ json .Function }}
{{- end }}
</tools><|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ else }}<|im_start|>{{ .Role }}
{{ if .ToolCalls }}{{ range .ToolCalls }}<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}
</tool_call>
{{ end }}{{ else }}{{ .Content }}{{ end }}
{{- if not (and $last (eq .Role "assistant")) }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""


@pytest.fixture(scope="module")
def tools_model(smollm2_server: ServerProcess) -> Iterator[str]:
    """``smollm2-tools``: SmolLM2 with ``TOOLS_TEMPLATE`` (so it has the ``tools`` capability)."""
    with smollm2_server.client() as c:
        r = c.post(
            "/api/create",
            json={"model": "smollm2-tools", "from": "smollm2", "template": TOOLS_TEMPLATE, "stream": False},
        )
        assert r.status_code == 200, r.text
        caps = c.post("/api/show", json={"model": "smollm2-tools"}).json()["capabilities"]
        assert "tools" in caps, caps
    yield "smollm2-tools"


def native_chat(server: ServerProcess, **body: object) -> dict:
    """A non-streamed ``/api/chat`` answer."""
    with httpx.Client(base_url=server.url, timeout=120) as c:
        r = c.post("/api/chat", json={"stream": False, **body})
        assert r.status_code == 200, r.text
        return r.json()


def native_generate(server: ServerProcess, **body: object) -> dict:
    """A non-streamed ``/api/generate`` answer."""
    with httpx.Client(base_url=server.url, timeout=120) as c:
        r = c.post("/api/generate", json={"stream": False, **body})
        assert r.status_code == 200, r.text
        return r.json()


# ChatML whose assistant turn opens with <think> when the request thinks: the model has the
# ``thinking`` capability (tags inferred from the template) and, greedy, answers inside the thought.
THINK_TEMPLATE = """
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}</think>
{{ end }}{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ if $.Think }}<think>
{{ end }}"""


@pytest.fixture(scope="module")
def think_model(smollm2_server: ServerProcess) -> Iterator[str]:
    """``smollm2-think``: SmolLM2 with ``THINK_TEMPLATE`` (so it has the ``thinking`` capability)."""
    with smollm2_server.client() as c:
        r = c.post(
            "/api/create",
            json={"model": "smollm2-think", "from": "smollm2", "template": THINK_TEMPLATE, "stream": False},
        )
        assert r.status_code == 200, r.text
        caps = c.post("/api/show", json={"model": "smollm2-think"}).json()["capabilities"]
        assert "thinking" in caps, caps
    yield "smollm2-think"
