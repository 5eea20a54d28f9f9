"""The progress lines long operations (create, pull, push) report, in Ollama's shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Progress:
    """One status line: ``{"status": ..., "digest"?, "total"?, "completed"?}``."""

    status: str
    digest: str = ""
    total: int | None = None
    completed: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The line as Ollama's ``ProgressResponse`` marshals it (empty fields omitted)."""
        out: dict[str, Any] = {"status": self.status}
        if self.digest:
            out["digest"] = self.digest
        if self.total:
            out["total"] = self.total
        if self.completed:
            out["completed"] = self.completed
        return out
