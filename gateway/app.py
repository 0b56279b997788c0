"""The one application factory, used by the CLI and the tests alike.

Every resource (Redis, embedded Redis, pub/sub listener, audit sequencer, HTTP client
session) is opened and closed in ``cleanup_ctx``; shared objects hang off the app under
typed ``web.AppKey``s. No module-level mutable state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jinja2
import redis.asyncio as aioredis
from aiohttp import web

from audit import AuditLog, AuditSigningKey, Sequencer

from . import i18n
from .auditing import Auditor, BatchingAppender
from .bus import Bus
from .config import Settings
from .embedded_redis import EmbeddedRedis
from .errors import make_error_middleware
from .keys import JoinKeyring
from .metrics import Metrics
from .redis_mux import Multiplexed
from .roster_worker import RosterParser
from .secretbox import SecretBox
from .staff import StaffStore
from .state import ClassStore

log = logging.getLogger("classguard")

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Services:
    """Everything a request handler needs, built once per application."""

    settings: Settings
    clock: Clock
    metrics: Metrics
    templates: jinja2.Environment
    redis: aioredis.Redis | None = None
    redis_bytes: aioredis.Redis | None = None
    # The join path's transport on a plain server (gateway.redis_mux); None otherwise.
    redis_fast: Multiplexed | None = None
    redis_fast_bytes: Multiplexed | None = None  # the same, replies as bytes (audit appends)
    store: ClassStore | None = None
    staff: StaffStore | None = None
    keyring: JoinKeyring | None = None
    secretbox: SecretBox | None = None
    audit_log: AuditLog | None = None
    auditor: Auditor | None = None
    audit_key: AuditSigningKey | None = None
    bus: Bus | None = None
    http: aiohttp.ClientSession | None = None
    # long-lived platform connections by kind (Janus sessions, Zoom OAuth tokens)
    adapter_pools: dict[str, Any] = field(default_factory=dict)
    reconciler: Any = None  # gateway.presence.Reconciler, set in _resources
    sequencer: Sequencer | None = None
    sequencer_task: asyncio.Task[None] | None = None
    # A worker of a supervised group: the group's sequencer process runs the sequencer
    # (gateway/workers.py), this process none.
    sequencer_elsewhere: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # when this process last logged that Redis is near its maxmemory (loop time)
    memory_warned_at: float = 0.0
    # process-local registry of open sockets (connections, not state)
    sockets: dict[str, set[web.WebSocketResponse]] = field(default_factory=dict)
    # roster files are parsed off the event loop, a few child processes at a time
    roster_parser: RosterParser = field(default_factory=RosterParser)

    # Typed accessors: a handler never sees a half-started app.
    @property
    def r(self) -> aioredis.Redis:
        assert self.redis is not None
        return self.redis


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def make_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["t"] = i18n.t
    return env


CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    resp = await handler(request)
    if isinstance(resp, web.WebSocketResponse):
        return resp
    h = resp.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    # NOTE: join links carry the token in the path; never leak it through Referer.
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if not request.path.startswith("/static/"):
        h.setdefault("Cache-Control", "no-store")
    return resp


async def _resources(app: web.Application) -> AsyncIterator[None]:
    svc = app[SERVICES]
    s = svc.settings
    embedded: EmbeddedRedis | None = None
    url = s.redis_url
    await asyncio.to_thread(Path(s.data_dir).mkdir, parents=True, exist_ok=True)
    if s.embedded_redis:
        embedded = EmbeddedRedis(Path(s.data_dir),
                                 maxmemory_bytes=s.embedded_redis_maxmemory_bytes,
                                 on_restart=svc.metrics.embedded_redis_restarts.inc)
        url = await embedded.start()
        log.info("embedded Redis started at %s", url)
    svc.redis, svc.redis_bytes = redis_clients(s, url)
    if url is not None and not s.redis_sentinels:
        svc.redis_fast = Multiplexed.from_url(url)
        svc.redis_fast_bytes = Multiplexed.from_url(url, decode=False)
    keys_dir = Path(s.data_dir) / "keys"
    svc.keyring = await asyncio.to_thread(
        JoinKeyring.load_or_create, keys_dir / "join", clock=svc.clock
    )
    svc.secretbox = await asyncio.to_thread(SecretBox.load_or_create, keys_dir / "secretbox.key")
    svc.audit_key = await asyncio.to_thread(
        AuditSigningKey.load_or_create, keys_dir / "audit.key", s.audit_origin
    )
    clock = svc.clock

    def ms_clock() -> int:
        return int(clock() * 1000)

    svc.store = ClassStore(svc.redis, s.redis_prefix, clock=svc.clock, fast=svc.redis_fast,
                           audit_replicas=s.audit_durability_replicas)
    svc.staff = make_staff(svc.redis, s, svc.clock)
    svc.audit_log = AuditLog(
        svc.redis_bytes,
        prefix=s.redis_prefix,
        node_id=s.node_id,
        clock=ms_clock,
        durability_replicas=s.audit_durability_replicas,
        fast=svc.redis_fast_bytes,
        outbox_of=svc.store.k.outbox,
    )
    svc.auditor = Auditor(BatchingAppender(svc.audit_log), node=s.node_id, clock_ms=ms_clock)
    svc.bus = Bus(svc.redis, f"{s.redis_prefix}bus", f"{s.redis_prefix}revoke")
    from meeting_adapters.egress import guarded_session

    egress = s.egress_policy()
    # Platform calls only: egress-checked connects, no cookie jar shared across tenants.
    svc.http = guarded_session(egress, timeout_s=10)
    sequencer = Sequencer(
        svc.redis_bytes,
        prefix=s.redis_prefix,
        signer=svc.audit_key,
        origin=s.audit_origin,
        clock=ms_clock,
        node_id=s.node_id,
        fast=svc.redis_fast_bytes,
    )
    from meeting_adapters.registry import open_pools

    from .presence import Reconciler

    svc.adapter_pools = open_pools(egress)
    svc.reconciler = Reconciler(svc)
    bus_task = asyncio.create_task(svc.bus.run())
    background = [bus_task, asyncio.create_task(svc.reconciler.run()),
                  asyncio.create_task(svc.metrics.watch_loop_lag())]
    if not svc.sequencer_elsewhere:
        svc.sequencer = sequencer
        svc.sequencer_task = asyncio.create_task(sequencer.run())
        background.append(svc.sequencer_task)
    for task in background:
        svc.tasks.add(task)
        task.add_done_callback(_log_task_end)
    with contextlib.suppress(TimeoutError):
        await svc.bus.wait_ready(5.0)
    try:
        yield
    finally:
        for ws_set in list(svc.sockets.values()):
            for ws in list(ws_set):
                with contextlib.suppress(Exception):
                    await ws.close(code=1001, message=b"server shutting down")
        for task in list(svc.tasks):
            task.cancel()
        for task in list(svc.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        svc.tasks.clear()
        for pool in svc.adapter_pools.values():
            with contextlib.suppress(Exception):
                await pool.aclose()
        await svc.http.close()
        await svc.redis.aclose()
        await svc.redis_bytes.aclose()
        for fast in (svc.redis_fast, svc.redis_fast_bytes):
            if fast is not None:
                await fast.aclose()
        if embedded is not None:
            await embedded.stop()


def redis_clients(s: Settings, url: str | None) -> tuple[aioredis.Redis, aioredis.Redis]:
    """A text and a bytes client on the same server: a URL, or the master that the
    configured Sentinels name (followed across failovers)."""
    if s.redis_sentinels:
        from redis.asyncio.sentinel import Sentinel

        hosts = []
        for entry in s.redis_sentinels:
            host, _, port = entry.rpartition(":")
            hosts.append((host.strip("[]"), int(port)))
        sentinel = Sentinel(hosts, socket_timeout=2.0)
        master = s.redis_sentinel_master or "mymaster"
        password = s.redis_password or None
        return (sentinel.master_for(master, decode_responses=True, password=password,
                                    max_connections=s.redis_max_connections),
                sentinel.master_for(master, decode_responses=False, password=password,
                                    max_connections=s.redis_max_connections))
    assert url is not None
    out = []
    for decode in (True, False):
        # NOTE: a blocking pool waits briefly for a free connection under a burst instead
        # of failing the request at once.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, decode_responses=decode, max_connections=s.redis_max_connections,
            timeout=s.redis_pool_timeout_s)
        # from_pool hands the pool to the client, so aclose() disconnects it too.
        out.append(aioredis.Redis.from_pool(pool))
    return out[0], out[1]


def _log_task_end(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task ended with an error: %r", exc)


def make_staff(redis: aioredis.Redis, s: Settings, clock: Clock) -> StaffStore:
    return StaffStore(
        redis,
        prefix=s.redis_prefix,
        clock=clock,
        login_max_failures=s.login_max_failures,
        login_account_max_failures=s.login_account_max_failures,
        login_account_slow_s=s.login_account_slow_s,
        login_window_s=s.login_window_s,
        login_ban_s=s.login_ban_s,
        login_ban_max_s=s.login_ban_max_s,
        session_ttl_s=s.session_ttl_s,
    )


def create_app(settings: Settings, *, clock: Clock = time.time,
               sequencer: bool = True) -> web.Application:
    """The gateway. ``sequencer=False``: a worker of a supervised group, whose
    sequencer process runs the audit sequencer (gateway/workers.py)."""
    from .auth import refusal_middleware
    from .routes import (
        audit,
        audit_admin,
        classes,
        control,
        incidents,
        join,
        oidc,
        orgs,
        pages,
        platform_hooks,
        service,
        session,
    )

    metrics = Metrics.create()
    svc = Services(settings=settings, clock=clock, metrics=metrics, templates=make_templates(),
                   sequencer_elsewhere=not sequencer)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[security_headers, metrics.middleware(),
                     make_error_middleware(metrics.redis_errors.inc, pages.not_found_page),
                     refusal_middleware],
    )
    app[SERVICES] = svc
    app.cleanup_ctx.append(_resources)
    for module in (service, session, classes, control, join, pages, audit, orgs,
                   platform_hooks, incidents, audit_admin, oidc):
        module.setup(app)
    static_dir = Path(__file__).parent / "static"
    app.router.add_static("/static/", static_dir, name="static", append_version=True)
    return app
