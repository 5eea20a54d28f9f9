"""Glue between the conformance corpora (``../shared/conformance``, copied in ``tests/data``) and pollama's public API.

Three thin functions, one per corpus; each translates a case into calls of pollama's public API
and nothing else. A held-back part of every corpus is run through these same functions.
"""

from __future__ import annotations

from typing import Any


def run_engine_case(case: dict[str, Any]) -> str:
    """Corpus A: render ``case["template"]`` with ``case["data"]``; raise with Go's message on error."""
    import datetime

    from pollama.template import parse_template

    template = parse_template(case["template"], missingkey=case.get("missingkey", "zero"))
    return template.execute(case["data"], now=datetime.date(2024, 3, 1))


def run_chat_case(case: dict[str, Any]) -> str:
    """Corpus B: build the prompt Ollama builds for this template and request; raise on error cases."""
    import datetime

    from pollama.template import PromptRequest, build_prompt, parse_template

    request = PromptRequest(
        endpoint=case.get("endpoint", "chat"),
        messages=case.get("messages", []),
        tools=case.get("tools"),
        think=case.get("think"),
        model_system=case.get("model_system"),
        model_messages=case.get("model_messages", []),
        prompt=case.get("prompt", ""),
        system=case.get("system"),
        suffix=case.get("suffix", ""),
        images=case.get("images", []),
    )
    return build_prompt(parse_template(case["template"]), request, now=datetime.date(2024, 3, 1))


def parse_modelfile_case(case: dict[str, Any]) -> list[list[str]]:
    """Corpus C: parse the case's Modelfile into ``[name, args]`` commands; raise with Ollama's message."""
    import base64

    from pollama.modelfile import parse_modelfile

    if "modelfile_b64" in case:
        source: str | bytes = base64.b64decode(case["modelfile_b64"])
    else:
        source = case["modelfile"]
    return [[command.name, command.args] for command in parse_modelfile(source)]
