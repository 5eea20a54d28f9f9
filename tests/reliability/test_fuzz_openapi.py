"""schemathesis over the ``/openapi.json`` a real ``pollama serve`` publishes (issue 14 item 5): every
operation, inference included (with SmolLM2), gets generated requests that fit its documented schema
and ones that break it; no answer may be a 5xx, and every answer must be what the document says
(status code, media type, body schema, headers).

What the test changes in a generated request, and why (nothing else is touched):

* the inference routes' positive cases name the installed model, so that they run inference
  instead of all ending in a 404 (negative cases keep whatever was generated); as most bodies that
  fit the schema still carry a value the server rightly refuses (an image that is not one, a token
  id outside the vocabulary, a model option it does not know), half of them (picked by a checksum
  of the body) keep only the fields that say what to answer (``CORE``), so the model really runs;
* generation lengths (``options.num_predict``, ``max_tokens`` and its kin, ``n``) are cut to at most
  4 tokens and 2 choices, and load-time options (``num_ctx``, ``num_thread``, ...) and ``keep_alive``
  are dropped: any of these fuzzed would make requests take seconds each (a reload, a 2 560-token
  answer) and the suite must fit in CI; their parsing has tests of its own (``tests/server``);
* URLs are pointed at a closed loopback port, and the server's registry traffic goes to a closed
  loopback proxy, so that no generated request reaches another machine.

The cases are generated in two processes (one per core: generation, not the server, is the bottleneck)
with a fixed seed, so a CI run is repeatable; ``POLLAMA_FUZZ_SEED`` picks another one.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess, smollm2_home_server

# Generated cases per operation: (positive, negative). Inference runs the model, so it gets fewer
# positive cases; an operation without parameters has one request to make (repeats are skipped).
EXAMPLES = (70, 70)
INFERENCE_EXAMPLES = (30, 80)
MIN_REQUESTS = 2000

INFERENCE = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)
LOAD_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "use_mlock", "num_thread", "numa", "low_vram"}
)
LENGTHS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
CORE = frozenset({"model", "prompt", "messages", "input", "instructions", "system", "stream", "raw", *LENGTHS})
MAX_TOKENS = 4
# What a core case of each inference route must say (filled with a short prompt when it was not generated).
_PROMPT_FIELD = {
    "/api/generate": "prompt",
    "/api/chat": "messages",
    "/api/embed": "input",
    "/api/embeddings": "prompt",
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
    "/v1/responses": "input",
    "/v1/messages": "messages",
}
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[ServerProcess]:
    env = {
        "OLLAMA_NUM_PARALLEL": "2",
        "OLLAMA_CONTEXT_LENGTH": "256",
        # Pulls and pushes of generated names would go to registry.ollama.ai: send them nowhere.
        "HTTPS_PROXY": CLOSED,
        "HTTP_PROXY": CLOSED,
        "ALL_PROXY": CLOSED,
        "NO_PROXY": "",
    }
    parameters = {"stop": ["<|im_end|>"], "num_predict": MAX_TOKENS}
    with smollm2_home_server(tmp_path_factory, smollm2_gguf, env, parameters=parameters) as proc:
        yield proc


def _local_urls(value: Any) -> Any:
    """``value`` with every http(s) URL in it pointed at a closed loopback port."""
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return CLOSED + "/image.png"
    if isinstance(value, list):
        return [_local_urls(item) for item in value]
    if isinstance(value, dict):
        return {key: _local_urls(item) for key, item in value.items()}
    return value


def _core_message(message: Any) -> Any:
    """A generated chat message reduced to its role and text (when it has them)."""
    if isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str):
        return {"role": message["role"], "content": message["content"]}
    return message


def _tame(path: str, body: Any, positive: bool) -> Any:
    """The generated ``body`` for ``path`` with the changes the module docstring lists."""
    if not isinstance(body, dict):
        return _local_urls(body)
    body = _local_urls(body)
    if path not in INFERENCE:
        return body
    if positive:
        body["model"] = "smollm2"
        if zlib.crc32(repr(sorted(body.items(), key=str)).encode()) % 2:
            body = {key: value for key, value in body.items() if key in CORE}
            if isinstance(body.get("messages"), list):
                body["messages"] = [_core_message(m) for m in body["messages"]]
            body.setdefault(
                _PROMPT_FIELD[path], [{"role": "user", "content": "Hi"}] if "messages" in _PROMPT_FIELD[path] else "Hi"
            )
    body.pop("keep_alive", None)
    options = body.get("options")
    if isinstance(options, dict):
        for key in LOAD_OPTIONS:
            options.pop(key, None)
        if isinstance(options.get("num_predict"), int) and not 0 <= options["num_predict"] <= MAX_TOKENS:
            options["num_predict"] = MAX_TOKENS
    for key in LENGTHS:
        if isinstance(body.get(key), int) and not 0 <= body[key] <= MAX_TOKENS:
            body[key] = MAX_TOKENS
    if isinstance(body.get("n"), int) and body["n"] > 2:
        body["n"] = 2
    return body


def _fuzz(url: str, labels: list[str], seed: int) -> tuple[int, dict[str, int], dict[tuple[str, str], str], float]:
    """Run every operation of ``labels`` (``METHOD /path``); (requests made, per operation, failures,
    CPU seconds this worker used).

    Runs in a worker process. A failure is keyed by (operation, kind) and keeps its first message
    and the request that caused it.
    """
    import requests
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.core.failures import Failure, FailureGroup

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    session = requests.Session()
    made: collections.Counter[str] = collections.Counter()
    failures: dict[tuple[str, str], str] = {}

    def call(operation: Any, case: Any, positive: bool) -> None:
        case.body = _tame(operation.path, case.body, positive)
        made[operation.label] += 1
        try:
            case.call_and_validate(base_url=url, session=session, timeout=120, checks=checks)
        except (Failure, FailureGroup, requests.RequestException) as exc:
            found = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
            for failure in found:
                key = (operation.label, type(failure).__name__)
                failures.setdefault(key, f"{failure}\nrequest: {case.as_curl_command()}"[:3000])

    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label not in labels:
            continue
        counts = INFERENCE_EXAMPLES if operation.path in INFERENCE else EXAMPLES
        for mode, examples in zip((GenerationMode.POSITIVE, GenerationMode.NEGATIVE), counts, strict=True):
            run = _runner(operation, mode, examples, seed, call)
            try:
                run()
            except Unsatisfiable:
                pass  # no parameter to break: an operation without inputs has no negative case
    return sum(made.values()), dict(made), failures, time.process_time()


def _runner(operation: Any, mode: Any, examples: int, seed: int, call: Any) -> Any:
    """A hypothesis test making ``examples`` cases of ``operation`` in ``mode`` and handing each to ``call``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as seeded
    from schemathesis import GenerationMode

    @seeded(seed)
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        call(operation, case, mode == GenerationMode.POSITIVE)

    return run


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute on an idle 2-core machine; far more on a busy one
def test_generated_requests_get_no_5xx_and_match_the_document(fuzz_server: ServerProcess) -> None:
    import httpx

    document = httpx.get(fuzz_server.url + "/openapi.json", timeout=30).json()
    labels = [f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops]
    assert len(labels) > 25
    # Two shards of about equal cost: inference operations alternate between them.
    ordered = sorted(labels, key=lambda label: (label.split(" ", 1)[1] in INFERENCE, label))
    shards = [ordered[0::2], ordered[1::2]]
    seed = int(os.environ.get("POLLAMA_FUZZ_SEED", "14"))
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_fuzz, [fuzz_server.url] * 2, shards, [seed] * 2))
    elapsed = time.monotonic() - started
    total = sum(result[0] for result in results)
    per_operation: dict[str, int] = {}
    failures: dict[tuple[str, str], str] = {}
    for _, made, found, _ in results:
        per_operation.update(made)
        failures.update(found)
    assert fuzz_server.process is not None
    stat = Path(f"/proc/{fuzz_server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    server_cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    workers_cpu = "+".join(f"{result[3]:.0f}" for result in results)
    print(f"\nschemathesis: {total} requests over {len(per_operation)} operations in {elapsed:.0f} s", end="")
    print(f" (CPU s: workers {workers_cpu}, server {server_cpu:.0f} without its runners)")
    assert not failures, "\n\n".join(f"{op} {kind}:\n{text}" for (op, kind), text in sorted(failures.items()))
    assert set(per_operation) == set(labels)
    assert total >= MIN_REQUESTS, per_operation
    # The inference routes really ran the model: the server answered them with 200s.
    metrics = httpx.get(fuzz_server.url + "/metrics", timeout=30).text
    answered = 0.0
    for line in metrics.splitlines():
        if line.startswith('pollama_requests_total{method="POST"') and 'status="200"' in line:
            route = line.split('route="', 1)[1].split('"', 1)[0]
            answered += float(line.rsplit(" ", 1)[1]) if route in INFERENCE else 0
    assert answered >= 60, metrics
    assert "pollama_generated_tokens_total{" in metrics, "no generated token was counted"
