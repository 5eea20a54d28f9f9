"""What an installed model can do (``completion``, ``embedding``, ``vision``, ``tools``, ``insert``,
``thinking``), worked out from its weights, its template and its config as Ollama does, in Ollama's order."""

from __future__ import annotations

import logging

from pollama.gguf import GGUFFile, gguf_capabilities, read_gguf
from pollama.store.store import StoredModel

log = logging.getLogger(__name__)


def read_model_gguf(model: StoredModel) -> GGUFFile | None:
    """The header of the model's weights, or ``None`` if it has no readable GGUF weights."""
    path = model.model_path
    if path is None:
        return None
    try:
        return read_gguf(path)
    except (OSError, ValueError) as exc:
        log.warning("cannot read GGUF %s: %s", path, exc)
        return None


def model_capabilities(model: StoredModel, gguf: GGUFFile | None) -> list[str]:
    """The capability list ``/api/show`` reports (and requests are checked against)."""
    caps: list[str] = []
    if gguf is not None:
        weights = gguf_capabilities(gguf)
        caps.append("embedding" if "embedding" in weights else "completion")
        if "vision" in weights:
            caps.append("vision")
    template_caps = prompt_capabilities(model, gguf)
    for cap in ("tools", "insert"):
        if cap in template_caps:
            caps.append(cap)
    if model.projectors and "vision" not in caps:
        caps.append("vision")
    if "thinking" in template_caps or model.config.model_family in ("gptoss", "gpt-oss"):
        caps.append("thinking")
    for cap in model.config.capabilities:
        if cap not in caps:
            caps.append(cap)
    return caps


def prompt_capabilities(model: StoredModel, gguf: GGUFFile | None) -> set[str]:
    """Capabilities implied by how prompts are built: the Go TEMPLATE, else the GGUF's Jinja template."""
    from pollama.template.jinja import jinja_capabilities

    if model.template is not None:
        from pollama.template import parse_template, template_capabilities

        try:
            return set(template_capabilities(parse_template(model.template)))
        except ValueError:
            return set()
    chat_template = gguf.metadata.get("tokenizer.chat_template") if gguf is not None else None
    if isinstance(chat_template, str) and chat_template:
        return set(jinja_capabilities(chat_template))
    return set()
