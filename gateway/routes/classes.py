"""Classes, rosters, links, live state and host actions (REST)."""

from __future__ import annotations

import json
import secrets
import unicodedata
from datetime import datetime
from typing import Any

from aiohttp import web

from meeting_adapters import RoomSpec, validate_platform
from policies import load_policy, weakened_checks
from policies.model import DEFAULT_TIMEZONE, ClassId, Jti, Schedule, StudentId

from ..auth import Principal, require_user
from ..authz import Action, allows
from ..codes import code_lookup_key, format_code, new_code
from ..collation import name_key
from ..errors import ApiError, Refusal
from ..hostctl import ActionRequest, HostControls, class_target, visible_classes
from ..joinflow import JoinFlow
from ..policy_io import org_defaults, resolve
from ..presence import watch_class
from ..roster import RosterError, http_status
from ..services import Services, services
from ..stores import ClassInfo, LinkRecord, Student, new_id, schedule_to_json
from ..tokens import issue_join_token
from ..web_util import read_json, require_fields

_CONTROL_CHARS = {"Cc", "Cf", "Zl", "Zp"}


def clean_text(value: Any, field: str, *, max_len: int = 200) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid_field", f"{field} must be a string", field=field)
    text = " ".join(unicodedata.normalize("NFC", value).split())
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _CONTROL_CHARS)
    if not 1 <= len(text) <= max_len:
        raise ApiError(400, "invalid_field", f"{field} must be 1-{max_len} characters",
                       field=field)
    return text


def _parse_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise ApiError(400, "invalid_field", f"{field} must be an ISO 8601 time", field=field)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError(400, "invalid_field", f"{field} is not an ISO 8601 time",
                       field=field) from exc
    if dt.tzinfo is None:
        raise ApiError(400, "invalid_field", f"{field} needs a UTC offset, e.g. +07:00",
                       field=field)
    return dt


def parse_schedule(data: Any, default_tz: str = DEFAULT_TIMEZONE) -> Schedule:
    d = require_fields(data, required=("starts_at", "ends_at"),
                       optional=("term_ends_at", "timezone", "weekly"), where="schedule")
    starts = _parse_time(d["starts_at"], "schedule.starts_at")
    ends = _parse_time(d["ends_at"], "schedule.ends_at")
    if ends <= starts:
        raise ApiError(400, "invalid_field", "schedule.ends_at must be after starts_at",
                       field="schedule.ends_at")
    term = None
    if d.get("term_ends_at") is not None:
        term = _parse_time(d["term_ends_at"], "schedule.term_ends_at")
        if term < ends:
            raise ApiError(400, "invalid_field", "schedule.term_ends_at is before the class ends",
                           field="schedule.term_ends_at")
    tz = d.get("timezone", default_tz)
    try:
        from zoneinfo import ZoneInfo

        if not isinstance(tz, str):
            raise ValueError(tz)
        ZoneInfo(tz)
    except (ValueError, KeyError, OSError) as exc:
        raise ApiError(400, "invalid_field", "schedule.timezone is not a known time zone",
                       field="schedule.timezone") from exc
    weekly = d.get("weekly") or []
    if not isinstance(weekly, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 7 for x in weekly
    ):
        raise ApiError(400, "invalid_field", "schedule.weekly must list ISO weekdays 1-7",
                       field="schedule.weekly")
    return Schedule(starts_at=starts, ends_at=ends, timezone=tz, term_ends_at=term,
                    weekly=tuple(sorted(set(weekly))))


async def org_ancestors(svc: Services, org: str) -> list[str]:
    return list(await svc.staff.org_ancestors(org))


async def load_class(request: web.Request, p: Principal, *, host: bool = False) -> ClassInfo:
    """The class named in the URL, if this principal may see it (404 otherwise, so
    nobody learns which class ids exist)."""
    svc = services(request)
    info = await svc.store.get_class(request.match_info["class_id"])
    if info is None:
        raise Refusal(404, "not_found", "class not found")
    target = await class_target(svc, info)
    if not allows(p, Action.VIEW_CLASS, target):
        raise Refusal(404, "not_found", "class not found", class_id=info.id, org=info.org)
    if host and not allows(p, Action.HOST_CLASS, target):
        raise Refusal(403, "forbidden",
                      "only the class's teacher or an administrator may do this",
                      class_id=info.id, org=info.org)
    return info


