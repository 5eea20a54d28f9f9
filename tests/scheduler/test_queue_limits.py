"""``OLLAMA_MAX_QUEUE`` against a real server: bursts of concurrent requests get 503 at once, both
for a loaded model (whose runner takes ``num_parallel`` in flight plus ``OLLAMA_MAX_QUEUE`` waiting)
and for a cold one, and a burst does not blow up the server's memory."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ServerProcess, create_from_gguf

BURST = 200
# Greedy counting never ends by itself within the test: a request that gets a slot keeps it.
LONG = {
    "model": "smollm2",
    "prompt": "Count from 1 to 1000: 1, 2, 3,",
    "raw": True,
    "stream": True,
    "options": {"num_predict": 2000, "temperature": 0},
}
BUSY = {"error": "server busy, please try again.  maximum pending requests exceeded"}


def _memory(server: ServerProcess) -> dict[str, int]:
    """The server process's current and peak resident memory, in MB (``/proc/<pid>/status``)."""
    assert server.process is not None
    values = {}
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) // 1024
    return values


async def _burst(
    url: str, *, at_least_busy: int, within: float = 60.0
) -> tuple[collections.Counter[int], float, list[Any]]:
    """Send BURST concurrent long generations; return the statuses seen once ``at_least_busy`` 503s
    arrived (requests holding a slot stay open meanwhile), the seconds that took, and the 503 bodies."""
    loop = asyncio.get_running_loop()
    statuses: list[int] = []
    bodies: list[Any] = []
    release = asyncio.Event()
    busy_enough = asyncio.Event()
    limits = httpx.Limits(max_connections=BURST + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=within, limits=limits) as client:

        async def one() -> None:
            async with client.stream("POST", "/api/generate", json=LONG) as r:
                statuses.append(r.status_code)
                if statuses.count(503) >= at_least_busy:
                    busy_enough.set()
                if r.status_code == 200:
                    await release.wait()  # keep the slot until the test has counted
                else:
                    bodies.append((await r.aread()).decode())

        started = loop.time()
        tasks = [asyncio.create_task(one()) for _ in range(BURST)]
        with contextlib.suppress(TimeoutError):  # the deadline passed: the caller checks the counts
            await asyncio.wait_for(busy_enough.wait(), within)
        elapsed = loop.time() - started
        await asyncio.sleep(0.5)  # nothing else may be refused: the admitted ones hold their slots
        seen = collections.Counter(statuses)
        release.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return seen, elapsed, bodies


def _server(start_server: Any, smollm2_gguf: Path) -> ServerProcess:
    srv: ServerProcess = start_server(OLLAMA_MAX_QUEUE="2", OLLAMA_NUM_PARALLEL="2", OLLAMA_CONTEXT_LENGTH="512")
    with srv.client() as c:
        create_from_gguf(c, "smollm2", smollm2_gguf)
    return srv


def test_a_burst_against_a_loaded_model_is_bounded_by_max_queue(start_server: Any, smollm2_gguf: Path) -> None:
    srv = _server(start_server, smollm2_gguf)
    with srv.client() as c:
        assert c.post("/api/generate", json={"model": "smollm2"}).json()["done_reason"] == "load"
    # 2 slots in flight + OLLAMA_MAX_QUEUE=2 waiting for one; every other request is refused at once.
    seen, elapsed, bodies = asyncio.run(_burst(srv.url, at_least_busy=BURST - 4))
    assert seen[503] == BURST - 4, seen
    assert elapsed < 30, f"the 503s took {elapsed:.1f} s"
    assert set(bodies) == {'{"error":"server busy, please try again.  maximum pending requests exceeded"}'}
    _serves_again(srv)


def _serves_again(srv: ServerProcess, within: float = 60.0) -> None:
    """Once the burst's clients are gone their places free up and a request is answered again."""
    import time

    deadline = time.monotonic() + within
    with srv.client() as c:
        while True:
            r = c.post(
                "/api/generate",
                json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}},
            )
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text


def test_a_cold_burst_is_refused_quickly_and_memory_stays_bounded(start_server: Any, smollm2_gguf: Path) -> None:
    srv = _server(start_server, smollm2_gguf)
    before = _memory(srv)
    # One request loads the model, OLLAMA_MAX_QUEUE=2 wait for it; a request or two more may find
    # it loaded and take the runner's last places (2 slots + 2 waiting). The rest get 503.
    seen, elapsed, _ = asyncio.run(_burst(srv.url, at_least_busy=BURST - 4))
    after = _memory(srv)
    assert BURST - 4 <= seen[503] <= BURST - 2, seen
    assert elapsed < 30, f"the 503s took {elapsed:.1f} s"
    # Each waiting request used to parse the model's whole GGUF header (tokenizer arrays, ~9 MB of
    # Python objects) on its own: +320 MB for 200 requests. One parse shared by all is a few MB.
    growth = after["VmHWM"] - before["VmRSS"]
    assert growth < 120, f"server peak memory grew by {growth} MB during a burst of {BURST} ({before} -> {after})"
    _serves_again(srv)
