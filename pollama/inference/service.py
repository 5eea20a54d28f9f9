"""Serving completions and embeddings: the orchestration every API router calls.

A completion reads straight down: the model (``model.ModelCatalog``), the checks, options and
``LoadSpec`` (``model``), a runner from the scheduler, the prompt (``template.builder``), the
generation through the runner and the output parser (``generation``), and ``Chunk``s ending in one
with statistics. An embedding takes the same first steps, then ``embedding`` fits the inputs and
finishes the vectors. Each step is owned by its module; this one only puts them in order.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import cast

import anyio.to_thread

from pollama.config import Settings
from pollama.gguf.info import context_length
from pollama.inference.embedding import ends_with_eos, finish_vectors, fit_input, input_limit
from pollama.inference.generation import stream_chunks
from pollama.inference.media import place_images, runner_images
from pollama.inference.model import (
    ModelCatalog,
    ModelInfo,
    check_request,
    completion_params,
    default_think,
    load_spec,
    merged_options,
    model_templates,
)
from pollama.inference.request import Chunk, CompletionRequest, EmbedRequest, EmbedResult
from pollama.runner.client import ModelRunner, launch_runner
from pollama.scheduler import Lease, LoadSpec, RunningModel, Scheduler
from pollama.scheduler.factory import build_scheduler
from pollama.store import ModelStore, StoredModel
from pollama.template.builder import PromptBuilder, RenderedPrompt
from pollama.template.output import OutputParser
from pollama.template.prompt import PromptRequest

Launcher = Callable[[LoadSpec], Awaitable[ModelRunner]]


class InferenceService:
    """Completions and embeddings for one server.

    ``launcher`` starts a runner for a ``LoadSpec`` (default: a ``pollama.runner`` subprocess);
    tests pass one that returns an in-process ``ModelRunner``.
    """

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        scheduler: Scheduler | None = None,
        *,
        launcher: Launcher | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.models = ModelCatalog(store)
        self.prompts = PromptBuilder(prefer_go=settings.go_template)
        self._launcher = launcher or self._launch
        self.scheduler = scheduler or build_scheduler(settings, self._launcher)

    async def _launch(self, spec: LoadSpec) -> ModelRunner:
        return await launch_runner(spec, load_timeout=self.settings.load_timeout, debug=bool(self.settings.debug))

    def start(self) -> None:
        """Start the scheduler (call from the event loop)."""
        self.scheduler.start()

    async def close(self) -> None:
        """Stop every runner."""
        await self.scheduler.close()

    # --- models ---------------------------------------------------------------------------------

    async def load_model(self, requested: str) -> StoredModel:
        """The installed model called ``requested`` (Ollama's not-found message otherwise)."""
        return await self.models.load(requested)

    async def model_info(self, model: StoredModel) -> ModelInfo:
        """``model``'s header and capabilities."""
        return await self.models.info(model)

    # --- completions ----------------------------------------------------------------------------

    async def complete(self, req: CompletionRequest) -> AsyncGenerator[Chunk, None]:
        """Answer a generate/chat request as a stream of chunks."""
        started = time.perf_counter()
        model = await self.models.load(req.model)
        if req.is_empty and req.keep_alive is not None and req.keep_alive <= 0:
            if model.model_path is not None:
                await self.scheduler.unload(str(model.model_path))
            yield Chunk(done=True, done_reason="unload", model=req.model)
            return
        info = await self.models.info(model)
        req.think = default_think(req, info)
        check_request(req, model, info)
        options = merged_options(model, req.options)
        spec = load_spec(self.settings, model, info, options, embedding=False)
        lease = await self.scheduler.acquire(spec, req.keep_alive)
        # Ollama's load_duration is the time it took to get a runner, loaded or not: never 0.
        load_duration = time.perf_counter() - started
        if req.is_empty:
            lease.release()
            yield Chunk(done=True, done_reason="load", model=req.model)
            return
        try:
            runner = _runner(lease)
            prompt = await self._prompt(req, model, info, runner, lease.spec.num_ctx)
            if req.debug_render_only:
                yield _debug_chunk(req, prompt)
                return
            parser = OutputParser(
                prompt=prompt.text,
                think=req.think,
                thinking_tags=prompt.thinking_tags,
                tool_tag=prompt.tool_tag,
                tools=req.tools,
            )
            text, images = place_images(prompt, vision="vision" in info.capabilities)
            if images:
                images = await anyio.to_thread.run_sync(runner_images, images)
            params = completion_params(req, text, options, images)
            chunks = stream_chunks(runner, params, parser, started=started, load_duration=load_duration)
            async with aclosing(chunks):
                async for chunk in chunks:
                    chunk.model = req.model
                    yield chunk
        finally:
            lease.release()

    async def _prompt(
        self, req: CompletionRequest, model: StoredModel, info: ModelInfo, runner: ModelRunner, num_ctx: int
    ) -> RenderedPrompt:
        preq = PromptRequest(
            endpoint=req.endpoint,
            messages=req.messages,
            tools=req.tools,
            think=req.think,
            prompt=req.prompt,
            system=req.system,
            suffix=req.suffix,
            images=req.images,
        )
        return await self.prompts.render(
            model_templates(model, info),
            preq,
            raw=req.raw,
            template=req.template,
            context=req.context,
            detokenize=runner.detokenize,
            num_ctx=num_ctx if req.truncate else None,
            count_tokens=runner.count,
        )

    # --- embeddings -----------------------------------------------------------------------------

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        """Embed each input (spec §10: truncation, L2 normalisation, ``dimensions``)."""
        started = time.perf_counter()
        model = await self.models.load(req.model)
        info = await self.models.info(model)
        options = merged_options(model, req.options)
        spec = load_spec(self.settings, model, info, options, embedding=True)
        if not req.inputs:
            if req.keep_alive is not None and req.keep_alive <= 0:
                await self.scheduler.unload(spec.key)
            else:
                (await self.scheduler.acquire(spec, req.keep_alive)).release()
            return EmbedResult(model=req.model, embeddings=[])
        lease = await self.scheduler.acquire(spec, req.keep_alive)
        load_duration = time.perf_counter() - started
        try:
            runner = _runner(lease)
            metadata = info.gguf.metadata if info.gguf is not None else {}
            limit = input_limit(lease.spec.num_ctx, context_length(info.gguf) if info.gguf is not None else 0)
            inputs = []
            for text in req.inputs:
                tokens = await runner.tokenize(text, add_special=True)
                keep_last = ends_with_eos(tokens, metadata)
                inputs.append(fit_input(tokens, limit, truncate=req.truncate, keep_last=keep_last))
            result = await runner.embed(inputs)
        finally:
            lease.release()
        vectors = finish_vectors(result.vectors, normalize=req.normalize, dimensions=req.dimensions)
        return EmbedResult(
            model=req.model,
            embeddings=vectors,
            total_duration=int((time.perf_counter() - started) * 1e9),
            load_duration=int(load_duration * 1e9),
            prompt_eval_count=result.prompt_eval_count,
        )

    # --- running models -------------------------------------------------------------------------

    def running(self) -> list[RunningModel]:
        """Loaded models, most recently used first."""
        return self.scheduler.running()

    async def unload(self, requested: str) -> None:
        """Unload a model now (``ollama stop``)."""
        model = await self.models.load(requested)
        if model.model_path is not None:
            await self.scheduler.unload(str(model.model_path))


def _runner(lease: Lease) -> ModelRunner:
    # The scheduler holds runners by its own narrower protocol; every runner it holds for this
    # service came from this service's launcher, which only makes ``ModelRunner``s.
    return cast(ModelRunner, lease.runner)


def _debug_chunk(req: CompletionRequest, prompt: RenderedPrompt) -> Chunk:
    debug: dict[str, object] = {"rendered_template": prompt.text}
    if req.image_count:
        debug["image_count"] = req.image_count
    return Chunk(done=True, model=req.model, debug_info=debug)
