"""Audit log actions beyond reading: erasure orders and the CSV export of a search.

* ``POST /api/v1/audit/erase`` (administrators): carry out an erasure order for a
  student of a class in the administrator's org subtree and/or listed audit indexes;
  refused with 409 ``legal_hold`` naming the incidents that hold the data.
* ``GET /api/v1/audit/events.csv`` (IT staff and administrators): the records a search
  finds, as a spreadsheet IT staff can open. Every cell is escaped against formula
  injection (``roster.csv_safe``): a visitor's browser string or a roster name beginning
  with ``=`` must never run as a formula in Excel or LibreOffice.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from audit import AuditError, AuditQuery, LegalHoldError

from ..auth import require_user
from ..authz import Action, allows
from ..erasure import MAX_INDEXES, erase_order
from ..errors import ApiError, Refusal
from ..roster import csv_safe
from ..services import services
from ..signin import require_fresh_second_factor
from ..web_util import read_json, require_fields
from .incidents import _text, class_for

_CSV_FILTERS = ("class", "type", "reason", "student", "ip", "since", "until", "limit")
MAX_CSV_ROWS = 5000
CSV_COLUMNS = ("index", "time_utc", "type", "reason", "actor", "org", "class", "subject",
               "ip", "device", "user_agent", "name", "facts")


async def erase(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    if not allows(p, Action.ERASE_PERSONAL_DATA):
        raise Refusal(403, "forbidden", "only administrators order erasures")
    await require_fresh_second_factor(request, p)
    d = require_fields(await read_json(request), required=("reason",),
                       optional=("student_id", "class_id", "indexes"))
    reason = _text(d["reason"], "reason", max_len=1000, multiline=True)
    if not reason:
        raise ApiError(400, "invalid_field", "reason must be 1-1000 characters", field="reason")
    student = d.get("student_id")
    if student is not None:
        if not isinstance(student, str) or not 0 < len(student) <= 64:
            raise ApiError(400, "invalid_field", "student_id must be a student id",
                           field="student_id")
        cid = d.get("class_id")
        if not isinstance(cid, str):
            raise ApiError(400, "missing_field", "student_id needs the class_id of the "
                           "student's class", field="class_id")
        info = await class_for(svc, p, cid)
        # NOTE: a student removed from the roster may still be erased: the class is
        # what proves the administrator's authority over the student's records.
        indexes_of = await svc.audit_log.indexes_of_student(student)
        for idx in indexes_of[:MAX_INDEXES]:
            rec = await _record(svc, idx)
            if rec is not None and rec.get("class") not in (None, info.id):
                raise ApiError(404, "not_found", "student not found in this class",
                               field="student_id")
    raw = d.get("indexes") or []
    if not isinstance(raw, list) or len(raw) > MAX_INDEXES or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in raw):
        raise ApiError(400, "invalid_field", f"indexes must be a list of at most "
                       f"{MAX_INDEXES} audit indexes", field="indexes")
    if student is None and not raw:
        raise ApiError(400, "missing_field", "name a student_id or audit indexes",
                       field="student_id")
    subtree = await svc.staff.org_subtree(p.org)
    for idx in raw:
        rec = await _record(svc, idx)
        if rec is None or rec.get("org") not in subtree:
            raise ApiError(404, "not_found", f"no audit record {idx} in your organisation",
                           field="indexes")
    try:
        res = await erase_order(svc.audit_log, svc.auditor, svc.redis, svc.settings.redis_prefix,
                                actor=p.actor, org=p.org, student=student, indexes=raw,
                                reason=reason)
    except LegalHoldError as exc:
        raise ApiError(409, "legal_hold", exc.message, extra={"incidents": exc.incidents}) \
            from exc
    return web.json_response({"erased": res.erased, "records": res.asked})


async def _record(svc: Any, idx: int) -> dict[str, Any] | None:
    try:
        ev = await svc.audit_log.read(idx)
    except AuditError:
        return None
    return dict(ev.record)


def csv_rows(events: list[Any]) -> str:
    """The CSV text of these events (pure): one row each, every cell formula-escaped."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for ev in events:
        rec, pd = ev.record, ev.personal or {}
        ts = rec.get("ts")
        when = (datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds")
                if isinstance(ts, int) else "")
        facts = rec.get("facts")
        row = [str(ev.index), when, rec.get("type"), rec.get("reason"), rec.get("actor"),
               rec.get("org"), rec.get("class"), rec.get("subject"), pd.get("ip"),
               pd.get("device"), pd.get("ua"), pd.get("name"),
               json.dumps(facts, ensure_ascii=False, sort_keys=True) if facts else ""]
        w.writerow([csv_safe("" if v is None else str(v)) for v in row])
    return buf.getvalue()


async def events_csv(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    if not allows(p, Action.READ_AUDIT):
        raise Refusal(403, "forbidden", "only IT staff and administrators read the audit log")
    for k in request.query:
        if k not in _CSV_FILTERS:
            raise ApiError(400, "unknown_field", f"unknown filter {k!r}", field=k)
    raw_limit = request.query.get("limit", "1000")
    if not raw_limit.isdigit() or not 0 < int(raw_limit) <= MAX_CSV_ROWS:
        raise ApiError(400, "invalid_field", f"limit must be 1-{MAX_CSV_ROWS}", field="limit")
    limit = int(raw_limit)
    try:
        q = AuditQuery.from_params(dict(request.query))
    except AuditError as exc:
        raise ApiError(400, getattr(exc, "code", "invalid_query"), str(exc)) from exc
    subtree = await svc.staff.org_subtree(p.org)
    is_root = allows(p, Action.READ_DEPLOYMENT_AUDIT, await svc.staff.deployment_target())
    found: list[Any] = []
    cursor: str | None = None
    while len(found) < limit:
        try:
            page, cursor = await svc.audit_log.query(
                q, limit=min(500, limit - len(found)), cursor=cursor, disclose_personal=True)
        except AuditError as exc:
            raise ApiError(400, getattr(exc, "code", "invalid_query"), str(exc)) from exc
        for ev in page:
            org = ev.record.get("org")
            if org in subtree or (org is None and is_root):
                found.append(ev)
        if cursor is None:
            break
    # NOTE: the filters may hold an address or a student id: they go in the erasable
    # personal part; the immutable part says only which filters were used.
    await svc.auditor.record(
        "audit.read", actor=p.actor, org=p.org,
        facts={"format": "csv", "filters": sorted(request.query) or None,
               "returned": len(found)},
        personal={"query": dict(request.query)} if request.query else None)
    stamp = datetime.fromtimestamp(svc.clock(), UTC).strftime("%Y%m%d-%H%M%S")
    # A BOM so that Excel opens the UTF-8 text (Vietnamese names) correctly.
    return web.Response(
        body=("\ufeff" + csv_rows(found)).encode(), content_type="text/csv", charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.csv"',
                 "X-Content-Type-Options": "nosniff"})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/v1/audit/erase", erase)
    r.add_get("/api/v1/audit/events.csv", events_csv)
