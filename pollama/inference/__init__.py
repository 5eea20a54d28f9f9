"""Inference as the APIs see it: one internal request model and the service that serves it.

``request`` holds the dataclasses every API adapter translates into and out of (and ``fold_chunks``,
the one fold of a non-streamed answer); ``service`` only orders the steps: ``model`` (store lookup,
checks, options, ``LoadSpec``), a runner from the scheduler, the prompt (``pollama.template.builder``),
``generation`` (runner events through ``pollama.template.output`` into chunks), and ``embedding``.
"""

from pollama.inference.request import Chunk, CompletionRequest, EmbedRequest, EmbedResult, Stats

__all__ = ["Chunk", "CompletionRequest", "EmbedRequest", "EmbedResult", "Stats"]
