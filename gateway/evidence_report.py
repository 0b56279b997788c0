"""The evidence report as plain data: what the HTML and the PDF show, built without I/O.

``build_report`` turns the gathered records (``gateway.evidence_gather``) and what was
looked up about the class into a :class:`ReportModel`; ``gateway.evidence_render`` draws
it. Times are shown in the class's schedule time zone (the gateway's ``timezone`` setting
when the class's zone is unknown to this machine) and in UTC.

Who did what. Everyone behind one school router shares an address, so people are told
apart by device, never by address:

* a device seen entering on a roster student's own link (``own_devices`` in
  gateway/evidence_gather.py) is that student's: its records are the student's, and the
  students table lists the student's devices and the addresses they used;
* any other device that carries a listed visitor's device or address is a stranger,
  numbered "Visitor 1", "Visitor 2"…, one per device (the devices the reporter listed
  first, then in order of first appearance);
* records of a listed address with no device at all (a refusal before a device cookie
  was set) are grouped by that address, after the devices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from audit.evidence import BundleEvent
from audit.store import student_ids
from policies.model import DEFAULT_TIMEZONE

from . import i18n
from .incidents import Incident, Revision

__all__ = [
    "AttachmentRow",
    "ClassContext",
    "CustodyRow",
    "IncidentFacts",
    "ReportModel",
    "RevisionRow",
    "Stamp",
    "StrangerRow",
    "StudentInfo",
    "StudentRow",
    "TimelineRow",
    "Window",
    "build_report",
    "revision_rows",
    "zone_of",
]


# --- the model ---


@dataclass(frozen=True, slots=True)
class StudentInfo:
    id: str
    name: str
    external_id: str


@dataclass(frozen=True, slots=True)
class ClassContext:
    """What was looked up about the incident's class (gateway/evidence_gather.py)."""

    id: str
    title: str
    platform: str
    teacher: str
    school: str
    org_chain: list[str]
    timezone: str
    students: list[StudentInfo]  # the involved students only


@dataclass(frozen=True, slots=True)
class Stamp:
    local: str
    utc: str


@dataclass(frozen=True, slots=True)
class Window:
    since_local: str
    since_utc: str
    until_local: str
    until_utc: str


@dataclass(frozen=True, slots=True)
class IncidentFacts:
    id: str
    title: str
    description: str
    created_by: str
    created_local: str
    created_utc: str


@dataclass(frozen=True, slots=True)
class TimelineRow:
    index: int
    local: str
    utc: str
    type: str
    type_code: str
    person: str
    reason: str
    ip: str
    device: str
    detail: str


@dataclass(frozen=True, slots=True)
class StudentRow:
    id: str
    name: str
    external_id: str
    ips: list[str]
    devices: list[str]
    records: int


@dataclass(frozen=True, slots=True)
class StrangerRow:
    """Someone not on the roster: one device, or one address for records with no device."""

    n: int
    ips: list[str]
    devices: list[str]
    links: list[str]
    user_agents: list[str]
    records: int


@dataclass(frozen=True, slots=True)
class AttachmentRow:
    path: str
    filename: str
    content_type: str
    size: int
    sha256: str
    uploaded_by: str


@dataclass(frozen=True, slots=True)
class CustodyRow:
    index: int
    local: str
    utc: str
    action: str
    actor: str


@dataclass(frozen=True, slots=True)
class RevisionRow:
    n: int
    at: float
    local: str
    utc: str
    by: str
    field: str
    old: str
    new: str
    reason: str


@dataclass(slots=True)
class ReportModel:
    lang: str
    school: str
    org_chain: list[str]
    class_title: str
    class_id: str
    platform: str
    teacher: str
    timezone: str  # the zone's name, e.g. Asia/Ho_Chi_Minh
    tz_label: str  # its offset in the window, e.g. UTC+7
    incident: IncidentFacts
    window: Window
    timeline: list[TimelineRow]
    students: list[StudentRow]
    visitors: list[StrangerRow]
    host_actions: list[TimelineRow]
    attachments: list[AttachmentRow]
    custody: list[CustodyRow]
    withheld: int
    revisions: list[RevisionRow]
    exporter: str
    exported_at: Stamp
    checkpoint_size: int
    origin: str
    verifier_key: str
    fingerprint: str
    tool_version: str = ""

    def t(self, key: str, **kw: Any) -> str:
        return i18n.t(self.lang, key, **kw)


# --- helpers ---


def zone_of(name: str | None, fallback: str = DEFAULT_TIMEZONE) -> ZoneInfo:
    """The named zone; ``fallback`` when it is empty or unknown to this machine."""
    for candidate in (name, fallback, DEFAULT_TIMEZONE):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def _when(ms: int, zone: ZoneInfo) -> Stamp:
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return Stamp(dt.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"),
                 dt.strftime("%Y-%m-%d %H:%M:%S"))


