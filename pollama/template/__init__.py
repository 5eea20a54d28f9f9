"""Go ``text/template`` engine and Ollama's prompt building.

``parse_template`` parses Go template text exactly as Go does and ``Template.execute`` renders
it over JSON-ish or typed data; ``build_prompt`` turns a chat or generate request into the
prompt Ollama would send; ``template_capabilities``, ``thinking_tags`` and ``tool_call_tag``
read what a model's template implies about its capabilities and output format. ``Budget`` (with
``MAX_STEPS``, ``TIME_LIMIT``, ``MAX_OUTPUT``) bounds a render; renders belong in worker threads.

Modules: ``lexer``/``parser``/``nodes`` (syntax), ``exec`` (execution), ``values`` (Go values),
``gofmt``/``gojson``/``gostrconv`` (Go's printing, JSON and literals), ``funcs`` (template
functions), ``limits`` (render budgets), ``template`` (the ``Template`` object), ``ollama_types``
and ``prompt`` (Ollama's data preparation), ``introspect`` (capabilities and tags).
"""

from pollama.template.introspect import (
    template_capabilities,
    thinking_tags,
    tool_call_tag,
)
from pollama.template.limits import MAX_OUTPUT, MAX_STEPS, TIME_LIMIT, Budget
from pollama.template.prompt import PromptRequest, ThinkFields, build_prompt
from pollama.template.template import Template, parse_template

__all__ = [
    "MAX_OUTPUT",
    "MAX_STEPS",
    "TIME_LIMIT",
    "Budget",
    "PromptRequest",
    "Template",
    "ThinkFields",
    "build_prompt",
    "parse_template",
    "template_capabilities",
    "thinking_tags",
    "tool_call_tag",
]
