"""pollama on a real two-node Ray cluster on this machine (``ray start --head`` plus a worker node with
its own resources and models folder, both started here and stopped in teardown): placement by
memory, greedy text identical to a single-node server, replicas under load, conversation affinity,
a worker node dying mid-stream, and a frontend restart adopting its runners."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pollama.runner.client import RUNNER_STOPPED
from tests.conftest import CHATML_TEMPLATE, ServerProcess, create_from_gguf, free_port

pytestmark = pytest.mark.slow

MB = 1024 * 1024
# SmolLM2's estimate at 512 tokens is ~270 MiB and Gemma 3 270M's ~830 MiB: the head fits one SmolLM2
# runner and no Gemma, the worker node fits Gemma and a SmolLM2 replica.
HEAD_MEMORY = 500 * MB
NODE2_MEMORY = 2500 * MB
OPTIONS = {"temperature": 0, "seed": 7, "num_predict": 24}
ROOT = Path(__file__).resolve().parents[2]
# A loopback address Ray keeps as given (it swaps 127.0.0.1 for the machine's outward address).
NODE_IP = "127.0.0.2"
# The head's GCS declares a node dead after ~5 s of failed health checks (Ray's default is ~30 s).
HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "3000",
    "RAY_health_check_failure_threshold": "5",
}


def _descendants(pid: int) -> list[int]:
    """``pid``'s child processes, their children, and so on."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class RayNode:
    """``ray start --block`` in the foreground of a process of ours: stopping it kills its tree."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                ["ray", "start", "--block", *args], env=env, stdout=out, stderr=out, start_new_session=True
            )

    def wait_started(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the node: the ``ray start`` process and every process under it."""
        if self.process.poll() is not None:
            return
        tree = _descendants(self.process.pid)
        for pid in [self.process.pid, *tree]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A head node and a worker node ``node2`` (its own models folder), and their addresses."""
    base = tmp_path_factory.mktemp("ray")
    temp_dir = tempfile.mkdtemp(prefix="pollama-ray-")  # short: Ray's socket paths must fit
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_raylet_start_wait_time_s": "120",
    }
    frontend_models = base / "frontend-models"
    node2_models = base / "node2-models"
    common = [f"--node-ip-address={NODE_IP}", "--object-store-memory=78643200", "--disable-usage-stats"]
    head = RayNode(
        [
            "--head",
            f"--port={port}",
            f"--temp-dir={temp_dir}",
            "--num-cpus=2",
            f"--memory={HEAD_MEMORY}",
            '--resources={"head": 1}',
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            *common,
        ],
        {**env, **HEALTH_CHECKS, "POLLAMA_NODE_NAME": "head", "OLLAMA_MODELS": str(frontend_models)},
        base / "head.log",
    )
    nodes = [head]
    try:
        head.wait_started()
        node2 = RayNode(
            [
                f"--address={NODE_IP}:{port}",
                f"--temp-dir={temp_dir}",
                "--num-cpus=2",
                f"--memory={NODE2_MEMORY}",
                '--resources={"node2": 1}',
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                *common,
            ],
            {**env, "POLLAMA_NODE_NAME": "node2", "OLLAMA_MODELS": str(node2_models)},
            base / "node2.log",
        )
        nodes.append(node2)
        node2.wait_started()
        yield {
            "address": f"{NODE_IP}:{port}",
            "head": head,
            "node2": node2,
            "frontend_models": frontend_models,
            "node2_models": node2_models,
            "home": base,
        }
    finally:
        for node in reversed(nodes):
            node.kill()
        logs = Path(temp_dir) / "session_latest" / "logs"
        if logs.is_dir():  # kept beside the test's files for a post-mortem
            subprocess.run(["cp", "-r", str(logs.resolve()), str(base / "ray-logs")], check=False)
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def _frontend(cluster: dict[str, Any], port: int | None = None) -> ServerProcess:
    home = cluster["home"] / "frontend-home"
    home.mkdir(exist_ok=True)
    env = {
        "POLLAMA_RAY_ADDRESS": cluster["address"],
        "OLLAMA_MODELS": str(cluster["frontend_models"]),
        "OLLAMA_CONTEXT_LENGTH": "512",
        "OLLAMA_NUM_PARALLEL": "1",
        "POLLAMA_MAX_REPLICAS": "2",
        "OLLAMA_KEEP_ALIVE": "10m",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    server = ServerProcess(home, env)
    if port is not None:
        server.port = port
        server.url = f"http://127.0.0.1:{port}"
        server.env["OLLAMA_HOST"] = f"127.0.0.1:{port}"
        server.log = home / f"server-{port}.log"
    return server.start()


@pytest.fixture(scope="module")
def frontend(cluster: dict[str, Any], smollm2_gguf: Path, gemma3_gguf: Path) -> Iterator[ServerProcess]:
    """A pollama frontend on the cluster with ``smollm2`` and ``gemma3`` installed."""
    server = _frontend(cluster)
    try:
        with server.client() as c:
            create_from_gguf(c, "smollm2", smollm2_gguf, template=CHATML_TEMPLATE, parameters={"stop": ["<|im_end|>"]})
            create_from_gguf(c, "gemma3", gemma3_gguf)
        yield server
    finally:
        server.stop()


def _generate(client: httpx.Client, model: str, prompt: str, **options: object) -> dict[str, Any]:
    r = client.post(
        "/api/generate", json={"model": model, "prompt": prompt, "stream": False, "options": {**OPTIONS, **options}}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _ps(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in client.get("/api/ps").json()["models"]}


def _served(client: httpx.Client, model: str = "smollm2:latest") -> dict[str, int]:
    return {r["id"]: r["served"] for r in _ps(client)[model]["replicas"]}


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_models_land_where_they_fit_and_answer_as_on_one_node(frontend: ServerProcess, cluster: dict[str, Any]) -> None:
    with frontend.client() as c:
        gemma = _generate(c, "gemma3", "The capital of France is")
        smol = _generate(c, "smollm2", "Name three colours.")
        ps = _ps(c)
    assert ps["gemma3:latest"]["node"] == "node2"  # the head's 500 MiB cannot hold it
    assert ps["smollm2:latest"]["node"] in ("head", "node2")
    assert [r["node"] for r in ps["gemma3:latest"]["replicas"]] == ["node2"]
    # node2 has no shared folder: it pulled the weights by digest from the frontend's /v2
    weights = json.loads(
        (cluster["frontend_models"] / "manifests/registry.ollama.ai/library/gemma3/latest").read_text()
    )["layers"][0]["digest"]
    pulled = cluster["node2_models"] / "blobs" / weights.replace(":", "-")
    assert pulled.read_bytes() == (cluster["frontend_models"] / "blobs" / weights.replace(":", "-")).read_bytes()

    single = ServerProcess(
        cluster["home"],
        {
            "OLLAMA_MODELS": str(cluster["frontend_models"]),
            "OLLAMA_CONTEXT_LENGTH": "512",
            "OLLAMA_NUM_PARALLEL": "1",
        },
    ).start()
    try:
        with single.client() as c:
            assert _generate(c, "gemma3", "The capital of France is")["response"] == gemma["response"]
            assert _generate(c, "smollm2", "Name three colours.")["response"] == smol["response"]
            c.post("/api/generate", json={"model": "gemma3", "keep_alive": 0})
            c.post("/api/generate", json={"model": "smollm2", "keep_alive": 0})
    finally:
        single.stop()
    assert len(gemma["response"]) > 10 and len(smol["response"]) > 10


def test_a_second_replica_appears_under_load_and_takes_requests(frontend: ServerProcess) -> None:
    with frontend.client() as c:
        c.post("/api/generate", json={"model": "gemma3", "keep_alive": 0})  # room on node2 for a replica

        def burst(n: int, tag: str) -> None:
            threads = [
                threading.Thread(target=_generate, args=(frontend.client(), "smollm2", f"{tag} {i}: count to ten."))
                for i in range(n)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        burst(3, "warm")
        _wait_for(lambda: len(_ps(c)["smollm2:latest"]["replicas"]) == 2, 60, "a second replica")
        replicas = _ps(c)["smollm2:latest"]["replicas"]
        assert sorted(r["node"] for r in replicas) == ["head", "node2"]  # spread over the nodes
        before = _served(c)
        burst(4, "spread")
        after = _served(c)
    gained = {rid: after[rid] - before.get(rid, 0) for rid in after}
    assert sum(gained.values()) == 4
    assert all(n >= 1 for n in gained.values()), gained


def test_a_conversation_stays_on_its_replica(frontend: ServerProcess) -> None:
    system = "You are a helpful assistant who answers in one short sentence, politely and plainly."
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    chosen: set[str] = set()
    with frontend.client() as c:
        assert len(_ps(c)["smollm2:latest"]["replicas"]) == 2
        for question in ("What is a cat?", "And a dog?", "Which one barks?"):
            messages.append({"role": "user", "content": question})
            before = _served(c)
            r = c.post(
                "/api/chat", json={"model": "smollm2", "messages": messages, "stream": False, "options": OPTIONS}
            )
            assert r.status_code == 200, r.text
            messages.append(r.json()["message"])
            after = _served(c)
            chosen |= {rid for rid in after if after[rid] != before.get(rid, 0)}
    assert len(chosen) == 1


def test_a_dying_node_fails_its_streams_and_the_next_request_goes_elsewhere(
    frontend: ServerProcess, cluster: dict[str, Any]
) -> None:
    with frontend.client() as c:
        replicas = _ps(c)["smollm2:latest"]["replicas"]
        assert sorted(r["node"] for r in replicas) == ["head", "node2"]
    results: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    started = {"a": threading.Event(), "b": threading.Event()}
    failed = threading.Event()  # one stream got its error: the other one may stop reading

    def stream(key: str) -> None:
        body = {
            "model": "smollm2",
            "prompt": f"Story {key}: tell me a very long story about the sea.",
            "options": {**OPTIONS, "num_predict": 400},
        }
        with httpx.stream("POST", frontend.url + "/api/generate", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line:
                    results[key].append(json.loads(line))
                    started[key].set()
                    if "error" in results[key][-1]:
                        failed.set()
                if failed.is_set() and "error" not in results[key][-1]:
                    return

    threads = [threading.Thread(target=stream, args=(k,)) for k in ("a", "b")]
    threads[0].start()
    assert started["a"].wait(60)
    threads[1].start()
    assert started["b"].wait(60)
    with frontend.client() as c:
        assert sorted(r["in_flight"] for r in _ps(c)["smollm2:latest"]["replicas"]) == [1, 1]
    cluster["node2"].kill()
    assert failed.wait(60), "no stream failed after its node died"
    for t in threads:
        t.join(60)
    finals = [results[k][-1] for k in ("a", "b")]
    errors = [f["error"] for f in finals if "error" in f]
    assert errors == [RUNNER_STOPPED]  # the stream on the dead node; the other one was still going
    with frontend.client() as c:
        answer = _generate(c, "smollm2", "Name three colours.")
        assert answer["done"] is True and answer["response"]
        ps = _ps(c)["smollm2:latest"]
    assert [r["node"] for r in ps["replicas"]] == ["head"]


def test_a_restarted_frontend_adopts_its_runner(frontend: ServerProcess, cluster: dict[str, Any]) -> None:
    with frontend.client() as c:
        first = _generate(c, "smollm2", "Name three colours.")
    assert frontend.process is not None
    os.killpg(frontend.process.pid, signal.SIGKILL)  # no shutdown: its detached actors stay
    frontend.process.wait(10)
    offset = frontend.log.stat().st_size  # the new server appends to the same log file
    again = _frontend(cluster, frontend.port)
    try:
        with again.client() as c:
            second = _generate(c, "smollm2", "Name three colours.")
            assert _ps(c)["smollm2:latest"]["node"] == "head"
        assert second["response"] == first["response"]
        log = again.log.read_bytes()[offset:].decode(errors="replace")
        assert "adopted runner" in log and "on node head in" not in log  # no new actor was started
    finally:
        again.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-x", "-q"]))