def class_json(svc: Services, info: ClassInfo) -> dict[str, Any]:
    from meeting_adapters import capability_matrix

    caps = capability_matrix().get(info.platform_kind, [])
    return {
        "id": info.id,
        "title": info.title,
        "owner": info.owner,
        "org": info.org,
        "platform": {"kind": info.platform_kind, "capabilities": caps},
        "schedule": schedule_to_json(info.schedule),
        "policy": info.policy,
        "locked": info.locked,
        "ended": info.ended,
        "created_at": info.created_at,
    }


async def seal_platform(svc: Services, cid: str, title: str, platform: dict[str, Any]) -> str:
    """Provision the upstream room and seal settings + room (AES-GCM, bound to the class)."""
    adapter = HostControls(svc).adapter(str(platform["kind"]))
    room = await adapter.provision(RoomSpec(class_id=cid, title=title, settings=platform))
    body = {"settings": platform, "room": room.to_dict()}
    return svc.secretbox.encrypt(json.dumps(body).encode(), aad=cid.encode())


async def create_class(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    if not allows(p, Action.CREATE_CLASS):
        raise ApiError(403, "forbidden", "only teachers and administrators create classes")
    data = require_fields(await read_json(request), required=("title", "platform", "schedule"),
                          optional=("policy",))
    title = clean_text(data["title"], "title")
    platform = validate_platform(data["platform"], egress=svc.settings.egress_policy())
    schedule = parse_schedule(data["schedule"], svc.settings.timezone)
    policy_request = data.get("policy") or {"preset": "standard"}
    chain = await org_ancestors(svc, p.org)
    _, defaults = await org_defaults(svc.redis, svc.settings.redis_prefix, chain)
    policy_data = resolve(policy_request, defaults)
    cid = ClassId(new_id("c"))
    # Intent first: the upstream room and the class exist only after their record.
    async with svc.auditor.intended(
            "class.created", actor=p.actor, org=p.org, class_id=cid,
            facts={"platform": platform["kind"], "preset": policy_data.get("preset"),
                   "weakened": ",".join(weakened_checks(load_policy(policy_data))) or None}):
        sealed = await seal_platform(svc, cid, title, platform)
        info = await svc.store.create_class(
            class_id=cid, owner=p.username, org=p.org, org_chain=chain, title=title,
            platform_kind=str(platform["kind"]), platform_sealed=sealed,
            schedule=schedule, policy=policy_data,
        )
        await watch_class(svc, info)  # presence reconciliation, for platforms that have it
    return web.json_response(class_json(svc, info), status=201)


async def list_classes(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    infos = await visible_classes(svc, p)
    return web.json_response({"classes": [class_json(svc, i) for i in infos]})


async def get_class(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p)
    return web.json_response(class_json(svc, info))


async def put_roster(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p, host=True)
    limit = svc.settings.roster_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"roster file larger than {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise ApiError(413, "too_large", f"roster file larger than {limit} bytes")
    ctype = request.content_type
    filename = request.headers.get("X-Filename")
    try:
        # NOTE: never on the event loop: a crafted workbook costs seconds of CPU
        # (gateway/roster_worker.py).
        parsed = await svc.roster_parser.parse(body, content_type=ctype, filename=filename)
    except RosterError as exc:
        raise ApiError(http_status(exc.code), f"roster_{exc.code}", exc.message) from exc
    if not parsed.students:
        raise ApiError(400, "roster_empty", "no usable student in the file",
                       extra={"rejected": [_rej(r) for r in parsed.rejected]})
    async with svc.auditor.intended(
            "roster.imported", actor=p.actor, org=info.org, class_id=info.id,
            facts={"students": len(parsed.students),
                   "rejected": len(parsed.rejected)}) as out:
        students, removed = await svc.store.replace_roster(
            info.id, [(s.name, s.external_id, s.email) for s in parsed.students]
        )
        out.facts.update(students=len(students), removed=len(removed))
    return web.json_response({
        "students": [s.to_json() for s in students],
        "rejected": [_rej(r) for r in parsed.rejected],
        "removed": [s.id for s in removed],
    })


def _rej(r: Any) -> dict[str, Any]:
    return {"line": r.line, "error": r.code, "message": r.message}


async def get_roster(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p, host=True)
    return web.json_response({"students": [s.to_json() for s in await svc.store.roster(info.id)]})


def token_expiry(svc: Services, info: ClassInfo, now: float) -> int:
    s = info.schedule
    end = s.term_ends_at or (s.ends_at if not s.weekly else None)
    if end is not None:
        return int(max(end.timestamp(), now + 3600))
    return int(now + svc.settings.join_token_default_lifetime_s)


def _link_json(svc: Services, rec: LinkRecord, name: str, token: str) -> dict[str, Any]:
    base = svc.settings.public_url.rstrip("/")
    return {
        "student_id": rec.student_id,
        "name": name,
        "url": f"{base}/j/{token}",
        "code": format_code(rec.code),
        "expires_at": rec.exp,
    }


async def issue_links(svc: Services, info: ClassInfo, student_ids: list[str] | None,
                      actor: str) -> list[dict[str, Any]]:
    roster: dict[str, Student] = {s.id: s for s in await svc.store.roster(info.id)}
    targets = list(roster) if student_ids is None else student_ids
    for sid in targets:
        if sid not in roster:
            raise ApiError(404, "not_found", f"student {sid} is not on this roster",
                           field="student_ids")
    now = int(svc.clock())
    exp = token_expiry(svc, info, now)
    key = svc.keyring.signing_key()
    out = []
    reissued = ended = 0
    # A reissue retires links, admissions and bindings (and tells the teacher): its intent
    # is recorded first, its outcome after (docs/audit.md).
    async with svc.auditor.intended("links.issued", actor=actor, org=info.org,
                                    class_id=info.id,
                                    subject=",".join(targets)[:2000] if student_ids else None,
                                    facts={"count": len(targets)}) as outcome:
        for sid in targets:
            jti = Jti(secrets.token_urlsafe(12))
            code = new_code()
            rec = LinkRecord(jti=jti, student_id=StudentId(sid), class_id=info.id,
                             iat=now, nbf=now - 60, exp=exp, code=code)
            # NOTE: a reissue retires everything the old link held in the same step: its
            # waiting ticket, its admission and its device binding (a leaked link is the
            # usual reason to reissue, so whoever opened it must not keep any of them).
            retired = await svc.store.store_link(rec, code_lookup_key(code), exp - now)
            if retired.jti is not None or retired.ticket is not None:
                if retired.jti is not None:
                    reissued += 1
                await svc.bus.publish(info.id, {"type": "removed", "student_id": sid,
                                                "ticket": retired.ticket,
                                                "reason": "token_revoked"})
            if retired.admission_ended:
                ended += 1
                await HostControls(svc).remove_upstream(info, sid)
            token = issue_join_token(key, issuer=svc.settings.public_url, student_id=sid,
                                     class_id=info.id, jti=jti, iat=now, nbf=now - 60, exp=exp)
            out.append(_link_json(svc, rec, roster[sid].name, token))
        outcome.facts = {"count": len(out), "reissued": reissued,
                         "admissions_ended": ended or None}
    return out


async def post_links(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p, host=True)
    student_ids = None
    if request.can_read_body:
        data = require_fields(await read_json(request), required=(), optional=("student_ids",))
        ids = data.get("student_ids")
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids) \
                    or len(ids) > 5000:
                raise ApiError(400, "invalid_field", "student_ids must be a list of ids",
                               field="student_ids")
            student_ids = list(dict.fromkeys(ids))
    links = await issue_links(svc, info, student_ids, p.actor)
    return web.json_response({"links": links})


async def current_links(svc: Services, info: ClassInfo) -> list[dict[str, Any]]:
    """The students' current links, signed again from their stored claims (Ed25519
    signatures are deterministic, so the link is the one issued while the key lasts)."""
    roster = {s.id: s for s in await svc.store.roster(info.id)}
    recs = await svc.store.current_links(info.id)
    key = svc.keyring.signing_key()
    out = []
    for s in sorted(roster.values(), key=lambda s: (name_key(s.name), s.id)):
        rec = recs.get(s.id)
        if rec is None:
            continue
        token = issue_join_token(key, issuer=svc.settings.public_url, student_id=rec.student_id,
                                 class_id=info.id, jti=rec.jti, iat=rec.iat, nbf=rec.nbf,
                                 exp=rec.exp)
        out.append(_link_json(svc, rec, s.name, token))
    return out


async def get_links(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p, host=True)
    return web.json_response({"links": await current_links(svc, info)})


async def get_links_pdf(request: web.Request) -> web.Response:
    from ..linksheet import render_link_sheet

    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p, host=True)
    links = await current_links(svc, info)
    from .. import i18n

    lang = i18n.request_lang(request)
    import asyncio

    pdf = await asyncio.to_thread(render_link_sheet, info.title, links, lang,
                                  svc.settings.public_url)
    await svc.auditor.record("links.printed", actor=p.actor, org=info.org, class_id=info.id,
                             facts={"count": len(links)})
    return web.Response(body=pdf, content_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="links-{info.id}.pdf"'})


async def class_state(svc: Services, info: ClassInfo) -> dict[str, Any]:
    store = svc.store
    roster: dict[str, str] = {s.id: s.name for s in await store.roster(info.id)}
    waiting_now = await store.waiting(info.id)
    gone = await store.gone_tickets(waiting_now)
    waiting = [
        {"ticket": tk, "student_id": w["student_id"], "name": roster.get(w["student_id"]),
         "since": w.get("since"), "device_hint": w.get("device_hint"), "reason": w.get("reason"),
         "gone": tk in gone}
        for tk, w in waiting_now.items()
    ]
    waiting.sort(key=lambda w: w.get("since") or 0)
    admitted = [
        {"student_id": sid, "name": roster.get(sid), "at": a.get("at"), "by": a.get("by")}
        for sid, a in (await store.admitted(info.id)).items()
    ]
    admitted.sort(key=lambda a: name_key(a["name"] or ""))
    fresh = await store.get_class(info.id)
    assert fresh is not None
    alerts = await store.alerts(info.id)
    hints = {str(a[k]): str(a["device_hint"]) for a in alerts for k in ("ban_device", "ban_ip")
             if a.get(k) and a.get("device_hint")}
    return {
        "class_id": info.id,
        "title": info.title,
        "locked": fresh.locked,
        "ended": fresh.ended,
        "host_present": await store.host_present(info.id),
        "waiting": waiting,
        "admitted": admitted,
        "alerts": alerts,
        "bans": [_named_ban(b.to_json(), roster, hints)
                 for b in await store.bans(class_id=info.id)],
    }


def _named_ban(ban: dict[str, Any], roster: dict[str, str],
               hints: dict[str, str]) -> dict[str, Any]:
    """A ban as the host sees it: the name of the student it was placed on, or for a
    device nobody on the roster used, the browser it was seen with (from its alert)."""
    sid = str(ban.get("student_id") or "")
    if sid in roster:
        ban["name"] = roster[sid]
    hint = hints.get(str(ban.get("key")))
    if hint:
        ban["device_hint"] = hint
    return ban


async def get_state(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p)
    return web.json_response(await class_state(svc, info))


async def post_action(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p, host=True)
    req = ActionRequest.parse(await read_json(request))
    return web.json_response(await HostControls(svc).perform(p, info, req))


async def put_policy(request: web.Request) -> web.Response:
    """Replace the class's policy; an invalid one is refused and the old one stays."""
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p, host=True)
    data = await read_json(request)
    _, defaults = await org_defaults(svc.redis, svc.settings.redis_prefix,
                                     await org_ancestors(svc, info.org))
    resolved = resolve(data, defaults, field="policy")
    async with svc.auditor.intended(
            "policy.changed", actor=p.actor, org=info.org, class_id=info.id,
            facts={"preset": resolved.get("preset"),
                   "weakened": ",".join(weakened_checks(load_policy(resolved))) or None}):
        await svc.store.update_policy(info.id, resolved)
    return web.json_response({"policy": resolved})


