"""The prompt for one request to one model: which template, rendered off the event loop, fitted to the context.

``PromptBuilder`` picks the template as pollama does: a generate request's own ``template``, else the
model's Go ``TEMPLATE`` (unless the GGUF carries a Jinja chat template and ``OLLAMA_GO_TEMPLATE`` is
off, or the model has no ``TEMPLATE``), else the GGUF's Jinja chat template, else ``{{ .Prompt }}``.
A raw generate request uses its prompt as it is. Chat history is fitted to the context by dropping
the oldest messages (``build_prompt``), counting candidates in batches through an async counter;
a generate request's ``context`` tokens are detokenized in front of the prompt.

``render`` does every parse and render in a worker thread: their cost is chosen by whoever wrote
the template or the request, and the event loop is shared by every client. ``build`` is the same
work, synchronously.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.from_thread
import anyio.to_thread

from pollama.template.introspect import thinking_tags, tool_call_tag
from pollama.template.jinja import ChatTemplate, jinja_thinking_tags
from pollama.template.ollama_types import decode_image
from pollama.template.prompt import IMAGE_TOKENS, PromptRequest, build_prompt_with_images
from pollama.template.template import Template, parse_template

_PLAIN = "{{ .Prompt }}"
MEDIA_MARKER = "<__media__>"
"""libmtmd's default media marker: where the runner puts an image's embeddings."""
IMAGE_TAG = re.compile(r"\[img-([0-9]+)\]")
"""Ollama's image tag in a Go-template prompt: ``[img-N]`` refers to the request's image N."""
# A chat template that tests content for a type or reads ``type`` keys renders content parts;
# one that does not would print a list of parts as text, so it gets the parts joined into a string.
_READS_PARTS = re.compile(r"""\[\s*['"]type['"]\s*\]|\.type\b|is\s+(?:not\s+)?(?:string|iterable|sequence|mapping)""")
_CACHE_SIZE = 64
# A tokenizer adds at most a BOS and an EOS token to a text, and every other token covers at least
# one byte, so a text of N bytes never has more than N + 2 tokens.
_SPECIAL_TOKENS = 2


@dataclass(frozen=True)
class ModelTemplates:
    """What a model brings to its prompts: Modelfile TEMPLATE/SYSTEM/MESSAGEs and the GGUF's Jinja template."""

    template: str | None = None
    system: str = ""
    messages: Sequence[dict[str, Any]] = ()
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    add_bos: bool = False  # the tokenizer puts BOS in front by itself (``tokenizer.ggml.add_bos_token``)


@dataclass
class RenderedPrompt:
    """The text sent to the model, and what its template implies about the output format."""

    text: str
    thinking_tags: tuple[str, str] | None = None  # the template's thinking tags, if it has them
    tool_tag: str | None = None  # where tool calls start in the output (only when the request has tools)
    # The images the prompt refers to. With ``image_tags`` (Go templates, raw prompts) the text holds
    # Ollama's ``[img-N]`` tags and tag N means ``images[N]``; otherwise (Jinja chat templates) the
    # text holds one ``MEDIA_MARKER`` per image, in the order of ``images``.
    images: list[bytes] = field(default_factory=list)
    image_tags: bool = True


@dataclass(frozen=True)
class _GoTemplate:
    template: Template
    thinking_tags: tuple[str, str] | None
    tool_tag: str | None


Counter = Callable[[list[str]], Coroutine[Any, Any, list[int]]]


class PromptBuilder:
    """Builds prompts; keeps the models' parsed Go templates and compiled Jinja templates by source."""

    def __init__(self, *, prefer_go: bool = True) -> None:
        self.prefer_go = prefer_go
        self._go: dict[str, _GoTemplate] = {}
        self._jinja: dict[str, ChatTemplate] = {}

    async def render(
        self,
        model: ModelTemplates,
        req: PromptRequest,
        *,
        raw: bool = False,
        template: str | None = None,
        context: list[int] | None = None,
        detokenize: Callable[[list[int]], Awaitable[str]] | None = None,
        num_ctx: int | None = None,
        count_tokens: Counter | None = None,
    ) -> RenderedPrompt:
        """``build`` in a worker thread, with ``context`` (detokenized first) in front of the prompt.

        ``count_tokens`` is awaited on the event loop from the worker, once per batch of candidates
        that may not fit ``num_ctx``.
        """
        prefix = ""
        if context and detokenize is not None:
            prefix = await detokenize(list(context))
        counter = None
        if count_tokens is not None and num_ctx is not None:
            counter = _bounded_counter(count_tokens, num_ctx, req)
        work = functools.partial(
            self.build,
            model,
            req,
            raw=raw,
            template=template,
            continues=bool(context),
            num_ctx=num_ctx,
            count_tokens=counter,
        )
        prompt = work() if raw else await anyio.to_thread.run_sync(work)
        prompt.text = prefix + prompt.text
        return prompt

    def build(
        self,
        model: ModelTemplates,
        req: PromptRequest,
        *,
        raw: bool = False,
        template: str | None = None,
        continues: bool = False,
        num_ctx: int | None = None,
        count_tokens: Callable[[list[str]], list[int]] | None = None,
    ) -> RenderedPrompt:
        """The prompt for ``req`` (its ``model_*`` fields are taken from ``model``).

        ``continues`` (a generate request that carries ``context``) leaves the model's MESSAGEs out,
        as Ollama does. History is fitted only for a chat with more than one message and a
        ``num_ctx``. Raises the template errors of ``build_prompt`` and of the Jinja renderer.
        """
        if req.endpoint == "generate" and raw:
            return RenderedPrompt(req.prompt, images=[decode_image(i) for i in req.images])
        req = dataclasses.replace(
            req, model_system=model.system or None, model_messages=[] if continues else list(model.messages)
        )
        chat_template = model.chat_template or None
        use_go = model.template is not None and (self.prefer_go or chat_template is None)
        if not template and not use_go and chat_template is not None:
            return self._jinja_prompt(model, req, chat_template)
        if req.endpoint == "generate" and template:
            text, images = build_prompt_with_images(parse_template(template), req)
            return RenderedPrompt(text, images=images)
        go = self._go_template(model.template if model.template is not None else _PLAIN)
        fit = req.endpoint == "chat" and len(req.messages) > 1 and num_ctx is not None
        text, images = build_prompt_with_images(
            go.template, req, num_ctx=num_ctx if fit else None, count_tokens=count_tokens if fit else None
        )
        return RenderedPrompt(
            text, thinking_tags=go.thinking_tags, tool_tag=go.tool_tag if req.tools else None, images=images
        )

    def _go_template(self, source: str) -> _GoTemplate:
        cached = self._go.get(source)
        if cached is None:
            template = parse_template(source)
            cached = _GoTemplate(template, thinking_tags(template), tool_call_tag(template))
            if len(self._go) >= _CACHE_SIZE:
                self._go.clear()
            self._go[source] = cached
        return cached

    def _chat_template(self, source: str) -> ChatTemplate:
        cached = self._jinja.get(source)
        if cached is None:
            cached = ChatTemplate(source)
            if len(self._jinja) >= _CACHE_SIZE:
                self._jinja.clear()
            self._jinja[source] = cached
        return cached

    def _jinja_prompt(self, model: ModelTemplates, req: PromptRequest, source: str) -> RenderedPrompt:
        if req.endpoint == "chat":
            messages = list(req.model_messages) + list(req.messages)
            if model.system and not (req.messages and str(req.messages[0].get("role", "")).lower() == "system"):
                messages.insert(0, {"role": "system", "content": model.system})
        else:
            system = req.system or model.system
            messages = ([{"role": "system", "content": system}] if system else []) + list(req.model_messages)
            messages.append({"role": "user", "content": req.prompt, "images": list(req.images)})
        messages = [{**m, "role": str(m.get("role", "")).lower()} for m in messages]
        messages, images = _media_messages(messages, parts=bool(_READS_PARTS.search(source)))
        last_assistant = bool(messages) and messages[-1]["role"] == "assistant"
        think = req.think
        text = self._chat_template(source).render(
            messages,
            tools=req.tools,
            add_generation_prompt=not last_assistant,
            bos_token=model.bos_token,
            eos_token=model.eos_token,
            enable_thinking=None if think is None else bool(think),
            reasoning_effort=think if isinstance(think, str) else None,
        )
        if model.add_bos and model.bos_token and text.startswith(model.bos_token):
            # The runner's tokenizer adds BOS itself; a template that writes it too would give two.
            # llama-server drops the template's one in the same case.
            text = text[len(model.bos_token) :]
        tags = jinja_thinking_tags(source) if think not in (None, False) else None
        tool_tag = None
        if req.tools:
            tool_tag = "<tool_call>" if "<tool_call>" in source else "{"
        return RenderedPrompt(text, thinking_tags=tags, tool_tag=tool_tag, images=images, image_tags=False)


def _media_messages(messages: list[dict[str, Any]], *, parts: bool) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Messages for a Jinja chat template with every image as ``MEDIA_MARKER`` where it goes, and the
    images in marker order.

    As llama-server does, an image is a text part holding the marker (``parts``), or, for a template
    that only renders string content, the marker inside the string. In a message, an image takes the
    place of the next literal ``[img]`` or else goes in front of the text, as Ollama places its tags.
    Consecutive messages of one role that include an image-only one (OpenAI's content parts arrive
    split into one message per part) become one message, their parts in order.
    """
    out: list[dict[str, Any]] = []
    images: list[bytes] = []
    for run in _role_runs(messages):
        if not any(m.get("images") for m in run):
            out.extend(run)
            continue
        merge = len(run) > 1 and any(m.get("images") and not m.get("content") for m in run)
        groups = [run] if merge else [[m] for m in run]
        for group in groups:
            pieces: list[str] = []
            for m in group:
                text = str(m.get("content") or "")
                prefix = 0
                for image in m.get("images") or []:
                    images.append(decode_image(image))
                    if "[img]" in text:
                        text = text.replace("[img]", MEDIA_MARKER, 1)
                    else:
                        prefix += 1
                pieces.extend([MEDIA_MARKER] * prefix)
                if text:
                    pieces.append(text)
            merged = {k: v for k, v in group[-1].items() if k != "images"}
            merged["content"] = [{"type": "text", "text": p} for p in pieces] if parts else "".join(pieces)
            out.append(merged)
    return out, images


def _role_runs(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    runs: list[list[dict[str, Any]]] = []
    for m in messages:
        if runs and runs[-1][-1]["role"] == m["role"]:
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def _bounded_counter(count_tokens: Counter, num_ctx: int, req: PromptRequest) -> Callable[[list[str]], list[int]]:
    """A counter for the worker thread: texts too short to overflow ``num_ctx`` (even with every
    image of the request) are not counted at all, the rest in one call to ``count_tokens``."""
    images = IMAGE_TOKENS * sum(len(m.get("images") or []) for m in req.messages)

    def count(texts: list[str]) -> list[int]:
        bounds = [len(text.encode("utf-8")) + _SPECIAL_TOKENS for text in texts]
        unsure = [i for i, bound in enumerate(bounds) if bound + images > num_ctx]
        if unsure:
            counted: list[int] = anyio.from_thread.run(count_tokens, [texts[i] for i in unsure])
            for i, n in zip(unsure, counted, strict=True):
                bounds[i] = n
        return bounds

    return count
