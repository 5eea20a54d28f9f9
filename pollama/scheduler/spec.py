"""``LoadSpec``: everything that decides how a model is loaded, and so when it must be reloaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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

    @property
    def key(self) -> str:
        """The scheduler's key for this model's runner."""
        return str(self.model_path)

    def needs_reload(self, wanted: LoadSpec) -> bool:
        """True if a runner loaded with this spec cannot serve a request that wants ``wanted``."""
        if self.adapters != wanted.adapters or self.projectors != wanted.projectors:
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
            wanted.num_thread, wanted.num_parallel, wanted.embedding, wanted.use_mlock)


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
