"""What a running gateway shares: ``Services``, built complete in one place.

``create_app`` (gateway/app.py) makes a ``Foundation``: the settings, clock, metrics and
templates that exist before start-up (middlewares, template filters and the demo's set-up
use them). At start-up ``open_services`` opens everything else (Redis, keys, the secret
box, the audit log and its auditor, the pub/sub bus, the HTTP client session, platform
pools, and with ``background`` the presence reconciler, the audit sequencer and the
loop-lag watch) and hands out a ``Services`` whose every field a request needs is set.
Command-line paths open the same ``Services`` with ``background=False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import jinja2
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.sentinel import Sentinel

from audit import AuditLog, AuditSigningKey, Sequencer
from meeting_adapters.egress import guarded_session
from meeting_adapters.registry import open_pools

from . import i18n
from .auditing import Auditor, BatchingAppender
from .bus import Bus
from .config import Settings
from .embedded_redis import EmbeddedRedis
from .keys import JoinKeyring
from .metrics import Metrics
from .redis_mux import Multiplexed
from .roster_worker import RosterParser
from .secretbox import SecretBox
from .staff import StaffStore
from .stores import ClassStore
from .stores.keys import Keys

log = logging.getLogger("classguard")

Clock = Callable[[], float]


class Reconciling(Protocol):
    """The presence reconciler (gateway/presence.py) as the services see it."""

    async def run(self) -> None: ...


class Notifying(Protocol):
    """The incident mail sender (gateway/notify.py) as the services see it."""

    async def run(self) -> None: ...

    def wake(self) -> None: ...


@dataclass(slots=True)
class Foundation:
    """What the application holds from ``create_app`` on; ``services`` once started."""

    settings: Settings
    clock: Clock
    metrics: Metrics
    templates: jinja2.Environment
    # A worker of a supervised group: the group's sequencer process runs the audit
    # sequencer (gateway/workers.py), this process none.
    sequencer_elsewhere: bool = False
    started: Services | None = None

    @property
    def services(self) -> Services:
        if self.started is None:
            raise RuntimeError("the gateway's services are not open (before start-up)")
        return self.started


@dataclass(slots=True)
class Services:
    """Everything a request handler needs, built once per application by
    ``open_services``."""

    settings: Settings
    clock: Clock
    metrics: Metrics
    templates: jinja2.Environment
    redis: aioredis.Redis
    redis_bytes: aioredis.Redis
    # The join path's transport on a plain server (gateway.redis_mux); None behind
    # Sentinel, where redis-py follows the failovers.
    redis_fast: Multiplexed | None
    redis_fast_bytes: Multiplexed | None  # the same, replies as bytes (audit appends)
    store: ClassStore
    staff: StaffStore
    keyring: JoinKeyring
    secretbox: SecretBox
    audit_log: AuditLog
    auditor: Auditor
    audit_key: AuditSigningKey
    bus: Bus
    http: aiohttp.ClientSession
    # long-lived platform connections by kind (``Feature.POOL``: sessions, OAuth tokens)
    adapter_pools: dict[str, Any]
    sequencer_elsewhere: bool
    # The audit sequencer this process runs; None in a worker of a group (its sequencer
    # process runs it) and on the command line.
    sequencer: Sequencer | None = None
    sequencer_task: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # when this process last logged that Redis is near its maxmemory (loop time)
    memory_warned_at: float = 0.0
    # process-local registry of open sockets (connections, not state)
    sockets: dict[str, set[web.WebSocketResponse]] = field(default_factory=dict)
    # roster files are parsed off the event loop, a few child processes at a time
    roster_parser: RosterParser = field(default_factory=RosterParser)
    # The presence reconciler; it is made from the services themselves, so
    # ``open_services`` sets it right after construction, before anyone sees them.
    reconciler: Reconciling = field(init=False)
    # The incident mail sender, in a serving process only (``background``); a command-line
    # path queues its mail for the servers to send.
    notifier: Notifying | None = None


FOUNDATION: web.AppKey[Foundation] = web.AppKey("foundation", Foundation)


def services_of(app: web.Application) -> Services:
    """The started application's services."""
    return app[FOUNDATION].services


