"""Keep-alive expiry and LRU eviction with a real server and real runners (SmolLM2 and Gemma 3 270M)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ServerProcess, create_from_gguf


def _loaded(c: httpx.Client) -> list[str]:
    return [m["name"] for m in c.get("/api/ps").json()["models"]]


def _until(condition: Callable[[], bool], within: float) -> float | None:
    """Seconds until ``condition`` holds, or None after ``within``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            return None
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_runner_unloads_after_its_keep_alive(start_server: Any, smollm2_gguf: Path) -> None:
    srv: ServerProcess = start_server(OLLAMA_CONTEXT_LENGTH="256")
    with srv.client() as c:
        create_from_gguf(c, "smollm2", smollm2_gguf)
        r = c.post(
            "/api/generate",
            json={
                "model": "smollm2",
                "prompt": "Hi",
                "stream": False,
                "keep_alive": "3s",
                "options": {"num_predict": 1},
            },
        )
        assert r.status_code == 200, r.text
        answered = time.monotonic()
        assert _loaded(c) == ["smollm2:latest"] and len(srv.runner_pids()) == 1
        gone = _until(lambda: _loaded(c) == [], within=30)
        assert gone is not None, "still loaded 30 s after a 3 s keep_alive"
        idle = time.monotonic() - answered
        assert 2.5 <= idle <= 30, f"unloaded {idle:.1f} s after the request (keep_alive 3s)"
        assert _until(lambda: srv.runner_pids() == [], within=10) is not None  # the process is gone too
        # "-1" (forever) keeps it, 0 unloads as soon as the request ends.
        c.post("/api/generate", json={"model": "smollm2", "keep_alive": -1})
        ps = c.get("/api/ps").json()["models"]
        assert [m["name"] for m in ps] == ["smollm2:latest"] and ps[0]["expires_at"].startswith("2318-")
        r = c.post(
            "/api/generate",
            json={"model": "smollm2", "prompt": "Hi", "stream": False, "keep_alive": 0, "options": {"num_predict": 1}},
        )
        assert r.status_code == 200
        assert _until(lambda: _loaded(c) == [], within=10) is not None


def test_lru_eviction_between_two_models(start_server: Any, smollm2_gguf: Path, gemma3_gguf: Path) -> None:
    srv: ServerProcess = start_server(OLLAMA_MAX_LOADED_MODELS="1", OLLAMA_CONTEXT_LENGTH="256")
    body = {"prompt": "The sky is", "stream": False, "raw": True, "options": {"num_predict": 2, "temperature": 0}}
    with srv.client() as c:
        create_from_gguf(c, "smollm2", smollm2_gguf)
        create_from_gguf(c, "gemma", gemma3_gguf)
        assert c.post("/api/generate", json={"model": "smollm2", **body}).status_code == 200
        assert _loaded(c) == ["smollm2:latest"]
        [smollm2_runner] = srv.runner_pids()
        r = c.post("/api/generate", json={"model": "gemma", **body})
        assert r.status_code == 200, r.text
        assert r.json()["load_duration"] > 0
        assert _loaded(c) == ["gemma:latest"]  # only one fits: the other one was unloaded first
        [gemma_runner] = srv.runner_pids()
        assert gemma_runner != smollm2_runner and not Path(f"/proc/{smollm2_runner}/cmdline").exists()
        r = c.post("/api/generate", json={"model": "smollm2", **body})
        assert r.status_code == 200 and _loaded(c) == ["smollm2:latest"]
        assert _until(lambda: not Path(f"/proc/{gemma_runner}/cmdline").exists(), within=10) is not None
