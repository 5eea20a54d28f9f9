"""``LoadSpec``: everything that decides how a model is loaded, and so when it must be reloaded.

Every spec is clamped to what llama.cpp and the machine can take when it is built (``__post_init__``),
so no caller can start a runner with a context of 3 tokens, a batch larger than the context, a
thousand threads or a layer count that overflows a C int; each clamp is logged once per spec.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MIN_NUM_CTX = 4
"""Ollama's floor for ``num_ctx``."""

MAX_KV_TOKENS = 2**31 - 1
"""llama.cpp sizes the KV cache (``num_ctx × num_parallel`` tokens) with a 32-bit count."""

ALL_LAYERS = 999
"""``num_gpu`` meaning "every layer" (llama.cpp's convention; -1 means "as many as fit")."""


@dataclass(frozen=True)
class LoadSpec:
    """A model to load and the load-time options that shape its runner.

    Two requests can share a runner only if their specs agree on every load-time field; sampling
    options never matter here. ``key`` identifies the runner (the weights' blob path, as in Ollama).
    """

    name: str
    model_path: Path
    adapters: tuple[Path, ...] = ()
    projectors: tuple[Path, ...] = ()
    draft: Path | None = None  # a draft model for speculative decoding (the DRAFT layer)
    draft_num_predict: int = 0  # draft tokens per step (0: the draft is not loaded)
    num_ctx: int = 4096
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int | None = None
    use_mmap: bool | None = None
    use_mlock: bool = False
    num_thread: int = 0
    num_parallel: int = 1
    embedding: bool = False
    flash_attention: bool | None = None
    kv_cache_type: str = "f16"
    estimated_memory: int = field(default=0, compare=False)
    digest: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self._clamp("num_parallel", max(1, self.num_parallel))
        self._clamp("num_ctx", min(max(self.num_ctx, MIN_NUM_CTX), MAX_KV_TOKENS // self.num_parallel))
        self._clamp("num_batch", min(max(self.num_batch, 1), self.num_ctx))
        self._clamp("num_gpu", min(max(self.num_gpu, -1), ALL_LAYERS))
        self._clamp("num_thread", min(self.num_thread, os.cpu_count() or 1) if self.num_thread > 0 else 0)
        if self.main_gpu is not None and self.main_gpu < 0:
            self._clamp("main_gpu", 0)
        self._clamp("draft_num_predict", min(max(self.draft_num_predict, 0), self.num_ctx))

    def _clamp(self, option: str, value: int) -> None:
        """Set ``option`` to ``value`` (the dataclass is frozen) and log it when that changes it."""
        original = getattr(self, option)
        if original != value:
            log.warning("option %s=%d is out of range for %s; using %d", option, original, self.name, value)
            object.__setattr__(self, option, value)

    @property
    def key(self) -> str:
        """The scheduler's key for this model's runner."""
        return str(self.model_path)

    def needs_reload(self, wanted: LoadSpec) -> bool:
        """True if a runner loaded with this spec cannot serve a request that wants ``wanted``."""
        if self.adapters != wanted.adapters or self.projectors != wanted.projectors:
            return True
        if self.draft != wanted.draft or self.draft_num_predict != wanted.draft_num_predict:
            return True
        if self.num_ctx != wanted.num_ctx or self.num_batch != wanted.num_batch:
            return True
        if wanted.num_gpu != -1 and self.num_gpu != wanted.num_gpu:
            return True
        if self.main_gpu != wanted.main_gpu:
            return True
        if wanted.use_mmap is not None and self.use_mmap != wanted.use_mmap:
            return True
        return (self.num_thread, self.num_parallel, self.embedding, self.use_mlock) != (
            wanted.num_thread,
            wanted.num_parallel,
            wanted.embedding,
            wanted.use_mlock,
        )


@dataclass(frozen=True)
class RunningModel:
    """A loaded model as the scheduler reports it (what ``/api/ps`` shows)."""

    name: str
    model: str
    digest: str
    size: int
    size_vram: int
    context_length: int
    expires_at: float  # POSIX time; ``math.inf`` when kept loaded forever
    node: str = ""  # the cluster node the runner is on ("" when it runs on this machine)
    replicas: tuple[dict[str, Any], ...] = ()  # per replica: id, node, in_flight, served (Ray only)
