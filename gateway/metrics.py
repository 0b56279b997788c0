"""Prometheus metrics, one registry per application (no global registry, so tests
and several apps in one process never collide)."""

from __future__ import annotations

import asyncio
import bisect
import gc
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from audit import LogStatus

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

GC_PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class _GcPauses:
    """How long the cyclic garbage collector held the process, per generation.

    NOTE: one per process (gc.callbacks is process-wide), installed by the first
    registry that asks for it; every registry reads the same figures. While a
    collection runs nothing else does: a pause is an event-loop stall for every request
    in flight, so it is what an operator looks at when the latency tail grows."""

    def __init__(self) -> None:
        self._started = 0.0
        n = len(gc.get_threshold())
        self.buckets = [[0] * (len(GC_PAUSE_BUCKETS) + 1) for _ in range(n)]
        self.sums = [0.0] * n

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        gen = info.get("generation", 0)
        if 0 <= gen < len(self.sums):
            self.buckets[gen][bisect.bisect_left(GC_PAUSE_BUCKETS, took)] += 1
            self.sums[gen] += took

    def collect(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily(
            "classguard_gc_pause_seconds",
            "Time the garbage collector stopped this process, by generation "
            "(2: a full collection)", labels=["generation"])
        for gen, counts in enumerate(self.buckets):
            running, cumulative = 0, []
            for bound, c in zip((*GC_PAUSE_BUCKETS, float("inf")), counts, strict=True):
                running += c
                cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
            hist.add_metric([str(gen)], cumulative, self.sums[gen])
        yield hist
        yield GaugeMetricFamily(
            "classguard_gc_frozen_objects",
            "Objects set aside from garbage collection once the process was set up",
            value=gc.get_freeze_count())


GC_PAUSES = _GcPauses()


@dataclass(slots=True)
class Metrics:
    registry: CollectorRegistry
    join_attempts: Counter
    waiting: Gauge
    open_sockets: Gauge
    request_latency: Histogram
    host_actions: Counter
    alerts: Counter
    rate_limited: Counter
    redis_errors: Counter
    upstream_errors: Counter
    audit_tree_size: Gauge
    audit_checkpoint_time: Gauge
    audit_pending: Gauge
    audit_leader: Gauge
    loop_lag: Gauge

    @classmethod
    def create(cls) -> Metrics:
        reg = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=reg)  # process_resident_memory_bytes, process_cpu_...
        GC_PAUSES.install()
        reg.register(GC_PAUSES)
        return cls(
            registry=reg,
            join_attempts=Counter(
                "classguard_join_attempts",
                "Join decisions by action and reason code",
                ["action", "reason"],
                registry=reg,
            ),
            waiting=Gauge(
                "classguard_waiting_students",
                "Students waiting in a waiting room connected to this process",
                registry=reg,
            ),
            open_sockets=Gauge(
                "classguard_open_websockets",
                "Open WebSockets on this process by kind",
                ["kind"],
                registry=reg,
            ),
            request_latency=Histogram(
                "classguard_request_duration_seconds",
                "HTTP request latency by route",
                ["route"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                registry=reg,
            ),
            host_actions=Counter(
                "classguard_host_actions",
                "Host actions by action",
                ["action"],
                registry=reg,
            ),
            alerts=Counter(
                "classguard_alerts", "Alerts raised by kind", ["kind"], registry=reg
            ),
            rate_limited=Counter(
                "classguard_rate_limited",
                "Requests refused by the rate limiter, by limit",
                ["limit"],
                registry=reg,
            ),
            redis_errors=Counter(
                "classguard_redis_errors", "Failed Redis operations", registry=reg
            ),
            upstream_errors=Counter(
                "classguard_upstream_errors",
                "Failed calls to meeting platforms by kind",
                ["kind"],
                registry=reg,
            ),
            # The audit log's state, read from Redis at each scrape (set_audit): every
            # process reports the same log; the leader gauge is per process.
            audit_tree_size=Gauge(
                "classguard_audit_tree_size",
                "Records covered by the latest signed audit checkpoint",
                registry=reg,
            ),
            audit_checkpoint_time=Gauge(
                "classguard_audit_checkpoint_timestamp_seconds",
                "When the latest audit checkpoint was signed (Unix time)",
                registry=reg,
            ),
            audit_pending=Gauge(
                "classguard_audit_pending_events",
                "Audit events appended but not yet sequenced into the tree",
                registry=reg,
            ),
            audit_leader=Gauge(
                "classguard_audit_sequencer_leader",
                "1 on the process holding the audit sequencer lease, else 0",
                registry=reg,
            ),
            loop_lag=Gauge(
                "classguard_event_loop_lag_seconds",
                "Largest delay of a timer past its deadline in the last 10 s (event loop lag)",
                registry=reg,
            ),
        )

    async def watch_loop_lag(self, tick_s: float = 0.1, window_s: float = 10.0) -> None:
        """Measure how late the event loop runs a timer, for ``loop_lag`` (the worst of
        the current and the previous window); never returns."""
        loop = asyncio.get_running_loop()
        worst = previous = 0.0
        window_start = loop.time()
        while True:
            start = loop.time()
            await asyncio.sleep(tick_s)
            now = loop.time()
            worst = max(worst, now - start - tick_s)
            self.loop_lag.set(max(worst, previous))
            if now - window_start >= window_s:
                previous, worst, window_start = worst, 0.0, now

    def set_audit(self, status: LogStatus | None, *, leader: bool) -> None:
        """``status`` None: the log could not be read (Redis down, which has its own
        alert); its gauges read NaN rather than stale or made-up values."""
        self.audit_leader.set(1 if leader else 0)
        if status is None:
            for g in (self.audit_tree_size, self.audit_checkpoint_time, self.audit_pending):
                g.set(float("nan"))
            return
        self.audit_tree_size.set(status.checkpoint_size)
        self.audit_pending.set(status.pending)
        if status.checkpoint_ms is not None:
            self.audit_checkpoint_time.set(status.checkpoint_ms / 1000)
        else:
            self.audit_checkpoint_time.set(float("nan"))

    def render(self) -> web.Response:
        body = generate_latest(self.registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    def middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        hist = self.request_latency
        # One child per route (a bounded set: the app's routes and "unmatched"), looked
        # up once instead of through labels() on every request.
        by_route: dict[str, Any] = {}

        @web.middleware
        async def _mw(request: web.Request, handler: Handler) -> web.StreamResponse:
            start = time.perf_counter()
            try:
                return await handler(request)
            finally:
                info = request.match_info.route.resource
                route = info.canonical if info is not None else "unmatched"
                child = by_route.get(route)
                if child is None:
                    child = by_route[route] = hist.labels(route)
                child.observe(time.perf_counter() - start)

        return _mw
