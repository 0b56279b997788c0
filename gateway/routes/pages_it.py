"""IT staff pages: the audit explorer (filters, pages, event detail, integrity status)
and the bans of their org subtree.

The explorer reads the log like ``GET /api/v1/audit/events`` does, with the same
visibility rule (events of the viewer's org subtree; org-less events only for an
administrator of the deployment root org), and, like every read of the log, is itself recorded.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from aiohttp import web

from audit import AuditError, AuditQuery

from .. import i18n
from ..auth import Principal
from ..authz import Action, allows
from ..errors import ApiError
from ..services import Services, services
from ..stores import valid_class_id, valid_student_id
from .audit import parse_query, record_read
from .pages import DEFAULT_TZ, page_response, staff_page

FILTERS = ("class", "type", "reason", "student", "ip", "since", "until")
PAGE_SIZES = (25, 50, 100, 200)


def _local_to_iso(value: str, tz: str = DEFAULT_TZ) -> str | None:
    """A time the viewer typed on their wall clock, ``dd/mm/yyyy HH:MM`` (as the
    form shows it) or ISO 8601, as ISO 8601 with offset."""
    if not value:
        return None
    try:
        dt = datetime.strptime(value, "%d/%m/%Y %H:%M").replace(tzinfo=ZoneInfo(tz)) \
            if "/" in value else datetime.fromisoformat(value)
    except ValueError as exc:
        raise ApiError(400, "invalid_field", "not a date and time", field="since") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(tz))
    return dt.isoformat()


async def visible_events(svc: Services, p: Principal, params: dict[str, str], limit: int,
                         cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of events this principal may see, newest first (as the audit API)."""
    try:
        q = AuditQuery.from_params(params)
        found, next_cursor = await svc.audit_log.query(
            q, limit=limit, cursor=cursor, disclose_personal=True)
    except AuditError as exc:
        raise ApiError(400, getattr(exc, "code", "invalid_query"), str(exc)) from exc
    subtree = await svc.staff.org_subtree(p.org)
    is_root = allows(p, Action.READ_DEPLOYMENT_AUDIT, await svc.staff.deployment_target())
    out = []
    for ev in found:
        org = ev.record.get("org")
        if (org in subtree) or (org is None and is_root):
            out.append(ev.to_json())
    return out, next_cursor


def _event_row(ev: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": ev.get("index"),
        "ts": ev.get("ts"),
        "type": ev.get("type", ""),
        "actor": ev.get("actor", ""),
        "reason": ev.get("reason", ""),
        "class": ev.get("class", ""),
        "subject": ev.get("subject", ""),
        "org": ev.get("org", ""),
        "personal": ev.get("personal") or {},
        "facts": ev.get("facts") or {},
        "json": json.dumps({k: v for k, v in ev.items() if k != "personal"},
                           ensure_ascii=False, indent=2, sort_keys=True),
    }


async def _label_rows(svc: Any, rows: list[dict[str, Any]], lang: str) -> None:
    """What a reader sees of each record: the event type and reason in words, the
    class by its title and a student by name (the raw codes stay in ``title`` and in
    the record's detail)."""
    assert svc.store is not None
    cat = i18n.catalogue(lang)
    titles: dict[str, str | None] = {}
    names: dict[tuple[str, str], str | None] = {}
    for row in rows:
        ty, reason, cid = str(row["type"]), str(row["reason"] or ""), str(row["class"] or "")
        row["type_label"] = cat.get(f"evidence.type.{ty}")
        row["reason_label"] = cat.get(f"reason.{reason}") if reason else None
        if cid and cid not in titles:
            info = await svc.store.get_class(cid) if valid_class_id(cid) else None
            titles[cid] = info.title if info else None
        row["class_label"] = titles.get(cid) if cid else None
        actor = str(row["actor"] or "")
        row["actor_label"] = actor.split(":", 1)[1] if actor.startswith("user:") else None
        if actor.startswith("student:") and cid and titles.get(cid):
            sid = actor.split(":", 1)[1]
            if (cid, sid) not in names:
                st = await svc.store.student(cid, sid) if valid_student_id(sid) else None
                names[(cid, sid)] = st.name if st else None
            row["actor_label"] = names[(cid, sid)]


@staff_page(Action.READ_AUDIT)
async def audit_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    form = {k: request.query.get(k, "").strip()[:200] for k in FILTERS}
    params = {k: v for k, v in form.items() if v and k not in ("since", "until")}
    error = None
    try:
        for k in ("since", "until"):
            iso = _local_to_iso(form[k], svc.settings.timezone)
            if iso:
                params[k] = iso
    except ApiError:
        error = "audit.bad_time"
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        limit = 50
    limit = limit if limit in PAGE_SIZES else 50
    cursor = request.query.get("cursor") or None
    if cursor is not None and (not cursor.isdigit() or len(cursor) > 15):
        cursor = None
    events: list[dict[str, Any]] = []
    next_cursor = None
    q = None
    if error is None:
        try:
            q = parse_query(params)
            events, next_cursor = await visible_events(svc, p, params, limit, cursor)
        except ApiError:
            error = "audit.bad_query"
    await record_read(svc, p, q if error is None else None, returned=len(events),
                      via="page")
    last, _ = await visible_events(svc, p, {"type": "audit.verify"}, 1, None)
    base = {k: v for k, v in form.items() if v}
    if limit != 50:
        base["limit"] = str(limit)
    older = "/audit?" + urlencode({**base, "cursor": next_cursor}) if next_cursor else None
    newest = "/audit?" + urlencode(base) if cursor else None
    rows = [_event_row(e) for e in events]
    await _label_rows(svc, rows, lang)
    return page_response(
        request, "audit.html", lang, user=p, form=form, limit=limit, page_sizes=PAGE_SIZES,
        events=rows, older=older, newest=newest, error=error,
        last_verify=_event_row(last[0]) if last else None,
        size=await svc.audit_log.size() if svc.audit_log else 0,
    )


@staff_page(Action.MANAGE_ORG_BANS)
async def bans_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    subtree = sorted(await svc.staff.org_subtree(p.org))
    org_bans = []
    for org in subtree:
        org_bans += [b.to_json() for b in await svc.store.bans(org=org)]
    classes = {c.id: c for c in await svc.store.classes_of_orgs(subtree)}
    class_bans = []
    for cid, info in sorted(classes.items(), key=lambda kv: kv[1].title.casefold()):
        hints: dict[str, str] | None = None
        for b in await svc.store.bans(class_id=cid):
            # a ban placed on a student's device or address names that student; a
            # stranger's device, the browser its alert saw
            st = await svc.store.student(cid, b.student_id) if b.student_id else None
            row = {**b.to_json(), "class_title": info.title, "name": st.name if st else None}
            if st is None and b.key.startswith("d:"):
                if hints is None:
                    hints = {str(a["ban_device"]): str(a.get("device_hint") or "")
                             for a in await svc.store.alerts(cid) if a.get("ban_device")}
                row["device_hint"] = hints.get(b.key) or None
            class_bans.append(row)
    return page_response(request, "bans.html", lang, user=p, org_bans=org_bans,
                         class_bans=class_bans, orgs=subtree, home_org=p.org,
                         can_lift_class=allows(p, Action.HOST_CLASS), now=svc.clock())


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/audit", audit_page)
    r.add_get("/bans", bans_page)
