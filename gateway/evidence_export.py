"""Export an incident as an evidence bundle: gather from Redis, render, sign, zip.

The pure layout, hashing, signing and offline verification live in ``audit.evidence``;
this module gathers the incident's records from the log, decides which may go in, and
renders the human-readable report (HTML with Jinja2, autoescaped; PDF with fpdf2 and the
bundled DejaVu font for Vietnamese diacritics).

Which records go in (the redaction rule, see docs/evidence.md):

* every record of the incident's class in its time window that concerns a person involved
  (names an involved student as actor or subject, or carries an involved visitor's device
  or address in its personal fields), every host action and every alert of the class in
  the window, the audit indexes the incident lists explicitly, and the incident's own
  custody records (created, viewed, edited, attached, earlier exports);
* **except** any record that names a student who is not involved: its record ``E`` would
  put that child's id in the bundle and cannot be edited without breaking its proof. Such
  records are left out and counted ("withheld") in the report. Their leaves only appear as
  hashes inside other records' inclusion proofs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import getpass
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata, resources
from typing import Any, cast
from zoneinfo import ZoneInfo

from fpdf import FPDF

from audit import AuditError, AuditLog, AuditQuery, Checkpoint, NotLeaderError, Sequencer, TlogProof
from audit.evidence import (
    Bundle,
    BundleEvent,
    BundleInputs,
    build_bundle,
    key_fingerprint,
    verify_bundle,
)
from audit.records import decode_personal
from audit.store import student_ids

from . import i18n
from .app import Services, make_templates
from .incidents import Incident, IncidentError, IncidentStore, Revision

LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")
ALERT_TYPES = ("presence.",)
PROOF_CONCURRENCY = 32


def tool_version() -> str:
    try:
        return metadata.version("classguard")
    except metadata.PackageNotFoundError:
        return "0.1.0 (source tree)"


# --- waiting for the sequencer ---


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def wait_outbox_drained(svc: Services, class_id: str, *, deadline: float,
                              sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
                              ) -> bool:
    """Wait until every record already in ``class_id``'s outbox (audit.outbox: the class's
    events, written with their change) has been moved into the log's stream; False when
    ``time.monotonic()`` passes ``deadline`` first. The stream's own tail says nothing
    about them: the sequencer moves them there later, with later ids."""
    log, rb, store = svc.audit_log, svc.redis_bytes, svc.store
    assert log is not None and rb is not None and store is not None
    box = store.k.outbox(class_id)
    last = await rb.xrevrange(box, count=1)
    if not last:
        return True
    target = _stream_id(cast(bytes, last[0][0]))
    while True:
        cursor = await cast(Awaitable[bytes | None], rb.hget(log.keys.outbox_cursors, box))
        if cursor and _stream_id(cursor) >= target:
            return True
        if time.monotonic() > deadline:
            return False
        await sleep(0.02)


async def wait_sequenced(
    svc: Services,
    *,
    timeout_s: float = 15.0,
    sequencer: Sequencer | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    class_id: str | None = None,
) -> str:
    """Wait until everything appended so far is sequenced and a checkpoint covers it.

    Returns that signed checkpoint. The sequencer assigns indexes asynchronously (one
    leader among the gateway processes); when ``sequencer`` is given and the lease is
    free, it does the work now, otherwise this polls the leader's progress.
    """
    log, rb = svc.audit_log, svc.redis_bytes
    assert log is not None and rb is not None
    deadline = time.monotonic() + timeout_s
    # NOTE: the class's records reach the stream through its outbox: wait for them
    # first, or the bundle would miss the newest ones (the export's own view included).
    if class_id is not None and sequencer is not None:
        with contextlib.suppress(NotLeaderError):
            await sequencer.sync(checkpoint=False)
    if class_id is not None and not await wait_outbox_drained(svc, class_id,
                                                              deadline=deadline, sleep=sleep):
        raise IncidentError(
            "log_not_sequenced",
            f"expected the class's audit records to be sequenced within {timeout_s:.0f} s, "
            "found them behind; is a gateway (sequencer) running?", status=503)
    last = await rb.xrevrange(log.keys.stream, count=1)
    target = _stream_id(cast(bytes, last[0][0])) if last else None
    if sequencer is not None:
        try:
            await sequencer.sync()
        except NotLeaderError:
            pass  # another process leads and will get there; poll below
    needed: int | None = None
    while True:
        if needed is None:
            size_b, last_b = await cast(
                Awaitable[list[bytes | None]], rb.hmget(log.keys.meta, ["size", "last_id"])
            )
            if target is None or _stream_id(last_b or b"0-0") >= target:
                needed = int(size_b or 0)
        if needed is not None:
            note = await log.latest_checkpoint()
            if note is not None and _checkpoint_size(note) >= needed:
                return note
            if needed == 0:
                raise IncidentError("log_empty", "the audit log holds no records yet",
                                    status=409)
        if time.monotonic() > deadline:
            raise IncidentError(
                "log_not_sequenced",
                f"expected the audit log to be sequenced and signed within {timeout_s:.0f} s, "
                "found it behind; is a gateway (sequencer) running?", status=503)
        await sleep(0.02)


def _checkpoint_size(note: str) -> int:
    return Checkpoint.parse_body(note[: note.rfind("\n\n") + 1]).size


# --- gathering ---


@dataclass(slots=True)
class Gathered:
    events: list[BundleEvent] = field(default_factory=list)
    withheld: int = 0  # records of the window naming students who are not involved
    custody: list[BundleEvent] = field(default_factory=list)


def _facts(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    f = rec.get("facts")
    return f if isinstance(f, dict) else {}


def names_others(rec: Mapping[str, Any], involved: set[str]) -> bool:
    """True when the record names a student id outside ``involved``."""
    ids: set[str] = set()
    for sid in student_ids(rec):
        ids.update(x for x in sid.split(",") if x)  # host actions list several
    return bool(ids - involved)


def concerns(rec: Mapping[str, Any], personal: Mapping[str, Any] | None, inc: Incident) -> bool:
    involved = set(inc.student_ids)
    ids: set[str] = set()
    for sid in student_ids(rec):
        ids.update(x for x in sid.split(",") if x)
    if ids & involved:
        return True
    t = str(rec.get("type", ""))
    if t.startswith("host.") or t.startswith(ALERT_TYPES):
        return True
    if personal:
        ips = {v.ip for v in inc.visitors if v.ip}
        devices = {v.device for v in inc.visitors if v.device}
        if personal.get("ip") in ips or personal.get("device") in devices:
            return True
    return False


def is_custody(rec: Mapping[str, Any], iid: str) -> bool:
    return str(rec.get("type", "")).startswith("incident.") and _facts(rec).get("incident") == iid


async def _personal_many(svc: Services, indexes: Sequence[int]
                         ) -> dict[int, tuple[dict[str, Any], bytes]]:
    """``(P, salt)`` of many records in one round trip per 1000 (absent when erased)."""
    log, rb = svc.audit_log, svc.redis_bytes
    assert log is not None and rb is not None
    out: dict[int, tuple[dict[str, Any], bytes]] = {}
    for i in range(0, len(indexes), 1000):
        chunk = list(indexes[i : i + 1000])
        blobs = await cast(Awaitable[list[bytes | None]],
                           rb.hmget(log.keys.personal, [str(x) for x in chunk]))
        for idx, blob in zip(chunk, blobs, strict=True):
            if blob is not None:
                out[idx] = decode_personal(blob)
    return out


async def _query_all(log: AuditLog, q: AuditQuery, limit: int = 200_000) -> list[Any]:
    found: list[Any] = []
    cursor: str | None = None
    while True:
        page, cursor = await log.query(q, limit=1000, cursor=cursor, max_scan=100_000)
        found.extend(page)
        if cursor is None or len(found) >= limit:
            return found[:limit]


async def gather(svc: Services, inc: Incident, size: int) -> Gathered:
    """The incident's records at log size ``size``, with ``(P, salt)``; see the module doc."""
    log = svc.audit_log
    assert log is not None
    involved = set(inc.student_ids)
    window = await _query_all(log, AuditQuery(class_id=inc.class_id, since_ms=inc.since_ms,
                                              until_ms=inc.until_ms))
    after = await _query_all(log, AuditQuery(class_id=inc.class_id,
                                             since_ms=int(inc.created_at * 1000) - 60_000))
    records: dict[int, Mapping[str, Any]] = {}
    custody_ix: set[int] = set()
    for ev in window:
        if ev.index < size and not is_custody(ev.record, inc.id) \
                and not str(ev.record.get("type", "")).startswith("incident."):
            records[ev.index] = ev.record
    for ev in after:
        if ev.index < size and is_custody(ev.record, inc.id):
            records[ev.index] = ev.record
            custody_ix.add(ev.index)
    for idx in inc.indexes:
        if idx < size and idx not in records:
            try:
                got = await log.read(idx)
            except AuditError:  # archived or missing: nothing to disclose
                got = None
            if got is not None and got.record.get("class") == inc.class_id:
                records[idx] = got.record
    personal = await _personal_many(svc, sorted(records))
    out = Gathered()
    explicit = set(inc.indexes)
    for idx in sorted(records):
        rec = records[idx]
        p_salt = personal.get(idx)
        p = p_salt[0] if p_salt else None
        if idx not in custody_ix:
            if names_others(rec, involved):
                out.withheld += 1
                continue
            if idx not in explicit and not concerns(rec, p, inc):
                continue
        ev = BundleEvent(idx, rec, p, p_salt[1] if p_salt else None)
        out.events.append(ev)
        if idx in custody_ix:
            out.custody.append(ev)
    return out


