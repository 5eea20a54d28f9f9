"""Ollama's prompt building: from a chat or generate request to the text sent to the model.

Owns the steps Ollama takes around its template engine: assembling the message list (model
``MESSAGE``s, model ``SYSTEM``, request messages or the generate prompt), context-window
truncation, ``[img-N]`` image tags, collation of consecutive same-role messages, the think fields,
and the choice between the ``suffix``, ``messages`` and ``legacy`` execution paths — including the
legacy path's turn-by-turn renders and its final render of a copy of the template pruned after
``.Response`` (run without Ollama's functions, defined templates or ``missingkey=zero``).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pollama.errors import TemplatePanic
from pollama.template.funcs import BUILTINS
from pollama.template.nodes import (
    ActionNode,
    BranchNode,
    CommandNode,
    FieldNode,
    ListNode,
    Node,
    PipeNode,
)
from pollama.template.ollama_types import TemplateMessage, ToolCall, Tools, decode_image
from pollama.template.template import Template
from pollama.template.values import GoSlice

Clock = datetime.date | datetime.datetime | None

IMAGE_TOKENS = 768
"""Tokens counted per image when fitting a prompt to the context (Ollama's estimate)."""


@dataclass
class PromptRequest:
    """The parts of an Ollama ``/api/chat`` or ``/api/generate`` request that shape the prompt."""

    endpoint: str = "chat"
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    think: bool | str | None = None
    model_system: str | None = None
    model_messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    system: str | None = None
    suffix: str = ""
    images: list[str] = field(default_factory=list)


@dataclass
class _Message:
    role: str
    content: str
    thinking: str = ""
    images: list[bytes] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_name: str = ""
    tool_call_id: str = ""

    @classmethod
    def from_api(cls, m: dict[str, Any]) -> _Message:
        return cls(
            role=str(m.get("role") or "").lower(),
            content=str(m.get("content") or ""),
            thinking=str(m.get("thinking") or ""),
            images=[decode_image(i) for i in m.get("images") or []],
            tool_calls=[ToolCall.from_api(c) for c in m.get("tool_calls") or []],
            tool_name=str(m.get("tool_name") or ""),
            tool_call_id=str(m.get("tool_call_id") or ""),
        )

    def copy(self) -> _Message:
        return _Message(
            self.role,
            self.content,
            self.thinking,
            list(self.images),
            list(self.tool_calls),
            self.tool_name,
            self.tool_call_id,
        )


@dataclass(frozen=True)
class ThinkFields:
    """``.Think``, ``.ThinkLevel`` and ``.IsThinkSet`` for a request's ``think`` value."""

    think: bool
    level: str
    is_set: bool

    @classmethod
    def from_request(cls, think: bool | str | None) -> ThinkFields:
        if think is None:
            return cls(False, "", False)
        if think is True:
            return cls(True, "medium", True)
        if think is False:
            return cls(False, "", True)
        return cls(True, str(think), True)


def _response_action() -> ActionNode:
    return ActionNode(0, 0, PipeNode(0, 0, cmds=[CommandNode(0, [FieldNode(0, ["Response"])])]))


class _OllamaTemplate:
    """A template prepared the way Ollama's ``template.Parse`` prepares it (vars, appended Response)."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self.vars = template.vars()
        if "messages" not in self.vars and "response" not in self.vars:
            root = ListNode(template.root.pos, [*template.root.nodes, _response_action()])
            self.exec_template = template.derive(root)
        else:
            self.exec_template = template


def _collate(msgs: list[_Message]) -> tuple[str, list[_Message]]:
    system: list[str] = []
    collated: list[_Message] = []
    for m in msgs:
        if m.role == "system":
            system.append(m.content)
        if collated and collated[-1].role == m.role and m.role != "tool":
            collated[-1].content += "\n\n" + m.content
        else:
            collated.append(m.copy())
    return "\n\n".join(system), collated


def _template_messages(msgs: list[_Message]) -> GoSlice:
    return GoSlice(
        "[]*template.templateMessage",
        [
            TemplateMessage(m.role, m.content, m.thinking, m.images, m.tool_calls, m.tool_name, m.tool_call_id)
            for m in msgs
        ],
    )


def _think_data(think: ThinkFields) -> dict[str, Any]:
    return {"Think": think.think, "ThinkLevel": think.level, "IsThinkSet": think.is_set}


def _prune_after_response(root: ListNode) -> ListNode:
    """Ollama's ``deleteNode``: drop every node after the first ``.Response`` field (on a copy)."""
    cut = False

    def cutting(n: Node) -> bool:
        nonlocal cut
        if isinstance(n, FieldNode) and "Response" in n.ident:
            cut = True
            return False
        return cut

    def walk(n: Node) -> Node | None:
        if cutting(n):
            return None
        if isinstance(n, ListNode):
            n.nodes = [c for c in (walk(c) for c in n.nodes) if c is not None]
            return n
        if isinstance(n, BranchNode):
            n.list = _as_list(walk(n.list))
            if n.else_list is not None:
                n.else_list = _as_list(walk(n.else_list))
            return n
        if isinstance(n, ActionNode):
            pipe = walk(n.pipe)
            if pipe is None:
                return None
            return n
        if isinstance(n, PipeNode):
            commands = []
            for c in n.cmds:
                args = [a for a in (walk(a) for a in c.args) if a is not None]
                if not args:
                    return None
                c.args = args
                commands.append(c)
            if not commands:
                return None
            n.cmds = commands
            return n
        return n

    copy = root.copy()
    result = walk(copy)
    assert isinstance(result, ListNode)
    return result


def _as_list(n: Node | None) -> ListNode:
    if not isinstance(n, ListNode):
        raise TemplatePanic("interface conversion: parse.Node is nil, not *parse.ListNode", location="panic: ")
    return n


def _execute(
    prepared: _OllamaTemplate,
    msgs: list[_Message],
    tools: Tools,
    think: ThinkFields,
    *,
    prompt: str = "",
    suffix: str = "",
    now: Clock = None,
) -> str:
    """Ollama's ``Template.Execute`` on already image-tagged messages."""
    tmpl = prepared.exec_template
    system, collated = _collate(msgs)
    if prompt and suffix:
        return tmpl.execute({"Prompt": prompt, "Suffix": suffix, "Response": "", **_think_data(think)}, now=now)
    if "messages" in prepared.vars:
        return tmpl.execute(
            {
                "System": system,
                "Messages": _template_messages(collated),
                "Tools": tools,
                "Response": "",
                **_think_data(think),
            },
            now=now,
        )
    return _execute_legacy(prepared, collated, think, now)


def _execute_legacy(prepared: _OllamaTemplate, collated: list[_Message], think: ThinkFields, now: Clock) -> str:
    tmpl = prepared.exec_template
    out: list[str] = []
    system = prompt = response = ""

    def render() -> None:
        nonlocal system, prompt, response
        out.append(
            tmpl.execute({"System": system, "Prompt": prompt, "Response": response, **_think_data(think)}, now=now)
        )
        system = prompt = response = ""

    for m in collated:
        if m.role == "system":
            if prompt or response:
                render()
            system = m.content
        elif m.role == "user":
            if response:
                render()
            prompt = m.content
        elif m.role == "assistant":
            response = m.content

    pruned = _prune_after_response(tmpl.root)
    final = tmpl.derive(pruned, funcs=dict(BUILTINS), missingkey="default", keep_definitions=False)
    out.append(final.execute({"System": system, "Prompt": prompt, "Response": response, **_think_data(think)}, now=now))
    return "".join(out)


def _tag_images(msgs: list[_Message]) -> list[_Message]:
    """Replace ``[img]`` markers (or prefix) with ``[img-N]``, N counting images across messages."""
    tagged = []
    n = 0
    for m in msgs:
        m = m.copy()
        prefix = ""
        text = m.content
        for _ in m.images:
            tag = f"[img-{n}]"
            if "[img]" in text:
                text = text.replace("[img]", tag, 1)
            else:
                prefix += tag
            n += 1
        m.content = prefix + text
        tagged.append(m)
    return tagged


def _request_messages(req: PromptRequest) -> list[_Message]:
    if req.endpoint == "generate":
        msgs: list[_Message] = []
        system = req.system or req.model_system
        if system:
            msgs.append(_Message("system", system))
        msgs.extend(_Message.from_api(m) for m in req.model_messages)
        msgs.append(_Message("user", req.prompt, images=[decode_image(i) for i in req.images]))
        return msgs
    request = [_Message.from_api(m) for m in req.messages]
    msgs = [_Message.from_api(m) for m in req.model_messages] + request
    if req.model_system and (not request or request[0].role != "system"):
        msgs.insert(0, _Message("system", req.model_system))
    return msgs


def build_prompt(
    template: Template,
    req: PromptRequest,
    *,
    now: Clock = None,
    num_ctx: int | None = None,
    count_tokens: Callable[[list[str]], list[int]] | None = None,
    image_tokens: int = IMAGE_TOKENS,
) -> str:
    """The prompt Ollama builds for ``req`` with ``template`` (see ``build_prompt_with_images``)."""
    text, _ = build_prompt_with_images(
        template, req, now=now, num_ctx=num_ctx, count_tokens=count_tokens, image_tokens=image_tokens
    )
    return text


def build_prompt_with_images(
    template: Template,
    req: PromptRequest,
    *,
    now: Clock = None,
    num_ctx: int | None = None,
    count_tokens: Callable[[list[str]], list[int]] | None = None,
    image_tokens: int = IMAGE_TOKENS,
) -> tuple[str, list[bytes]]:
    """The prompt Ollama builds for ``req`` with ``template`` (parsed by ``parse_template``), and the
    images its ``[img-N]`` tags refer to: image N is ``images[N]`` (the images of the messages kept
    after truncation, in order).

    With ``num_ctx`` and ``count_tokens``, the oldest non-system messages are dropped until the
    rendered prompt's token count (plus ``image_tokens`` per image; pass 0 for a model without a
    vision projector) fits ``num_ctx``; system messages and the last message are always kept.
    ``count_tokens`` counts several candidate prompts at once (one call per batch, not per
    candidate): candidates are tried oldest-first, as Ollama does, in batches of 1, 2, 4, ...
    Raises ``TemplateParseError``, ``TemplateExecError`` or ``TemplatePanic``.
    """
    prepared = _OllamaTemplate(template)
    think = ThinkFields.from_request(req.think)
    if req.endpoint == "generate":
        if req.suffix:
            # Ollama's generate handler fills no tool list next to a suffix: ``.Tools`` is Go's nil.
            tools = Tools(None)
            return _execute(prepared, [], tools, think, prompt=req.prompt, suffix=req.suffix, now=now), []
        tools = Tools([])
    else:
        tools = Tools.from_api(req.tools)
    msgs = _request_messages(req)

    start = 0
    if num_ctx is not None and count_tokens is not None and len(msgs) > 1:
        start, rendered = _fit_start(prepared, msgs, tools, think, now, num_ctx, count_tokens, image_tokens)
        if rendered is not None and not any(m.images for m in msgs[start:]):
            return rendered, []  # the candidate that fit is already the final prompt (no image tags to add)
    kept = [m for m in msgs[:start] if m.role == "system"] + _tag_images(msgs[start:])
    images = [image for m in msgs[start:] for image in m.images]
    return _execute(prepared, kept, tools, think, now=now), images


def _fit_start(
    prepared: _OllamaTemplate,
    msgs: list[_Message],
    tools: Tools,
    think: ThinkFields,
    now: Clock,
    num_ctx: int,
    count_tokens: Callable[[list[str]], list[int]],
    image_tokens: int,
) -> tuple[int, str | None]:
    """The first message to keep (Ollama's oldest-first search) and that candidate's rendering."""
    last = len(msgs) - 1
    first = 0
    size = 1
    while first < last:
        batch = range(first, min(first + size, last))
        texts = [
            _execute(prepared, [m for m in msgs[:i] if m.role == "system"] + msgs[i:], tools, think, now=now)
            for i in batch
        ]
        for i, text, count in zip(batch, texts, count_tokens(texts), strict=True):
            if count + image_tokens * sum(len(m.images) for m in msgs[i:]) <= num_ctx:
                return i, text
        first += size
        size *= 2
    return last, None
