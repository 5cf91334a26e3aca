"""Prometheus metrics: one registry per app (so tests can run several apps in one process).

Exposed at ``GET /metrics``:

- ``ragtune_http_requests_total{route,method,status}`` and
  ``ragtune_http_request_duration_seconds{route,method}`` (route = the path template, so
  ``/v1/adapters/{name}/load`` is one series however many names are used);
- ``ragtune_generated_tokens_total{mode}``; ``ragtune_batch_size`` (rows per decode step);
  ``ragtune_prefill_rows`` (requests prefilled together when they join the batch);
- ``ragtune_queue_depth`` (requests admitted and waiting for the model);
  ``ragtune_batch_rows`` (requests in the batch, ``ragtune_prefilling_rows`` of them still
  prefilling a long prompt) and ``ragtune_kv_cache_bytes`` (the memory their caches hold);
  ``ragtune_prefill_tokens_total`` (prompt positions prefilled);
- ``ragtune_connections_refused_total{reason}``: connections closed by the server's guards
  (``header_timeout``, ``body_timeout``, ``too_many_connections``);
- ``ragtune_adapter_cache_{hits,misses,evictions}_total`` and ``ragtune_adapters_loaded``,
  read from the generation engine's own counters at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from litestar import Request, get
from litestar.enums import ScopeType
from litestar.response import Response
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ragtune.core.pipeline import Pipeline

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _AdapterCacheCollector(Collector):
    """Reads the engine's LRU counters when scraped; reports zeros before the model loads."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[Any]:
        engine = self.pipeline.loaded_engine  # never trigger a model load from a scrape
        stats = engine.stats if engine is not None else None
        for name, doc in (
            ("hits", "Adapter requests served from memory"),
            ("misses", "Adapter loads from the registry"),
            ("evictions", "Adapters dropped by the LRU limit"),
        ):
            c = CounterMetricFamily(f"ragtune_adapter_cache_{name}", doc)
            c.add_metric([], float(getattr(stats, name, 0)))
            yield c
        g = GaugeMetricFamily("ragtune_adapters_loaded", "Adapters held in memory")
        g.add_metric([], float(len(engine.loaded_adapters()) if engine is not None else 0))
        yield g
        # prompt prefixes kept across requests (prefix_cache_mb; a remote engine has none);
        # ``is not None``: an empty cache is falsy, and its counters must not read as 0
        prefixes = getattr(engine, "prefixes", None)
        for name, doc in (
            ("hits", "Prompts that reused a kept prefix's key/value states"),
            ("misses", "Prompts that found no kept prefix"),
            ("reused_tokens", "Prompt tokens not prefilled thanks to a kept prefix"),
            ("evictions", "Kept prefixes dropped by the memory budget"),
        ):
            c = CounterMetricFamily(f"ragtune_prefix_cache_{name}", doc)
            c.add_metric([], float(getattr(prefixes.stats, name) if prefixes is not None else 0))
            yield c
        g = GaugeMetricFamily("ragtune_prefix_cache_bytes", "Memory held by kept prefixes")
        g.add_metric([], float(prefixes.nbytes if prefixes is not None else 0))
        yield g


class BatchStats(NamedTuple):
    rows: int  # requests in the batch, prefilling included
    prefilling: int  # requests whose long prompt is still being prefilled
    cache_bytes: int  # memory held by their key/value caches
    prefilled_tokens: int  # prompt positions prefilled so far (a counter)


class _BatchCollector(Collector):
    """Reads what the running batch holds when scraped."""

    def __init__(self, batch: Callable[[], BatchStats]) -> None:
        self.batch = batch

    def collect(self) -> Iterator[Any]:
        stats = self.batch()
        for name, doc, value in (
            (
                "ragtune_batch_rows",
                "Requests in the running batch (prefilling included)",
                stats.rows,
            ),
            (
                "ragtune_prefilling_rows",
                "Requests whose long prompt is being prefilled",
                stats.prefilling,
            ),
            (
                "ragtune_kv_cache_bytes",
                "Memory held by the batch's key/value caches",
                stats.cache_bytes,
            ),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g
        c = CounterMetricFamily("ragtune_prefill_tokens", "Prompt positions prefilled")
        c.add_metric([], float(stats.prefilled_tokens))
        yield c


class Metrics:
    def __init__(
        self,
        pipeline: Pipeline,
        queue_depth: Callable[[], float],
        batch: Callable[[], BatchStats] = lambda: BatchStats(0, 0, 0, 0),
    ) -> None:
        """``batch``: what the running batch holds (read at scrape time)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ragtune_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "ragtune_http_request_duration_seconds",
            "HTTP request latency (whole response, streams included)",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "ragtune_generated_tokens", "Completion tokens generated", ["mode"], registry=r
        )
        self.batch_size = Histogram(
            "ragtune_batch_size",
            "Requests generated together: rows in one decode step",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        self.prefill_rows = Histogram(
            "ragtune_prefill_rows",
            "Requests that joined the batch together (prefilled in passes of at most "
            "prefill_batch_tokens positions)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        self.queue_depth = Gauge(
            "ragtune_queue_depth", "Requests admitted and waiting for the model", registry=r
        )
        self.queue_depth.set_function(queue_depth)
        self.rejected = Counter(
            "ragtune_rejected", "Requests refused because the queue was full", registry=r
        )
        r.register(_BatchCollector(batch))
        self.refused = Counter(
            "ragtune_connections_refused",
            "Connections the server closed: slow headers or body, or too many connections",
            ["reason"],
            registry=r,
        )
        r.register(_AdapterCacheCollector(pipeline))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every routed request with its final status and times it to the last byte."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        metrics: Metrics = scope["litestar_app"].state.services.metrics
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("path_template") or "unmatched"
            method = scope.get("method", "")
            metrics.requests.labels(route, method, str(status)).inc()
            metrics.latency.labels(route, method).observe(time.perf_counter() - t0)


@get(
    "/metrics",
    include_in_schema=True,
    media_type=CONTENT_TYPE_LATEST,
    sync_to_thread=False,
    opt={"scope": "metrics"},  # service.auth.SCOPE: a key needs the metrics scope
)
def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus metrics in the text exposition format."""
    metrics: Metrics = request.app.state.services.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