async def get_explain(request: web.Request) -> web.Response:
    """Why a student's next attempt would get its decision, from the same code that
    enforces it (their current link, their bound device, their last address)."""
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p)
    sid = request.query.get("student_id", "")
    if await svc.store.student(info.id, sid) is None:
        raise ApiError(404, "not_found", "no such student in this class", field="student_id")
    return web.json_response(await JoinFlow(svc).explain_student(info.id, sid))


def setup(app: web.Application) -> None:
    r = app.router
    r.add_put("/api/v1/classes/{class_id}/policy", put_policy)
    r.add_get("/api/v1/classes/{class_id}/explain", get_explain)
    r.add_post("/api/v1/classes", create_class)
    r.add_get("/api/v1/classes", list_classes)
    r.add_get("/api/v1/classes/{class_id}", get_class)
    r.add_put("/api/v1/classes/{class_id}/roster", put_roster)
    r.add_get("/api/v1/classes/{class_id}/roster", get_roster)
    r.add_post("/api/v1/classes/{class_id}/links", post_links)
    r.add_get("/api/v1/classes/{class_id}/links", get_links)
    r.add_get("/api/v1/classes/{class_id}/links.pdf", get_links_pdf)
    r.add_get("/api/v1/classes/{class_id}/state", get_state)
    r.add_post("/api/v1/classes/{class_id}/actions", post_action)


__all__ = ["class_state", "issue_links", "load_class", "setup"]