async def proofs_for(log: AuditLog, indexes: Sequence[int], checkpoint: str
                     ) -> dict[int, TlogProof]:
    sem = asyncio.Semaphore(PROOF_CONCURRENCY)

    async def one(i: int) -> tuple[int, TlogProof]:
        async with sem:
            return i, await log.tlog_proof(i, checkpoint)

    return dict(await asyncio.gather(*(one(i) for i in indexes)))


# --- the report ---


def _when(ms: int) -> tuple[str, str]:
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return (dt.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M:%S"),
            dt.strftime("%Y-%m-%d %H:%M:%S"))


def _short(device: Any) -> str:
    return str(device)[:12] if device else ""


@dataclass(slots=True)
class ReportModel:
    lang: str
    school: str
    org_chain: list[str]
    class_title: str
    class_id: str
    platform: str
    teacher: str
    incident: dict[str, Any]
    window: dict[str, str]
    timeline: list[dict[str, Any]]
    students: list[dict[str, Any]]
    visitors: list[dict[str, Any]]
    host_actions: list[dict[str, Any]]
    attachments: list[dict[str, Any]]
    custody: list[dict[str, Any]]
    withheld: int
    revisions: list[dict[str, Any]]
    exporter: str
    exported_at: dict[str, str]
    checkpoint_size: int
    origin: str
    verifier_key: str
    fingerprint: str

    def t(self, key: str, **kw: Any) -> str:
        return i18n.t(self.lang, key, **kw)


