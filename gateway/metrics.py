"""Prometheus metrics, one registry per application (no global registry, so tests
and several apps in one process never collide).

Under ``classguard serve --workers N`` (gateway/workers.py) every process of the group
writes its figures to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode) and ``/metrics``, whichever worker answers it, reads them all:

* counters and histograms are summed over every process the group ever ran (a dead
  worker's counts stay: they happened);
* ``classguard_waiting_students``, ``classguard_open_websockets``,
  ``classguard_gc_frozen_objects`` and ``classguard_audit_sequencer_leader`` are summed
  over the live processes (``livesum``: the leader gauge is 1 when one process of the
  group leads, 2 would mean two do);
* the audit log's gauges are the most recent value any live process read from Redis
  (``livemostrecent``);
* ``process_*`` are the whole group's: CPU seconds, resident and virtual memory and
  open fds summed over the supervisor and its gateway processes (not the embedded
  Redis, which has its own figures in ``INFO``), the start time of the supervisor;
  ``classguard_processes`` counts them.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from audit import LogStatus

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FROZEN_EVERY_S = 5.0
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
        # Multiprocess mode: pauses not yet written to the shared files. NOTE: they are
        # written later, by publish(), never from the callback: a collection can start
        # while this process holds prometheus-client's (non-reentrant) file lock.
        self._unpublished: list[tuple[int, float]] = []
        self._shared: tuple[Histogram, Gauge] | None = None
        self._frozen_published = -1
        self._frozen_due = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def share(self) -> None:
        """Also write the pauses to the multiprocess files (once per process)."""
        if self._shared is None:
            self._shared = (
                Histogram("classguard_gc_pause_seconds",
                          "Time the garbage collector stopped a process, by generation "
                          "(2: a full collection)", ["generation"],
                          buckets=GC_PAUSE_BUCKETS, registry=None),
                Gauge("classguard_gc_frozen_objects",
                      "Objects set aside from garbage collection once the processes were "
                      "set up", multiprocess_mode="livesum", registry=None))
        self.publish()

    def publish(self) -> None:
        """Write what the callback recorded since the last call (multiprocess mode)."""
        if self._shared is None:
            return
        hist, frozen = self._shared
        if self._unpublished:
            pending, self._unpublished = self._unpublished, []
            for gen, took in pending:
                hist.labels(str(gen)).observe(took)
        # NOTE: gc.get_freeze_count() walks the whole frozen list (about 105,000 objects
        # once serving): read every request, it was 70 % of a worker's CPU. Once per
        # FROZEN_EVERY_S is plenty for a figure that changes once, at start.
        now = time.monotonic()
        if now < self._frozen_due:
            return
        self._frozen_due = now + FROZEN_EVERY_S
        count = gc.get_freeze_count()
        if count != self._frozen_published:
            self._frozen_published = count
            frozen.set(count)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        gen = info.get("generation", 0)
        if 0 <= gen < len(self.sums):
            self.buckets[gen][bisect.bisect_left(GC_PAUSE_BUCKETS, took)] += 1
            self.sums[gen] += took
            if self._shared is not None:
                self._unpublished.append((gen, took))

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


def multiprocess_dir() -> str | None:
    """The multiprocess directory when this process is one of a supervised group."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _GroupProcesses:
    """``process_*`` of the supervised group: the supervisor (this process's parent)
    and its gateway children, summed (see the module docstring)."""

    def collect(self) -> Iterator[Metric]:
        import psutil

        try:
            parent = psutil.Process(os.getppid())
            procs = [parent] + [c for c in parent.children()
                                if "gateway.cli" in " ".join(_cmdline(c))]
        except psutil.Error:
            return
        cpu = rss = vms = fds = 0.0
        n = 0
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    m = p.memory_info()
                    cpu += t.user + t.system
                    rss += m.rss
                    vms += m.vms
                    fds += p.num_fds()
                    n += 1
            except psutil.Error:
                continue
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("process_cpu_seconds",
                                  "User and system CPU time of the gateway's processes",
                                  value=cpu)
        yield GaugeMetricFamily("process_resident_memory_bytes",
                                "Resident memory of the gateway's processes", value=rss)
        yield GaugeMetricFamily("process_virtual_memory_bytes",
                                "Virtual memory of the gateway's processes", value=vms)
        yield GaugeMetricFamily("process_open_fds",
                                "Open file descriptors of the gateway's processes", value=fds)
        yield GaugeMetricFamily("process_start_time_seconds",
                                "Start time of the supervisor (Unix time)",
                                value=parent.create_time())
        yield GaugeMetricFamily("classguard_processes",
                                "Gateway processes of this group (supervisor included)",
                                value=n)


