"""The live control room: ``WS /api/v1/classes/{id}/control``.

The teacher's socket receives every event of the class from every gateway process
(knock, admitted, denied, left, removed, alert, state) and sends the same action objects
as ``POST .../actions``. The events that reach a process in one event-loop turn arrive in
one frame: an event object, or a JSON list of them in order when there are several.
While the socket is open the host counts as present.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import redis.exceptions
from aiohttp import WSMsgType, web

from ..auth import Principal, authenticate, is_staff_refusal, record_refusal, require_user
from ..authz import Action, allows
from ..errors import ApiError
from ..hostctl import ActionRequest, HostControls, class_target
from ..joinflow import JoinFlow
from ..services import Services, services
from ..stores import ClassInfo
from ..web_util import loads_bounded
from .classes import class_state, load_class
from .reports import report_store

HEARTBEAT_S = 10.0
# Class events between gateway processes that are not for the host's eyes.
_INTERNAL_EVENTS = frozenset({"socket_replaced"})
log = logging.getLogger("classguard.control")


def _same_origin(request: web.Request, public_url: str) -> bool:
    """Cookie-authenticated WebSockets are not covered by CSRF headers: the browser
    always sends Origin on a WebSocket handshake, so it must be ours."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser (scripts use bearer tokens)
    o = urlsplit(origin)
    allowed = {urlsplit(public_url).netloc, request.host}
    return o.netloc in allowed


