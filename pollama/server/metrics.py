"""Prometheus metrics (``/metrics``), kept by one ``Metrics`` object per app in its own registry.

The server layer observes what passes through it: ``ObservedInference`` watches the chunks and
statistics of every completion and embedding, ``count_transfer`` the progress lines of pulls and
pushes, the request middleware (``accesslog``) each request's route, status and duration. Only the
scheduler knows queue waits, loads and runner exits: ``Metrics`` is its ``SchedulerObserver``.
Gauges (loaded models, slots, queue depth) are read from the scheduler when scraped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterable, Iterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pollama.errors import InvalidModelName
from pollama.inference.request import Chunk, CompletionRequest, EmbedRequest, EmbedResult
from pollama.inference.service import InferenceService
from pollama.names import parse_name
from pollama.server.accesslog import current_request
from pollama.store.progress import Progress

if TYPE_CHECKING:
    from pollama.scheduler import Scheduler

router = APIRouter(tags=["misc"])

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """Every metric of one server, registered in ``registry`` (never the process-wide default)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pollama_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "pollama_request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "pollama_prompt_tokens", "Prompt tokens evaluated (prompt_eval_count).", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            "pollama_generated_tokens", "Tokens generated (eval_count).", ["model"], registry=r
        )
        self.time_to_first_token = Histogram(
            "pollama_time_to_first_token_seconds",
            "Time from a completion's start to its first generated output.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_per_token = Histogram(
            "pollama_time_per_output_token_seconds",
            "Mean time per generated token of a completion (eval_duration / eval_count).",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "pollama_queue_wait_seconds",
            "Time a request waited in the load queue for a runner (0 when one was ready).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.load_duration = Histogram(
            "pollama_model_load_duration_seconds",
            "Time to start a runner and load a model.",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.load_failures = Counter("pollama_model_load_failures", "Model loads that failed.", ["model"], registry=r)
        self.runner_restarts = Counter(
            "pollama_runner_restarts",
            "Runners that exited unexpectedly (the next request reloads).",
            ["model"],
            registry=r,
        )
        self.pull_bytes = Counter("pollama_pull_bytes", "Bytes downloaded by pulls.", registry=r)
        self.push_bytes = Counter("pollama_push_bytes", "Bytes uploaded by pushes.", registry=r)

    def watch(self, scheduler: Scheduler) -> None:
        """Observe ``scheduler``: its events, and its state (gauges) at each scrape."""
        scheduler.observer = self
        self.registry.register(_SchedulerCollector(scheduler))

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    # --- a request ends (called by the request middleware) --------------------------------------

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(method, route, str(status)).inc()
        self.request_duration.labels(method, route).observe(seconds)

    # --- SchedulerObserver ----------------------------------------------------------------------

    def queue_waited(self, model: str, seconds: float) -> None:
        """A request got a runner after ``seconds`` in the load queue."""
        self.queue_wait.labels(model).observe(seconds)

    def model_loaded(self, model: str, seconds: float) -> None:
        """A model loaded in ``seconds``."""
        self.load_duration.labels(model).observe(seconds)

    def load_failed(self, model: str) -> None:
        """A model failed to load."""
        self.load_failures.labels(model).inc()

    def runner_exited(self, model: str) -> None:
        """A runner exited on its own."""
        self.runner_restarts.labels(model).inc()

    # --- registry transfers ---------------------------------------------------------------------

    def count_transfer(self, work: Iterator[Progress], direction: str) -> Iterator[Progress]:
        """``work``'s progress lines, unchanged, counting the bytes they report as moved
        (``direction`` ``pull`` or ``push``): each digest's ``completed`` growth counts once."""
        counter = self.pull_bytes if direction == "pull" else self.push_bytes
        seen: dict[str, int] = {}
        try:
            for item in work:
                if item.digest and item.completed:
                    done = seen.get(item.digest, 0)
                    if item.completed > done:
                        counter.inc(item.completed - done)
                        seen[item.digest] = item.completed
                yield item
        finally:
            close = getattr(work, "close", None)
            if close is not None:
                close()


class _SchedulerCollector(Collector):
    """Gauges read from the scheduler when scraped: queue depth, loaded models, slots per model."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterable[Metric]:
        loaded = self._scheduler.loaded()
        waiting_in_runners = sum(max(entry.refs - entry.spec.num_parallel, 0) for entry in loaded)
        depth = GaugeMetricFamily(
            "pollama_queue_depth", "Requests waiting: for a model to load, or for a slot of a loaded one."
        )
        depth.add_metric([], self._scheduler.queued + waiting_in_runners)
        models = GaugeMetricFamily("pollama_models_loaded", "Models loaded (one runner each).")
        models.add_metric([], len(loaded))
        busy = GaugeMetricFamily("pollama_slots_busy", "Slots of a loaded model serving a request.", labels=["model"])
        total = GaugeMetricFamily("pollama_slots_total", "Slots of a loaded model (num_parallel).", labels=["model"])
        for entry in loaded:
            busy.add_metric([entry.spec.name], min(entry.refs, entry.spec.num_parallel))
            total.add_metric([entry.spec.name], entry.spec.num_parallel)
        return [depth, models, busy, total]


class ObservedInference(InferenceService):
    """The inference service, with every completion's and embedding's tokens and timings counted in
    ``metrics`` and noted on the current request's access-log record."""

    metrics: Metrics

    async def complete(self, req: CompletionRequest) -> AsyncGenerator[Chunk, None]:
        """``InferenceService.complete``, observed chunk by chunk."""
        record = current_request.get()
        if record is not None:
            record.model = req.model
        model = _model_label(req.model)
        started = time.monotonic()
        first_output = True
        chunks = super().complete(req)
        try:
            async for chunk in chunks:
                if first_output and (chunk.content or chunk.thinking or chunk.tool_calls or chunk.done):
                    first_output = False
                    self.metrics.time_to_first_token.labels(model).observe(time.monotonic() - started)
                if chunk.stats is not None:
                    self._count(model, chunk.stats.prompt_eval_count, chunk.stats.eval_count)
                    if chunk.stats.eval_count > 0:
                        per_token = chunk.stats.eval_duration / 1e9 / chunk.stats.eval_count
                        self.metrics.time_per_token.labels(model).observe(per_token)
                yield chunk
        finally:
            await chunks.aclose()

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        """``InferenceService.embed``, its prompt tokens counted."""
        record = current_request.get()
        if record is not None:
            record.model = req.model
        result = await super().embed(req)
        self._count(_model_label(req.model), result.prompt_eval_count, 0)
        return result

    def _count(self, model: str, prompt: int, generated: int) -> None:
        self.metrics.prompt_tokens.labels(model).inc(prompt)
        self.metrics.generated_tokens.labels(model).inc(generated)
        record = current_request.get()
        if record is not None:
            record.prompt_tokens = (record.prompt_tokens or 0) + prompt
            record.generated_tokens = (record.generated_tokens or 0) + generated


def _model_label(requested: str) -> str:
    """A model's label: its display name (``smollm2:latest``), as the scheduler's metrics name it."""
    try:
        return parse_name(requested).display
    except InvalidModelName:
        return requested


def metrics_of(request: Request) -> Metrics:
    """The app's metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    operation_id="metrics_get",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Metrics"}},
)
async def metrics_endpoint(request: Request) -> Response:
    """Every metric in Prometheus' text exposition format."""
    return Response(metrics_of(request).render(), media_type=CONTENT_TYPE_LATEST)
