"""Prometheus metrics of one ``ctxvec serve`` app, exposed at ``GET /metrics``.

What a scrape shows (prometheus_client, the Prometheus project's Python library):

- ``ctxvec_http_requests_total{method, route, status}``: requests answered, by route template
  (``/search``, not the raw path), so that a client cannot grow the label set; a path no route
  matches is ``route="other"``, an unknown method ``method="other"``;
- ``ctxvec_http_request_duration_seconds{method, route}``: a histogram of the time to answer,
  from the first byte the app sees to the last it sends;
- ``ctxvec_batch_requests`` and ``ctxvec_batch_texts``: histograms of the micro-batcher's batches
  (requests and texts per forward pass, ``batcher.MicroBatcher``), and its encode and search
  time as counters;
- ``ctxvec_served_model_info{model, version, ref}``: 1 for the version being served (``ref``:
  the reference the server follows, e.g. ``models:/ctxvec-encoder@champion``), read at scrape
  time, so that it follows a champion swap; and when that version was loaded.

Each app has its own registry (``ServeMetrics.registry``), never prometheus_client's global one:
a process may build several apps (the tests do), and each one's counters are its own.
Requests are counted by ``MetricsMiddleware``, outside every other middleware, so refused
requests (401, 413, 421) and 500s are counted too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ctxvec.serve.batcher import BatchStats

__all__ = ["METRICS_MEDIA_TYPES", "MetricsMiddleware", "ServeMetrics"]

# The latency buckets (seconds): a cached query answers in milliseconds, a cold encode of a
# batch of long texts on a CPU in seconds.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # serve.max_batch is 64 by default
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# what GET /metrics answers, by the scraper's Accept header (prometheus_client's negotiation)
METRICS_MEDIA_TYPES = ("text/plain", "application/openmetrics-text")


class ServeMetrics:
    """One app's registry and metrics. ``watcher`` (a ``champion.ChampionWatcher``) says what
    is served now, ``stats`` holds the micro-batcher's running totals; both are read at scrape
    time."""

    def __init__(self, watcher, stats: BatchStats):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ctxvec_http_requests", "HTTP requests answered, by route template and status",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "ctxvec_http_request_duration_seconds", "Time to answer an HTTP request",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram(
            "ctxvec_batch_requests", "Requests (search, vector or embed jobs) per micro-batch",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_texts = Histogram(
            "ctxvec_batch_texts", "Texts encoded together per micro-batch",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(_ServedCollector(watcher, stats))

    def observe_batch(self, jobs: int, texts: int) -> None:
        """The micro-batcher's hook, once per batch (from its worker thread)."""
        self.batch_requests.observe(jobs)
        self.batch_texts.observe(texts)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the scraper asked for: (body, content type)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _ServedCollector(Collector):
    """The served version and the batcher's time, read when scraped (a swap needs no hook)."""

    def __init__(self, watcher, stats: BatchStats):
        self._watcher = watcher
        self._stats = stats

    def collect(self) -> Iterator:
        s = self._watcher.current  # one read: the version and its load time belong together
        info = InfoMetricFamily("ctxvec_served_model", "The model version being served",
                                labels=["model", "version", "ref"])
        loaded = GaugeMetricFamily("ctxvec_served_model_loaded_timestamp_seconds",
                                   "When the served version was loaded (Unix time)")
        info.add_metric([s.info.name, str(s.version), str(self._watcher.ref)], {})
        loaded.add_metric([], s.loaded_at)
        yield info
        yield loaded
        stats = self._stats
        encode = CounterMetricFamily("ctxvec_batch_encode_seconds",
                                     "Time the micro-batcher spent encoding")
        encode.add_metric([], stats.encode_s)
        search = CounterMetricFamily("ctxvec_batch_search_seconds",
                                     "Time the micro-batcher spent searching and reading hits")
        search.add_metric([], stats.search_s)
        yield encode
        yield search


def route_of(scope: Scope, paths: frozenset[str]) -> str:
    """The route template a request went to: what routing recorded; for a request refused
    before routing (401, 413, 421), its path if that is one of the app's ``paths`` (no route of
    ctxvec's has path parameters); else ``other``."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    return scope["path"] if scope["path"] in paths else "other"


class MetricsMiddleware:
    """Count and time every HTTP request (plain ASGI: cheaper than BaseHTTPMiddleware).
    ``paths``: the app's route paths, to name requests that never reached routing."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, paths: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes every handler: the server answers 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(scope["method"], route_of(scope, self.paths), status,
                                         time.perf_counter() - started)
