"""Continuous batching over one llama.cpp context: slots, prompt evaluation, sampling, stop strings.

The engine owns a context with ``num_parallel`` sequences ("slots"). Requests wait in a queue and
join a free slot between decode steps; every step builds one batch holding the next token of each
generating slot plus as many pending prompt tokens as fit in ``num_batch``, decodes it, and samples
each slot from its own output with its own sampler chain. A slot keeps the tokens of its last
request in the KV cache, so a request whose prompt shares a prefix with them evaluates only the rest.

Images (with a projector loaded, ``MtmdContext``) come as a ``MediaPrompt``: the prompt's token list
holds a run of pseudo-tokens per image, derived from the image bytes' hash, so prefix reuse treats an
image like any other tokens (the same image at the same place is reused, never re-encoded; another
image never matches). ``prepare`` runs the vision encoder on the caller's thread for each image no
slot has cached, so the slow part never stalls the decode loop; the engine thread then decodes an
image's embeddings on their own (an embedding batch, non-causal when the projector wants it) between
text steps, at most one image per step, so the other slots keep generating meanwhile.

The engine runs on one thread (``run``); ``prepare``, ``submit`` and ``cancel`` may be called from
any thread. ``prepare`` does a job's expensive, client-controlled setup (checking token ids against
the vocabulary, compiling its grammar into a sampler chain) on the caller's thread, outside the
engine lock, so a big JSON schema never stalls the other slots. Results flow back through each
job's ``emit`` callback, called on the engine thread.

Speculative drafts come from prompt lookup (``PromptLookup``) or, with a ``DRAFT`` model loaded, from
the ``DraftModel`` (``pollama.runner.drafter``); either way the target verifies them in the step's batch.

Error events carry the runner protocol's ``kind`` (``invalid_request``, ``internal``, ...).
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pollama.errors import InvalidRequest, RunnerError
from pollama.runner.drafter import DraftModel, common_prefix
from pollama.runner.native import (
    Batch,
    Context,
    EmbeddingBatch,
    MediaPrompt,
    Model,
    MtmdContext,
    SamplerChain,
    SamplingParams,
    image_token_parts,
)
from pollama.runner.protocol import error_event

log = logging.getLogger(__name__)

PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten the prompt, "
    "adjust the context length in settings, or use a model with a longer context length"
)

MISSING_PROJECTOR = "this model is missing data required for image input"
"""Ollama's error for images sent to a model loaded without a projector."""

Emit = Callable[[dict[str, Any]], None]

PREDICT_LIMIT_FACTOR = 10
"""Ollama caps ``num_predict`` (negative = unbounded, or too large) at 10 × ``num_ctx``."""

DRAFT_MAX = 8
"""Default longest prompt-lookup draft verified in one step (option ``draft_max``; 0 turns speculation off)."""

_NGRAMS = (3, 2)
"""n-gram sizes a draft is looked up by, longest first (a longer match predicts better)."""

SHARE_MIN = 64
"""Fewest more prompt tokens another slot must hold before its KV cache is copied rather than
evaluated again (a copy moves the whole of that slot's cache stream)."""

_PAUSE_AFTER = 3
"""Drafts in a row with nothing accepted after which a slot stops drafting for a while."""