def _label(lang: str, prefix: str, value: str) -> str:
    key = f"{prefix}.{value}"
    text = i18n.t(lang, key)
    return value if text == key else text


def _visitor_no(p: Mapping[str, Any], inc: Incident) -> int | None:
    for n, v in enumerate(inc.visitors, start=1):
        if (v.ip and p.get("ip") == v.ip) or (v.device and p.get("device") == v.device):
            return n
    return None


def _row(lang: str, ev: BundleEvent, names: Mapping[str, str], inc: Incident
         ) -> dict[str, Any]:
    rec, p = ev.record, ev.personal or {}
    local, utc = _when(int(rec.get("ts", 0)))
    ids = sorted(x for sid in student_ids(rec) for x in sid.split(",") if x)
    actor = str(rec.get("actor", ""))
    visitor = _visitor_no(p, inc) if actor.startswith("student:") or actor == "visitor" \
        else None
    if visitor is not None:
        # someone else on the student's link: say so, and whose link it was
        person = f"{i18n.t(lang, 'evidence.col_visitor')} {visitor}"
        if ids:
            person += " → " + ", ".join(names.get(i, i) for i in ids)
    elif actor.startswith("student:") or actor == "visitor":
        person = ", ".join(names.get(i, i) for i in ids) or i18n.t(lang, "evidence.visitor")
    else:
        person = actor.split(":", 1)[-1]
        if ids:
            person += " → " + ", ".join(names.get(i, i) for i in ids)
    facts = _facts(rec)
    detail = ", ".join(
        f"{k}={facts[k]}" for k in ("action", "upstream", "scope", "sha256", "export_id")
        if facts.get(k) not in (None, "")
    )
    if p.get("note"):
        detail = (detail + "; " if detail else "") + str(p["note"])
    return {
        "index": ev.index,
        "local": local,
        "utc": utc,
        "type": _label(lang, "evidence.type", str(rec.get("type", ""))),
        "type_code": str(rec.get("type", "")),
        "person": person,
        "reason": _label(lang, "reason", str(rec.get("reason", ""))) if rec.get("reason") else "",
        "ip": str(p.get("ip", "")),
        "device": _short(p.get("device")),
        "detail": detail,
    }


