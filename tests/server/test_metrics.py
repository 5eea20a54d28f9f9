"""``/metrics``: exact counters after known requests, histograms, gauges, queue, runner restarts,
pull bytes; one registry per app."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pollama.config import Settings
from pollama.server.app import create_app
from tests.conftest import ServerProcess, free_port

MODEL = "smollm2:latest"
QUICK = {"num_predict": 8, "temperature": 0}


def scrape(c: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``, keyed by name and labels."""
    r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_counters_equal_what_the_responses_reported(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        c.post("/api/generate", json={"model": "smollm2", "prompt": "warm up", "stream": False, "options": QUICK})
        before = scrape(c)
        prompt = generated = 0
        for text in ("Hi", "Name a colour", "Say yes"):
            r = c.post("/api/generate", json={"model": "smollm2", "prompt": text, "stream": False, "options": QUICK})
            assert r.status_code == 200
            prompt += r.json()["prompt_eval_count"]
            generated += r.json()["eval_count"]
        for text in ("Hello", "Count to three"):
            body = {"model": "smollm2", "messages": [{"role": "user", "content": text}], "options": QUICK}
            with c.stream("POST", "/api/chat", json=body) as s:
                last = [json.loads(line) for line in s.iter_lines() if line][-1]
            assert last["done"] is True
            prompt += last["prompt_eval_count"]
            generated += last["eval_count"]
        assert c.post("/api/show", json={"model": "nope"}).status_code == 404
        assert c.post("/api/generate", content=b"{not json").status_code == 400
        assert c.get("/no/such/route").status_code == 404
        after = scrape(c)

    assert prompt > 0 and generated > 0
    assert delta(before, after, "pollama_prompt_tokens_total", model=MODEL) == prompt
    assert delta(before, after, "pollama_generated_tokens_total", model=MODEL) == generated
    requests = "pollama_requests_total"
    assert delta(before, after, requests, method="POST", route="/api/generate", status="200") == 3
    assert delta(before, after, requests, method="POST", route="/api/chat", status="200") == 2
    assert delta(before, after, requests, method="POST", route="/api/show", status="404") == 1
    assert delta(before, after, requests, method="POST", route="/api/generate", status="400") == 1
    assert delta(before, after, requests, method="GET", route="unmatched", status="404") == 1
    # The scrape that took ``before`` was counted once it ended; the one taking ``after`` not yet.
    assert delta(before, after, requests, method="GET", route="/metrics", status="200") == 1
    duration = "pollama_request_duration_seconds_count"
    assert delta(before, after, duration, method="POST", route="/api/generate") == 4
    assert delta(before, after, duration, method="POST", route="/api/chat") == 2
    assert delta(before, after, "pollama_time_to_first_token_seconds_count", model=MODEL) == 5
    assert delta(before, after, "pollama_time_per_output_token_seconds_count", model=MODEL) == 5
    assert delta(before, after, "pollama_queue_wait_seconds_count", model=MODEL) == 5
    assert delta(before, after, "pollama_model_load_duration_seconds_count", model=MODEL) == 0
    # Loaded and idle: one model, four slots, none busy, nobody waiting.
    assert value(after, "pollama_models_loaded") == 1
    assert value(after, "pollama_slots_total", model=MODEL) == 4
    assert value(after, "pollama_slots_busy", model=MODEL) == 0
    assert value(after, "pollama_queue_depth") == 0


def test_queue_depth_and_wait_under_a_burst(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        assert c.post("/api/generate", json={"model": "smollm2", "keep_alive": 0}).status_code == 200  # unload
        deadline = time.monotonic() + 30
        while value(scrape(c), "pollama_models_loaded") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = scrape(c)
    burst = 7
    body = {
        "model": "smollm2",
        "raw": True,
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
        "stream": False,
        "options": {"num_predict": 48, "temperature": 0},
    }
    statuses: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(
                httpx.post(smollm2_server.url + "/api/generate", json=body, timeout=120).status_code
            )
        )
        for _ in range(burst)
    ]
    for t in threads:
        t.start()
    depths: list[float] = []
    busy: list[float] = []
    with smollm2_server.client() as c:
        while any(t.is_alive() for t in threads):
            samples = scrape(c)
            depths.append(value(samples, "pollama_queue_depth"))
            busy.append(value(samples, "pollama_slots_busy", model=MODEL))
            time.sleep(0.02)
        for t in threads:
            t.join()
        after = scrape(c)
    assert statuses == [200] * burst
    assert max(depths) >= 1  # seven requests, four slots: some waited
    assert max(busy) == 4
    assert value(after, "pollama_queue_depth") == 0
    assert value(after, "pollama_slots_busy", model=MODEL) == 0
    assert delta(before, after, "pollama_queue_wait_seconds_count", model=MODEL) == burst
    assert delta(before, after, "pollama_queue_wait_seconds_sum", model=MODEL) > 0  # they waited for the load
    assert delta(before, after, "pollama_model_load_duration_seconds_count", model=MODEL) == 1


def test_runner_restart_is_counted(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        assert (
            c.post(
                "/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": QUICK}
            ).status_code
            == 200
        )
        before = scrape(c)
        pids = smollm2_server.runner_pids()
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while delta(before, scrape(c), "pollama_runner_restarts_total", model=MODEL) < 1:
            assert time.monotonic() < deadline, "runner exit never counted"
            time.sleep(0.05)
        assert value(scrape(c), "pollama_models_loaded") == 0
        r = c.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": QUICK})
        assert r.status_code == 200
        after = scrape(c)
    assert delta(before, after, "pollama_runner_restarts_total", model=MODEL) == 1
    assert delta(before, after, "pollama_model_load_duration_seconds_count", model=MODEL) == 1
    assert delta(before, after, "pollama_model_load_failures_total", model=MODEL) == 0
    assert value(after, "pollama_models_loaded") == 1


def test_pull_bytes_from_the_offline_catalog(start_server: Any, smollm2_gguf: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = start_server(
        HTTPS_PROXY=dead, HTTP_PROXY=dead, NO_PROXY="", https_proxy=dead, http_proxy=dead, no_proxy=""
    )
    with server.client() as c:
        before = scrape(c)
        r = c.post("/api/pull", json={"model": "smollm2:135m"})
        lines = [json.loads(line) for line in r.text.splitlines() if line]
        assert lines[-1] == {"status": "success"}
        moved: dict[str, int] = {}
        for line in lines:
            if line.get("digest") and line.get("completed"):
                moved[line["digest"]] = max(moved.get(line["digest"], 0), line["completed"])
        after = scrape(c)
    assert sum(moved.values()) >= smollm2_gguf.stat().st_size
    assert delta(before, after, "pollama_pull_bytes_total") == sum(moved.values())
    assert delta(before, after, "pollama_push_bytes_total") == 0


def test_each_app_has_its_own_registry(isolated_env: Path) -> None:
    first, second = create_app(Settings.from_env()), create_app(Settings.from_env())
    assert first.state.metrics.registry is not second.state.metrics.registry
    first.state.metrics.request_done("GET", "/", 200, 0.01)
    assert b'pollama_requests_total{method="GET",route="/",status="200"} 1.0' in first.state.metrics.render()
    assert b"pollama_requests_total{" not in second.state.metrics.render()


def test_metrics_and_health_are_in_the_openapi_document(isolated_env: Path) -> None:
    paths = create_app(Settings.from_env()).openapi()["paths"]
    assert "get" in paths["/metrics"] and "get" in paths["/health"]
    assert set(paths["/health"]["get"]["responses"]) >= {"200", "503"}