class PromptLookup:
    """Prompt-lookup drafts: the tokens that followed the latest earlier occurrence of the last n-gram.

    ``tokens`` is the request's history (prompt, then generated tokens). An index from each n-gram to
    where its latest continuation starts is kept up to date incrementally, so a lookup costs a few
    dictionary operations, not a scan of the history.
    """

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = list(tokens)
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed = 0
        self._update()

    def extend(self, token: int) -> None:
        """Add a generated token to the history."""
        self.tokens.append(token)

    def _update(self) -> None:
        tokens, index = self.tokens, self._index
        for j in range(self._indexed, len(tokens)):
            for n in _NGRAMS:
                if j >= n:
                    index[tuple(tokens[j - n : j])] = j  # the n-gram ending before j continues at j
        self._indexed = len(tokens)

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens predicted to follow the history (empty when no n-gram recurs)."""
        if limit <= 0:
            return []
        self._update()
        tokens = self.tokens
        for n in _NGRAMS:
            if len(tokens) <= n:
                continue
            start = self._index.get(tuple(tokens[-n:]))
            if start is None:
                continue
            out = tokens[start : start + limit]
            for k, token in enumerate(out):
                if token < 0:  # an image's pseudo-token is no vocabulary id
                    return out[:k]
            return out
        return []


def check_tokens(tokens: list[int], n_vocab: int) -> None:
    """Raise ``InvalidRequest`` unless every id is a real token of the vocabulary.

    llama.cpp indexes its vocabulary with ``std::vector::at``: an id outside ``[0, n_vocab)`` throws
    ``std::out_of_range`` through the C API and aborts the whole runner (every request on it).
    """
    for token in tokens:
        if type(token) is not int or not 0 <= token < n_vocab:
            raise InvalidRequest(f"invalid token id {token!r}: the model's vocabulary has ids 0 to {n_vocab - 1}")


@dataclass(eq=False)
class CompletionJob:
    """One generation request as the engine sees it."""

    tokens: list[int]
    sampling: SamplingParams
    emit: Emit
    num_predict: int = -1
    num_keep: int = 4
    stop: tuple[str, ...] = ()
    shift: bool = True
    truncate: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    cancelled: bool = False
    chain: SamplerChain | None = None
    prepared: bool = False
    media: MediaPrompt | None = None  # the prompt's images (then ``tokens`` is ``media.tokens``)
    draft_max: int = DRAFT_MAX  # longest prompt-lookup draft per step; 0 = no speculation
    draft_min: int = 0  # shorter drafts than this are not verified
    lookup: PromptLookup | None = None
    out_text: list[str] = field(default_factory=list)  # this step's output, sent as one event
    out_probs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(eq=False)
class EmbedJob:
    """Embed some token lists (one vector each)."""

    inputs: list[list[int]]
    emit: Emit
    cancelled: bool = False
    prepared: bool = False


@dataclass
class _Slot:
    seq: int
    cache: list[int] = field(default_factory=list)
    job: CompletionJob | None = None
    pending: list[int] = field(default_factory=list)
    next_token: int | None = None
    chain: SamplerChain | None = None
    decoder: Any = None
    held: str = ""
    generated: list[int] = field(default_factory=list)
    prompt_count: int = 0
    prompt_total: int = 0
    started: float = 0.0
    prompt_done: float = 0.0
    last_used: float = 0.0
    media: MediaPrompt | None = None
    lookup: PromptLookup | None = None
    draft_cap: int = 0  # the adaptive draft length
    draft_misses: int = 0  # drafts in a row with nothing accepted
    draft_pause: int = 0  # steps left without drafting
    draft_backoff: int = 0
    draft_source: str = ""  # where this step's draft came from: "lookup" or "model"
    model_drafts: bool = False  # the draft model may draft for this job (text only: no image pseudo-tokens)
    drafted: int = 0
    accepted: int = 0
    tokens: list[int] = field(default_factory=list)  # the whole (possibly truncated) prompt of the job
    donor: _Slot | None = None  # the slot evaluating a prefix this one waits to copy
    donor_job: CompletionJob | None = None


def _mid_image(tokens: list[int], i: int) -> bool:
    """Whether ``tokens[i]`` is an image's embedding other than its first (an image is never split)."""
    parts = image_token_parts(tokens[i]) if 0 <= i < len(tokens) else None
    return parts is not None and parts[1] != 0


def split_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """Split pending text into (emit now, hold back, stopped).

    A stop string found anywhere ends the text there; otherwise any tail that could begin a stop
    string is held back until more text arrives.
    """
    if not stops:
        return text, "", False
    cut = -1
    for stop in stops:
        if stop:
            i = text.find(stop)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
    if cut >= 0:
        return text[:cut], "", True
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return (text[: len(text) - hold], text[len(text) - hold :], False) if hold else (text, "", False)


