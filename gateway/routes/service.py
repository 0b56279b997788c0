"""Probes, metrics and the public key set."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from functools import lru_cache

from aiohttp import web

from ..errors import ApiError
from ..services import Services, services
from ..web_util import client_ip

log = logging.getLogger("classguard.service")

MEMORY_WARNING_EVERY_S = 60.0
REDIS_FULL_RATIO = 0.99


async def redis_memory(svc: Services) -> tuple[int, int] | None:
    """(used_memory, maxmemory) of the Redis server; maxmemory 0 means no cap. None
    when INFO is refused (a managed server)."""
    try:
        info = await asyncio.wait_for(svc.redis.info("memory"), 2.0)
    except Exception:  # noqa: BLE001 - reported as unknown; the ping check reports outages
        return None
    try:
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    except (TypeError, ValueError):
        return None


def _memory_ratio(svc: Services, memory: tuple[int, int] | None) -> float | None:
    """used/max, logging a warning (at most once a minute) above the alert level."""
    if memory is None or memory[1] <= 0:
        return None
    ratio = memory[0] / memory[1]
    if ratio * 100 >= svc.settings.redis_memory_alert_percent:
        now = time.monotonic()
        if now - svc.memory_warned_at >= MEMORY_WARNING_EVERY_S:
            svc.memory_warned_at = now
            log.warning("Redis uses %.0f%% of its maxmemory (%d of %d bytes); at 100%% it "
                        "refuses writes and the gateway answers 503", ratio * 100,
                        memory[0], memory[1])
    return ratio


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    svc = services(request)
    components: dict[str, dict[str, object]] = {}
    ok = True
    try:
        t0 = time.perf_counter()
        await asyncio.wait_for(svc.redis.ping(), 2.0)
        components["redis"] = {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 2)}
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        ok = False
        components["redis"] = {"ok": False, "error": type(exc).__name__}
    keys_ok = svc.keyring is not None and bool(svc.keyring.jwks().get("keys"))
    components["keys"] = {"ok": keys_ok}
    ok = ok and keys_ok
    components["audit_key"] = {"ok": svc.audit_key is not None}
    bus_ok = svc.bus is not None and svc.bus._ready.is_set()
    components["pubsub"] = {"ok": bus_ok}
    ok = ok and bus_ok
    # Any process's sequencer takes over the log when the leader dies, so this process
    # is ready while its own sequencer runs, leading or standing by.
    # A worker of a supervised group has none: the group's sequencer process runs it,
    # and the supervisor starts it again if it dies.
    seq_task = svc.sequencer_task
    seq_ok = svc.sequencer_elsewhere or (seq_task is not None and not seq_task.done())
    components["sequencer"] = {
        "ok": seq_ok,
        "leader": bool(svc.sequencer is not None and svc.sequencer.is_leader),
    }
    if svc.sequencer_elsewhere:
        components["sequencer"]["process"] = "separate"
    ok = ok and seq_ok
    if components["redis"]["ok"]:
        memory = await redis_memory(svc)
        ratio = _memory_ratio(svc, memory)
        if ratio is not None and memory is not None:
            # NOTE: "full" from 99% on: a refused write frees its own bytes at once,
            # so a Redis refusing writes hovers just below 100%.
            full = ratio >= REDIS_FULL_RATIO
            mem: dict[str, object] = {"ok": not full, "used_ratio": round(ratio, 4),
                                      "used_bytes": memory[0], "max_bytes": memory[1]}
            if ratio * 100 >= svc.settings.redis_memory_alert_percent:
                mem["warning"] = ("Redis is near its maxmemory: raise it or archive the "
                                  "audit log before writes are refused")
            components["redis_memory"] = mem
            ok = ok and not full
    body: dict[str, object] = {"status": "ready" if ok else "not_ready",
                               "components": components}
    if not ok:
        failing = [k for k, v in components.items() if not v.get("ok")]
        body["error"] = {
            "code": "not_ready",
            "message": "not ready: " + ", ".join(failing),
        }
    return web.json_response(body, status=200 if ok else 503)


@lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                               ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def _may_scrape(request: web.Request, svc: Services) -> bool:
    """From a configured network, or with the metrics bearer token.

    NOTE: the client address is the one ``client_ip`` believes (forwarded only by a
    trusted proxy), so a public request relayed by our own proxy is not "loopback"."""
    token = svc.settings.metrics_token
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(
            header[len("Bearer "):].strip().encode(), token.encode()):
        return True
    try:
        addr = ipaddress.ip_address(client_ip(request, svc.settings.trusted_proxies))
    except ValueError:
        return False
    return any(addr in net for net in _networks(svc.settings.metrics_networks))


async def metrics(request: web.Request) -> web.Response:
    svc = services(request)
    if not _may_scrape(request, svc):
        raise ApiError(403, "forbidden", "metrics are readable from the configured "
                       "networks or with the metrics token only",
                       headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    status = None
    if svc.audit_log is not None:
        try:
            status = await asyncio.wait_for(svc.audit_log.status(), 2.0)
        except Exception:  # noqa: BLE001 - a scrape must answer even with Redis down
            svc.metrics.redis_errors.inc()
    svc.metrics.set_audit(status, leader=bool(svc.sequencer and svc.sequencer.is_leader))
    ratio = _memory_ratio(svc, await redis_memory(svc))
    svc.metrics.redis_memory_ratio.set(float("nan") if ratio is None else ratio)
    return svc.metrics.render()


async def jwks(request: web.Request) -> web.Response:
    svc = services(request)
    svc.keyring.reload_if_changed()
    return web.Response(
        text=json.dumps(svc.keyring.jwks()),
        content_type="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/.well-known/jwks.json", jwks)