def _cmdline(p: object) -> list[str]:
    try:
        return list(p.cmdline())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a process that just exited has none
        return []


def sequencer_leader_gauge() -> Gauge:
    """The leader gauge of a sequencer process (multiprocess mode, no registry)."""
    return Gauge("classguard_audit_sequencer_leader",
                 "1 on the process holding the audit sequencer lease, else 0",
                 multiprocess_mode="livesum", registry=None)


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
    redis_memory_ratio: Gauge
    connections_closed: Counter
    loop_lag: Gauge
    embedded_redis_restarts: Counter
    incident_first_notification: Histogram
    shared_dir: str | None = None  # multiprocess mode: the directory every process writes

    @classmethod
    def create(cls) -> Metrics:
        reg = CollectorRegistry(auto_describe=True)
        shared = multiprocess_dir()
        GC_PAUSES.install()
        if shared is None:
            ProcessCollector(registry=reg)  # process_resident_memory_bytes, process_cpu_...
            reg.register(GC_PAUSES)
        else:
            GC_PAUSES.share()
        return cls(
            shared_dir=shared,
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
                multiprocess_mode="livesum",
                registry=reg,
            ),
            open_sockets=Gauge(
                "classguard_open_websockets",
                "Open WebSockets on this process by kind",
                ["kind"],
                multiprocess_mode="livesum",
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
            embedded_redis_restarts=Counter(
                "classguard_embedded_redis_restarts",
                "Restarts of the embedded Redis after it exited unexpectedly",
                registry=reg,
            ),
            incident_first_notification=Histogram(
                "classguard_incident_first_notification_seconds",
                "Time from an incident's creation (or the report it came from) to its first "
                "email sent (gateway/notify.py)",
                buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200),
                registry=reg,
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
                multiprocess_mode="livemostrecent",
                registry=reg,
            ),
            audit_checkpoint_time=Gauge(
                "classguard_audit_checkpoint_timestamp_seconds",
                "When the latest audit checkpoint was signed (Unix time)",
                multiprocess_mode="livemostrecent",
                registry=reg,
            ),
            audit_pending=Gauge(
                "classguard_audit_pending_events",
                "Audit events appended but not yet sequenced into the tree",
                multiprocess_mode="livemostrecent",
                registry=reg,
            ),
            audit_leader=Gauge(
                "classguard_audit_sequencer_leader",
                "1 on the process holding the audit sequencer lease, else 0",
                multiprocess_mode="livesum",
                registry=reg,
            ),
            # NaN when Redis has no maxmemory (an external server managed elsewhere).
            redis_memory_ratio=Gauge(
                "classguard_redis_memory_used_ratio",
                "Redis used_memory / maxmemory; at 1 Redis refuses writes (gateway 503)",
                multiprocess_mode="livemostrecent",
                registry=reg,
            ),
            connections_closed=Counter(
                "classguard_connections_closed",
                "Client connections closed by the connection guard, by reason",
                ["reason"],
                registry=reg,
            ),
            loop_lag=Gauge(
                "classguard_event_loop_lag_seconds",
                "Largest delay of a timer past its deadline in the last 10 s (event loop lag)",
                multiprocess_mode="livemax",
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
        if self.shared_dir is None:
            body = generate_latest(self.registry)
        else:
            from prometheus_client.multiprocess import MultiProcessCollector

            GC_PAUSES.publish()
            reg = CollectorRegistry()
            MultiProcessCollector(reg, path=self.shared_dir)  # type: ignore[no-untyped-call]
            reg.register(_GroupProcesses())
            body = generate_latest(reg)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    def middleware(self) -> Middleware:
        hist = self.request_latency
        # One child per route (a bounded set: the app's routes and "unmatched"), looked
        # up once instead of through labels() on every request.
        by_route: dict[str, Any] = {}
        # Multiprocess mode: the collector pauses of this process reach the shared
        # files after each request (a cheap no-op when there were none).
        publish = GC_PAUSES.publish if self.shared_dir is not None else None

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
                if publish is not None:
                    publish()

        return _mw
