"""Prometheus metrics under the original turnq's family names, so existing dashboards keep working.

Turn metrics come from the event feed. Only batches this process committed are counted (``batch.origin``), so
with several replicas on one database each turn is counted once, by the replica that applied it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
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


M = TypeVar("M", Gauge, Histogram)


def _child(children: dict[str, M], metric: M, channel: str) -> M:
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
        self.requests = Counter(
            "turnq_requests_total",
            "HTTP requests by method, route and status",
            ["method", "path", "status"],
            registry=r,
        )
        self.active_channels = Gauge("turnq_active_channels", "Channels that exist", registry=r)
        self.queue_depth = Gauge(
            "turnq_queue_depth", "Tickets on a channel (holder and waiters)", ["channel"], registry=r
        )
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

        self._request_counters: dict[tuple[str, str, int], Counter] = {}
        # Each channel's labelled series (see _child); every batch needs up to three.
        self._depth_of: dict[str, Gauge] = {}
        self._wait_of: dict[str, Histogram] = {}
        self._hold_of: dict[str, Histogram] = {}

    def count_request(self, method: str, path: str, status: int) -> None:
        """Count a request; the labelled child is cached, since this runs on every request."""
        key = (method, path, status)
        child = self._request_counters.get(key)
        if child is None:
            child = self._request_counters[key] = self.requests.labels(method, path, str(status))
        child.inc()

    def on_batch(self, batch: EventBatch) -> None:
        channel = batch.channel
        if batch.deleted:
            self.forget_channel(channel)
            return
        _child(self._depth_of, self.queue_depth, channel).set(batch.depth)
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
        for children in (self._depth_of, self._wait_of, self._hold_of):
            children.pop(channel, None)
        for metric in (self.queue_depth, self.wait, self.hold):
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
