"""Sessions: each person sees and ends their own; an administrator ends anyone's in
their org subtree.

Ending a session deletes it and announces it on the revoke channel (gateway/staff.py):
every gateway process closes that session's live sockets (gateway/routes/control.py,
close code 4401).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .. import i18n
from ..auth import Principal, authenticate, require_user
from ..authz import Action, Target, allows
from ..errors import ApiError
from ..services import Services, services
from ..signin import mfa_store, require_fresh_second_factor
from ..useragent import device_hint
from .pages import page_lang, page_response


async def sessions_json(svc: Services, username: str, current: str | None
                         ) -> list[dict[str, Any]]:
    assert svc.staff is not None
    hashes = await svc.staff.session_ids(username)
    infos = await mfa_store(svc).describe_sessions(hashes)
    out = [{"id": s.sid_hash, "device": device_hint(s.user_agent) if s.user_agent else "?",
            "ip": s.ip, "created": s.created or None, "last_seen": s.seen or None,
            "current": s.sid_hash == current} for s in infos]
    out.sort(key=lambda s: -float(s["last_seen"] or 0))
    return out


def _sid(request: web.Request) -> str:
    sid = request.match_info["sid"]
    if not re.fullmatch(r"[0-9a-f]{64}", sid):
        raise ApiError(400, "invalid_field", "not a session id", field="sid")
    return sid


async def end_session(svc: Services, actor: Principal, username: str, org: str, sid_hash: str
               ) -> bool:
    assert svc.staff is not None and svc.auditor is not None
    ended = await svc.staff.revoke_session_of(username, sid_hash)
    if ended:
        await mfa_store(svc).forget_session(sid_hash)
        await svc.auditor.record("staff.session_revoked", actor=actor.actor, org=org,
                                 subject=f"user:{username}",
                                 facts={"own": actor.username == username})
    return ended


async def list_own(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    if p.via != "session":
        raise ApiError(403, "session_required", "sessions belong to browser sign-ins")
    return web.json_response({"sessions": await sessions_json(svc, p.username,
                                                               p.session_id)})


async def end_own(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    if not await end_session(svc, p, p.username, p.org, _sid(request)):
        raise ApiError(404, "not_found", "no such session of yours")
    return web.Response(status=204)


async def managed_account(request: web.Request) -> tuple[Services, Principal, str, str]:
    svc = services(request)
    assert svc.staff is not None
    p = await require_user(request)
    target = await svc.staff.get_user(request.match_info["username"])
    chain = await svc.staff.org_ancestors(target.org) if target is not None else []
    if target is None or not allows(p, Action.MANAGE_STAFF, Target.of_org(chain)):
        raise ApiError(404, "not_found", "no such account in your organisation")
    if request.method != "GET":
        await require_fresh_second_factor(request, p)
    return svc, p, target.username, target.org


async def list_user(request: web.Request) -> web.Response:
    svc, p, username, _org = await managed_account(request)
    return web.json_response({"sessions": await sessions_json(svc, username,
                                                               p.session_id)})


async def end_user(request: web.Request) -> web.Response:
    svc, p, username, org = await managed_account(request)
    if "sid" in request.match_info:
        sid = _sid(request)
        if not await end_session(svc, p, username, org, sid):
            raise ApiError(404, "not_found", "no such session")
        return web.Response(status=204)
    return web.json_response({"ended": await end_all_sessions(svc, p, username, org)})


async def end_all_sessions(svc: Services, actor: Principal, username: str, org: str) -> int:
    """End every session of ``username`` (an administrator's act), audited."""
    assert svc.staff is not None and svc.auditor is not None
    n = await svc.staff.revoke_user_sessions(username)
    await svc.auditor.record("staff.session_revoked", actor=actor.actor, org=org,
                             subject=f"user:{username}", facts={"own": False, "all": n})
    return n


async def sessions_page(request: web.Request) -> web.StreamResponse:
    lang = page_lang(request)
    svc = services(request)
    p = await authenticate(request, csrf=request.method == "POST")
    if p is None:
        raise web.HTTPSeeOther("/login?next=/account/sessions")
    notice = None
    if request.method == "POST":
        form = await request.post()
        sid = str(form.get("session", ""))[:64]
        ended = await end_session(svc, p, p.username, p.org, sid)
        if ended and sid == p.session_id:
            raise web.HTTPSeeOther(f"/login?lang={lang}")
        notice = i18n.t(lang, "sessions.ended" if ended else "sessions.gone")
    rows = await sessions_json(svc, p.username, p.session_id)
    return page_response(request, "sessions.html", lang, user=p, sessions=rows,
                         notice=notice)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/account/sessions", list_own)
    r.add_delete("/api/v1/account/sessions/{sid}", end_own)
    r.add_get("/api/v1/admin/users/{username}/sessions", list_user)
    r.add_delete("/api/v1/admin/users/{username}/sessions", end_user)
    r.add_delete("/api/v1/admin/users/{username}/sessions/{sid}", end_user)
    r.add_get("/account/sessions", sessions_page)
    r.add_post("/account/sessions", sessions_page)
