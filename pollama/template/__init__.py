"""Go ``text/template`` engine and Ollama's prompt building.

``parse_template`` parses Go template text exactly as Go does and ``Template.execute`` renders
it over JSON-ish or typed data; ``build_prompt`` turns a chat or generate request into the
prompt Ollama would send; ``template_capabilities``, ``thinking_tags`` and ``tool_call_tag``
read what a model's template implies about its capabilities and output format.

Modules: ``lexer``/``parser``/``nodes`` (syntax), ``exec`` (execution), ``values`` (Go values),
``gofmt``/``gojson``/``gostrconv`` (Go's printing, JSON and literals), ``funcs`` (template
functions), ``template`` (the ``Template`` object), ``ollama_types`` and ``prompt`` (Ollama's
data preparation), ``introspect`` (capabilities and tags).
"""

from pollama.template.introspect import template_capabilities, thinking_tags, tool_call_tag
from pollama.template.prompt import PromptRequest, ThinkFields, build_prompt
from pollama.template.template import Template, parse_template

__all__ = [
    "PromptRequest",
    "Template",
    "ThinkFields",
    "build_prompt",
    "parse_template",
    "template_capabilities",
    "thinking_tags",
    "tool_call_tag",
]