def services(request: web.Request) -> Services:
    return request.app[FOUNDATION].services


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


@dataclass(slots=True)
class RedisClients:
    """A text and a bytes client on the same server, and with Sentinels the manager
    that finds the master (it keeps a connection to each Sentinel it asked)."""

    text: aioredis.Redis
    raw: aioredis.Redis
    sentinel: Sentinel | None = None

    async def aclose(self) -> None:
        """Disconnects both clients and the connections to the Sentinels. Closing a
        client twice is harmless (the sequencer process closes ``text`` at once)."""
        asked = self.sentinel.sentinels if self.sentinel is not None else []
        for client in (self.raw, self.text, *asked):
            with contextlib.suppress(Exception):
                await client.aclose()


def redis_clients(s: Settings, url: str | None) -> RedisClients:
    """The clients of a URL, or of the master that the configured Sentinels name
    (followed across failovers)."""
    if s.redis_sentinels:
        hosts = []
        for entry in s.redis_sentinels:
            host, _, port = entry.rpartition(":")
            hosts.append((host.strip("[]"), int(port)))
        sentinel = Sentinel(hosts, socket_timeout=2.0)
        master = s.redis_sentinel_master or "mymaster"
        password = s.redis_password or None
        return RedisClients(
            sentinel.master_for(master, decode_responses=True, password=password,
                                max_connections=s.redis_max_connections),
            sentinel.master_for(master, decode_responses=False, password=password,
                                max_connections=s.redis_max_connections),
            sentinel)
    if url is None:
        raise ValueError("no Redis URL and no Sentinels configured")
    out = []
    for decode in (True, False):
        # NOTE: a blocking pool waits briefly for a free connection under a burst instead
        # of failing the request at once.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, decode_responses=decode, max_connections=s.redis_max_connections,
            timeout=s.redis_pool_timeout_s)
        # from_pool hands the pool to the client, so aclose() disconnects it too.
        out.append(aioredis.Redis.from_pool(pool))
    return RedisClients(out[0], out[1])


@contextlib.asynccontextmanager
async def open_services(
    found: Foundation,
    *,
    reconciler: Callable[[Services], Reconciling],
    notifier: Callable[[Services], Notifying] | None = None,
    url: str | None = None,
    background: bool = True,
) -> AsyncIterator[Services]:
    """Opens everything, yields the finished ``Services``, closes everything (also what
    was opened when a later step fails).

    ``url``: this Redis rather than the configured one (no embedded Redis is started).
    ``background``: also run the pub/sub listener, the presence reconciler, the loop-lag
    watch, the incident mail sender (``notifier``) and (unless
    ``found.sequencer_elsewhere``) the audit sequencer; a command-line path opens the
    services without them."""
    s = found.settings
    clock = found.clock
    async with contextlib.AsyncExitStack() as opened:
        # NOTE: closed in the reverse order: sockets and tasks first, Redis last.
        await asyncio.to_thread(Path(s.data_dir).mkdir, parents=True, exist_ok=True)
        if url is None:
            url = s.redis_url
            if s.embedded_redis:
                embedded = EmbeddedRedis(Path(s.data_dir),
                                         maxmemory_bytes=s.embedded_redis_maxmemory_bytes,
                                         on_restart=found.metrics.embedded_redis_restarts.inc)
                url = await embedded.start()
                opened.push_async_callback(embedded.stop)
                log.info("embedded Redis started at %s", url)
        fast: Multiplexed | None = None
        fast_bytes: Multiplexed | None = None
        if url is not None and not s.redis_sentinels:
            fast_bytes = _closing(opened, Multiplexed.from_url(url, decode=False))
            fast = _closing(opened, Multiplexed.from_url(url))
        clients = redis_clients(s, url)
        opened.push_async_callback(clients.aclose)
        redis, redis_bytes = clients.text, clients.raw
        keys_dir = Path(s.data_dir) / "keys"
        keyring = await asyncio.to_thread(JoinKeyring.load_or_create, keys_dir / "join",
                                          clock=clock)
        secretbox = await asyncio.to_thread(SecretBox.load_or_create,
                                            keys_dir / "secretbox.key")
        audit_key = await asyncio.to_thread(
            AuditSigningKey.load_or_create, keys_dir / "audit.key", s.audit_origin
        )

        def ms_clock() -> int:
            return int(clock() * 1000)

        store = ClassStore(redis, s.redis_prefix, clock=clock, fast=fast,
                           audit_replicas=s.audit_durability_replicas)
        audit_log = AuditLog(
            redis_bytes,
            prefix=s.redis_prefix,
            node_id=s.node_id,
            clock=ms_clock,
            durability_replicas=s.audit_durability_replicas,
            fast=fast_bytes,
            outbox_of=store.outbox_key,
        )
        egress = s.egress_policy()
        # Platform calls only: egress-checked connects, no cookie jar shared across tenants.
        http = guarded_session(egress, timeout_s=10)
        opened.push_async_callback(http.close)
        pools: dict[str, Any] = open_pools(egress)
        opened.push_async_callback(_close_pools, pools)
        svc = Services(
            settings=s, clock=clock, metrics=found.metrics, templates=found.templates,
            redis=redis, redis_bytes=redis_bytes, redis_fast=fast, redis_fast_bytes=fast_bytes,
            store=store, staff=make_staff(redis, s, clock), keyring=keyring,
            secretbox=secretbox, audit_log=audit_log,
            auditor=Auditor(BatchingAppender(audit_log), node=s.node_id, clock_ms=ms_clock),
            audit_key=audit_key,
            bus=Bus(redis, Keys(s.redis_prefix).bus(), Keys(s.redis_prefix).revoke()),
            http=http,
            adapter_pools=pools,
            sequencer_elsewhere=found.sequencer_elsewhere,
        )
        svc.reconciler = reconciler(svc)
        opened.push_async_callback(_stop_sockets_and_tasks, svc)
        if background:
            if notifier is not None:
                svc.notifier = notifier(svc)
            _start_background(svc, ms_clock)
            with contextlib.suppress(TimeoutError):
                await svc.bus.wait_ready(5.0)
        yield svc