def offset_label(zone: ZoneInfo, *moments_ms: int) -> str:
    """``UTC+7``; ``UTC+1/+2`` when the offset changes between the moments."""
    labels: list[str] = []
    for ms in moments_ms:
        off = datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone).utcoffset() or timedelta()
        minutes = int(off.total_seconds()) // 60
        sign = "+" if minutes >= 0 else "-"
        h, m = divmod(abs(minutes), 60)
        text = f"{sign}{h}" + (f":{m:02d}" if m else "")
        if text not in labels:
            labels.append(text)
    return "UTC" + "/".join(labels)


def _short(device: Any) -> str:
    return str(device)[:12] if device else ""


def _facts(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    f = rec.get("facts")
    return f if isinstance(f, dict) else {}


def _ids(rec: Mapping[str, Any]) -> list[str]:
    return sorted({x for sid in student_ids(rec) for x in sid.split(",") if x})


def _label(lang: str, prefix: str, value: str) -> str:
    key = f"{prefix}.{value}"
    text = i18n.t(lang, key)
    return value if text == key else text


# --- who is who ---


@dataclass(slots=True)
class _Stranger:
    key: str  # the device hash, or "ip:<address>" for records with no device
    events: list[BundleEvent] = field(default_factory=list)


@dataclass(slots=True)
class People:
    """Each record's person: a stranger's number, another roster student, or neither."""

    strangers: dict[str, _Stranger] = field(default_factory=dict)  # in order of appearance
    by_index: dict[int, int] = field(default_factory=dict)  # record index -> stranger no.
    others: set[int] = field(default_factory=set)  # records of other students' devices

    def number(self, key: str) -> int:
        return list(self.strangers).index(key) + 1


def tell_apart(events: Iterable[BundleEvent], inc: Incident, student_devices: Mapping[str, str],
               other_student_devices: Iterable[str]) -> People:
    """Group the records of people who are not the involved students (module doc)."""
    listed_devices = {v.device for v in inc.visitors if v.device}
    listed_ips = {v.ip for v in inc.visitors if v.ip}
    others = set(other_student_devices)
    people = People()
    for dev in (v.device for v in inc.visitors if v.device):
        people.strangers.setdefault(dev, _Stranger(dev))
    for ev in events:
        p = ev.personal or {}
        dev = str(p.get("device") or "")
        ip = str(p.get("ip") or "")
        if dev and dev in student_devices and dev not in listed_devices:
            continue
        if dev and dev in others and dev not in listed_devices:
            people.others.add(ev.index)
            continue
        if not (dev in listed_devices or ip in listed_ips):
            continue
        key = dev or f"ip:{ip}"
        people.strangers.setdefault(key, _Stranger(key)).events.append(ev)
    # device-less groups after the devices
    ordered = sorted(people.strangers.values(), key=lambda s: s.key.startswith("ip:"))
    people.strangers = {s.key: s for s in ordered}
    for n, s in enumerate(ordered, start=1):
        for ev in s.events:
            people.by_index[ev.index] = n
    return people


# --- building ---


def _row(lang: str, ev: BundleEvent, names: Mapping[str, str], people: People,
         zone: ZoneInfo) -> TimelineRow:
    rec, p = ev.record, ev.personal or {}
    when = _when(int(rec.get("ts", 0)), zone)
    ids = _ids(rec)
    actor = str(rec.get("actor", ""))
    stranger = people.by_index.get(ev.index)
    whose = " → " + ", ".join(names.get(i, i) for i in ids) if ids else ""
    if stranger is not None:
        # someone else, on the student's link when it names one: say whose link it was
        person = f"{i18n.t(lang, 'evidence.col_visitor')} {stranger}{whose}"
    elif ev.index in people.others:
        person = i18n.t(lang, "evidence.other_student") + whose
    elif actor.startswith("student:") or actor == "visitor":
        person = ", ".join(names.get(i, i) for i in ids) or i18n.t(lang, "evidence.visitor")
    else:
        person = actor.split(":", 1)[-1] + whose
    facts = _facts(rec)
    detail = ", ".join(
        f"{k}={facts[k]}" for k in ("action", "upstream", "scope", "sha256", "export_id")
        if facts.get(k) not in (None, "")
    )
    if p.get("note"):
        detail = (detail + "; " if detail else "") + str(p["note"])
    code = str(rec.get("type", ""))
    return TimelineRow(
        index=ev.index, local=when.local, utc=when.utc, type=_label(lang, "evidence.type", code),
        type_code=code, person=person,
        reason=_label(lang, "reason", str(rec.get("reason", ""))) if rec.get("reason") else "",
        ip=str(p.get("ip", "")), device=_short(p.get("device")), detail=detail)


def revision_rows(lang: str, revisions: Sequence[Revision],
                  zone: ZoneInfo | None = None) -> list[RevisionRow]:
    """The incident's history for the report: one row per changed field."""
    tz = zone or zone_of(None)
    rows: list[RevisionRow] = []
    for rev in revisions:
        when = _when(int(rev.at * 1000), tz)
        for name, (old, new) in rev.changes.items():
            if name in ("status", "severity"):
                old = _label(lang, f"incident.{name}", old) if old else old
                new = _label(lang, f"incident.{name}", new) if new else new
            rows.append(RevisionRow(
                n=rev.n, at=rev.at, local=when.local, utc=when.utc, by=rev.by,
                field=i18n.t(lang, f"evidence.field.{name}"),
                old=old if old is not None else "—", new=new if new is not None else "—",
                reason=rev.reason or ""))
    return rows


def _students(ctx: ClassContext, events: Sequence[BundleEvent], people: People
              ) -> list[StudentRow]:
    out: list[StudentRow] = []
    for st in ctx.students:
        # what the student's own devices did: records of a stranger or of another student's
        # device on this student's link are listed under that person
        seen = [ev for ev in events if st.id in _ids(ev.record)
                and ev.index not in people.by_index and ev.index not in people.others]
        ips = sorted({str(ev.personal["ip"]) for ev in seen
                      if ev.personal and ev.personal.get("ip")})
        devs = sorted({_short(ev.personal["device"]) for ev in seen
                       if ev.personal and ev.personal.get("device")})
        out.append(StudentRow(st.id, st.name, st.external_id, ips, devs, len(seen)))
    return out


def _strangers(people: People, names: Mapping[str, str]) -> list[StrangerRow]:
    out: list[StrangerRow] = []
    for n, s in enumerate(people.strangers.values(), start=1):
        ps = [ev.personal for ev in s.events if ev.personal]
        links = sorted({names.get(str(ev.record.get("subject")), str(ev.record.get("subject")))
                        for ev in s.events if ev.record.get("type") == "join"
                        and ev.record.get("subject")})
        ips = sorted({str(p["ip"]) for p in ps if p.get("ip")}
                     | ({s.key[3:]} if s.key.startswith("ip:") else set()))
        devs = [] if s.key.startswith("ip:") else [_short(s.key)]
        uas = sorted({str(p["ua"]) for p in ps if p.get("ua")})
        out.append(StrangerRow(n, ips, devs, links, uas[:5], len(s.events)))
    return out


def build_report(
    ctx: ClassContext,
    inc: Incident,
    events: Sequence[BundleEvent],
    custody: Sequence[BundleEvent],
    *,
    lang: str,
    student_devices: Mapping[str, str],
    other_student_devices: Iterable[str] = (),
    withheld: int,
    exporter: str,
    exported_at_ms: int,
    checkpoint_size: int,
    origin: str,
    verifier_key: str,
    fingerprint: str,
    attachments: Sequence[AttachmentRow] = (),
    revisions: Sequence[Revision] = (),
    tool_version: str = "",
    fallback_timezone: str = DEFAULT_TIMEZONE,
) -> ReportModel:
    zone = zone_of(ctx.timezone, fallback_timezone)
    names = {s.id: s.name for s in ctx.students}
    people = tell_apart(events, inc, student_devices, other_student_devices)
    timeline = [_row(lang, ev, names, people, zone) for ev in events]
    custody_rows = []
    for ev in custody:
        when = _when(int(ev.record.get("ts", 0)), zone)
        custody_rows.append(CustodyRow(
            ev.index, when.local, when.utc,
            _label(lang, "evidence.type", str(ev.record.get("type"))),
            str(ev.record.get("actor", "")).split(":", 1)[-1]))
    since, until = _when(inc.since_ms, zone), _when(inc.until_ms, zone)
    created = _when(int(inc.created_at * 1000), zone)
    return ReportModel(
        lang=lang, school=ctx.school, org_chain=list(ctx.org_chain), class_title=ctx.title,
        class_id=ctx.id, platform=ctx.platform, teacher=ctx.teacher, timezone=zone.key,
        tz_label=offset_label(zone, inc.since_ms, inc.until_ms, exported_at_ms),
        incident=IncidentFacts(inc.id, inc.title, inc.description, inc.created_by,
                               created.local, created.utc),
        window=Window(since.local, since.utc, until.local, until.utc),
        timeline=timeline, students=_students(ctx, events, people),
        visitors=_strangers(people, names),
        host_actions=[r for r in timeline if r.type_code.startswith("host.")],
        attachments=list(attachments), custody=custody_rows, withheld=withheld,
        revisions=revision_rows(lang, revisions, zone), exporter=exporter,
        exported_at=_when(exported_at_ms, zone), checkpoint_size=checkpoint_size,
        origin=origin, verifier_key=verifier_key, fingerprint=fingerprint,
        tool_version=tool_version,
    )
