"""Glue between the conformance corpora in ``../shared/conformance`` and pollama's public API.

Three thin functions, one per corpus; each translates a case into calls of pollama's public API
and nothing else. A held-back part of every corpus is run through these same functions.
"""

from __future__ import annotations

from typing import Any


def run_engine_case(case: dict[str, Any]) -> str:
    """Corpus A: render ``case["template"]`` with ``case["data"]``; raise with Go's message on error."""
    raise NotImplementedError


def run_chat_case(case: dict[str, Any]) -> str:
    """Corpus B: build the prompt Ollama builds for this template and request; raise on error cases."""
    raise NotImplementedError


def parse_modelfile_case(case: dict[str, Any]) -> list[list[str]]:
    """Corpus C: parse the case's Modelfile into ``[name, args]`` commands; raise with Ollama's message."""
    raise NotImplementedError