def _closing(opened: contextlib.AsyncExitStack, transport: Multiplexed | None
             ) -> Multiplexed | None:
    if transport is not None:
        opened.push_async_callback(transport.aclose)
    return transport


async def _stop_sockets_and_tasks(svc: Services) -> None:
    for ws_set in list(svc.sockets.values()):
        for ws in list(ws_set):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")
    # NOTE: one cancellation each, then wait for each to end: a task's ``finally`` may
    # still release a lease through a shielded call, which a second cancellation would
    # leave running on a closing loop with its Redis connection checked out. A task
    # whose cancellation redis-py swallowed stops at its next turn (each loop checks
    # ``cancelling()``).
    for task in list(svc.tasks):
        task.cancel()
    for task in list(svc.tasks):
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    svc.tasks.clear()
    if svc.sequencer is not None:
        # Records written while the sockets closed (after the sequencer's last pass) are
        # durable in their outboxes; sequence them now rather than at the next start.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await svc.sequencer.sync()


async def _close_pools(pools: dict[str, Any]) -> None:
    for pool in pools.values():
        with contextlib.suppress(Exception):
            await pool.aclose()


def _start_background(svc: Services, ms_clock: Callable[[], int]) -> None:
    s = svc.settings
    background = [asyncio.create_task(svc.bus.run()),
                  asyncio.create_task(svc.reconciler.run()),
                  asyncio.create_task(svc.metrics.watch_loop_lag())]
    if svc.notifier is not None:
        background.append(asyncio.create_task(svc.notifier.run()))
    if not svc.sequencer_elsewhere:
        svc.sequencer = Sequencer(
            svc.redis_bytes,
            prefix=s.redis_prefix,
            signer=svc.audit_key,
            origin=s.audit_origin,
            clock=ms_clock,
            node_id=s.node_id,
            fast=svc.redis_fast_bytes,
        )
        svc.sequencer_task = asyncio.create_task(svc.sequencer.run())
        background.append(svc.sequencer_task)
    for task in background:
        svc.tasks.add(task)
        task.add_done_callback(_log_task_end)


def _log_task_end(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task ended with an error: %r", exc)
