"""Student routes: ``/j/{token}``, ``/join``, ``/c/{code}``, ``WS /ws/wait/{ticket}``,
``/go/{nonce}``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from typing import Any

import orjson
from aiohttp import WSMsgType, hdrs, web

from meeting_adapters import AdapterError, Participant, UpstreamUnavailable
from policies.model import Action

from .. import i18n
from ..auditing import milestone
from ..codes import code_lookup_key, normalize_code
from ..errors import ApiError
from ..hostctl import HostControls
from ..joinflow import DEVICE_COOKIE, RATE_LIMIT_AUDIT_WINDOW_S, JoinFlow, JoinOutcome
from ..services import Services, services
from ..stores import WAIT_SOCKET_REFRESH_S, Limit, Ticket, device_hash, split_ticket
from ..web_util import client_ip, read_form, read_json

log = logging.getLogger("classguard.join")

DEVICE_COOKIE_MAX_AGE = 400 * 86400  # the longest lifetime browsers accept

# Waiting-room sockets. NOTE: a page needs one socket (two tabs are fine); the newest
# wins so a reload never locks a student out. Handshakes on a genuine ticket from its
# own device are rate-limited per ticket (a reconnecting page backs off to 15 s); only
# failed handshakes are charged to the address. This process holds at most
# WAIT_SOCKETS_PER_ADDRESS sockets for one address: a whole school behind one NAT
# address (2,500 students with two tabs each), while every socket needs a ticket of
# its own, so one address cannot hold more sockets than it has genuine tickets.
WAIT_SOCKETS_PER_TICKET = 2
WAIT_SOCKETS_PER_ADDRESS = 5000
CLOSE_REPLACED = 4009  # closed because a newer socket opened on the same ticket
# Protocol pings every WAIT_HEARTBEAT_S; a socket whose pong does not come back within
# half of that is closed, so a page that died silently (a phone out of coverage, a
# killed browser) is marked gone within about 15 s; a closed page at once.
WAIT_HEARTBEAT_S = 10.0


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def _set_device_cookie(svc: Services, resp: web.StreamResponse, value: str | None) -> None:
    if value is None:
        return
    # NOTE: the header as aiohttp's set_cookie writes it, without its http.cookies
    # round trip (a share of every first join); the value is our own token_urlsafe.
    resp.headers.add(hdrs.SET_COOKIE, f"{DEVICE_COOKIE}={value}; HttpOnly; Max-Age="
                     f"{DEVICE_COOKIE_MAX_AGE}; Path=/; SameSite=Lax"
                     + ("; Secure" if svc.settings.cookie_secure else ""))


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _device_cookie(request: web.Request) -> str | None:
    v = request.cookies.get(DEVICE_COOKIE)
    if v is None or not (16 <= len(v) <= 64) or not all(c.isalnum() or c in "-_" for c in v):
        return None
    return v


def render(svc: Services, name: str, lang: str, status: int = 200, **ctx: Any) -> web.Response:
    html = svc.templates.get_template(name).render(lang=lang, **ctx)
    return web.Response(text=html, content_type="text/html", status=status)


# Refusals of a verified link a student may want to report through it (``report_url``):
# someone else holds the binding or is in the class with the link, or the host acted.
# Never a refusal of an unverified credential (a forged, revoked or expired link, a ban
# met before the signature is checked) nor of a rate limit.
REPORTABLE_REASONS = frozenset({"device_mismatch", "concurrent_session", "removed_by_host",
                                "denied_by_host"})


def _outcome_response(request: web.Request, out: JoinOutcome,
                      report_url: str | None = None) -> web.StreamResponse:
    """The answer to a join; ``report_url``, where a student refused for one of the
    ``REPORTABLE_REASONS`` reports a problem (the link's report page)."""
    svc = services(request)
    d = out.decision
    reason = d.reason.value
    if d.action is not Action.DENY or reason not in REPORTABLE_REASONS or out.retry_after > 0:
        report_url = None
    if _wants_json(request):
        body: dict[str, Any] = {"status": {"admit": "admitted", "wait": "waiting",
                                           "deny": "denied"}[d.action.value], "reason": reason}
        headers = {}
        status = 200
        if out.ticket and d.action is Action.WAIT:
            body["ticket"] = out.ticket
            body["ws"] = f"/ws/wait/{out.ticket}"
        if out.redirect:
            body["redirect"] = out.redirect
        if out.opens_at:
            body["opens_at"] = out.opens_at
        if out.rules is not None and out.rules_ack:
            lang = i18n.request_lang(request, svc.settings.default_lang)
            body["rules"] = {"version": out.rules.version, "term": out.rules.term,
                             "text": out.rules.text_for(lang),
                             "acknowledge": f"/rules/{out.rules_ack}"}
        if d.action is Action.DENY:
            status = 403
            if out.retry_after > 0:
                status = 429
                secs = max(1, int(out.retry_after + 0.999))
                headers["Retry-After"] = str(secs)
                body["error"] = {"code": "rate_limited", "message": "too many requests"}
        resp: web.StreamResponse = web.json_response(body, status=status, headers=headers,
                                                     dumps=_json_text)
    elif out.rules is not None and out.rules_ack:
        lang = i18n.request_lang(request, svc.settings.default_lang)
        resp = render(svc, "rules.html", lang, status=403, rules=out.rules, ack=out.rules_ack,
                      class_title=out.class_title, student_name=out.student_name)
    elif d.action is Action.ADMIT and out.redirect:
        resp = web.HTTPSeeOther(out.redirect)
    elif d.action is Action.WAIT and out.ticket:
        lang = i18n.request_lang(request, svc.settings.default_lang)
        resp = render(svc, "wait.html", lang, ticket=out.ticket, class_title=out.class_title,
                      student_name=out.student_name, reason=reason, opens_at=out.opens_at)
    else:
        status = 429 if out.retry_after > 0 else 403
        lang = i18n.request_lang(request, svc.settings.default_lang)
        resp = render(svc, "denied.html", lang, status=status, reason=reason,
                      class_title=out.class_title, opens_at=out.opens_at,
                      report_url=report_url)
        if out.retry_after > 0:
            resp.headers["Retry-After"] = str(max(1, int(out.retry_after + 0.999)))
    _set_device_cookie(svc, resp, out.new_device_cookie)
    return resp


async def join_link(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    token = request.match_info["token"]
    out = await JoinFlow(svc).with_token(
        token,
        ip=client_ip(request, svc.settings.trusted_proxies),
        device_cookie=_device_cookie(request),
        user_agent=request.headers.get("User-Agent", "")[:512],
    )
    resp = _outcome_response(request, out, report_url=f"/j/{token}/report")
    if isinstance(resp, web.HTTPException):
        raise resp
    return resp


async def join_form(request: web.Request) -> web.Response:
    svc = services(request)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    return render(svc, "join.html", lang, error=None, code="")


async def join_code(request: web.Request) -> web.StreamResponse:
    raw: Any
    if request.content_type == "application/json":
        data = await read_json(request)
        raw = data.get("code") if isinstance(data, dict) else None
    else:
        form = await read_form(request)
        raw = form.get("code")
    return await _redeem_code(request, raw)


async def join_short_url(request: web.Request) -> web.StreamResponse:
    """``GET /c/{code}``: the short URL a printed card's QR code carries. It is the
    typed short code in a URL, and is answered exactly like ``POST /join``: same rate
    limits, same refusal once the link is revoked or reissued (THREAT_MODEL.md)."""
    return await _redeem_code(request, request.match_info["code"])


async def _redeem_code(request: web.Request, raw: Any) -> web.StreamResponse:
    svc = services(request)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    ip = client_ip(request, svc.settings.trusted_proxies)
    flow = JoinFlow(svc)
    ua = request.headers.get("User-Agent", "")[:512]
    code = normalize_code(raw) if isinstance(raw, str) and len(raw) <= 64 else None
    # The rate limits are in with_code: a wrong code is charged to the address, its
    # network and the code space; a correct one to its link only.
    out = await flow.with_code(code_lookup_key(code) if code is not None else None, ip=ip,
                               device_cookie=_device_cookie(request), user_agent=ua)
    if out is not None and out.retry_after > 0 and out.class_id is None:
        wait = out.retry_after
        if _wants_json(request):
            raise ApiError(429, "rate_limited", "too many attempts",
                           headers={"Retry-After": str(max(1, int(wait + 0.999)))})
        resp = render(svc, "join.html", lang, status=429, code="",
                      error=i18n.t(lang, "error.rate_limited", seconds=max(1, int(wait + 0.999))))
        resp.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
        return resp
    if out is None:
        await svc.auditor.record("join.code_failed", actor="visitor", reason="token_invalid",
                                 ip=ip, user_agent=request.headers.get("User-Agent", ""))
        svc.metrics.join_attempts.labels("deny", "token_invalid").inc()
        if _wants_json(request):
            raise ApiError(404, "unknown_code", "no class link has this code", field="code")
        return render(svc, "join.html", lang, status=404, code="",
                      error=i18n.t(lang, "join.bad_code"))
    answer = _outcome_response(request, out)
    if isinstance(answer, web.HTTPException):
        raise answer
    return answer


async def acknowledge_rules(request: web.Request) -> web.StreamResponse:
    """``POST /rules/{ref}``: "I have read and agree" on the rules page. Records the
    acknowledgment (gateway/class_rules.py) and decides the entry again, answering like
    the link or code did."""
    svc = services(request)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    ip = client_ip(request, svc.settings.trusted_proxies)
    flow = JoinFlow(svc)
    ua = request.headers.get("User-Agent", "")[:512]
    ref = request.match_info["ref"]
    out = None
    if len(ref) <= 160:
        out = await flow.acknowledge_rules(ref, ip=ip, device_cookie=_device_cookie(request),
                                           user_agent=ua)
    if out is None:
        # A guessed or stale reference costs the address like a wrong code.
        wait = await flow.charge_failure(ip, via="code", user_agent=ua, metric="code")
        if _wants_json(request):
            if wait > 0:
                raise ApiError(429, "rate_limited", "too many attempts",
                               headers={"Retry-After": str(max(1, int(wait + 0.999)))})
            raise ApiError(404, "unknown_rules_ref", "this rules page expired or was used")
        return render(svc, "join.html", lang, status=429 if wait > 0 else 404, code="",
                      error=i18n.t(lang, "join.rules_expired"))
    answer = _outcome_response(request, out)
    if isinstance(answer, web.HTTPException):
        raise answer
    return answer


async def _push_ticket_status(svc: Services, ws: web.WebSocketResponse, t: Ticket) -> bool:
    """Send the ticket's current status; False when the socket should close."""
    if t.status == "waiting":
        await ws.send_json({"type": "waiting", "reason": t.reason})
        return True
    if t.status == "admitted":
        nonce = await svc.store.mint_nonce(t, svc.settings.go_nonce_ttl_s)
        if nonce is not None:
            await ws.send_json({"type": "admitted", "redirect": f"/go/{nonce}"})
            return True
        await ws.send_json({"type": "removed", "reason": "removed_by_host"})
        return False
    kind = "denied" if t.status in ("denied", "replaced") else "removed"
    await ws.send_json({"type": kind, "reason": t.reason or "denied_by_host"})
    return False


async def _socket_limited(request: web.Request, svc: Services, flow: JoinFlow, ip: str,
                          limits: list[Limit]) -> None:
    """429 (with Retry-After) when a handshake budget refuses; audited in aggregate."""
    wait, limit = await svc.store.rate_limit_check(limits)
    if wait <= 0:
        return
    svc.metrics.rate_limited.labels("socket").inc()
    await flow.audit_rate_limited(ip, limit, via="wait_socket",
                                  user_agent=request.headers.get("User-Agent", "")[:512])
    raise ApiError(429, "rate_limited", "too many connections, retry later",
                   headers={"Retry-After": str(max(1, int(wait + 0.999)))})


async def _socket_refused(request: web.Request, flow: JoinFlow, ip: str,
                          error: ApiError) -> ApiError:
    """A handshake that fails (no such ticket, another device's ticket): charged to the
    source's failure budgets; ``error``, or 429 once those are drained."""
    wait = await flow.charge_failure(ip, via="wait_socket", metric="socket",
                                     user_agent=request.headers.get("User-Agent", "")[:512])
    if wait > 0:
        return ApiError(429, "rate_limited", "too many connections, retry later",
                        headers={"Retry-After": str(max(1, int(wait + 0.999)))})
    return error


async def _socket_gone(svc: Services, t: Ticket, socket_id: str) -> None:
    """Unregister a closed waiting-room socket; the host is told the student left only
    when their last socket is gone and they were still waiting."""
    try:
        left = await svc.store.socket_closed(t.id, socket_id)
        now = await svc.store.ticket(t.id)
        if left == 0 and now is not None and now.status == "waiting":
            await svc.bus.publish(t.class_id, {"type": "left", "ticket": t.id,
                                               "student_id": t.student_id})
    except Exception as exc:  # noqa: BLE001 - best effort: the ticket's sockets key expires
        log.warning("waiting-room socket clean-up failed: %r", exc)


async def ws_wait(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    ticket_id = request.match_info["ticket"]
    if split_ticket(ticket_id) is None:
        raise ApiError(404, "not_found", "no such ticket")
    ip = client_ip(request, svc.settings.trusted_proxies)
    flow = JoinFlow(svc)
    # NOTE: a socket on a genuine ticket from its own device is charged to the ticket,
    # never to the address (a school waits behind one); failures to the address.
    t = await svc.store.ticket(ticket_id)
    if t is None:
        raise await _socket_refused(request, flow, ip,
                                    ApiError(404, "not_found", "no such ticket"))
    cookie = _device_cookie(request)
    if cookie is None or device_hash(cookie) != t.device:
        raise await _socket_refused(request, flow, ip, ApiError(
            403, "device_mismatch", "this waiting room belongs to another device"))
    # Charged only now: a leaked ticket must not let others drain its owner's budget.
    await _socket_limited(request, svc, flow, ip,
                          [Limit(f"ws:ticket:{t.id}", per_second=0.1, burst=4)])
    address_key = f"wait-ip:{ip}"
    if len(svc.sockets.get(address_key, ())) >= WAIT_SOCKETS_PER_ADDRESS:
        svc.metrics.rate_limited.labels("socket").inc()
        raise ApiError(429, "rate_limited", "too many connections from this address",
                       headers={"Retry-After": "15"})
    ws = web.WebSocketResponse(heartbeat=WAIT_HEARTBEAT_S, max_msg_size=4096)
    await ws.prepare(request)
    key = f"wait:{t.class_id}"
    svc.sockets.setdefault(key, set()).add(ws)
    svc.sockets.setdefault(address_key, set()).add(ws)
    svc.metrics.open_sockets.labels("wait").inc()
    svc.metrics.waiting.inc()
    store = svc.store
    socket_id = secrets.token_hex(8)

    async def on_event(msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "socket_replaced":
            if socket_id in (msg.get("sockets") or ()):
                await ws.close(code=CLOSE_REPLACED, message=b"replaced by a newer connection")
            return
        mine = msg.get("ticket") == t.id or (
            msg.get("student_id") == t.student_id and kind in ("removed", "admitted")
        )
        if kind == "admitted" and mine:
            # Minted only for the admitted device, while the ticket's link is current.
            nonce = await store.mint_nonce(t, svc.settings.go_nonce_ttl_s)
            if nonce is None:
                return
            await ws.send_json({"type": "admitted", "redirect": f"/go/{nonce}"})
        elif kind in ("denied", "removed") and mine:
            await ws.send_json({"type": kind, "reason": msg.get("reason")})
            await ws.close(code=4000 if kind == "denied" else 4001)
        elif kind == "ended":
            await ws.send_json({"type": "denied", "reason": "class_ended"})
            await ws.close(code=4002)

    async def mark_live() -> None:
        while True:
            await asyncio.sleep(WAIT_SOCKET_REFRESH_S)
            try:
                await store.socket_seen(t.id, socket_id)
            except Exception as exc:  # noqa: BLE001 - retried on the next mark
                log.warning("waiting-room socket mark failed: %r", exc)

    off = svc.bus.listen_student(t.class_id, t.id, t.student_id, on_event)
    live = asyncio.get_running_loop().create_task(mark_live())
    try:
        replaced, back = await store.socket_opened(t.id, socket_id,
                                                   keep=WAIT_SOCKETS_PER_TICKET)
        if replaced:
            await svc.bus.publish(t.class_id, {"type": "socket_replaced", "ticket": t.id,
                                               "sockets": replaced})
        if back:
            await svc.bus.publish(t.class_id, {"type": "back", "ticket": t.id,
                                               "student_id": t.student_id})
        # Read the ticket again after subscribing so no event falls between the two.
        fresh = await store.ticket(ticket_id)
        if fresh is None or not await _push_ticket_status(svc, ws, fresh):
            await ws.close()
            return ws
        async for msg in ws:
            # Frames are never parsed: the only thing a student's page sends is "ping".
            if msg.type == WSMsgType.TEXT and msg.data == "ping":
                await ws.send_str("pong")
            elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break
    except ConnectionResetError:
        pass  # the page went away (or a newer socket replaced this one) mid-write
    except Exception:  # noqa: BLE001 - never an HTTP 500 written onto an upgraded socket
        log.exception("waiting-room socket failed")
        with contextlib.suppress(Exception):
            await ws.close(code=1011, message=b"internal error")
    finally:
        live.cancel()
        off()
        svc.sockets.get(key, set()).discard(ws)
        same_address = svc.sockets.get(address_key, set())
        same_address.discard(ws)
        if not same_address:
            svc.sockets.pop(address_key, None)
        svc.metrics.open_sockets.labels("wait").dec()
        svc.metrics.waiting.dec()
        # NOTE: a dropped connection can cancel this handler; the clean-up runs in a
        # task of its own (kept in svc.tasks) so the registry and "left" still happen.
        cleanup = asyncio.get_running_loop().create_task(
            _socket_gone(svc, t, socket_id))
        svc.tasks.add(cleanup)
        cleanup.add_done_callback(svc.tasks.discard)
        with contextlib.suppress(Exception):
            await asyncio.shield(cleanup)
    return ws


async def _go_refused(request: web.Request, svc: Services, ip: str, status: str,
                      cookie: str | None) -> None:
    """Count a refused ``/go`` (its source was already charged by ``charge_failure``).

    NOTE: refusals are audited per source, reason and window in aggregate, like
    garbage at /j/: the first in full, then the 10th, 100th, ... with the count so far
    (an unauthenticated flood must not fill the log, and must not vanish from it)."""
    n, first = await svc.store.count_refusals(f"go:{status}:{ip}", RATE_LIMIT_AUDIT_WINDOW_S)
    if milestone(n):
        await svc.auditor.record(
            "go.refused", actor="visitor", reason=status, ip=ip,
            device=device_hash(cookie) if cookie else None,
            user_agent=request.headers.get("User-Agent", ""),
            facts={"count": n, "window_s": RATE_LIMIT_AUDIT_WINDOW_S,
                   "first_at": int(first * 1000)})


async def go(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    nonce = request.match_info["nonce"]
    cookie = _device_cookie(request)
    ip = client_ip(request, svc.settings.trusted_proxies)
    status, data = ("unknown", None)
    if cookie is not None and split_ticket(nonce) is not None:
        status, data = await svc.store.consume_nonce(nonce, device_hash(cookie))
    if status != "ok" or data is None:
        # NOTE: a live nonce on its own device is never charged; a failed one is
        # charged to the source, and once its failure budgets are drained refused as
        # rate-limited (audited in aggregate, not one event each).
        wait = await JoinFlow(svc).charge_failure(
            ip, via="go", user_agent=request.headers.get("User-Agent", "")[:512])
        if wait > 0:
            retry = str(max(1, int(wait + 0.999)))
            if _wants_json(request):
                raise ApiError(429, "rate_limited", "too many requests",
                               headers={"Retry-After": retry})
            resp = render(svc, "denied.html", lang, status=429, reason="rate_limited",
                          class_title=None)
            resp.headers["Retry-After"] = retry
            return resp
        code = {"unknown": 404, "wrong_device": 403, "not_admitted": 403}.get(status, 404)
        await _go_refused(request, svc, ip, status, cookie)
        if _wants_json(request):
            raise ApiError(code, f"go_{status}", "this entry link is used, expired or not yours")
        return render(svc, "denied.html", lang, status=code, reason="go_" + status,
                      class_title=None)
    cid = data["class_id"]
    info = await svc.store.get_class(cid)
    student = await svc.store.student(cid, data["student_id"])
    if info is None or student is None:
        raise ApiError(404, "not_found", "class not found")
    hc = HostControls(svc)
    try:
        adapter, room = hc.adapter_and_room(info)
        url = await adapter.join_url(room, Participant(student_id=student.id,
                                                       display_name=student.name,
                                                       role="student", ticket=data["ticket"]))
    except (UpstreamUnavailable, AdapterError) as exc:
        svc.metrics.upstream_errors.labels(info.platform_kind).inc()
        log.warning("platform %s unavailable: %s", info.platform_kind, exc)
        if _wants_json(request):
            raise ApiError(503, "platform_unreachable", i18n.t(lang, "error.platform_down")) \
                from exc
        return render(svc, "denied.html", lang, status=503, reason="platform_down",
                      class_title=info.title)
    await svc.auditor.record("join.enter", actor=f"student:{student.id}", org=info.org,
                             class_id=cid, subject=student.id, reason="entered", ip=ip,
                             device=device_hash(cookie) if cookie else None,
                             user_agent=request.headers.get("User-Agent", ""),
                             facts={"platform": info.platform_kind})
    assert cookie is not None  # (a nonce is consumed only on its own device)
    # the pages the student sees once in offer the report page of this ticket (GET /report)
    await svc.store.note_entered(device_hash(cookie), str(data["ticket"]))
    raise web.HTTPFound(url)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/j/{token}", join_link)
    r.add_get("/join", join_form)
    r.add_post("/join", join_code)
    r.add_get("/c/{code}", join_short_url)
    r.add_post("/rules/{ref}", acknowledge_rules)
    r.add_get("/ws/wait/{ticket}", ws_wait)
    r.add_get("/go/{nonce}", go)


__all__ = ["setup", "render", "json"]
