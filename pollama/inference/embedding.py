"""The parts of an embedding request around the runner: fitting inputs to the context, and the
vectors' checks, normalisation and ``dimensions`` (spec §10)."""

from __future__ import annotations

import math

from pollama.errors import InvalidRequest

MAX_INPUT_TOKENS = 2048
"""The longest input an embedding runner takes (its batch size)."""


def input_limit(num_ctx: int) -> int:
    """The most tokens one input may have with a runner loaded for ``num_ctx``."""
    return min(num_ctx, MAX_INPUT_TOKENS)


def fit_input(tokens: list[int], limit: int, *, truncate: bool) -> list[int]:
    """``tokens`` cut to ``limit`` (or refused when ``truncate`` is off), as Ollama does."""
    if len(tokens) > limit:
        if not truncate:
            raise InvalidRequest("the input length exceeds the context length")
        tokens = tokens[:limit]
    if not tokens:
        raise InvalidRequest("input after truncation exceeds maximum context length")
    return tokens


def finish_vectors(vectors: list[list[float]], *, normalize: bool, dimensions: int | None) -> list[list[float]]:
    """Refuse NaN/Inf vectors; L2-normalise and cut to ``dimensions`` (renormalised) when asked."""
    out = []
    for vector in vectors:
        if any(math.isnan(v) or math.isinf(v) for v in vector):
            raise InvalidRequest("embedding contains NaN or Inf values")
        if normalize:
            vector = _normalize(vector)
            if dimensions and 0 < dimensions < len(vector):
                vector = _normalize(vector[:dimensions])
        out.append(vector)
    return out


def _normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    scale = 1.0 / max(norm, 1e-12)
    return [v * scale for v in vector]
