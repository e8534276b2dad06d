"""Prometheus metrics under the original turnq's family names, so existing dashboards keep working.

Turn metrics come from the event feed. Only batches this process committed are counted (``batch.origin``), so
with several replicas on one database each turn is counted once, by the replica that applied it.

The two series every request and every batch touch (requests, queue depth) are plain ints that a collector
reads when scraped: a prometheus-client child takes a lock and checks its type on every update, which on a
busy server costs more than the counting itself. Everything else uses prometheus-client's own metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from turnq.core import Backend, EventBatch

CONTENT_TYPE = CONTENT_TYPE_LATEST
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
disable_created_metrics()  # type: ignore[no-untyped-call]  # the original exposes no *_created series; keep the output the same shape
TIMEOUT_REASONS = ("lease_expired", "max_wait_exceeded", "disconnected", "aborted", "force_released")


class _StoreCommits(Collector):
    """The backend's count of committed units of work, read when scraped."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "turnq_store_commits",
            "Transactions committed for units of work (units share them under load)",
            value=self.backend.unit_commits,
        )


class _RequestCounts(Collector):
    """``turnq_requests_total``: each route's requests by status, counted in a plain dict."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], dict[int, int]] = {}

    def counter(self, method: str, path: str) -> Callable[[int], None]:
        """Count one route's requests: the returned function takes a request's status."""
        by_status = self.routes.setdefault((method, path), {})

        def count(status: int) -> None:
            by_status[status] = by_status.get(status, 0) + 1

        return count

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "turnq_requests", "HTTP requests by method, route and status", labels=["method", "path", "status"]
        )
        for (method, path), by_status in self.routes.items():
            for status, n in sorted(by_status.items()):
                family.add_metric([method, path, str(status)], n)
        yield family


class _QueueDepths(Collector):
    """``turnq_queue_depth``: each channel's latest depth, as its last batch told it."""

    def __init__(self) -> None:
        self.depths: dict[str, int] = {}

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "turnq_queue_depth", "Tickets on a channel (holder and waiters)", labels=["channel"]
        )
        for channel, depth in self.depths.items():
            family.add_metric([channel], depth)
        yield family


H = TypeVar("H", bound=Histogram)


def _child(children: dict[str, H], metric: H, channel: str) -> H:
    """A channel's labelled series of ``metric``, looked up once: ``labels()`` builds and locks on every call."""
    child = children.get(channel)
    if child is None:
        child = children[channel] = metric.labels(channel)
    return child


class Metrics:
    def __init__(self, origin: str = "", backend: Backend | None = None) -> None:
        self.origin = origin
        self.registry = CollectorRegistry()
        r = self.registry
        if backend is not None:
            r.register(_StoreCommits(backend))
        self.requests = _RequestCounts()
        r.register(self.requests)
        self.active_channels = Gauge("turnq_active_channels", "Channels that exist", registry=r)
        self.queue_depth = _QueueDepths()
        r.register(self.queue_depth)
        self.connections = Gauge("turnq_active_connections", "Open SSE streams by type", ["type"], registry=r)
        self.wait = Histogram(
            "turnq_wait_duration_seconds",
            "Time from enqueue to grant",
            ["channel"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.hold = Histogram(
            "turnq_hold_duration_seconds",
            "Time from grant to end of turn",
            ["channel"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.timeouts = Counter(
            "turnq_timeouts_total",
            "Tickets ended other than by release, by reason",
            ["channel", "reason"],
            registry=r,
        )

        # Each channel's labelled histogram series (see _child).
        self._wait_of: dict[str, Histogram] = {}
        self._hold_of: dict[str, Histogram] = {}

    def on_batch(self, batch: EventBatch) -> None:
        channel = batch.channel
        if batch.deleted:
            self.forget_channel(channel)
            return
        self.queue_depth.depths[channel] = batch.depth
        if batch.origin != self.origin:
            return
        for event in batch.events:
            name = event.name
            if name == "turn-started":
                _child(self._wait_of, self.wait, channel).observe(event.data.get("waitedMs", 0) / 1000)
            elif name == "turn-completed":
                _child(self._hold_of, self.hold, channel).observe(event.data.get("heldMs", 0) / 1000)
            elif name == "timeout":
                self.timeouts.labels(channel, event.data["reason"]).inc()

    def forget_channel(self, channel: str) -> None:
        """A deleted channel's series disappear."""
        self.queue_depth.depths.pop(channel, None)
        for children in (self._wait_of, self._hold_of):
            children.pop(channel, None)
        for metric in (self.wait, self.hold):
            with contextlib.suppress(KeyError):
                metric.remove(channel)
        for reason in TIMEOUT_REASONS:
            with contextlib.suppress(KeyError):
                self.timeouts.remove(channel, reason)

    def render(self, subscribers: int, observers: int, channels: int) -> bytes:
        self.connections.labels("subscriber").set(subscribers)
        self.connections.labels("observer").set(observers)
        self.active_channels.set(channels)
        return generate_latest(self.registry)
