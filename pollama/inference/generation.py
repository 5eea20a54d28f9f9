"""One generation as ``Chunk``s: the runner's typed events through the output parser.

``stream_chunks`` sends the ``CompletionParams`` to the runner, turns each ``Piece`` into a chunk of
parsed content/thinking/tool calls (pieces that parse to nothing, because a tag may be starting,
yield nothing), flushes the parser when the runner finishes, and ends with a ``done`` chunk that
carries the statistics and, for generate, Ollama's ``context`` (prompt tokens + generated tokens).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

from pollama.inference.request import Chunk, Stats
from pollama.runner.client import CompletionParams, Finished, ModelRunner, Piece, PromptTokens
from pollama.template.output import OutputParser


async def stream_chunks(
    runner: ModelRunner, params: CompletionParams, parser: OutputParser, *, started: float, load_duration: float
) -> AsyncGenerator[Chunk, None]:
    """The chunks of one generation; ``started`` (``time.perf_counter()``) is when the request began,
    ``load_duration`` how long getting the runner took (seconds). Closing the iterator cancels the
    generation in the runner."""
    prompt_tokens: list[int] = []
    async with aclosing(runner.complete(params)) as events:
        async for event in events:
            if isinstance(event, PromptTokens):
                prompt_tokens = event.tokens
            elif isinstance(event, Piece):
                parsed = parser.add(event.content)
                if parsed or event.logprobs:
                    yield Chunk(
                        content=parsed.content,
                        thinking=parsed.thinking,
                        tool_calls=parsed.tool_calls,
                        logprobs=list(event.logprobs),
                    )
            elif isinstance(event, Finished):
                tail = parser.finish()
                if tail:
                    yield Chunk(content=tail.content, thinking=tail.thinking, tool_calls=tail.tool_calls)
                stats = Stats(
                    total_duration=int((time.perf_counter() - started) * 1e9),
                    load_duration=int(load_duration * 1e9),
                    prompt_eval_count=event.prompt_eval_count,
                    prompt_eval_duration=event.prompt_eval_duration,
                    eval_count=event.eval_count,
                    eval_duration=event.eval_duration,
                )
                context = prompt_tokens + event.tokens if params.return_tokens else None
                yield Chunk(done=True, done_reason=event.done_reason, stats=stats, context=context)
                return