async def control_ws(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    if request.headers.get("Authorization") is None and not _same_origin(
        request, svc.settings.public_url
    ):
        # Learn whose session rode the cross-site request, for the audit record.
        with contextlib.suppress(ApiError):
            await authenticate(request, csrf=False)
        raise ApiError(403, "bad_origin", "cross-site WebSocket refused")
    p = await require_user(request, csrf=False)
    info = await load_class(request, p, host=True)
    ws = web.WebSocketResponse(heartbeat=25, max_msg_size=64 * 1024)
    await ws.prepare(request)
    store, bus = svc.store, svc.bus
    conn_id = secrets.token_hex(8)
    key = f"control:{info.id}"
    svc.sockets.setdefault(key, set()).add(ws)
    svc.metrics.open_sockets.labels("control").inc()
    controls = HostControls(svc)
    lost = False  # the account may no longer host: the socket closes
    send_lock = asyncio.Lock()

    async def send(msg: dict[str, Any]) -> None:
        async with send_lock:
            if not ws.closed:
                await ws.send_str(json.dumps(msg, ensure_ascii=False))

    async def on_events(msgs: list[dict[str, Any]]) -> None:
        # The class's events of one event-loop turn leave in one frame: one event as
        # itself, several as a list in the order they happened (gateway/static/control.js
        # reads both).
        shown = [m for m in msgs if m.get("type") not in _INTERNAL_EVENTS]
        if len(shown) > 1:
            async with send_lock:
                if not ws.closed:
                    await ws.send_str(json.dumps(shown, ensure_ascii=False))
        elif shown:
            await send(shown[0])

    async def on_revoke(msg: dict[str, Any]) -> None:
        if (p.session_id is not None and msg.get("sid_hash") == p.session_id) or \
                (p.token_id is not None and msg.get("token_id") == p.token_id):
            await ws.close(code=4401, message=b"session revoked")

    async def heartbeat() -> None:
        # One failed write must not make the host look absent while the socket is open.
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await store.host_heartbeat(info.id, conn_id)
            except Exception as exc:  # noqa: BLE001 - retried on the next beat
                svc.metrics.redis_errors.inc()
                log.warning("host heartbeat for %s failed: %s", info.id, exc)

    await store.host_heartbeat(info.id, conn_id)
    hb = asyncio.create_task(heartbeat())
    off_class = bus.listen_class(info.id, on_events)
    off_revoke = bus.listen_revocations(on_revoke)
    try:
        await send({"type": "state", **await class_state(svc, info)})
        await send(await _open_reports(svc, info))
        await bus.publish(info.id, {"type": "state", "host_present": True})
        # Students who waited only for the host are let in now, by the same policy code.
        await JoinFlow(svc).admit_waiting_by_policy(info.id)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
                continue
            try:
                data = loads_bounded(msg.data)
            except ValueError as exc:
                await send({"type": "error", "error": {"code": "invalid_json",
                                                       "message": f"malformed JSON: {exc}"}})
                continue
            req_id = data.pop("id", None) if isinstance(data, dict) else None
            try:
                fresh = await store.get_class(info.id)
                assert fresh is not None
                if not await still_host(svc, p, fresh):
                    lost = True
                    raise ApiError(403, "forbidden", "only the class's teacher or an "
                                   "administrator may do this")
                if isinstance(data, dict) and data.get("action") == "refresh":
                    await send({"type": "state", **await class_state(svc, info)})
                    continue
                result = await controls.perform(p, fresh, ActionRequest.parse(data))
                await send({"type": "result", "id": req_id, **result})
            except ApiError as exc:
                if is_staff_refusal(request, exc):
                    try:
                        await record_refusal(request, exc)
                    except Exception as rec_exc:  # noqa: BLE001 - the refusal stands
                        log.warning("could not record a staff refusal: %r", rec_exc)
                err: dict[str, Any] = {"code": exc.code, "message": exc.message}
                if exc.field:
                    err["field"] = exc.field
                await send({"type": "error", "id": req_id, "error": err})
                if lost:
                    await ws.close(code=4403, message=b"no longer allowed")
                    break
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                # NOTE: answered as the HTTP routes answer an outage (503 there); the host
                # refreshes to see what holds.
                svc.metrics.redis_errors.inc()
                log.warning("control action for %s failed: %s", info.id, exc)
                await send({"type": "error", "id": req_id, "error": {
                    "code": "dependency_unavailable", "message": "state store unavailable"}})
            except Exception:  # noqa: BLE001 - the socket is upgraded: answer on it
                log.exception("control action for %s failed", info.id)
                await send({"type": "error", "id": req_id, "error": {
                    "code": "internal_error", "message": "internal error"}})
    except ConnectionResetError:
        pass  # the control room went away mid-write
    except Exception:  # noqa: BLE001 - never an HTTP 500 written onto an upgraded socket
        log.exception("control socket for %s failed", info.id)
        with contextlib.suppress(Exception):
            await ws.close(code=1011, message=b"internal error")
    finally:
        hb.cancel()
        off_class()
        off_revoke()
        svc.sockets.get(key, set()).discard(ws)
        svc.metrics.open_sockets.labels("control").dec()
        # NOTE: a dropped connection can cancel this handler; telling everyone the host
        # left runs in a task of its own (kept in svc.tasks), so it still happens and the
        # class's on-host-leave policy applies at once rather than when presence lapses.
        gone = asyncio.get_running_loop().create_task(_host_gone(svc, info.id, conn_id))
        svc.tasks.add(gone)
        gone.add_done_callback(svc.tasks.discard)
        with contextlib.suppress(Exception):
            await asyncio.shield(gone)
    return ws


async def _open_reports(svc: Services, info: ClassInfo) -> dict[str, Any]:
    """The class's reports from students and parents still waiting for a decision
    (gateway/routes/reports.py); new ones arrive as ``report`` events."""
    found = await report_store(svc).of_classes([info.id], limit=50)
    return {"type": "reports", "reports": [r.to_json() for r in found if r.status == "open"]}


async def still_host(svc: Services, p: Principal, info: ClassInfo) -> bool:
    """The socket was authorized when it opened; every action asks again with the account
    as it is now (disabled since, or gone), as a new request would be asked."""
    assert svc.staff is not None
    account = await svc.staff.get_user(p.username)
    now = replace(p, disabled=account is None or account.disabled)
    return allows(now, Action.HOST_CLASS, await class_target(svc, info))


async def _host_gone(svc: Services, cid: str, conn_id: str) -> None:
    try:
        if await svc.store.host_gone(cid, conn_id):
            await svc.bus.publish(cid, {"type": "state", "host_present": False})
    except Exception as exc:  # noqa: BLE001 - presence lapses by itself after HOST_TTL_S
        log.warning("control socket clean-up for %s failed: %r", cid, exc)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/classes/{class_id}/control", control_ws)
