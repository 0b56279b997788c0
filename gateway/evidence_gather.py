"""Gather an incident's audit records for its evidence bundle, and decide which may go in.

Which records go in (the redaction rule, see docs/evidence.md):

* every record of the incident's class in its time window that concerns a person involved
  (names an involved student as actor or subject, or carries a listed visitor's device or
  address in its personal fields), every host action and every alert of the class in
  the window, the audit indexes the incident lists explicitly, and the incident's own
  custody records (created, viewed, edited, attached, earlier exports);
* **except** any record that names a student who is not involved: its record ``E`` would
  put that child's id in the bundle and cannot be edited without breaking its proof. Such
  records are left out and counted ("withheld") in the report. Their leaves only appear as
  hashes inside other records' inclusion proofs;
* an address is shared by everyone behind one school router: a record found only by a
  listed visitor's address is left out when its device is a roster student's own device
  (see :func:`own_devices`), unless that student is involved.

It also waits for the log to hold and sign everything the export must cover
(:func:`wait_sequenced`), and looks up what the report says about the class
(:func:`class_context`). The report itself is built by ``gateway.evidence_report``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from audit import AuditError, AuditLog, AuditQuery, Checkpoint, NotLeaderError, Sequencer, TlogProof
from audit.evidence import BundleEvent
from audit.records import decode_personal
from audit.store import student_ids

from .evidence_report import ClassContext, StudentInfo
from .incidents import Incident, IncidentError
from .services import Services

ALERT_TYPES = ("presence.",)
PROOF_CONCURRENCY = 32
#: How many of an involved student's joins before the window tell their own devices.
EARLIER_JOINS = 50
# An involved student's acknowledgments of the class rules included (one per rules version).
RULES_ACKS = 20
#: Join decisions that leave the device bound to the link (or would, with binding on).
_ENTERED = frozenset({"admit", "wait"})


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
    box = store.outbox_key(class_id)
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
            if note is not None and checkpoint_size(note) >= needed:
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


def checkpoint_size(note: str) -> int:
    return Checkpoint.parse_body(note[: note.rfind("\n\n") + 1]).size


# --- gathering ---


@dataclass(slots=True)
class Gathered:
    events: list[BundleEvent] = field(default_factory=list)
    withheld: int = 0  # records of the window naming students who are not involved
    custody: list[BundleEvent] = field(default_factory=list)
    #: device hash -> involved student whose own device it is (see :func:`own_devices`)
    student_devices: dict[str, str] = field(default_factory=dict)
    #: own devices of students who are not involved (no id: they must not be named)
    other_student_devices: set[str] = field(default_factory=set)


def facts_of(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    f = rec.get("facts")
    return f if isinstance(f, dict) else {}


def names_others(rec: Mapping[str, Any], involved: set[str]) -> bool:
    """True when the record names a student id outside ``involved``."""
    return bool(ids_named(rec) - involved)


def ids_named(rec: Mapping[str, Any]) -> set[str]:
    """Student ids the record names (host actions list several, comma-separated)."""
    ids: set[str] = set()
    for sid in student_ids(rec):
        ids.update(x for x in sid.split(",") if x)
    return ids


def concerns(rec: Mapping[str, Any], personal: Mapping[str, Any] | None, inc: Incident,
             others_devices: Iterable[str] = ()) -> bool:
    """True when the record is about the incident: it names an involved student, is a host
    action or an alert, or carries a listed visitor's device or address. An address match
    does not count for a device in ``others_devices`` (own devices of students who are not
    involved, behind the same address)."""
    if ids_named(rec) & set(inc.student_ids):
        return True
    t = str(rec.get("type", ""))
    if t.startswith("host.") or t.startswith(ALERT_TYPES):
        return True
    if personal:
        devices = {v.device for v in inc.visitors if v.device}
        device = personal.get("device")
        if device in devices:
            return True
        ips = {v.ip for v in inc.visitors if v.ip}
        if personal.get("ip") in ips and device not in set(others_devices):
            return True
    return False


def own_devices(records: Iterable[tuple[Mapping[str, Any], Mapping[str, Any] | None]]
                ) -> dict[str, str]:
    """device hash -> roster student, for devices seen entering on the student's own link.

    A join on a student's link that was admitted or put in the waiting room without a
    ``device_mismatch`` (and not from a device released from an old link's binding) came
    from the device the link is bound to, or bound it (gateway/joinflow.py ``_enter``).
    That device is the student's, whatever address it shares with others.
    """
    out: dict[str, str] = {}
    for rec, p in records:
        if rec.get("type") != "join" or not p or not p.get("device"):
            continue
        sid = rec.get("subject")
        facts = facts_of(rec)
        if not isinstance(sid, str) or not sid or rec.get("actor") != f"student:{sid}":
            continue
        if facts.get("action") not in _ENTERED or rec.get("reason") == "device_mismatch" \
                or facts.get("released_device"):
            continue
        out.setdefault(str(p["device"]), sid)
    return out


def is_custody(rec: Mapping[str, Any], iid: str) -> bool:
    return str(rec.get("type", "")).startswith("incident.") and facts_of(rec).get("incident") == iid


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
    # An involved student's acknowledgments of the class rules belong in the bundle
    # whenever they were made (usually at the start of the term, long before the window):
    # they show the student was told the rules (gateway/class_rules.py).
    acks: set[int] = set()
    for sid in sorted(involved):
        for ev in await _query_all(log, AuditQuery(class_id=inc.class_id,
                                                   type="rules.acknowledged", student=sid,
                                                   until_ms=inc.until_ms),
                                   limit=RULES_ACKS):
            if ev.index < size and ev.index not in records:
                records[ev.index] = ev.record
                acks.add(ev.index)
    personal = await _personal_many(svc, sorted(records))
    # NOTE: an involved student's device may have been bound before the window opened
    # (they joined at 7:55, the window starts at 8:00): their latest joins before it say
    # which device is theirs. These records only inform; they do not go in the bundle.
    earlier: dict[int, Mapping[str, Any]] = {}
    for sid in sorted(involved):
        for ev in await _query_all(log, AuditQuery(class_id=inc.class_id, type="join",
                                                   student=sid, until_ms=inc.since_ms),
                                   limit=EARLIER_JOINS):
            if ev.index < size and ev.index not in records:
                earlier[ev.index] = ev.record
    earlier_personal = await _personal_many(svc, sorted(earlier))
    seen = {**earlier, **records}
    owners = own_devices(
        (seen[i], personal[i][0] if i in personal
         else earlier_personal[i][0] if i in earlier_personal else None)
        for i in sorted(seen))
    listed = {v.device for v in inc.visitors if v.device}  # the reporter named them
    out = Gathered()
    for dev, sid in owners.items():
        if dev in listed:
            continue
        if sid in involved:
            out.student_devices[dev] = sid
        else:
            out.other_student_devices.add(dev)
    explicit = set(inc.indexes) | acks
    for idx in sorted(records):
        rec = records[idx]
        p_salt = personal.get(idx)
        p = p_salt[0] if p_salt else None
        if idx not in custody_ix:
            if names_others(rec, involved):
                out.withheld += 1
                continue
            if idx not in explicit and not concerns(rec, p, inc, out.other_student_devices):
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




async def class_context(svc: Services, inc: Incident) -> ClassContext:
    """What the report says about the incident's class: its school, teacher, time zone and
    the involved students' names (nobody else's)."""
    store, staff = svc.store, svc.staff
    assert store is not None and staff is not None
    info = await store.get_class(inc.class_id)
    if info is None:
        raise IncidentError("not_found", "the incident's class no longer exists", status=404)
    chain = list(reversed(await staff.org_ancestors(info.org)))  # top org first
    orgs = [await staff.get_org(o) for o in chain]
    org_names = [o.name for o in orgs if o is not None]
    students = []
    for sid in inc.student_ids:
        st = await store.student(inc.class_id, sid)
        students.append(StudentInfo(sid, st.name if st else sid,
                                    (st.external_id if st else None) or ""))
    return ClassContext(
        id=info.id, title=info.title, platform=info.platform_kind, teacher=info.owner,
        school=org_names[-1] if org_names else info.org, org_chain=org_names,
        timezone=info.schedule.timezone or svc.settings.timezone, students=students)