class Engine:
    """The batching loop for one loaded model."""

    def __init__(
        self,
        model: Model,
        ctx: Context,
        *,
        num_ctx: int,
        num_parallel: int,
        num_batch: int,
        mtmd: MtmdContext | None = None,
        drafter: DraftModel | None = None,
    ) -> None:
        self.model = model
        self.ctx = ctx
        self.mtmd = mtmd
        self.drafter = drafter  # a draft model (Modelfile DRAFT): a second source of drafts
        self.num_ctx = num_ctx
        self.num_batch = max(1, min(num_batch, ctx.n_batch))
        self._slots = [_Slot(seq=i) for i in range(max(1, num_parallel))]
        self._batch = Batch(self.num_batch)
        self._embd_batch = EmbeddingBatch(self.num_batch, model.n_embd) if mtmd is not None else None
        self._next_image = 0  # the slot whose image goes first next step (round robin)
        self._queue: deque[CompletionJob | EmbedJob] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._freed = False
        self._batch_jobs: list[CompletionJob] = []  # the jobs in the batch being decoded

    # --- control (any thread) -----------------------------------------------------------------

    def start(self) -> None:
        """Run the loop on a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="pollama-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop the loop, wait for it, and free the engine's native handles.

        Returns ``True`` once the engine thread has ended (so no decode can still be running and the
        caller may free the context and model); if it is still inside llama.cpp after ``timeout``
        seconds nothing is freed and the result is ``False``.
        """
        with self._cond:
            self._stopping = True
            self.ctx.request_abort()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("engine thread still busy after %.0f s; leaving its native handles allocated", timeout)
                return False
        with self._cond:
            if self._freed:
                return True
            self._freed = True
            queued, self._queue = list(self._queue), deque()
        for job in queued:
            self._drop(job, "runner is shutting down")
        self._batch.close()
        if self._embd_batch is not None:
            self._embd_batch.close()
        for slot in self._slots:
            if slot.chain is not None:
                slot.chain.close()
                slot.chain = None
            if slot.media is not None:
                slot.media.close()
                slot.media = None
        return True

    def prepare(self, job: CompletionJob | EmbedJob) -> None:
        """Validate a job and build what it needs, on the calling thread (not the engine's).

        Token ids are checked against the vocabulary, ``num_predict`` gets Ollama's cap of
        10 × ``num_ctx`` (also for -1/-2 and anything larger), and a completion's sampler chain
        (grammar included) is compiled here. Raises ``InvalidRequest`` for bad input.
        """
        if job.prepared:
            return
        if isinstance(job, EmbedJob):
            for tokens in job.inputs:
                check_tokens(tokens, self.model.n_vocab)
            job.prepared = True
            return
        if job.media is not None:
            if self.mtmd is None:
                raise InvalidRequest(MISSING_PROJECTOR)
            job.tokens = job.media.tokens
            check_tokens([t for t in job.tokens if t >= 0], self.model.n_vocab)
            self._encode_ahead(job.media)
        else:
            check_tokens(job.tokens, self.model.n_vocab)
        limit = PREDICT_LIMIT_FACTOR * self.num_ctx
        if job.num_predict < 0 or job.num_predict > limit:
            job.num_predict = limit
        if job.tokens:
            job.chain = SamplerChain(self.model, job.sampling, job.tokens, num_ctx=self.num_ctx)
        if job.draft_max > 0 and job.tokens:
            job.lookup = PromptLookup(job.tokens)  # indexing a long prompt happens here, not on the engine
        job.prepared = True

    def _encode_ahead(self, media: MediaPrompt) -> None:
        """Encode the images of a prompt that no slot holds in its KV cache (caller's thread).

        Which slot the job gets is decided later, so this is a guess from the caches as they are
        now: an image encoded here that turns out cached costs one encode, one not encoded here is
        encoded by the engine when its turn comes.
        """
        assert self.mtmd is not None
        if len(media.tokens) > self.num_ctx - 1:
            return  # refused by ``_start``: no point in encoding
        caches = [list(slot.cache) for slot in self._slots]  # a snapshot: the engine thread may change them
        reusable = max((common_prefix(cache, media.tokens) for cache in caches), default=0)
        for chunk in media.images:
            if chunk.start + chunk.n_tokens > reusable:
                media.embeddings[chunk.start] = self.mtmd.encode(chunk)

    def submit(self, job: CompletionJob | EmbedJob) -> None:
        """Queue a job (preparing it first if the caller did not); it joins a slot at the next step.

        Raises ``InvalidRequest`` (from ``prepare``) without queueing anything.
        """
        self.prepare(job)
        with self._cond:
            if self._stopping:
                self._drop(job, "runner is shutting down")
                return
            self._queue.append(job)
            self._cond.notify_all()

    def cancel(self, job: CompletionJob | EmbedJob) -> None:
        """Stop a job: a queued one leaves the queue now, a running one frees its slot at the next step."""
        with self._cond:
            job.cancelled = True
            if any(j is job for j in self._batch_jobs) and all(j.cancelled for j in self._batch_jobs):
                self.ctx.request_abort()
            with contextlib.suppress(ValueError):  # not queued: running (the engine releases it) or done
                self._queue.remove(job)
            _close_chain(job)  # a chain still on the job never reached a slot (``_start`` takes it)
            self._cond.notify_all()

    @property
    def busy(self) -> int:
        """Slots in use plus jobs waiting."""
        with self._cond:
            return len(self._queue) + sum(1 for s in self._slots if s.job is not None)

    def _drop(self, job: CompletionJob | EmbedJob, message: str) -> None:
        _close_chain(job)
        job.emit({"error": message, "kind": "canceled"})

    # --- the loop (engine thread) -------------------------------------------------------------

    def run(self) -> None:
        """Step until stopped."""
        while True:
            with self._cond:
                while not self._stopping and not self._queue and not any(s.job for s in self._slots):
                    self._cond.wait()
                if self._stopping:
                    break
                embed = self._admit()
            if embed is not None:
                self._embed(embed)
                continue
            try:
                self._step()
            except Exception as exc:
                log.exception("decode step failed")
                for slot in self._slots:
                    if slot.job is not None:
                        self._fail(slot, str(exc), kind="internal")
                        self.ctx.seq_remove(slot.seq)
                        slot.cache = []
        for slot in self._slots:
            if slot.job is not None:
                self._fail(slot, "runner is shutting down", kind="canceled")

    def _admit(self) -> EmbedJob | None:
        """Move queued jobs into free slots (called with the lock held)."""
        while self._queue:
            head = self._queue[0]
            if head.cancelled:
                self._queue.popleft()
                continue
            if isinstance(head, EmbedJob):
                if any(s.job for s in self._slots):
                    return None  # embeddings wait for the slots to drain
                self._queue.popleft()
                return head
            free = [s for s in self._slots if s.job is None]
            if not free:
                return None
            self._queue.popleft()
            slot = max(free, key=lambda s: (common_prefix(s.cache, head.tokens), -s.last_used))
            try:
                self._start(slot, head)
            except Exception as exc:  # noqa: BLE001 - the job gets the error, the others go on
                _close_chain(head)
                head.emit(error_event(exc))
        return None

    def _start(self, slot: _Slot, job: CompletionJob) -> None:
        tokens = job.tokens
        if not tokens:
            raise InvalidRequest("empty prompt")
        if len(tokens) > self.num_ctx - 1:
            if not job.shift or not job.truncate or job.media is not None:
                raise InvalidRequest(PROMPT_TOO_LONG)  # an image is never cut: no truncation with images
            keep = min(job.num_keep + (1 if tokens[0] == self.model.bos else 0), self.num_ctx // 2)
            target = self.num_ctx - max((self.num_ctx - keep) // 2, 1)
            tokens = tokens[:keep] + tokens[len(tokens) - (target - keep) :]
            log.warning("truncating input prompt to %d tokens", len(tokens))
        reuse = common_prefix(slot.cache, tokens)
        if reuse >= len(tokens):
            reuse = len(tokens) - 1  # the last prompt token must be evaluated to get logits
        while reuse > 0 and _mid_image(tokens, reuse):
            reuse -= 1  # an image is evaluated whole (say the cache kept only part of it after a shift)
        if not self.ctx.seq_remove(slot.seq, reuse, -1):
            self.ctx.seq_remove(slot.seq)
            reuse = 0
        slot.cache = tokens[:reuse]
        slot.pending = tokens[reuse:]
        slot.tokens = tokens
        slot.donor = slot.donor_job = None
        self._share(slot, tokens, reuse)
        if job.chain is None:  # not prepared through ``submit`` (cannot happen for a non-empty prompt)
            job.chain = SamplerChain(self.model, job.sampling, tokens, num_ctx=self.num_ctx)
        slot.chain, job.chain = job.chain, None
        slot.media, job.media = job.media, None
        slot.job = job
        slot.next_token = None
        slot.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        slot.held = ""
        slot.generated = []
        slot.prompt_count = len(slot.pending)
        slot.prompt_total = len(tokens)
        slot.started = time.perf_counter()
        slot.prompt_done = 0.0
        lookup, job.lookup = job.lookup, None
        if job.draft_max > 0 and (lookup is None or lookup.tokens != tokens):
            lookup = PromptLookup(tokens)  # not prepared, or the prompt was truncated
        slot.lookup = lookup if job.draft_max > 0 else None
        slot.draft_cap = job.draft_max
        slot.draft_misses = slot.draft_pause = slot.draft_backoff = 0
        slot.drafted = slot.accepted = 0
        slot.draft_source = ""
        slot.model_drafts = self.drafter is not None and all(t >= 0 for t in tokens)

    def _share(self, slot: _Slot, tokens: list[int], reuse: int) -> None:
        """Take a longer cached prefix of ``tokens`` from another slot: copy its KV cells now if
        they are evaluated, or wait for the slot that is evaluating them (then ``_take_shared``)."""
        best, best_n, ready = None, reuse + SHARE_MIN - 1, False
        for other in self._slots:
            if other is slot or other.donor is not None:
                continue
            n, evaluated = common_prefix(other.cache, tokens), True
            if other.job is not None and other.pending:
                planned = common_prefix(other.tokens, tokens)  # what it will hold once its prompt is in
                if planned > n:  # wait for all of it: a few steps, and each shared token is evaluated once
                    n, evaluated = planned, False
            if n > best_n:
                best, best_n, ready = other, n, evaluated
        if best is None:
            return
        if ready:
            self._copy_prefix(best, slot, tokens, best_n)
        else:
            slot.donor, slot.donor_job = best, best.job

    def _take_shared(self, slot: _Slot) -> bool:
        """For a slot waiting on a donor: copy the prefix once the donor has evaluated it (or stop
        waiting if the donor went another way); ``False`` while it should still wait."""
        donor = slot.donor
        assert donor is not None
        n = common_prefix(donor.cache, slot.tokens)
        still = donor.job is slot.donor_job and donor.job is not None and bool(donor.pending)
        if still and n < common_prefix(donor.tokens, slot.tokens):
            return False
        slot.donor = slot.donor_job = None
        if n >= len(slot.cache) + SHARE_MIN:
            self._copy_prefix(donor, slot, slot.tokens, n)
        return True

    def _copy_prefix(self, donor: _Slot, slot: _Slot, tokens: list[int], n: int) -> None:
        """Make ``slot``'s cache the first ``n`` tokens of ``donor``'s (``llama_memory_seq_cp``)."""
        n = min(n, len(tokens) - 1)
        while n > 0 and _mid_image(tokens, n):
            n -= 1
        if n <= len(slot.cache):
            return
        self.ctx.seq_copy(donor.seq, slot.seq)
        self.ctx.seq_remove(slot.seq, n, -1)
        slot.cache = tokens[:n]
        slot.pending = tokens[n:]
        slot.prompt_count = len(slot.pending)
        log.debug("slot %d: %d prompt tokens copied from slot %d", slot.seq, n, donor.seq)

    def _draft(self, slot: _Slot, job: CompletionJob, room: int) -> list[int]:
        """The draft to verify after ``slot.next_token`` this step (often none).

        With a draft model, its draft is taken, unless prompt lookup has a longer one (a passage being
        copied): that one costs no decode to make, and the model could not propose more tokens.
        """
        # Every verified draft token must fit in the context and could become output.
        limit = min(room, self.num_ctx - len(slot.cache) - 1, job.num_predict - len(slot.generated) - 1)
        if limit <= 0:
            return []
        draft = self._lookup_draft(slot, job, limit)
        drafter = self.drafter
        slot.draft_source = "lookup"
        if drafter is None or not slot.model_drafts or len(draft) > drafter.n_max or slot.next_token is None:
            return draft
        slot.draft_source = "model"
        return drafter.draft(slot.seq, slot.cache, slot.next_token, limit, lambda: job.cancelled or self._stopping)

    def _lookup_draft(self, slot: _Slot, job: CompletionJob, limit: int) -> list[int]:
        """A prompt-lookup draft of at most ``limit`` (and the adaptive cap) tokens."""
        lookup = slot.lookup
        if lookup is None:
            return []
        if slot.draft_pause > 0:
            slot.draft_pause -= 1
            return []
        draft = lookup.draft(min(slot.draft_cap, limit))
        return draft if draft and len(draft) >= job.draft_min else []

    def _adapt(self, slot: _Slot, job: CompletionJob, drafted: int, accepted: int) -> None:
        """Lengthen the drafts while they are accepted, shorten them, then pause, while they are not."""
        slot.drafted += drafted
        slot.accepted += accepted
        if accepted == drafted:
            slot.draft_cap = min(job.draft_max, max(1, slot.draft_cap) * 2)
            slot.draft_misses = slot.draft_backoff = 0
        elif accepted == 0:
            slot.draft_cap = max(1, slot.draft_cap // 2)
            slot.draft_misses += 1
            if slot.draft_misses >= _PAUSE_AFTER:
                slot.draft_pause = 8 << min(slot.draft_backoff, 4)
                slot.draft_backoff += 1
                slot.draft_misses = 0
        else:
            slot.draft_cap = max(1, accepted + 1)
            slot.draft_misses = 0

    def _step(self) -> None:
        batch = self._batch
        batch.clear()
        sampling: list[tuple[_Slot, list[int], list[int]]] = []  # slot, its output indices, its draft
        before: dict[int, int] = {}  # slot seq -> its cache length before this step
        for slot in self._slots:
            if slot.donor is not None:  # before any token of this step joins a cache: only decoded cells count
                self._take_shared(slot)
        generating = sum(1 for s in self._slots if s.job is not None and not s.pending and s.next_token is not None)
        # Drafts only for a lone request: with several in the batch the step is compute-bound on a CPU, and
        # verifying drafts there cost more than their accepted tokens saved (aggregate 0.67x llama-server's
        # at 4 streams with drafts, 1.11x without, in bench/bench_runtime.py on 2 cores).
        solo = sum(1 for s in self._slots if s.job is not None) == 1
        for slot in self._slots:
            job = slot.job
            if job is None:
                continue
            if job.cancelled:
                self._finish(slot, None)
                continue
            if slot.pending or slot.next_token is None:
                continue
            generating -= 1
            if len(slot.cache) >= self.num_ctx:
                if not job.shift or not self.ctx.can_shift:
                    self._finish(slot, "length")
                    continue
                self._shift(slot, job)
            token = slot.next_token
            before[slot.seq] = len(slot.cache)
            draft = self._draft(slot, job, self.num_batch - batch.n - 1 - generating) if solo else []
            indices = [batch.add(token, len(slot.cache), slot.seq, True)]
            slot.cache.append(token)
            for drafted in draft:
                indices.append(batch.add(drafted, len(slot.cache), slot.seq, True))
                slot.cache.append(drafted)
            slot.next_token = None
            sampling.append((slot, indices, draft))
        for slot in self._slots:
            if slot.job is None or not slot.pending:
                continue
            if slot.donor is not None:
                continue
            room = self.num_batch - batch.n
            if room <= 0:
                break
            take = slot.pending[:room]
            if slot.media is not None:
                image = next((k for k, t in enumerate(take) if t < 0), -1)
                if image >= 0:
                    take = take[:image]  # the image goes alone, after this batch (``_step_image``)
                if not take:
                    continue
            before.setdefault(slot.seq, len(slot.cache))
            for k, token in enumerate(take):
                last = k == len(take) - 1 and len(take) == len(slot.pending)
                index = batch.add(token, len(slot.cache), slot.seq, last)
                slot.cache.append(token)
                if last:
                    sampling.append((slot, [index], []))
            slot.pending = slot.pending[len(take) :]
        if batch.n > 0:
            self._decode_text(batch, before, sampling)
        if self.mtmd is not None:
            self._step_image()

    def _decode_text(
        self, batch: Batch, before: dict[int, int], sampling: list[tuple[_Slot, list[int], list[int]]]
    ) -> None:
        """Decode the step's text batch and sample each slot that has an output in it.

        A slot with a draft samples its outputs in order, each from the full sampler chain after the
        previous token was accepted into it: while the sampled token equals the draft's, the next
        output (already computed, conditioned on it) is valid and is sampled too; the first
        difference is the next token, and the draft's remaining tokens leave the KV cache. Sampling
        from the target distribution and keeping the draft token only when it was the one drawn is
        the speculative acceptance rule for a deterministic draft (accept with probability p(t),
        otherwise draw from p without t), so the output keeps its distribution, and greedy output
        is the same token for token.
        """
        if not self._decode_abortably(lambda: self.ctx.decode(batch), [s for s in self._slots if s.seq in before]):
            for slot in self._slots:
                if slot.seq in before:  # the aborted batch is not in the KV cache: forget it here too
                    self.ctx.seq_remove(slot.seq, before[slot.seq], -1)
                    del slot.cache[before[slot.seq] :]
                    if slot.job is not None and slot.job.cancelled:
                        self._finish(slot, None)
            return
        now = time.perf_counter()
        for slot, indices, draft in sampling:
            job = slot.job
            if job is None or slot.chain is None:
                continue
            if not slot.prompt_done:
                slot.prompt_done = now
            accepted = 0
            for i, index in enumerate(indices):
                chain = slot.chain
                if chain is None:
                    break  # finished (stop, length, end of generation)
                token = chain.sample(self.ctx, index)
                probs = self._logprobs(index, token, job.top_logprobs) if job.logprobs else None
                self._accept(slot, job, token, probs)
                if slot.job is None or i >= len(draft) or token != draft[i]:
                    break
                accepted += 1
                slot.next_token = None  # decoded already, as draft token i
            if draft:
                rejected = len(draft) - accepted
                if rejected:
                    end = len(slot.cache) - rejected
                    self.ctx.seq_remove(slot.seq, end, -1)
                    del slot.cache[end:]
                if slot.draft_source == "lookup":
                    self._adapt(slot, job, len(draft), accepted)
                else:  # a model draft: counted, but it does not steer prompt lookup's draft length
                    slot.drafted += len(draft)
                    slot.accepted += accepted
            _flush(job)

    def _step_image(self) -> None:
        """Evaluate the next image of one slot whose pending prompt starts with one (round robin)."""
        count = len(self._slots)
        for offset in range(count):
            slot = self._slots[(self._next_image + offset) % count]
            if slot.job is None or slot.job.cancelled or slot.media is None or not slot.pending:
                continue
            if slot.pending[0] >= 0:
                continue
            self._next_image = (slot.seq + 1) % count
            try:
                self._eval_image(slot, slot.job, slot.media)
            except Exception as exc:  # this slot fails, the others go on
                log.exception("image evaluation failed")
                self._fail(slot, str(exc), kind="internal")
                self.ctx.seq_remove(slot.seq)
                slot.cache = []
            return

    def _eval_image(self, slot: _Slot, job: CompletionJob, media: MediaPrompt) -> None:
        """Encode an image with the projector and decode its embeddings into the slot's sequence."""
        assert self.mtmd is not None and self._embd_batch is not None
        start = len(slot.cache)
        chunk = media.image_at(start)
        if chunk is None or len(slot.pending) < chunk.n_tokens:
            raise RunnerError(f"no image starts at prompt position {start}")
        embd = media.embeddings.pop(start, None)
        if embd is None:
            embd = self.mtmd.encode(chunk)
        causal = not self.mtmd.non_causal(chunk)
        last = len(slot.pending) == chunk.n_tokens  # the prompt ends with this image: its last output samples
        batch = self._embd_batch
        n = chunk.n_tokens
        for first in range(0, n, batch.capacity):
            size = min(batch.capacity, n - first)
            batch.fill(embd, first, size, start + first, slot.seq, logits_last=last and first + size == n)
            if not self._decode_abortably(lambda: self.ctx.decode_embeddings(batch, causal=causal), [slot]):
                self.ctx.seq_remove(slot.seq, start, -1)
                del slot.cache[start:]
                if slot.job is not None and slot.job.cancelled:
                    self._finish(slot, None)
                return
            slot.cache.extend(slot.pending[first : first + size])
        slot.pending = slot.pending[n:]
        if last and slot.chain is not None:
            slot.prompt_done = time.perf_counter()
            token = slot.chain.sample(self.ctx, batch.n - 1)
            probs = self._logprobs(batch.n - 1, token, job.top_logprobs) if job.logprobs else None
            self._accept(slot, job, token, probs)
            _flush(job)

    def _decode_abortably(self, decode: Callable[[], bool], slots: list[_Slot]) -> bool:
        """Run ``decode`` unless every job in it is cancelled meanwhile (then ``cancel`` aborts the
        decode mid-graph, so a client that leaves during a long prompt frees the engine at once)."""
        jobs = [slot.job for slot in slots if slot.job is not None]
        with self._cond:
            if self._stopping or all(job.cancelled for job in jobs):
                return False
            self.ctx.clear_abort()
            self._batch_jobs = jobs
        try:
            return decode()
        finally:
            with self._cond:
                self._batch_jobs = []

    def _shift(self, slot: _Slot, job: CompletionJob) -> None:
        """Make room: keep ``num_keep`` tokens, drop half of the rest (Ollama's context shift)."""
        keep = min(job.num_keep + (1 if slot.cache and slot.cache[0] == self.model.bos else 0), len(slot.cache) - 2)
        keep = max(keep, 0)
        while keep > 0 and _mid_image(slot.cache, keep):
            keep -= 1  # keep a whole image or none of it
        end = keep + (len(slot.cache) - keep) // 2
        while end < len(slot.cache) and _mid_image(slot.cache, end):
            end += 1  # and drop a whole image or none of it
        discard = end - keep
        self.ctx.seq_remove(slot.seq, keep, keep + discard)
        self.ctx.seq_shift(slot.seq, keep + discard, len(slot.cache), -discard)
        del slot.cache[keep : keep + discard]
        if self.drafter is not None:
            self.drafter.shift(slot.seq, keep, discard)
        log.debug("context shift on slot %d: kept %d, dropped %d", slot.seq, keep, discard)

    def _logprobs(self, index: int, token: int, top: int) -> dict[str, Any]:
        """Log-probability of the sampled token (and the ``top`` likeliest), from the raw logits."""
        import numpy as np

        logits = self.ctx.logits(index).astype(np.float64)
        peak = logits.max()
        logprobs = logits - (peak + np.log(np.exp(logits - peak).sum()))
        entry = self._token_entry(token, float(logprobs[token]))
        if top > 0:
            best = np.argpartition(-logprobs, top)[:top]
            best = best[np.argsort(-logprobs[best])]
            entry["top_logprobs"] = [self._token_entry(int(t), float(logprobs[t])) for t in best]
        return entry

    def _token_entry(self, token: int, logprob: float) -> dict[str, Any]:
        piece = self.model.piece(token)
        return {"token": piece.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(piece)}

    def _accept(self, slot: _Slot, job: CompletionJob, token: int, probs: dict[str, Any] | None = None) -> None:
        if self.model.is_eog(token):
            self._finish(slot, "stop")
            return
        slot.generated.append(token)
        if slot.lookup is not None:
            slot.lookup.extend(token)
        text = slot.held + slot.decoder.decode(self.model.piece(token))
        out, slot.held, stopped = split_stop(text, job.stop)
        if out:
            job.out_text.append(out)
        if probs is not None:
            job.out_probs.append(probs)
        if stopped:
            self._finish(slot, "stop")
            return
        if 0 <= job.num_predict <= len(slot.generated):
            self._finish(slot, "length")
            return
        slot.next_token = token

    def _finish(self, slot: _Slot, reason: str | None) -> None:
        job = slot.job
        assert job is not None
        if reason is not None:
            tail = slot.held + slot.decoder.decode(b"", final=True)
            if tail:  # held text that never became a stop string is real output
                job.out_text.append(tail)
            _flush(job)
            end = time.perf_counter()
            prompt_done = slot.prompt_done or end
            final = {
                "done": True,
                "done_reason": reason,
                # Ollama counts the whole prompt, cached tokens included; "prompt_cached" says how
                # many of them came from the slot's KV cache instead of being evaluated.
                "prompt_eval_count": slot.prompt_total,
                "prompt_cached": slot.prompt_total - slot.prompt_count,
                "prompt_eval_duration": int((prompt_done - slot.started) * 1e9),
                "eval_count": len(slot.generated),
                "eval_duration": int((end - prompt_done) * 1e9),
                "tokens": slot.generated,
                "draft_tokens": slot.drafted,
                "draft_accepted": slot.accepted,
            }
            self._release(slot)  # first, so that a client told "done" finds the slot free
            job.emit(final)
            return
        self._release(slot)

    def _fail(self, slot: _Slot, message: str, *, kind: str) -> None:
        job = slot.job
        self._release(slot)
        if job is not None:
            job.emit({"error": message, "kind": kind})

    def _release(self, slot: _Slot) -> None:
        if slot.pending:
            # The prompt was only partly evaluated: the cache holds what was decoded.
            slot.pending = []
        if slot.chain is not None:
            slot.chain.close()
            slot.chain = None
        if slot.media is not None:  # the cache keeps the images' pseudo-tokens; the pixels can go
            slot.media.close()
            slot.media = None
        slot.job = None
        slot.next_token = None
        slot.lookup = None
        slot.donor = slot.donor_job = None
        slot.last_used = time.monotonic()

    # --- embeddings -----------------------------------------------------------------------------

    def _embed(self, job: EmbedJob) -> None:
        vectors: list[list[float]] = []
        count = 0
        try:
            for tokens in job.inputs:
                if job.cancelled:
                    return
                if len(tokens) > self.num_batch or len(tokens) > self.num_ctx:
                    raise InvalidRequest("the input length exceeds the context length")
                if not tokens:
                    raise InvalidRequest("cannot embed an empty input")
                self.ctx.clear()
                for slot in self._slots:
                    slot.cache = []
                batch = self._batch
                batch.clear()
                for pos, token in enumerate(tokens):
                    batch.add(token, pos, 0, True)
                with self._cond:
                    if self._stopping:
                        raise RunnerError("runner is shutting down")
                    self.ctx.clear_abort()
                if not self.ctx.decode(batch):
                    raise RunnerError("runner is shutting down")
                vector = self.ctx.embedding(0)
                if vector is None:
                    vector = self.ctx.embedding_ith(len(tokens) - 1)
                if vector is None:
                    raise RunnerError("model produced no embedding")
                vectors.append(vector)
                count += len(tokens)
        except Exception as exc:  # noqa: BLE001 - the job gets the error, the others go on
            job.emit(error_event(exc))
            return
        finally:
            self.ctx.clear()
        job.emit({"done": True, "embeddings": vectors, "prompt_eval_count": count})


def _flush(job: CompletionJob) -> None:
    """Send the output a step produced for a job as one event (one line, one write, however many tokens)."""
    if not job.out_text and not job.out_probs:
        return
    event: dict[str, Any] = {"content": "".join(job.out_text)}
    if job.out_probs:
        event["logprobs"] = job.out_probs
        job.out_probs = []
    job.out_text = []
    job.emit(event)


def _close_chain(job: CompletionJob | EmbedJob) -> None:
    """Free a job's prepared sampler chain and images if it never reached a slot."""
    if isinstance(job, CompletionJob):
        if job.chain is not None:
            job.chain.close()
            job.chain = None
        if job.media is not None:
            job.media.close()
            job.media = None
