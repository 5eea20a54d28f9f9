"""Serving completions and embeddings: model → checks → load → prompt → runner → parsed chunks.

``InferenceService`` is what every API router calls. For a ``CompletionRequest`` it loads the model
from the store, checks its capabilities, merges options (model PARAMETERs under request options),
asks the scheduler for a runner, builds the prompt (Go template, else the GGUF's Jinja template,
else plain ``{{ .Prompt }}``), truncates chat history to the context, streams the runner's output
through the thinking and tool-call parsers, and yields ``Chunk``s ending in one with statistics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from pollama.config import Settings
from pollama.errors import InvalidRequest, ModelNotFound, ParameterError, PollamaError, UnsupportedCapability
from pollama.gguf import GGUFFile, read_gguf
from pollama.gguf.info import context_length, estimate_memory
from pollama.inference.grammar import JSON_GRAMMAR
from pollama.inference.request import Chunk, CompletionRequest, EmbedRequest, EmbedResult, Stats
from pollama.names import parse_name
from pollama.runner.client import RunnerProcess, launch_runner
from pollama.scheduler import LoadSpec, Scheduler
from pollama.scheduler.scheduler import Lease, Loaded
from pollama.store import ModelStore, StoredModel
from pollama.store.capabilities import model_capabilities

log = logging.getLogger(__name__)

IMAGE_TOKENS = 768
_LOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "use_mlock", "num_thread")


@dataclass
class _ModelInfo:
    """What the service keeps per manifest digest: header, capabilities, special tokens."""

    gguf: GGUFFile | None
    capabilities: list[str]
    bos_token: str = ""
    eos_token: str = ""
    go_template: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Prompt:
    text: str
    images: int = 0
    thinking_tags: tuple[str, str] | None = None
    tool_tag: str | None = None


class InferenceService:
    """Completions and embeddings for one server."""

    def __init__(self, settings: Settings, store: ModelStore, scheduler: Scheduler | None = None) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler or Scheduler(
            self._launch,
            default_keep_alive=settings.keep_alive,
            max_loaded=settings.effective_max_loaded_models,
            max_queue=settings.max_queue,
        )
        self._info: dict[str, _ModelInfo] = {}
        self._templates: dict[str, Any] = {}

    async def _launch(self, spec: LoadSpec) -> RunnerProcess:
        return await launch_runner(spec, load_timeout=self.settings.load_timeout, debug=bool(self.settings.debug))

    def start(self) -> None:
        self.scheduler.start()

    async def close(self) -> None:
        await self.scheduler.close()

    # --- models ---------------------------------------------------------------------------------

    async def load_model(self, requested: str) -> StoredModel:
        """The installed model called ``requested`` (Ollama's not-found message otherwise)."""
        if not requested:
            raise InvalidRequest("model is required")
        name = parse_name(requested)
        try:
            return await run_in_threadpool(self.store.load, name)
        except ModelNotFound:
            raise ModelNotFound(f"model '{requested}' not found") from None

    async def model_info(self, model: StoredModel) -> _ModelInfo:
        info = self._info.get(model.digest)
        if info is None:
            info = await run_in_threadpool(self._read_info, model)
            if len(self._info) > 256:
                self._info.clear()
            self._info[model.digest] = info
        return info

    def _read_info(self, model: StoredModel) -> _ModelInfo:
        gguf = None
        if model.model_path is not None and model.model_path.is_file():
            gguf = read_gguf(model.model_path, arrays="all")
        info = _ModelInfo(gguf=gguf, capabilities=model_capabilities(model, gguf))
        if gguf is not None:
            tokens = gguf.metadata.get("tokenizer.ggml.tokens")
            for attr, key in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")):
                idx = gguf.metadata.get(key)
                if isinstance(idx, int) and isinstance(tokens, list) and 0 <= idx < len(tokens):
                    setattr(info, attr, str(tokens[idx]))
        return info

    def load_spec(self, model: StoredModel, info: _ModelInfo, options: dict[str, Any], *, embedding: bool) -> LoadSpec:
        """The runner this request needs: weights, adapters and load-time options."""
        if model.model_path is None or not model.model_path.is_file():
            raise ModelNotFound(f'model "{model.name.display}" not found, try pulling it first')
        num_ctx = int(options.get("num_ctx") or self.settings.default_num_ctx)
        trained = context_length(info.gguf) if info.gguf is not None else 0
        if trained > 0:
            num_ctx = min(num_ctx, trained)
        num_ctx = max(num_ctx, 4)
        parallel = 1 if embedding else self.settings.num_parallel
        num_batch = int(options.get("num_batch") or 512)
        kv_type = self.settings.kv_cache_type or "f16"
        estimate = 0
        if info.gguf is not None:
            extra = sum(p.stat().st_size for p in [*model.adapters, *model.projectors] if p.exists())
            estimate = estimate_memory(info.gguf, num_ctx=num_ctx, num_parallel=parallel, num_batch=num_batch,
                                       kv_type=kv_type, extra_files=extra)
        return LoadSpec(
            name=model.name.display,
            model_path=model.model_path,
            adapters=tuple(model.adapters),
            projectors=tuple(model.projectors),
            num_ctx=num_ctx,
            num_batch=num_batch,
            num_gpu=0 if self.settings.force_cpu else int(options.get("num_gpu", -1)
                                                          if options.get("num_gpu") is not None else -1),
            main_gpu=options.get("main_gpu"),
            use_mmap=options.get("use_mmap"),
            use_mlock=bool(options.get("use_mlock") or False),
            num_thread=int(options.get("num_thread") or 0),
            num_parallel=parallel,
            embedding=embedding,
            flash_attention=self.settings.flash_attention,
            kv_cache_type=kv_type,
            estimated_memory=estimate,
            digest=model.digest,
        )

    def merged_options(self, model: StoredModel, requested: dict[str, Any]) -> dict[str, Any]:
        """Model PARAMETERs overridden by the request's options, validated."""
        from pollama.modelfile import validate_options

        options = dict(model.params)
        try:
            options.update(validate_options(requested or {}))
        except ParameterError as exc:
            raise PollamaError(str(exc)) from None  # Ollama answers a mistyped option with a 500
        return options

    # --- completions ----------------------------------------------------------------------------

    async def complete(self, req: CompletionRequest) -> AsyncIterator[Chunk]:
        """Answer a generate/chat request as a stream of chunks."""
        started = time.perf_counter()
        model = await self.load_model(req.model)
        display = req.model
        if req.is_empty and req.keep_alive is not None and req.keep_alive <= 0:
            if model.model_path is not None:
                await self.scheduler.unload(str(model.model_path))
            yield Chunk(done=True, done_reason="unload", model=display)
            return
        info = await self.model_info(model)
        if req.think is None and "thinking" in info.capabilities:
            req.think = True  # Ollama turns thinking on for models that can think (≥0.12.4)
        self._check(req, model, info)
        options = self.merged_options(model, req.options)
        spec = self.load_spec(model, info, options, embedding=False)
        if req.is_empty:
            lease = await self.scheduler.acquire(spec, req.keep_alive)
            lease.release()
            yield Chunk(done=True, done_reason="load", model=display)
            return

        lease = await self.scheduler.acquire(spec, req.keep_alive)
        try:
            runner: RunnerProcess = lease.runner  # type: ignore[assignment]
            prompt = await self._prompt(req, model, info, runner, lease.spec.num_ctx)
            if req.debug_render_only:
                images = len(req.images) + sum(len(m.get("images") or []) for m in req.messages)
                debug: dict[str, Any] = {"rendered_template": prompt.text}
                if images:
                    debug["image_count"] = images
                yield Chunk(done=True, model=display, debug_info=debug)
                return
            async for chunk in self._run(req, prompt, options, runner, lease, started):
                chunk.model = display
                yield chunk
        finally:
            lease.release()

    def _check(self, req: CompletionRequest, model: StoredModel, info: _ModelInfo) -> None:
        caps = info.capabilities
        full = model.name.full
        if req.raw and (req.template or req.system or req.context):
            raise InvalidRequest("raw mode does not support template, system, or context")
        if "completion" not in caps:
            raise UnsupportedCapability(f'"{req.model}" does not support {req.endpoint}')
        if req.tools and "tools" not in caps:
            raise UnsupportedCapability(f"{full} does not support tools")
        if req.suffix and "insert" not in caps:
            raise UnsupportedCapability(f"{full} does not support insert")
        if req.think not in (None, False) and "thinking" not in caps:
            raise UnsupportedCapability(f'"{req.model}" does not support thinking')
        has_images = bool(req.images) or any(m.get("images") for m in req.messages)
        if has_images and "vision" not in caps:
            raise InvalidRequest("this model is missing data required for image input")

    async def _prompt(self, req: CompletionRequest, model: StoredModel, info: _ModelInfo,
                      runner: RunnerProcess, num_ctx: int) -> _Prompt:
        if req.endpoint == "generate" and req.raw:
            return _Prompt(req.prompt)
        system = req.system if req.system else (model.system or None)
        chat_template = info.gguf.metadata.get("tokenizer.chat_template") if info.gguf is not None else None
        use_go = model.template is not None and (self.settings.go_template or not chat_template)
        if not req.template and not use_go and isinstance(chat_template, str) and chat_template:
            return await self._with_context(req, runner, self._jinja_prompt(req, model, info, chat_template, system))

        from pollama.template import PromptRequest, build_prompt, parse_template, thinking_tags, tool_call_tag

        if req.endpoint == "generate" and req.template:
            template = parse_template(req.template)
            preq = PromptRequest(endpoint="generate", prompt=req.prompt, system=system, suffix=req.suffix,
                                 images=req.images, think=req.think,
                                 model_messages=[] if req.context else model.messages)
            text = build_prompt(template, preq)
            return await self._with_context(req, runner, _Prompt(text))

        source = model.template if model.template is not None else "{{ .Prompt }}"
        template = self._templates.get(source)
        if template is None:
            template = parse_template(source)
            if len(self._templates) > 64:
                self._templates.clear()
            self._templates[source] = template
        if req.endpoint == "chat":
            preq = PromptRequest(endpoint="chat", messages=req.messages, tools=req.tools, think=req.think,
                                 model_system=model.system or None, model_messages=model.messages)
        else:
            preq = PromptRequest(endpoint="generate", prompt=req.prompt, system=system, suffix=req.suffix,
                                 images=req.images, think=req.think, model_messages=model.messages)
        text = await self._fit(template, preq, runner, num_ctx, req)
        tags = thinking_tags(template)
        tool_tag = tool_call_tag(template) if req.tools else None
        return await self._with_context(req, runner, _Prompt(text, thinking_tags=tags, tool_tag=tool_tag))

    async def _fit(self, template: Any, preq: Any, runner: RunnerProcess, num_ctx: int,
                   req: CompletionRequest) -> str:
        """Render, and if the prompt is too long for the context, drop old history (spec §8.3)."""
        from pollama.template import build_prompt

        text = build_prompt(template, preq)
        if req.endpoint != "chat" or not req.truncate or len(preq.messages) <= 1:
            return text
        if len(text.encode("utf-8")) + 2 <= num_ctx:
            return text  # every token covers at least one byte: it fits without counting
        count = len(await runner.tokenize(text, add_special=True))
        if count <= num_ctx:
            return text
        loop = asyncio.get_running_loop()

        def count_tokens(candidate: str) -> int:
            future = asyncio.run_coroutine_threadsafe(runner.tokenize(candidate, add_special=True), loop)
            return len(future.result())

        return await run_in_threadpool(build_prompt, template, preq, num_ctx=num_ctx, count_tokens=count_tokens)

    def _jinja_prompt(self, req: CompletionRequest, model: StoredModel, info: _ModelInfo, source: str,
                      system: str | None) -> _Prompt:
        from pollama.template.jinja import jinja_thinking_tags, render_chat_template

        if req.endpoint == "chat":
            messages = list(model.messages) + list(req.messages)
            if model.system and not (req.messages and req.messages[0].get("role", "").lower() == "system"):
                messages.insert(0, {"role": "system", "content": model.system})
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + list(model.messages)
            messages.append({"role": "user", "content": req.prompt})
        messages = [{**m, "role": str(m.get("role", "")).lower()} for m in messages]
        last_assistant = bool(messages) and messages[-1]["role"] == "assistant"
        think = req.think
        text = render_chat_template(
            source, messages, tools=req.tools, add_generation_prompt=not last_assistant,
            bos_token=info.bos_token, eos_token=info.eos_token,
            enable_thinking=None if think is None else bool(think),
            reasoning_effort=think if isinstance(think, str) else None)
        tags = jinja_thinking_tags(source) if think not in (None, False) else None
        tool_tag = None
        if req.tools:
            tool_tag = "<tool_call>" if "<tool_call>" in source else "{"
        return _Prompt(text, thinking_tags=tags, tool_tag=tool_tag)

    async def _with_context(self, req: CompletionRequest, runner: RunnerProcess, prompt: _Prompt) -> _Prompt:
        if req.endpoint == "generate" and req.context:
            prompt.text = await runner.detokenize(list(req.context)) + prompt.text
        return prompt

    async def _run(self, req: CompletionRequest, prompt: _Prompt, options: dict[str, Any],
                   runner: RunnerProcess, lease: Lease, started: float) -> AsyncIterator[Chunk]:
        from pollama.template.thinking import ThinkingParser
        from pollama.template.toolcalls import ToolCallParser

        body: dict[str, Any] = {"op": "completion", "prompt": prompt.text, "shift": req.shift,
                                "truncate": req.truncate, "options": _runner_options(options),
                                "logprobs": req.logprobs or req.top_logprobs > 0, "top_logprobs": req.top_logprobs,
                                "return_tokens": req.endpoint == "generate" and not req.raw}
        if req.format == "json":
            body["grammar"] = JSON_GRAMMAR
        elif isinstance(req.format, dict):
            body["json_schema"] = req.format
        thinker = None
        if prompt.thinking_tags and req.think not in (None, False):
            opening, closing = prompt.thinking_tags
            thinker = ThinkingParser(opening, closing, started=prompt.text.rstrip().endswith(opening))
        tools = None
        if req.tools and prompt.tool_tag:
            names = [t.get("function", {}).get("name", "") for t in req.tools]
            tools = ToolCallParser(prompt.tool_tag, [n for n in names if n])
        prompt_tokens: list[int] = []
        async for event in runner.stream(body):
            if "prompt_tokens" in event:
                prompt_tokens = list(event.get("tokens", []))
                continue
            if "content" in event:
                chunk = _parse(event["content"], thinker, tools)
                chunk.logprobs = event.get("logprobs") or []
                if chunk.content or chunk.thinking or chunk.tool_calls or chunk.logprobs:
                    yield chunk
                continue
            if event.get("done"):
                tail = _finish(thinker, tools)
                if tail.content or tail.thinking or tail.tool_calls:
                    yield tail
                stats = Stats(
                    total_duration=int((time.perf_counter() - started) * 1e9),
                    load_duration=int(lease.load_duration * 1e9),
                    prompt_eval_count=int(event.get("prompt_eval_count", 0)),
                    prompt_eval_duration=int(event.get("prompt_eval_duration", 0)),
                    eval_count=int(event.get("eval_count", 0)),
                    eval_duration=int(event.get("eval_duration", 0)),
                )
                context = None
                if req.endpoint == "generate" and not req.raw:
                    context = prompt_tokens + list(event.get("tokens", []))
                reason = event.get("done_reason") or "stop"
                yield Chunk(done=True, done_reason=reason, stats=stats, context=context)
                return

    # --- embeddings -----------------------------------------------------------------------------

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        """Embed each input (spec §10: truncation, L2 normalisation, ``dimensions``)."""
        started = time.perf_counter()
        model = await self.load_model(req.model)
        info = await self.model_info(model)
        options = self.merged_options(model, req.options)
        spec = self.load_spec(model, info, options, embedding=True)
        if not req.inputs:
            if req.keep_alive is not None and req.keep_alive <= 0:
                await self.scheduler.unload(spec.key)
            else:
                (await self.scheduler.acquire(spec, req.keep_alive)).release()
            return EmbedResult(model=req.model, embeddings=[])
        lease = await self.scheduler.acquire(spec, req.keep_alive)
        try:
            runner: RunnerProcess = lease.runner  # type: ignore[assignment]
            limit = min(lease.spec.num_ctx, min(2048, lease.spec.num_ctx))
            token_lists: list[list[int]] = []
            for text in req.inputs:
                tokens = await runner.tokenize(text, add_special=True)
                if len(tokens) > limit:
                    if not req.truncate:
                        raise InvalidRequest("the input length exceeds the context length")
                    tokens = tokens[:limit]
                if not tokens:
                    raise InvalidRequest("input after truncation exceeds maximum context length")
                token_lists.append(tokens)
            result = await runner.embed(token_lists)
        finally:
            lease.release()
        vectors = []
        for vector in result["embeddings"]:
            if any(math.isnan(v) or math.isinf(v) for v in vector):
                raise InvalidRequest("embedding contains NaN or Inf values")
            if req.normalize:
                vector = _normalize(vector)
                if req.dimensions and 0 < req.dimensions < len(vector):
                    vector = _normalize(vector[: req.dimensions])
            vectors.append(vector)
        return EmbedResult(model=req.model, embeddings=vectors,
                           total_duration=int((time.perf_counter() - started) * 1e9),
                           load_duration=int(lease.load_duration * 1e9),
                           prompt_eval_count=int(result.get("prompt_eval_count", 0)))

    # --- running models -------------------------------------------------------------------------

    def running(self) -> list[Loaded]:
        """Loaded runners, most recently used first."""
        return sorted(self.scheduler.loaded(), key=lambda e: e.last_used, reverse=True)

    async def unload(self, requested: str) -> None:
        """Unload a model now (``ollama stop``)."""
        model = await self.load_model(requested)
        if model.model_path is None or not await self.scheduler.unload(str(model.model_path)):
            return


def _normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    scale = 1.0 / max(norm, 1e-12)
    return [v * scale for v in vector]


def _runner_options(options: dict[str, Any]) -> dict[str, Any]:
    """The sampling options the runner understands (load-time ones went into the LoadSpec)."""
    return {k: v for k, v in options.items() if k not in _LOAD_OPTIONS}


def _parse(text: str, thinker: Any, tools: Any) -> Chunk:
    chunk = Chunk()
    content = text
    if thinker is not None:
        thinking, content = thinker.add(text)
        chunk.thinking = thinking
    if tools is not None and content:
        content, calls = tools.add(content)
        chunk.tool_calls = calls
    chunk.content = content
    return chunk


def _finish(thinker: Any, tools: Any) -> Chunk:
    chunk = Chunk()
    content = ""
    if thinker is not None:
        thinking, content = thinker.finish()
        chunk.thinking = thinking
    if tools is not None:
        more, calls = tools.add(content) if content else ("", [])
        rest, last = tools.finish()
        content = more + rest
        chunk.tool_calls = calls + last
    chunk.content = content
    return chunk
