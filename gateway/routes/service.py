"""Probes, metrics and the public key set."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from ..app import services


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    svc = services(request)
    components: dict[str, dict[str, object]] = {}
    ok = True
    try:
        t0 = time.perf_counter()
        await asyncio.wait_for(svc.r.ping(), 2.0)
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
    body = {"status": "ready" if ok else "not_ready", "components": components}
    if not ok:
        failing = [k for k, v in components.items() if not v.get("ok")]
        body["error"] = {
            "code": "not_ready",
            "message": "not ready: " + ", ".join(failing),
        }
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    svc = services(request)
    status = None
    if svc.audit_log is not None:
        try:
            status = await asyncio.wait_for(svc.audit_log.status(), 2.0)
        except Exception:  # noqa: BLE001 - a scrape must answer even with Redis down
            svc.metrics.redis_errors.inc()
    svc.metrics.set_audit(status, leader=bool(svc.sequencer and svc.sequencer.is_leader))
    return svc.metrics.render()


async def jwks(request: web.Request) -> web.Response:
    svc = services(request)
    assert svc.keyring is not None
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
