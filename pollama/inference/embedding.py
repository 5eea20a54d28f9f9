"""The parts of an embedding request around the runner: fitting inputs to the context, and the
vectors' checks, normalisation and ``dimensions`` (spec §10)."""

from __future__ import annotations

import math
from typing import Any

from pollama.errors import InvalidRequest

MAX_INPUT_TOKENS = 2048
"""The longest input an embedding runner takes (its batch size)."""


def input_limit(num_ctx: int, context_length: int = 0) -> int:
    """The most tokens one input may have (special tokens included): ``num_ctx``, the model's trained
    context length when it is known, and the runner's batch, whichever is smallest."""
    limit = min(num_ctx, MAX_INPUT_TOKENS)
    return min(limit, context_length) if context_length > 0 else limit


def fit_input(tokens: list[int], limit: int, *, truncate: bool, keep_last: bool = False) -> list[int]:
    """``tokens`` cut to ``limit`` (or refused when ``truncate`` is off), as Ollama does.

    ``keep_last`` says the last token is the end marker the tokenizer adds (BERT's ``[SEP]``): a cut
    input keeps it, as Ollama's cut-detokenize-retokenize does, so the model still sees a whole input.
    """
    if len(tokens) > limit:
        if not truncate:
            raise InvalidRequest("the input length exceeds the context length")
        reserved = 1 if keep_last else 0
        if limit - reserved <= 0:
            raise InvalidRequest("input after truncation exceeds maximum context length")
        tokens = [*tokens[: limit - reserved], tokens[-1]] if keep_last else tokens[:limit]
    if not tokens:
        raise InvalidRequest("input after truncation exceeds maximum context length")
    return tokens


def ends_with_eos(tokens: list[int], metadata: dict[str, Any]) -> bool:
    """Whether ``tokens`` end with the end-of-sequence token the model's tokenizer appends itself."""
    if metadata.get("tokenizer.ggml.add_eos_token") is not True or not tokens:
        return False
    eos = metadata.get("tokenizer.ggml.eos_token_id", metadata.get("tokenizer.ggml.seperator_token_id"))
    return isinstance(eos, int) and tokens[-1] == eos


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
