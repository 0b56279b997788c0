"""Incidents: report, list, view, edit, attach files, export the evidence bundle.

Every view, edit, attachment and export is a custody event in the audit log
(``incident.create|view|update|attach|export|hold``, ``facts.incident`` = the incident
id). Teachers see the incidents of their own classes, IT staff and administrators those
of their org subtree; only administrators export evidence. Only the reporter and
administrators edit (and mark an incident serious); only administrators close and
reopen, with a reason, and not an incident about a class they own. Every change is kept
as a revision.

Opening an incident emails the school's administrators, marking it serious the
district's; an administrator responsible for the school acknowledges it
(``POST .../acknowledge``, ``incident.acknowledged``), which stops the escalation of an
unacknowledged incident (gateway/notify.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
import urllib.parse
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from .. import i18n, notify
from ..auth import Principal, require_user
from ..authz import Action, allows, listing_scope
from ..errors import ApiError, Refusal
from ..evidence_export import export_incident
from ..hostctl import class_target
from ..incidents import (
    MAX_ATTACHMENTS,
    SEVERITIES,
    Incident,
    IncidentStore,
    QuotaExceeded,
    Severity,
    Visitor,
)
from ..services import Services, services
from ..signin import require_fresh_second_factor
from ..stores import ClassInfo
from ..web_util import client_ip, read_json, require_fields

MAX_WINDOW_MS = 31 * 24 * 3600 * 1000
MAX_STUDENTS = 100
MAX_VISITORS = 20
MAX_INDEXES = 1000
MAX_FILES_PER_UPLOAD = 10
MAX_REASON = 1000
_DEVICE_RE = re.compile(r"[0-9a-f]{64}")
_CONTROL = {"Cc", "Cf", "Zl", "Zp"}


def incident_store(svc: Services) -> IncidentStore:
    return IncidentStore(svc.redis, svc.settings.redis_prefix, clock=svc.clock,
                         secretbox=svc.secretbox,
                         blob_dir=Path(svc.settings.data_dir) / "attachments")


def _text(value: Any, field: str, *, max_len: int, multiline: bool = False) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid_field", f"{field} must be a string", field=field)
    text = unicodedata.normalize("NFC", value)
    if multiline:
        lines = [" ".join("".join(ch for ch in line if unicodedata.category(ch) not in _CONTROL)
                          .split()) for line in text.replace("\r\n", "\n").split("\n")]
        text = "\n".join(lines).strip()
    else:
        text = " ".join("".join(ch for ch in text if unicodedata.category(ch) not in _CONTROL)
                        .split())
    if len(text) > max_len or (not multiline and not text):
        raise ApiError(400, "invalid_field", f"{field} must be 1-{max_len} characters",
                       field=field)
    return text


def _time_ms(value: Any, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if not isinstance(value, str) or len(value) > 40:
        raise ApiError(400, "invalid_field", f"{field} must be ISO 8601 with an offset",
                       field=field)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError(400, "invalid_field", f"{field} is not an ISO 8601 time",
                       field=field) from exc
    if dt.tzinfo is None:
        raise ApiError(400, "invalid_field", f"{field} needs a UTC offset, e.g. +07:00",
                       field=field)
    return int(dt.timestamp() * 1000)


def _visitors(value: Any) -> list[Visitor]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_VISITORS:
        raise ApiError(400, "invalid_field", f"visitors must be a list of at most "
                       f"{MAX_VISITORS}", field="visitors")
    out = []
    for n, v in enumerate(value):
        f = f"visitors[{n}]"
        d = require_fields(v, required=(), optional=("device", "ip"), where=f)
        dev, ip = d.get("device"), d.get("ip")
        if dev is not None and (not isinstance(dev, str) or not _DEVICE_RE.fullmatch(dev)):
            raise ApiError(400, "invalid_field", f"{f}.device must be a device hash "
                           "(64 hex characters, as in the audit log)", field=f"{f}.device")
        if ip is not None:
            try:
                ip = str(ipaddress.ip_address(str(ip)))
            except ValueError as exc:
                raise ApiError(400, "invalid_field", f"{f}.ip is not an IP address",
                               field=f"{f}.ip") from exc
        if not dev and not ip:
            raise ApiError(400, "missing_field", f"{f} needs device or ip", field=f)
        out.append(Visitor(device=dev, ip=ip))
    return out


def _str_list(value: Any, field: str, limit: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit or not all(
            isinstance(x, str) and 0 < len(x) <= 64 for x in value):
        raise ApiError(400, "invalid_field", f"{field} must be a list of at most {limit} ids",
                       field=field)
    return list(dict.fromkeys(value))


def _int_list(value: Any, field: str, limit: int) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value):
        raise ApiError(400, "invalid_field",
                       f"{field} must be a list of at most {limit} audit indexes", field=field)
    return sorted(set(value))


def _severity(value: Any) -> Severity:
    for s in SEVERITIES:
        if value == s:
            return s
    raise ApiError(400, "invalid_field", f"severity must be one of {', '.join(SEVERITIES)}",
                   field="severity")


def _custody_personal(request: web.Request) -> dict[str, str]:
    svc = services(request)
    return {"ip": client_ip(request, svc.settings.trusted_proxies),
            "ua": request.headers.get("User-Agent", "")[:512]}


async def class_for(svc: Services, p: Principal, cid: str) -> ClassInfo:
    """The class if this principal may report on it (404 otherwise, naming class_id)."""
    info = await svc.store.get_class(cid)
    if info is None or not allows(p, Action.VIEW_CLASS, await class_target(svc, info)):
        raise ApiError(404, "not_found", "class not found", field="class_id")
    return info


async def load_incident(request: web.Request, p: Principal) -> tuple[Incident, ClassInfo]:
    """The incident in the URL if this principal may see it (404 otherwise)."""
    svc = services(request)
    inc = await incident_store(svc).get(request.match_info["incident_id"])
    if inc is None:
        raise ApiError(404, "not_found", "incident not found")
    try:
        info = await class_for(svc, p, inc.class_id)
    except ApiError as exc:
        raise ApiError(404, "not_found", "incident not found") from exc
    return inc, info


async def visible_incidents(svc: Services, p: Principal, *, class_id: str | None = None,
                            status: str | None = None) -> list[Incident]:
    """Incidents this principal may see, newest first: a teacher's own classes, the org
    subtree for IT staff and administrators."""
    store = incident_store(svc)
    scope = listing_scope(p, Action.VIEW_CLASS)
    if scope == "subtree":
        ids = await store.ids_of_orgs(sorted(await svc.staff.org_subtree(p.org)))
    elif scope == "owned":
        classes = await svc.store.classes_of_owner(p.username)
        ids = await store.ids_of_classes([c.id for c in classes])
    else:
        ids = []
    out = []
    for iid in ids:
        inc = await store.get(iid)
        if inc is None or (class_id and inc.class_id != class_id) or \
                (status and inc.status != status):
            continue
        out.append(inc)
    return out


async def record_view(request: web.Request, p: Principal, inc: Incident, info: ClassInfo, *,
                      via: str | None = None) -> str:
    """Log that ``p`` opened the incident (``incident.view``, a custody event)."""
    svc = services(request)
    return await svc.auditor.record(
        "incident.view", actor=p.actor, org=info.org, class_id=info.id,
        facts={"incident": inc.id, "via": via}, personal=_custody_personal(request))


async def create(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    d = require_fields(await read_json(request),
                       required=("class_id", "title", "since", "until"),
                       optional=("description", "student_ids", "visitors", "indexes",
                                 "severity"))
    if not isinstance(d["class_id"], str):
        raise ApiError(400, "invalid_field", "class_id must be a string", field="class_id")
    info = await class_for(svc, p, d["class_id"])
    title = _text(d["title"], "title", max_len=200)
    description = _text(d.get("description") or "", "description", max_len=5000,
                        multiline=True)
    since, until = _time_ms(d["since"], "since"), _time_ms(d["until"], "until")
    if until <= since:
        raise ApiError(400, "invalid_field", "until must be after since", field="until")
    if until - since > MAX_WINDOW_MS:
        raise ApiError(400, "invalid_field", "the time window may span at most 31 days",
                       field="until")
    students = _str_list(d.get("student_ids"), "student_ids", MAX_STUDENTS)
    for sid in students:
        if await svc.store.student(info.id, sid) is None:
            raise ApiError(400, "invalid_field", f"student {sid!r} is not on this class's "
                           "roster", field="student_ids")
    visitors = _visitors(d.get("visitors"))
    indexes = _int_list(d.get("indexes"), "indexes", MAX_INDEXES)
    severity = _severity(d.get("severity") or "normal")
    # NOTE: title and description are free text and stay out of the immutable record;
    # visitors' addresses go in the erasable personal part. The incident's id is drawn
    # by the store, so only the outcome names it.
    async with svc.auditor.intended(
            "incident.create", actor=p.actor, org=info.org, class_id=info.id,
            facts={"since": since, "until": until, "student_ids": students,
                   "visitors": len(visitors) or None, "indexes": len(indexes) or None,
                   "hold": "placed",
                   "severity": severity if severity != "normal" else None},
            personal={**_custody_personal(request),
                      **({"visitors": [v.to_json() for v in visitors]} if visitors else {})},
    ) as out:
        inc = await incident_store(svc).create(
            org=info.org, class_id=info.id, title=title, description=description,
            since_ms=since, until_ms=until, student_ids=students, visitors=visitors,
            indexes=indexes, created_by=p.username, severity=severity)
        out.facts = {"incident": inc.id, **out.facts}
    await notify.incident_opened(svc, inc)
    return web.json_response(inc.to_json(), status=201)


async def list_incidents(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    found = await visible_incidents(svc, p, class_id=request.query.get("class_id"),
                                    status=request.query.get("status"))
    return web.json_response({"incidents": [inc.summary() for inc in found]})


async def detail(request: web.Request) -> web.Response:
    p = await require_user(request)
    inc, info = await load_incident(request, p)
    await record_view(request, p, inc, info)
    return web.json_response(inc.to_json())


async def update(request: web.Request) -> web.Response:
    """``PATCH``: edit the title or description (the reporter and administrators), close
    or reopen (administrators, with a reason, never about a class of their own). Every
    change is kept as a revision (``GET .../history``); nothing is overwritten unseen."""
    svc = services(request)
    p = await require_user(request)
    inc, info = await load_incident(request, p)
    d = require_fields(await read_json(request), required=(),
                       optional=("status", "title", "description", "reason", "severity"))
    if not any(k in d for k in ("status", "title", "description", "severity")):
        raise ApiError(400, "missing_field", "nothing to change", field="status")
    store = incident_store(svc)
    title = _text(d["title"], "title", max_len=200) if "title" in d else None
    description = (_text(d["description"], "description", max_len=5000, multiline=True)
                   if "description" in d else None)
    reason = (_text(d["reason"], "reason", max_len=MAX_REASON, multiline=True) or None
              if d.get("reason") is not None else None)
    severity = _severity(d["severity"]) if "severity" in d else None
    status = d.get("status")
    if status is not None and not isinstance(status, str):
        raise ApiError(400, "invalid_field", "status must be a string", field="status")
    target = await class_target(svc, info)
    if (title is not None or description is not None or severity is not None) and not allows(
            p, Action.EDIT_INCIDENT, replace(target, owner=inc.created_by)):
        raise Refusal(403, "forbidden", "only the reporter and administrators edit an "
                      "incident", class_id=info.id, org=info.org)
    if status is not None and status != inc.status:
        if status == "exported":
            raise ApiError(400, "invalid_field", "an incident becomes exported by exporting it",
                           field="status")
        if not allows(p, Action.DECIDE_INCIDENT, target):
            raise Refusal(403, "forbidden", "only administrators close or reopen an incident",
                          class_id=info.id, org=info.org)
        if status == "closed" and info.owner == p.username:
            raise Refusal(403, "own_class", "an incident about a class of your own is closed "
                          "by another administrator", class_id=info.id, org=info.org)
        if reason is None:
            raise ApiError(400, "missing_field", "closing or reopening needs a reason",
                           field="reason")
    # NOTE: the reason is the person's own words: it goes in the erasable personal part.
    # The revision and the status change (and so the legal hold) follow their intent.
    async with svc.auditor.intended(
            "incident.update", actor=p.actor, org=info.org, class_id=info.id,
            facts={"incident": inc.id, "status": status,
                   "severity": severity if severity != inc.severity else None,
                   "changed": sorted(k for k in d if k in ("title", "description")) or None},
            personal={**_custody_personal(request), **({"reason": reason} if reason else {})}):
        before = await store.revise(inc.id, by=p.username, title=title,
                                    description=description, status=status,
                                    severity=severity, reason=reason)
        fresh = await store.get(inc.id)
        assert fresh is not None
    if inc.severity != "serious" and fresh.severity == "serious":
        await notify.incident_marked_serious(svc, fresh)
    if before != fresh.status and "closed" in (before, fresh.status):
        await svc.auditor.record(
            "incident.hold", actor=p.actor, org=info.org, class_id=info.id,
            facts={"incident": inc.id,
                   "hold": "released" if fresh.status == "closed" else "placed"})
    return web.json_response(fresh.to_json())


async def acknowledge(request: web.Request) -> web.Response:
    """An administrator responsible for the incident's school (of the school or an org
    above it) takes it in hand: recorded once (``incident.acknowledged``), it stops the
    escalation of an unacknowledged incident. Acknowledging again changes nothing."""
    svc = services(request)
    assert svc.auditor is not None
    p = await require_user(request)
    inc, info = await load_incident(request, p)
    if not allows(p, Action.DECIDE_INCIDENT, await class_target(svc, info)):
        raise Refusal(403, "forbidden", "only administrators responsible for the school "
                      "acknowledge an incident", class_id=info.id, org=info.org)
    store = incident_store(svc)
    if inc.acknowledged_by is None:
        async with svc.auditor.intended(
                "incident.acknowledged", actor=p.actor, org=info.org, class_id=info.id,
                facts={"incident": inc.id}) as out:
            first, by, at = await store.acknowledge(inc.id, by=p.username)
            if not first:
                out.facts["already"] = {"by": by, "at": at}
        await notify.incident_acknowledged(svc, inc)
    fresh = await store.get(inc.id)
    assert fresh is not None
    return web.json_response(fresh.to_json())


async def notifications(request: web.Request) -> web.Response:
    """What was emailed about the incident, to which org, and how it went."""
    svc = services(request)
    p = await require_user(request)
    inc, _ = await load_incident(request, p)
    q = notify.NotifyQueue(svc.redis, svc.settings.redis_prefix, clock=svc.clock)
    return web.json_response({"notifications": await q.results(inc.id)})


async def history(request: web.Request) -> web.Response:
    """``GET .../history``: every revision, oldest first (a custody view, logged)."""
    svc = services(request)
    p = await require_user(request)
    inc, info = await load_incident(request, p)
    revisions = await incident_store(svc).history(inc.id)
    await record_view(request, p, inc, info, via="history")
    return web.json_response({"revisions": [r.to_json() for r in revisions]})


def _filename(raw: str | None) -> str:
    # aiohttp's client (and some others) percent-encode non-ASCII names; browsers do not
    text = urllib.parse.unquote(raw or "", errors="replace")
    name = unicodedata.normalize("NFC", text).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in _CONTROL).strip()
    return name[:200] or "attachment"


def _over_quota(used: int, quota: int) -> ApiError:
    return ApiError(413, "quota_exceeded",
                    f"your organisation stores {used} bytes of incident attachments and may "
                    f"store {quota} (attachment_org_quota_bytes)", field="file",
                    extra={"used_bytes": used, "quota_bytes": quota})


async def attach(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    inc, info = await load_incident(request, p)
    if inc.status == "closed":
        raise ApiError(409, "incident_closed", "a closed incident takes no more attachments")
    if not request.content_type.startswith("multipart/"):
        raise ApiError(415, "unsupported_media_type", "expected multipart/form-data")
    limit = svc.settings.attachment_max_bytes
    quota = svc.settings.attachment_org_quota_bytes
    store = incident_store(svc)
    used = await store.usage(inc.org)
    reader = await request.multipart()
    added: list[dict[str, Any]] = []
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader) or part.filename is None:
            raise ApiError(400, "invalid_body", "every part must be a file")
        if len(added) >= MAX_FILES_PER_UPLOAD or \
                len(inc.attachments) + len(added) >= MAX_ATTACHMENTS:
            raise ApiError(413, "too_many_attachments",
                           f"at most {MAX_FILES_PER_UPLOAD} files per upload and "
                           f"{MAX_ATTACHMENTS} per incident")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await part.read_chunk(256 * 1024)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"an attachment may be at most {limit} bytes",
                               field="file")
            if used + size > quota:  # early: the store checks again atomically
                raise _over_quota(used, quota)
            chunks.append(chunk)
        if size == 0:
            raise ApiError(400, "empty", "the file is empty", field="file")
        fresh = await store.get(inc.id)
        assert fresh is not None
        data = b"".join(chunks)
        filename = _filename(part.filename)
        # NOTE: the file name is the uploader's words: it goes in the erasable personal part.
        async with svc.auditor.intended(
                "incident.attach", actor=p.actor, org=info.org, class_id=info.id,
                facts={"incident": inc.id, "sha256": hashlib.sha256(data).hexdigest(),
                       "size": size},
                personal={"filename": filename, **_custody_personal(request)}) as out:
            try:
                att = await store.add_attachment(fresh, filename=filename, data=data,
                                                 uploaded_by=p.username, quota=quota)
            except QuotaExceeded as exc:
                raise _over_quota(exc.used, quota) from exc
            out.facts = {"incident": inc.id, "attachment": att.id, "sha256": att.sha256,
                         "size": att.size, "content_type": att.content_type}
            out.personal = {"filename": att.filename, **_custody_personal(request)}
        used += att.size
        added.append(att.to_json())
    if not added:
        raise ApiError(400, "missing_field", "no file in the upload", field="file")
    return web.json_response({"attachments": added}, status=201)


async def evidence(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    inc, info = await load_incident(request, p)
    if not allows(p, Action.EXPORT_EVIDENCE, await class_target(svc, info)):
        raise ApiError(403, "forbidden", "only administrators export evidence")
    await require_fresh_second_factor(request, p)
    lang = request.query.get("lang") or svc.settings.default_lang
    if lang not in i18n.LANGS:
        raise ApiError(400, "invalid_field", "lang must be vi or en", field="lang")
    # The gateway's own sequencer (whichever process leads) indexes and signs; the export
    # waits for it to cover everything appended so far (see wait_sequenced).
    result = await export_incident(svc, incident_store(svc), inc, exporter=p.actor, lang=lang,
                                   exporter_personal=_custody_personal(request))
    b = result.bundle
    return web.Response(
        body=b.data, content_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="evidence-{inc.id}.zip"',
            "X-Evidence-SHA256": b.sha256,
            "X-Evidence-Manifest-SHA256": b.manifest_sha256,
            "X-Evidence-Export-Id": result.export_id,
        },
    )


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/v1/incidents", create)
    r.add_get("/api/v1/incidents", list_incidents)
    r.add_get("/api/v1/incidents/{incident_id}", detail)
    r.add_patch("/api/v1/incidents/{incident_id}", update)
    r.add_get("/api/v1/incidents/{incident_id}/history", history)
    r.add_post("/api/v1/incidents/{incident_id}/acknowledge", acknowledge)
    r.add_get("/api/v1/incidents/{incident_id}/notifications", notifications)
    r.add_post("/api/v1/incidents/{incident_id}/attachments", attach)
    r.add_get("/api/v1/incidents/{incident_id}/evidence.zip", evidence)