def revision_rows(lang: str, revisions: Sequence[Revision]) -> list[dict[str, Any]]:
    """The incident's history for the report: one row per changed field."""
    rows: list[dict[str, Any]] = []
    for rev in revisions:
        local, utc = _when(int(rev.at * 1000))
        for name, (old, new) in rev.changes.items():
            if name in ("status", "severity"):
                old = _label(lang, f"incident.{name}", old) if old else old
                new = _label(lang, f"incident.{name}", new) if new else new
            rows.append({"n": rev.n, "at": rev.at, "local": local, "utc": utc, "by": rev.by,
                         "field": i18n.t(lang, f"evidence.field.{name}"),
                         "old": old if old is not None else "—",
                         "new": new if new is not None else "—",
                         "reason": rev.reason or ""})
    return rows


async def build_report_model(
    svc: Services, inc: Incident, got: Gathered, *, lang: str, exporter: str,
    exported_at_ms: int, checkpoint_note: str, attachments: Sequence[dict[str, Any]],
    revisions: Sequence[Revision] = (),
) -> ReportModel:
    store, staff, key = svc.store, svc.staff, svc.audit_key
    assert store is not None and staff is not None and key is not None
    info = await store.get_class(inc.class_id)
    if info is None:
        raise IncidentError("not_found", "the incident's class no longer exists", status=404)
    chain = list(reversed(await staff.org_ancestors(info.org)))  # top org first
    orgs = [await staff.get_org(o) for o in chain]
    org_names = [o.name for o in orgs if o is not None]
    school = org_names[-1] if org_names else info.org
    names: dict[str, str] = {}
    students = []
    for sid in inc.student_ids:
        st = await store.student(inc.class_id, sid)
        names[sid] = st.name if st else sid
    timeline = [_row(lang, ev, names, inc) for ev in got.events]
    for sid in inc.student_ids:
        st = await store.student(inc.class_id, sid)
        # what the student's own devices did: events of a visitor on their link are
        # listed under that visitor
        seen = [ev for ev in got.events if sid in {
            x for s in student_ids(ev.record) for x in s.split(",")}
            and _visitor_no(ev.personal or {}, inc) is None]
        ips = sorted({str(ev.personal["ip"]) for ev in seen
                      if ev.personal and ev.personal.get("ip")})
        devs = sorted({_short(ev.personal["device"]) for ev in seen
                       if ev.personal and ev.personal.get("device")})
        students.append({"id": sid, "name": names[sid],
                         "external_id": (st.external_id if st else None) or "",
                         "ips": ips, "devices": devs, "records": len(seen)})
    visitors = []
    for v in inc.visitors:
        seen = [ev for ev in got.events if ev.personal and (
            (v.ip and ev.personal.get("ip") == v.ip)
            or (v.device and ev.personal.get("device") == v.device))]
        links = sorted({names.get(str(ev.record.get("subject")), str(ev.record.get("subject")))
                        for ev in seen if ev.record.get("type") == "join"
                        and ev.record.get("subject")})
        uas = sorted({str(ev.personal["ua"]) for ev in seen
                      if ev.personal and ev.personal.get("ua")})
        ips = sorted({str(ev.personal["ip"]) for ev in seen
                      if ev.personal and ev.personal.get("ip")} | ({v.ip} if v.ip else set()))
        devs = sorted({_short(ev.personal["device"]) for ev in seen
                       if ev.personal and ev.personal.get("device")}
                      | ({_short(v.device)} if v.device else set()))
        visitors.append({"ips": ips, "devices": devs, "links": links, "user_agents": uas[:5],
                         "records": len(seen)})
    custody = []
    for ev in got.custody:
        local, utc = _when(int(ev.record.get("ts", 0)))
        custody.append({"index": ev.index, "local": local, "utc": utc,
                        "action": _label(lang, "evidence.type", str(ev.record.get("type"))),
                        "actor": str(ev.record.get("actor", "")).split(":", 1)[-1]})
    vkey = key.verifier()
    since_l, since_u = _when(inc.since_ms)
    until_l, until_u = _when(inc.until_ms)
    exp_l, exp_u = _when(exported_at_ms)
    created_l, created_u = _when(int(inc.created_at * 1000))
    return ReportModel(
        lang=lang, school=school, org_chain=org_names, class_title=info.title,
        class_id=info.id, platform=info.platform_kind, teacher=info.owner,
        incident={"id": inc.id, "title": inc.title, "description": inc.description,
                  "created_by": inc.created_by, "created_local": created_l,
                  "created_utc": created_u},
        window={"since_local": since_l, "since_utc": since_u, "until_local": until_l,
                "until_utc": until_u},
        timeline=timeline, students=students, visitors=visitors,
        host_actions=[r for r in timeline if r["type_code"].startswith("host.")],
        attachments=list(attachments), custody=custody, withheld=got.withheld,
        revisions=revision_rows(lang, revisions),
        exporter=exporter, exported_at={"local": exp_l, "utc": exp_u},
        checkpoint_size=_checkpoint_size(checkpoint_note), origin=svc.settings.audit_origin,
        verifier_key=vkey.encode(), fingerprint=key_fingerprint(vkey),
    )


