"""Incident pages: the list, the report form, the detail page with its chain of custody.

The pages read through the same helpers as the incident API (``visible_incidents``,
``class_for``, ``load_incident``) and change things only through it (``incidents.js``
posts the form, patches the status and uploads attachments), so a page can never show or
do what the API would refuse. Opening the detail page is a custody event, recorded by
the same code as ``GET /api/v1/incidents/{id}``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from aiohttp import web
from babel.numbers import format_decimal

from audit import AuditQuery
from policies.schedule import current_window_utc

from ..auth import Principal
from ..authz import Action, allows
from ..evidence_gather import is_custody, wait_outbox_drained
from ..evidence_report import revision_rows, zone_of
from ..hostctl import class_target, visible_classes
from ..incidents import MAX_ATTACHMENTS, STATUSES, TRANSITIONS, Incident
from ..notify import NotifyQueue
from ..services import Services, services
from ..signin import has_fresh_second_factor, verify_url
from ..stores import ClassInfo, Student, valid_class_id
from ..stores.reports import CATEGORIES as REPORT_CATEGORIES
from .incidents import (
    MAX_FILES_PER_UPLOAD,
    MAX_VISITORS,
    MAX_WINDOW_MS,
    class_for,
    incident_store,
    load_incident,
    record_view,
    visible_incidents,
)
from .pages import page_response, staff_page
from .reports import visible_reports

#: Alerts that name the student whose link (or seat) was involved.
PERSON_ALERTS = ("link_shared", "banned_returning", "intruder_in_room")
#: How long the detail page waits for its own view record to be sequenced.
SEQUENCE_WAIT_S = 2.0
#: At most this many custody records are shown (the evidence bundle holds all of them).
CUSTODY_SHOWN = 500
CUSTODY_SCAN = 100_000
#: The newest reports from students and parents the list page shows.
REPORTS_SHOWN = 50
_DEVICE_RE = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ERRORS = ("too_large", "too_many_attachments", "incident_closed", "empty",
                  "quota_exceeded")


# --- formatting (pure) --------------------------------------------------------------------

def local_input(moment: datetime, zone: ZoneInfo) -> str:
    """The wall clock in ``zone``, to the minute, day first (``dd/mm/yyyy HH:MM``) as
    the form shows it; incidents.js sends it as ISO 8601."""
    return moment.astimezone(zone).strftime("%d/%m/%Y %H:%M")


def utc_offset(zone: ZoneInfo, moment: datetime) -> str:
    """``+07:00``: the offset the form appends to its wall-clock inputs (the zone's at
    ``moment``; a window across a daylight-saving change is off by that hour)."""
    off = moment.astimezone(zone).utcoffset() or timedelta()
    minutes = int(off.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def report_window(info: ClassInfo, now: datetime) -> tuple[datetime, datetime]:
    """The form's suggested window: from the start of the class's current (or latest)
    session to now, in whole minutes and at most the API's 31 days.

    NOTE: ``until`` is rounded *up* to the next minute: the form's time field holds
    minutes, and rounding down would leave out what happened in the last seconds.
    """
    until = now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    window = current_window_utc(info.schedule, now)
    start = window[0] if window is not None else None
    if start is None or start > now:
        start = now - timedelta(hours=1)
    since = start.astimezone(UTC).replace(second=0, microsecond=0)
    earliest = until - timedelta(milliseconds=MAX_WINDOW_MS)
    return max(since, earliest), until


def human_size(n: int, lang: str) -> str:
    """Bytes in the viewer's locale: ``1,5 MiB`` / ``1.5 MiB``."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{format_decimal(n / factor, format='#,##0.#', locale=lang)} {unit}"
    return f"{format_decimal(n, locale=lang)} B"


def _handle(value: Any, prefix: str) -> str | None:
    text = str(value or "")
    return text[len(prefix):] if text.startswith(prefix) else None


