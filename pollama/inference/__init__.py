"""Inference as the APIs see it: one internal request model and the service that serves it.

``request`` holds the dataclasses every API adapter translates into and out of; ``service`` turns
them into prompts, runner calls and parsed chunks.
"""

from pollama.inference.request import Chunk, CompletionRequest, EmbedRequest, EmbedResult, Stats

__all__ = ["Chunk", "CompletionRequest", "EmbedRequest", "EmbedResult", "Stats"]