def render_html(m: ReportModel) -> bytes:
    env = make_templates()
    return env.get_template("report.html").render(m=m, lang=m.lang).encode()


def _font(name: str) -> str:
    return str(resources.files("gateway").joinpath("fonts", name))


class _ReportPDF(FPDF):
    footer_text = ""

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("DejaVu", "", 7)
        self.cell(0, 5, f"{self.footer_text}  ·  {self.page_no()}/{{nb}}", align="C")


def render_pdf(m: ReportModel) -> bytes:
    t = m.t
    pdf = _ReportPDF(orientation="L", unit="mm", format="A4")
    pdf.footer_text = f"ClassGuard · {m.incident['id']}"
    pdf.add_font("DejaVu", "", _font("DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", _font("DejaVuSans-Bold.ttf"))
    pdf.set_title(f"{t('evidence.report_title')} {m.incident['id']}")
    pdf.set_creator(f"ClassGuard {tool_version()}")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    w = pdf.epw

    def h1(text: str) -> None:
        pdf.set_font("DejaVu", "B", 15)
        pdf.multi_cell(w, 8, text, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)

    def h2(text: str) -> None:
        pdf.ln(3)
        pdf.set_font("DejaVu", "B", 11)
        pdf.multi_cell(w, 6, text, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("DejaVu", "", 8.5)

    def para(text: str) -> None:
        pdf.set_font("DejaVu", "", 8.5)
        pdf.multi_cell(w, 4.6, text, new_x="LMARGIN", new_y="NEXT")

    def table(head: Sequence[str], rows: Sequence[Sequence[str]],
              widths: Sequence[float]) -> None:
        _fast_table(pdf, head, rows, [x * w / sum(widths) for x in widths])

    h1(f"{t('evidence.report_title')}: {m.incident['title']}")
    facts = [
        (t("evidence.school"), " / ".join(m.org_chain) or m.school),
        (t("evidence.class"), f"{m.class_title} ({m.class_id})"),
        (t("evidence.platform"), m.platform),
        (t("evidence.teacher"), m.teacher),
        (t("evidence.incident_id"), m.incident["id"]),
        (t("evidence.window"), f"{m.window['since_local']} → {m.window['until_local']} "
                               f"(Asia/Ho_Chi_Minh, UTC+7)"),
        ("", f"{m.window['since_utc']} → {m.window['until_utc']} (UTC)"),
        (t("evidence.reported_by"), f"{m.incident['created_by']}, "
                                    f"{m.incident['created_local']} (UTC+7)"),
        (t("evidence.exported_by"), f"{m.exporter}, {m.exported_at['local']} (UTC+7) / "
                                    f"{m.exported_at['utc']} (UTC)"),
    ]
    pdf.set_font("DejaVu", "", 9)
    for k, v in facts:
        pdf.set_font("DejaVu", "B", 9)
        pdf.cell(45, 5, k)
        pdf.set_font("DejaVu", "", 9)
        pdf.multi_cell(w - 45, 5, v, new_x="LMARGIN", new_y="NEXT")
    if m.incident["description"]:
        h2(t("evidence.description"))
        para(m.incident["description"])

    h2(t("evidence.history"))
    para(t("evidence.history_note"))
    table([t("evidence.col_revision"), t("evidence.col_time") + " (UTC+7)", "UTC",
           t("evidence.col_by"), t("evidence.col_field"), t("evidence.col_old"),
           t("evidence.col_new"), t("evidence.col_reason")],
          [[str(r["n"]), r["local"], r["utc"], r["by"], r["field"], r["old"], r["new"],
            r["reason"]] for r in m.revisions],
          (12, 30, 30, 30, 25, 70, 70, 45))

    h2(t("evidence.people"))
    if m.students:
        table([t("evidence.col_name"), t("evidence.col_student_id"), t("evidence.col_ips"),
               t("evidence.col_devices"), t("evidence.col_records")],
              [[s["name"], f"{s['id']} {s['external_id']}".strip(), ", ".join(s["ips"]),
                ", ".join(s["devices"]), str(s["records"])] for s in m.students],
              (50, 45, 60, 80, 20))
    if m.visitors:
        pdf.ln(2)
        table([t("evidence.col_visitor"), t("evidence.col_ips"), t("evidence.col_devices"),
               t("evidence.col_links_used"), t("evidence.col_user_agents")],
              [[str(n + 1), ", ".join(v["ips"]), ", ".join(v["devices"]),
                ", ".join(v["links"]), "; ".join(v["user_agents"])]
               for n, v in enumerate(m.visitors)],
              (18, 45, 45, 60, 110))

    h2(t("evidence.host_actions"))
    if m.host_actions:
        table([t("evidence.col_time"), t("evidence.col_action"), t("evidence.col_person"),
               t("evidence.col_detail")],
              [[r["local"], r["type"], r["person"], r["detail"]] for r in m.host_actions],
              (35, 50, 70, 120))
    else:
        para(t("evidence.none"))

    h2(t("evidence.timeline") + f" ({len(m.timeline)})")
    para(t("evidence.timeline_note"))
    table([t("evidence.col_index"), t("evidence.col_time") + " (UTC+7)", "UTC",
           t("evidence.col_event"), t("evidence.col_person"), t("evidence.col_reason"),
           t("evidence.col_ip"), t("evidence.col_device"), t("evidence.col_detail")],
          [[str(r["index"]), r["local"], r["utc"][11:], r["type"], r["person"], r["reason"],
            r["ip"], r["device"], r["detail"]] for r in m.timeline],
          (16, 30, 16, 34, 40, 44, 26, 22, 49))
    if m.withheld:
        para(t("evidence.withheld", n=m.withheld))

    h2(t("evidence.attachments"))
    if m.attachments:
        table([t("evidence.col_file"), t("evidence.col_original"), t("evidence.col_type"),
               t("evidence.col_size"), "SHA-256"],
              [[a["path"], a["filename"], a["content_type"], str(a["size"]), a["sha256"]]
               for a in m.attachments],
              (55, 50, 30, 20, 122))
    else:
        para(t("evidence.none"))

    h2(t("evidence.custody"))
    table([t("evidence.col_time") + " (UTC+7)", "UTC", t("evidence.col_action"),
           t("evidence.col_by"), t("evidence.col_index")],
          [[c["local"], c["utc"], c["action"], c["actor"], str(c["index"])]
           for c in m.custody] + [[m.exported_at["local"], m.exported_at["utc"],
                                   t("evidence.type.incident.export"), m.exporter,
                                   t("evidence.this_export")]],
          (40, 40, 60, 60, 77))

    # NOTE: the instructions and the key they name stay on one page (never the key alone)
    if pdf.get_y() + 45 > pdf.page_break_trigger:
        pdf.add_page()
    h2(t("evidence.how_to_verify"))
    para(t("evidence.how_to_verify_text", size=m.checkpoint_size, origin=m.origin))
    pdf.set_font("DejaVu", "", 7.5)
    pdf.multi_cell(w, 4, f"{t('evidence.verifier_key')}: {m.verifier_key}\n"
                         f"{t('evidence.fingerprint')}: {m.fingerprint}",
                   new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


_FONT_SIZE = 7.0
_LINE_H = 3.3
_PAD = 0.8


def _wrap(text: str, width: float, measure: Callable[[str], float]) -> list[str]:
    """Greedy word wrap; words wider than the cell are cut by characters."""
    lines: list[str] = []
    for para in text.split("\n") or [""]:
        line = ""
        for word in para.split(" "):
            candidate = f"{line} {word}" if line else word
            if measure(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and measure(word) > width:
                cut = len(word) - 1
                while cut > 1 and measure(word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _fast_table(pdf: FPDF, head: Sequence[str], rows: Sequence[Sequence[str]],
                widths: Sequence[float]) -> None:
    """A bordered table drawn with low-level calls.

    NOTE: fpdf2's ``table()`` lays every row out twice and took ~14 s for a 1,000-row
    timeline; measuring each distinct word once keeps a 1,000-row report well under 1 s.
    """
    cache: dict[tuple[str, str], float] = {}
    style = ""

    def measure(text: str) -> float:
        key = (style, text)
        got = cache.get(key)
        if got is None:
            got = cache[key] = pdf.get_string_width(text)
        return got

    x0 = pdf.l_margin
    bottom = pdf.h - pdf.b_margin

    def draw(cells: Sequence[str], bold: bool) -> None:
        nonlocal style
        style = "B" if bold else ""
        pdf.set_font("DejaVu", style, _FONT_SIZE)
        wrapped = [_wrap(str(c), wd - 2 * _PAD, measure) for c, wd in zip(cells, widths,
                                                                           strict=True)]
        h = max(len(lines) for lines in wrapped) * _LINE_H + 2 * _PAD
        if pdf.get_y() + h > bottom:
            pdf.add_page()
            if not bold:
                draw(head, True)
                pdf.set_font("DejaVu", "", _FONT_SIZE)
                style = ""
        y = pdf.get_y()
        x = x0
        for lines, wd in zip(wrapped, widths, strict=True):
            if bold:
                pdf.set_fill_color(225, 225, 225)
                pdf.rect(x, y, wd, h, style="DF")
            else:
                pdf.rect(x, y, wd, h)
            for n, line in enumerate(lines):
                if line:
                    pdf.text(x + _PAD, y + _PAD + (n + 0.8) * _LINE_H, line)
            x += wd
        pdf.set_xy(x0, y + h)

    pdf.set_draw_color(160, 160, 160)
    pdf.set_line_width(0.15)
    draw(head, True)
    for row in rows:
        draw(row, False)
    pdf.set_font("DejaVu", "", 8.5)


def verify_txt(lang: str, m: ReportModel) -> bytes:
    """VERIFY.txt in the report's language, then in the other one."""
    other = "en" if lang == "vi" else "vi"
    parts = [i18n.t(x, "evidence.verify_txt", incident=m.incident["id"], origin=m.origin,
                    size=m.checkpoint_size, vkey=m.verifier_key, fingerprint=m.fingerprint)
             for x in (lang, other)]
    return ("\n\n" + "=" * 72 + "\n\n").join(parts).encode()


def custody_json(inc: Incident, got: Gathered, *, exporter: str, exported_at_ms: int,
                 export_id: str, revisions: Sequence[Revision] = ()) -> bytes:
    entries: list[dict[str, Any]] = []
    for ev in got.custody:
        rec = ev.record
        entries.append({
            "action": str(rec.get("type", "")).removeprefix("incident."),
            "at": _iso(int(rec.get("ts", 0))),
            "actor": rec.get("actor"),
            "index": ev.index,
            "facts": {k: v for k, v in _facts(rec).items() if k != "incident"},
        })
    entries.append({
        "action": "export",
        "at": _iso(exported_at_ms),
        "actor": exporter,
        "index": None,
        "facts": {"export_id": export_id},
    })
    doc = {
        "format": "classguard-custody v1",
        "incident": inc.id,
        "entries": entries,
        # every version of the title, description and status, oldest first
        "revisions": [{**r.to_json(), "at": _iso(int(r.at * 1000))} for r in revisions],
        "this_export": {
            "export_id": export_id,
            "exporter": exporter,
            "at": _iso(exported_at_ms),
            "note": (
                "A file cannot contain its own hash. Right after this bundle was built, the "
                "SHA-256 of the whole zip and of manifest.json were appended to the audit log "
                "as an 'incident.export' record carrying this export_id. Any later bundle of "
                "this incident, or the school's log, proves that record."
            ),
        },
    }
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode()


def _iso(ms: int) -> str:
    return (datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


# --- the whole export ---


@dataclass(frozen=True, slots=True)
class ExportResult:
    bundle: Bundle
    export_id: str
    records: int
    withheld: int
    checkpoint_size: int
    timings: dict[str, float]


async def export_incident(
    svc: Services,
    store: IncidentStore,
    inc: Incident,
    *,
    exporter: str,
    lang: str = "vi",
    sequencer: Sequencer | None = None,
    sequence_timeout_s: float = 15.0,
    exporter_personal: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Build, self-verify and log the evidence bundle of ``inc``.

    Logs ``incident.export`` (with the bundle's and the manifest's SHA-256) after the
    bundle is built, and moves the incident to ``exported``. Raises :class:`IncidentError`.
    """
    log, key, auditor = svc.audit_log, svc.audit_key, svc.auditor
    assert log is not None and key is not None and auditor is not None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    note = await wait_sequenced(svc, timeout_s=sequence_timeout_s, sequencer=sequencer,
                                class_id=inc.class_id)
    size = _checkpoint_size(note)
    timings["sequenced"] = time.perf_counter() - t0
    got = await gather(svc, inc, size)
    if not got.events:
        raise IncidentError("no_records", "no audit record of this incident can be disclosed "
                            "(check the window and the people involved)", status=409)
    timings["gathered"] = time.perf_counter() - t0
    proofs = await proofs_for(log, [e.index for e in got.events], note)
    timings["proofs"] = time.perf_counter() - t0
    attachments: list[tuple[str, bytes]] = []
    att_rows: list[dict[str, Any]] = []
    for n, att in enumerate(inc.attachments, start=1):
        data = await store.attachment_bytes(inc.id, att)
        name = f"{n:02d}-{att.sha256[:16]}.{att.extension}"
        attachments.append((name, data))
        att_rows.append({"path": f"attachments/{name}", "filename": att.filename,
                         "content_type": att.content_type, "size": att.size,
                         "sha256": att.sha256, "uploaded_by": att.uploaded_by})
    revisions = await store.history(inc.id)
    exported_at_ms = int(svc.clock() * 1000)
    export_id = base64.b32encode(os.urandom(10)).decode().lower().rstrip("=")
    model = await build_report_model(svc, inc, got, lang=lang, exporter=exporter,
                                     exported_at_ms=exported_at_ms, checkpoint_note=note,
                                     attachments=att_rows, revisions=revisions)
    html = render_html(model)
    pdf = await asyncio.to_thread(render_pdf, model)
    timings["rendered"] = time.perf_counter() - t0
    inputs = BundleInputs(
        incident=inc.id, exporter=exporter, exported_at_ms=exported_at_ms,
        tool_version=tool_version(), origin=svc.settings.audit_origin, events=got.events,
        proofs=proofs, checkpoints=[note], attachments=attachments,
        files={
            "report.html": html,
            "report.pdf": pdf,
            "custody.json": custody_json(inc, got, exporter=exporter,
                                         exported_at_ms=exported_at_ms, export_id=export_id,
                                         revisions=revisions),
            "VERIFY.txt": verify_txt(lang, model),
        },
        extra_manifest={"export_id": export_id, "language": lang,
                        "records": len(got.events), "checkpoint_size": size},
    )
    bundle = await asyncio.to_thread(build_bundle, inputs, key)
    timings["built"] = time.perf_counter() - t0
    # NOTE: fail closed: a bundle that does not verify here is never handed out.
    report = await asyncio.to_thread(verify_bundle, bundle.data, key.verifier())
    if not report.ok:
        p = report.problems[0]
        raise IncidentError("export_failed_verification",
                            f"the built bundle does not verify: {p.code} {p.path}: {p.message}",
                            status=500)
    timings["verified"] = time.perf_counter() - t0
    await auditor.record(
        "incident.export", actor=exporter, org=inc.org, class_id=inc.class_id,
        facts={"incident": inc.id, "export_id": export_id, "bundle_sha256": bundle.sha256,
               "manifest_sha256": bundle.manifest_sha256, "records": len(got.events),
               "withheld": got.withheld, "checkpoint_size": size, "lang": lang},
        personal=exporter_personal,
    )
    if inc.status == "open":
        await store.set_status(inc.id, "exported", by=exporter.split(":", 1)[-1],
                               reason=f"evidence exported ({export_id})", allow_same=True)
    timings["total"] = time.perf_counter() - t0
    return ExportResult(bundle, export_id, len(got.events), got.withheld, size, timings)


def cli_exporter() -> str:
    """The actor of a command-line export: the operating-system account that ran it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


