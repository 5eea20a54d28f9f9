"""A draft model for speculative decoding: a small model that proposes the target's next tokens.

The runner loads it next to the target (Modelfile ``DRAFT``, option ``draft_num_predict``) in a second
llama.cpp context with one sequence per slot. Before each step of a lone request the engine asks it for
up to ``n_max`` tokens: its sequence is brought up to the slot's accepted tokens (the common prefix is
kept, the rest, rejected draft tokens included, leaves its KV cache with ``llama_memory_seq_rm``, and the
missing tokens are evaluated), then it drafts greedily, one token per decode, stopping early at a token
it is not confident of, as llama.cpp's ``common_speculative_gen_draft`` does. The engine verifies the
draft against the target, so what the draft proposes never changes the output, only its speed.

A draft is usable only if it tokenizes text as the target does: ``vocab_mismatch`` applies the checks
of llama.cpp's ``common_speculative_are_compatible`` when the runner loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pollama.runner.native import Batch, Context, Model

log = logging.getLogger(__name__)

VOCAB_MAX_SIZE_DIFFERENCE = 128
"""Most tokens the two vocabularies may differ by in size (llama.cpp's ``SPEC_VOCAB_MAX_SIZE_DIFFERENCE``)."""

VOCAB_CHECK_START = 5
"""Token texts are compared from this id up (llama.cpp's ``SPEC_VOCAB_CHECK_START_TOKEN_ID``): the first
few ids are control tokens models name differently."""

P_MIN = 0.75
"""A drafted token the draft gives less probability than this ends the draft (llama.cpp's ``p_min``)."""


def vocab_mismatch(target: Model, draft: Model) -> str:
    """Why ``draft`` cannot draft for ``target`` ("" when their vocabularies are compatible)."""
    if target.vocab_type != draft.vocab_type:
        return f"the vocabulary types differ (target {target.vocab_type}, draft {draft.vocab_type})"
    if (target.add_bos, target.add_eos, target.bos, target.eos) != (draft.add_bos, draft.add_eos, draft.bos, draft.eos):
        return (
            f"the special tokens differ (target BOS {target.bos} EOS {target.eos}, "
            f"draft BOS {draft.bos} EOS {draft.eos})"
        )
    difference = abs(target.n_vocab - draft.n_vocab)
    if difference > VOCAB_MAX_SIZE_DIFFERENCE:
        return (
            f"the vocabulary sizes differ by {difference} tokens (target {target.n_vocab}, draft {draft.n_vocab}; "
            f"at most {VOCAB_MAX_SIZE_DIFFERENCE})"
        )
    for token in range(VOCAB_CHECK_START, min(target.n_vocab, draft.n_vocab)):
        ours, theirs = target.token_text(token), draft.token_text(token)
        if ours != theirs:
            a, b = ours.decode("utf-8", "replace"), theirs.decode("utf-8", "replace")
            return f"token {token} is {a!r} in the target and {b!r} in the draft"
    return ""


class DraftModel:
    """The draft model, its context and one draft sequence per slot (sequence ids are the slots')."""

    def __init__(self, model: Model, ctx: Context, *, n_max: int, num_parallel: int, num_batch: int) -> None:
        self.model = model
        self.ctx = ctx
        self.n_max = max(1, n_max)
        self.num_batch = max(1, min(num_batch, ctx.n_batch))
        self._batch = Batch(self.num_batch)
        self._caches: list[list[int]] = [[] for _ in range(max(1, num_parallel))]

    def close(self) -> None:
        """Free the batch, the context and the weights (once no decode can be running)."""
        self._batch.close()
        self.ctx.close()
        self.model.close()

    def draft(self, seq: int, cache: list[int], token: int, limit: int, cancelled: Callable[[], bool]) -> list[int]:
        """Up to ``limit`` tokens likely to follow ``cache + [token]`` (a slot's KV cache and its next token).

        ``cancelled`` is polled between prompt chunks so that a request that goes away does not wait
        for its whole history to be evaluated. A failing decode costs only the draft: it comes back empty.
        """
        if limit <= 0:
            return []
        try:
            if not self._sync(seq, cache, token, cancelled):
                return []
            return self._generate(seq, min(limit, self.n_max))
        except Exception:  # drafting is optional: the target decodes on without it
            log.exception("draft model failed; its sequence %d starts over", seq)
            self.ctx.seq_remove(seq)
            self._caches[seq] = []
            return []

    def _sync(self, seq: int, cache: list[int], token: int, cancelled: Callable[[], bool]) -> bool:
        """Make the draft sequence hold ``cache + [token]`` with the logits after ``token`` ready."""
        own = self._caches[seq]
        n = len(own)
        m = min(n, len(cache))
        # The usual case: the draft sequence and the slot agree up to the shorter of the two (it lags
        # by the tokens accepted since, or leads by rejected draft tokens); compared at C speed.
        reuse = m if own[:m] == cache[:m] else common_prefix(own, cache)
        if reuse < n:
            if not self.ctx.seq_remove(seq, reuse, -1):
                self.ctx.seq_remove(seq)
                reuse = 0
            del own[reuse:]
        pending = [*cache[reuse:], token]
        for start in range(0, len(pending), self.num_batch):
            if cancelled():
                return False
            chunk = pending[start : start + self.num_batch]
            last = start + len(chunk) == len(pending)
            self._batch.clear()
            first = len(own)
            for k, item in enumerate(chunk):
                self._batch.add(item, first + k, seq, last and k == len(chunk) - 1)
            own.extend(chunk)
            self._decode(seq, first)
        return True

    def _generate(self, seq: int, n: int) -> list[int]:
        """Greedy tokens from the logits of the batch just decoded, one decode per further token."""
        import numpy as np

        own = self._caches[seq]
        out: list[int] = []
        index = self._batch.n - 1
        while True:
            logits = self.ctx.logits(index)
            token = int(logits.argmax())
            out.append(token)
            if len(out) >= n or self.model.is_eog(token):
                break
            peak = logits[token]
            if 1.0 / float(np.exp(logits - peak).sum()) < P_MIN:
                break  # not confident: a longer draft would mostly be rejected
            self._batch.clear()
            index = self._batch.add(token, len(own), seq, True)
            own.append(token)
            self._decode(seq, len(own) - 1)
        return out

    def _decode(self, seq: int, first: int) -> None:
        """Decode the batch; on failure forget its tokens (they are not in the KV cache) and raise."""
        try:
            ok = self.ctx.decode(self._batch)
        except Exception:
            del self._caches[seq][first:]
            raise
        if not ok:
            del self._caches[seq][first:]
            raise RuntimeError("draft decode was aborted")

    def shift(self, seq: int, keep: int, discard: int) -> None:
        """Follow the slot's context shift: drop positions [keep, keep + discard) and move the rest down."""
        own = self._caches[seq]
        if len(own) > keep + discard and self.ctx.can_shift:
            self.ctx.seq_remove(seq, keep, keep + discard)
            self.ctx.seq_shift(seq, keep + discard, -1, -discard)
            del own[keep : keep + discard]
        elif len(own) > keep:
            self.ctx.seq_remove(seq, keep, -1)
            del own[keep:]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the shared prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