def _clean_ip(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def people_from_alerts(alerts: Sequence[Mapping[str, Any]], roster: Mapping[str, Student],
                       since_s: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(students, visitors) behind the class's alerts raised since ``since_s``.

    A ``link_shared`` alert names the student whose link was opened on another device and
    carries the ban handles of that device (``d:<device hash>``) and its address
    (``i:<ip>``): the student is offered, and so is the unknown visitor, by device and IP.
    Students no longer on the roster are left out (the API would refuse them).
    """
    students: dict[str, dict[str, Any]] = {}
    visitors: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    for a in alerts:
        at = float(a.get("last_at") or a.get("at") or 0)
        kind = str(a.get("kind", ""))
        if at < since_s or kind not in PERSON_ALERTS:
            continue
        sid = str(a.get("student_id") or "")
        if sid in roster and sid not in students:
            students[sid] = {"id": sid, "name": roster[sid].name, "kind": kind, "at": at}
        if kind != "link_shared":
            continue
        device = _handle(a.get("ban_device"), "d:")
        device = device if device and _DEVICE_RE.fullmatch(device) else None
        ip = _clean_ip(_handle(a.get("ban_ip"), "i:"))
        if (device or ip) and (device, ip) not in visitors and len(visitors) < MAX_VISITORS:
            visitors[(device, ip)] = {
                "device": device or "", "ip": ip or "", "hint": str(a.get("device_hint") or ""),
                "link_of": roster[sid].name if sid in roster else "", "at": at}
    return list(students.values()), list(visitors.values())


def device_hints(alerts: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Device hash -> the device hint ("Android phone") the class's alerts saw."""
    out: dict[str, str] = {}
    for a in alerts:
        device = _handle(a.get("ban_device"), "d:")
        if device and a.get("device_hint"):
            out.setdefault(device, str(a["device_hint"]))
    return out


def custody_row(index: int, rec: Mapping[str, Any], lang: str) -> dict[str, Any]:
    facts = rec.get("facts")
    facts = facts if isinstance(facts, dict) else {}
    return {
        "index": index,
        "ts": rec.get("ts"),
        "type": str(rec.get("type", "")),
        "actor": str(rec.get("actor", "")).split(":", 1)[-1],
        "status": facts.get("status"),
        "changed": facts.get("changed") or [],
        # an attachment's SHA-256, or the bundle's for an export (the hand-over form)
        "sha256": facts.get("sha256") or facts.get("bundle_sha256"),
        "size": human_size(int(facts["size"]), lang) if isinstance(facts.get("size"), int)
        else None,
        "export_id": facts.get("export_id"),
        "via": facts.get("via"),
    }


# --- the audit log ------------------------------------------------------------------------

def _stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def wait_indexed(svc: Services, class_id: str,
                       timeout_s: float = SEQUENCE_WAIT_S) -> bool:
    """Wait (briefly) until everything appended so far has an index in the log.

    The sequencer indexes appended records within milliseconds; this lets the detail page
    show the view it has just recorded. False when it did not happen in time (the page
    then says that the newest records are still being indexed)."""
    log, rb = svc.audit_log, svc.redis_bytes
    deadline = time.monotonic() + timeout_s
    # the class's records (this view among them) reach the stream through its outbox
    if not await wait_outbox_drained(svc, class_id, deadline=deadline):
        return False
    last = await rb.xrevrange(log.keys.stream, count=1)
    if not last:
        return True
    target = _stream_id(cast(bytes, last[0][0]))
    while True:
        done = await cast(Awaitable[bytes | None], rb.hget(log.keys.meta, "last_id"))
        if _stream_id(done or b"0-0") >= target:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)


async def custody_history(svc: Services, inc: Incident, lang: str
                          ) -> tuple[list[dict[str, Any]], bool]:
    """The incident's custody records (created, viewed, edited, attached, exported),
    oldest first, found the way the evidence export finds them (``is_custody``), and
    whether that is all of them (a page reads at most the newest CUSTODY_SHOWN records
    and scans at most CUSTODY_SCAN records of the class; the bundle holds every one)."""
    log = svc.audit_log
    q = AuditQuery(class_id=inc.class_id, since_ms=int(inc.created_at * 1000) - 60_000)
    found: list[tuple[int, Mapping[str, Any]]] = []
    cursor: str | None = None
    scanned_pages = 0
    while True:
        page, cursor = await log.query(q, limit=1000, cursor=cursor, max_scan=20_000)
        found += [(ev.index, ev.record) for ev in page if is_custody(ev.record, inc.id)]
        scanned_pages += 1
        if cursor is None or len(found) > CUSTODY_SHOWN or \
                scanned_pages * 20_000 >= CUSTODY_SCAN:
            break
    complete = cursor is None and len(found) <= CUSTODY_SHOWN
    found.sort(key=lambda x: x[0])
    return [custody_row(i, rec, lang) for i, rec in found[-CUSTODY_SHOWN:]], complete


# --- pages ----------------------------------------------------------------------------------

async def _class_titles(svc: Services, ids: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for cid in dict.fromkeys(ids):
        info = await svc.store.get_class(cid)
        out[cid] = info.title if info else cid
    return out


@staff_page(Action.VIEW_CLASS)
async def list_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    status = request.query.get("status", "")
    status = status if status in STATUSES else ""
    found = await visible_incidents(svc, p, status=status or None)
    reports = (await visible_reports(svc, p))[:REPORTS_SHOWN] \
        if allows(p, Action.HANDLE_REPORT) else None
    titles = await _class_titles(svc, [inc.class_id for inc in found]
                                 + [r.class_id for r in reports or ()])
    return page_response(request, "incidents.html", lang, user=p, incidents=found,
                         titles=titles, selected=status, statuses=STATUSES, reports=reports,
                         report_categories=REPORT_CATEGORIES)


async def _visible_classes(svc: Services, p: Principal) -> list[ClassInfo]:
    return sorted(await visible_classes(svc, p), key=lambda i: i.schedule.starts_at,
                  reverse=True)


@staff_page(Action.VIEW_CLASS)
async def new_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    cid = request.query.get("class_id", "")
    if not cid or not valid_class_id(cid):
        # no class chosen yet: pick one of the classes this person may report on
        return page_response(request, "incident_new.html", lang, user=p, info=None,
                             classes=await _visible_classes(svc, p))
    info = await class_for(svc, p, cid)
    zone = zone_of(info.schedule.timezone, svc.settings.timezone)
    now = datetime.fromtimestamp(svc.clock(), UTC)
    since, until = report_window(info, now)
    roster = await svc.store.roster(info.id)
    by_id: dict[str, Student] = {str(s.id): s for s in roster}
    alerted, visitors = people_from_alerts(await svc.store.alerts(info.id), by_id,
                                           since.timestamp())
    named = {s["id"] for s in alerted}
    others = [s for s in roster if s.id not in named]
    return page_response(
        request, "incident_new.html", lang, user=p, info=info, classes=[],
        since=local_input(since, zone), until=local_input(until, zone),
        offset=utc_offset(zone, now), tz=zone.key,
        alerted=alerted, visitors=visitors, others=others)


@staff_page(Action.VIEW_CLASS)
async def detail_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    inc, info = await load_incident(request, p)
    target = await class_target(svc, info)
    # NOTE: opening the page is a custody event, logged before the history is read so the
    # history shows this view too.
    await record_view(request, p, inc, info, via="page")
    indexed = await wait_indexed(svc, inc.class_id)
    history, complete = await custody_history(svc, inc, lang)
    students = []
    for sid in inc.student_ids:
        st = await svc.store.student(inc.class_id, sid)
        students.append({"id": sid, "name": st.name if st else None,
                         "external_id": (st.external_id if st else None) or ""})
    hints = device_hints(await svc.store.alerts(info.id))
    visitors = [{"ip": v.ip or "", "device": v.device or "",
                 "hint": hints.get(v.device or "", "")} for v in inc.visitors]
    limit = svc.settings.attachment_max_bytes
    can_attach = inc.status != "closed" and len(inc.attachments) < MAX_ATTACHMENTS
    # Only administrators close and reopen, and never about a class of their own; the
    # API refuses the same (routes/incidents.py ``update``).
    decides = allows(p, Action.DECIDE_INCIDENT, target)
    moves = sorted(s for s in TRANSITIONS.get(inc.status, frozenset()) if s != "exported"
                   and decides and not (s == "closed" and info.owner == p.username))
    store = incident_store(svc)
    zone = zone_of(info.schedule.timezone, svc.settings.timezone)
    revisions = revision_rows(lang, await store.history(inc.id), zone)
    quota = svc.settings.attachment_org_quota_bytes
    used = await store.usage(inc.org)
    return page_response(
        request, "incident.html", lang, user=p, inc=inc, info=info, tz=zone.key,
        students=students,
        visitors=visitors, description_lines=inc.description.split("\n")
        if inc.description else [],
        attachments=[{**a.to_json(), "human": human_size(a.size, lang)}
                     for a in inc.attachments],
        history=history, history_complete=complete, indexed=indexed, moves=moves,
        revisions=revisions, quota_human=human_size(quota, lang),
        used_human=human_size(used, lang),
        can_attach=can_attach,
        can_export=(can_export := allows(p, Action.EXPORT_EVIDENCE, target)),
        # a link there and back instead of the downloads while a step-up is due
        export_verify=None if not can_export or await has_fresh_second_factor(svc, p)
        else verify_url(request.path),
        can_proof=allows(p, Action.READ_AUDIT, target),
        statuses=STATUSES, limit_bytes=limit, limit_human=human_size(limit, lang),
        max_files=MAX_FILES_PER_UPLOAD, max_attachments=MAX_ATTACHMENTS,
        upload_errors=_UPLOAD_ERRORS,
        can_mark_serious=inc.status != "closed" and inc.severity != "serious" and allows(
            p, Action.EDIT_INCIDENT, replace(target, owner=inc.created_by)),
        can_acknowledge=inc.acknowledged_by is None and decides,
        notifications=await NotifyQueue(svc.redis, svc.settings.redis_prefix,
                                        clock=svc.clock).results(inc.id),
        export_links=[(lg, f"/api/v1/incidents/{inc.id}/evidence.zip?"
                       + urlencode({"lang": lg})) for lg in ("vi", "en")])


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/incidents", list_page)
    # before /incidents/{incident_id}: "new" is not an incident id
    r.add_get("/incidents/new", new_page)
    r.add_get("/incidents/{incident_id}", detail_page)
