"""Incident notifications by email: who is told, when, and how it is delivered.

Who. Level 0 is the incident's school (its org), level 1 the school's parent org (the
district office), level 2 the next parent (the province department). A level's
recipients are the enabled administrators of exactly that org who have an email address
(gateway/staff.py); the audit names them by account, never by address.

When.

* :func:`incident_opened` (any code that opens an incident calls it, whoever opened
  it): level 0 at once, and an acknowledgment check of level 1 due after
  ``incident_ack_timeout_s``.
* :func:`incident_marked_serious`: level 1 at once, and the check of level 2 due after
  the timeout.
* A check of level L that finds the incident neither acknowledged nor closed mails
  level L and schedules the check of level L+1 after the timeout again (up to level 2).
* :func:`incident_acknowledged` drops the pending checks.

An incident is *acknowledged* when an administrator responsible for its school (of the
school or of an org above it, gateway/authz.py ``DECIDE_INCIDENT``) acknowledges it on
the incident page or through ``POST /api/v1/incidents/{id}/acknowledge``. Merely opening
the incident does not count: the teacher who reported it opens it too. Each level is
mailed at most once per incident.

How. Jobs live in Redis, not in a process: a sorted set of job ids by due time and a
hash of the jobs. Every gateway process runs :meth:`Notifier.run`, which claims due jobs
with one script (gateway/stores/lua/notify_claim.lua): a claimed job is pushed
``lease`` seconds ahead and given a fresh token, so exactly one process holds it; a
process that dies mid-send leaves it to be claimed again when the lease runs out.
Finishing or rescheduling checks the token (notify_finish.lua). The timers therefore
survive restarts and are shared by every process.

Delivery runs in the background with timeouts (``smtp_timeout_s`` per SMTP step, three
times that in all), is retried ``smtp_max_attempts`` times with exponential back-off
from ``smtp_retry_base_s``, and every result is audited: ``incident.notified`` (sent),
``incident.notify_failed`` (an attempt failed; ``final`` when no attempt is left) and
``incident.notify_skipped`` (no SMTP server configured, or nobody to write to). With no
``smtp_host`` nothing is sent and that is recorded, not raised. The incident page shows
the results (``P {notify}:log:<incident>``).

The message holds the class name, the time and a link to the incident, Vietnamese first
then English; no student name, no description (THREAT_MODEL.md).

Keys (``P`` = the Redis prefix; one hash tag so the scripts stay on one Cluster slot;
named in gateway/stores/keys.py, ``NotifyKeys``)::

    P {notify}:due              zset    job id -> due time (unix seconds)
    P {notify}:jobs             hash    job id -> job JSON (kind, incident, level, ...)
    P {notify}:levels:<inc>     set     levels already queued for the incident
    P {notify}:first:<inc>      string  when its first email went out (metric, once)
    P {notify}:log:<inc>        list    results shown on the incident page (JSON, 50 kept)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import logging
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

import aiosmtplib
import redis.asyncio as aioredis

from audit.scripts import Script, ScriptRunner

from . import i18n
from .config import Settings
from .evidence_report import offset_label
from .incidents import Incident, IncidentStore
from .secretbox import SecretBox
from .stores.keys import NotifyKeys

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger("classguard.notify")

#: school, district office, province department
MAX_LEVEL = 2
LOG_KEPT = 50
POLL_S = 0.5
CLAIM_BATCH = 20
ACTOR = "system:notify"
SEALED_PASSWORD_AAD = b"settings:smtp_password"

Reason = Literal["opened", "serious", "unacknowledged"]

# gateway/stores/lua/notify_*.lua
_CLAIM = Script.load("gateway.stores", "notify_claim")
_FINISH = Script.load("gateway.stores", "notify_finish")
_QUEUE_MAIL = Script.load("gateway.stores", "notify_queue_mail")
_QUEUE_CHECK = Script.load("gateway.stores", "notify_queue_check")


class NotifyQueue:
    """The jobs in Redis (no process state): queue, claim, finish."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *,
                 clock: Callable[[], float]) -> None:
        self.r = redis
        self.k = NotifyKeys(prefix)
        self.clock = clock
        self.due_key = self.k.due()
        self.jobs_key = self.k.jobs()
        self._scripts = ScriptRunner(redis)

    async def queue_mail(self, iid: str, level: int, reason: Reason, *,
                         origin_at: float | None = None) -> bool:
        """Queue the email of ``level`` now, unless that level was queued before.
        ``origin_at``: when what it reports began (a report made before the incident),
        for the time-to-first-notification metric; the incident's creation otherwise."""
        jid = f"mail:{iid}:{level}"
        job: dict[str, Any] = {"kind": "mail", "incident": iid, "level": level,
                               "reason": reason, "attempt": 0, "queued_at": self.clock()}
        if origin_at is not None:
            job["origin_at"] = origin_at
        return bool(await self._scripts.run(
            _QUEUE_MAIL, [self.k.levels(iid), self.due_key, self.jobs_key],
            [level, jid, json.dumps(job), repr(self.clock())]))

    async def queue_check(self, iid: str, level: int, after_s: float) -> bool:
        """Check after ``after_s`` whether the incident was acknowledged; if not, mail
        ``level``. A check already pending for that level keeps its time."""
        if level > MAX_LEVEL:
            return False
        jid = f"check:{iid}:{level}"
        job = {"kind": "check", "incident": iid, "level": level}
        return bool(await self._scripts.run(
            _QUEUE_CHECK, [self.due_key, self.jobs_key],
            [jid, json.dumps(job), repr(self.clock() + after_s)]))

    async def drop_checks(self, iid: str) -> None:
        ids = [f"check:{iid}:{lv}" for lv in range(MAX_LEVEL + 1)]
        async with self.r.pipeline(transaction=True) as p:
            p.zrem(self.due_key, *ids)
            p.hdel(self.jobs_key, *ids)
            await p.execute()

    async def claim(self, lease_s: float, limit: int = CLAIM_BATCH) -> list[dict[str, Any]]:
        now = self.clock()
        raw: list[Any] = await self._scripts.run(
            _CLAIM, [self.due_key, self.jobs_key],
            [repr(now), repr(now + lease_s), limit, secrets.token_hex(8)])
        return [json.loads(x) for x in raw]

    async def finish(self, job: dict[str, Any], *, retry_at: float | None = None) -> bool:
        jid = job_id(job)
        return bool(await self._scripts.run(
            _FINISH, [self.due_key, self.jobs_key],
            [jid, str(job.get("token", "")),
             "" if retry_at is None else repr(retry_at), json.dumps(job)]))

    async def add_log(self, iid: str, entry: dict[str, Any]) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.rpush(self.k.log(iid), json.dumps(entry, ensure_ascii=False))
            p.ltrim(self.k.log(iid), -LOG_KEPT, -1)
            await p.execute()

    async def results(self, iid: str) -> list[dict[str, Any]]:
        """The notification results of an incident, oldest first."""
        raw: list[Any] = await self.r.lrange(self.k.log(iid), 0, -1)
        return [json.loads(x) for x in raw]

    async def pending(self) -> int:
        return int(await self.r.zcard(self.due_key))


def job_id(job: dict[str, Any]) -> str:
    return f"{job['kind']}:{job['incident']}:{job['level']}"


# --- entry points: whoever opens, marks or acknowledges an incident calls these ---------


def _queue(svc: Services) -> NotifyQueue:
    return NotifyQueue(svc.redis, svc.settings.redis_prefix, clock=svc.clock)


def _wake(svc: Services) -> None:
    notifier = svc.notifier
    if isinstance(notifier, Notifier):
        notifier.wake()


async def incident_opened(svc: Services, inc: Incident, *,
                          reported_at: float | None = None) -> None:
    """An incident was opened (by staff, or from a student's or parent's report, then
    with ``reported_at``, when the report was made): mail the school's administrators
    now, escalate if nobody acknowledges it in time. A serious incident also reaches the
    district at once."""
    q = _queue(svc)
    await q.queue_mail(inc.id, 0, "opened", origin_at=reported_at)
    if inc.severity == "serious":
        await q.queue_mail(inc.id, 1, "serious", origin_at=reported_at)
        await q.queue_check(inc.id, 2, svc.settings.incident_ack_timeout_s)
    else:
        await q.queue_check(inc.id, 1, svc.settings.incident_ack_timeout_s)
    _wake(svc)


async def incident_marked_serious(svc: Services, inc: Incident) -> None:
    """The incident became serious: the district's administrators are told now, the
    province department's after the timeout unless it is acknowledged meanwhile."""
    q = _queue(svc)
    await q.queue_mail(inc.id, 1, "serious")
    await q.queue_check(inc.id, 2, svc.settings.incident_ack_timeout_s)
    _wake(svc)


async def incident_acknowledged(svc: Services, inc: Incident) -> None:
    """Someone responsible took the incident in hand: no more escalation."""
    await _queue(svc).drop_checks(inc.id)


# --- the message ----------------------------------------------------------------------


def incident_url(settings: Settings, iid: str) -> str:
    return f"{settings.public_url.rstrip('/')}/incidents/{iid}"


def local_time(ts: float, zone: str) -> str:
    """The time in the deployment's zone (setting ``timezone``), with its UTC offset."""
    tz = ZoneInfo(zone)
    local = datetime.fromtimestamp(ts, UTC).astimezone(tz)
    return f"{local.strftime('%H:%M %d/%m/%Y')} ({offset_label(tz, int(ts * 1000))})"


def build_message(settings: Settings, *, iid: str, class_title: str, created_at: float,
                  level: int, reason: str, recipients: Sequence[str]) -> EmailMessage:
    """The email: Vietnamese, then English. Only the class name, the time and the link:
    no student, no description, no reporter (THREAT_MODEL.md)."""
    params = {"cls": class_title, "time": local_time(created_at, settings.timezone),
              "minutes": max(1, round(settings.incident_ack_timeout_s / 60)),
              "url": incident_url(settings, iid)}
    parts = []
    for lang in ("vi", "en"):
        parts.append("\n\n".join((
            i18n.t(lang, f"notify.reason.{reason}", **params),
            i18n.t(lang, f"notify.level.{level}"),
            i18n.t(lang, "notify.open", **params),
            i18n.t(lang, "notify.privacy"),
        )))
    msg = EmailMessage()
    msg["Subject"] = " / ".join(i18n.t(lang, "notify.subject", **params)
                                for lang in ("vi", "en"))
    msg["From"] = settings.smtp_from
    msg["To"] = ", ".join(recipients)
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(domain=settings.smtp_from.rpartition("@")[2])
    msg["Content-Language"] = "vi, en"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("\n\n----------\n\n".join(parts) + "\n", charset="utf-8")
    return msg


def smtp_password(settings: Settings, box: SecretBox | None) -> str | None:
    """The SMTP password: given in clear, or sealed with the gateway's secret box."""
    if settings.smtp_password:
        return settings.smtp_password
    if settings.smtp_password_sealed:
        if box is None:
            raise RuntimeError("smtp_password_sealed needs the gateway's secret box")
        return box.decrypt(settings.smtp_password_sealed, aad=SEALED_PASSWORD_AAD).decode()
    return None


async def send_message(settings: Settings, msg: EmailMessage, recipients: Sequence[str], *,
                       password: str | None) -> None:
    """One delivery attempt; raises on any failure (refusal, timeout, connection)."""
    security = settings.smtp_security
    async with asyncio.timeout(settings.smtp_timeout_s * 3):
        _, refused = await aiosmtplib.send(
            msg, sender=settings.smtp_from, recipients=list(recipients),
            hostname=settings.smtp_host, port=settings.smtp_port,
            username=settings.smtp_username or None, password=password,
            timeout=settings.smtp_timeout_s, use_tls=security == "tls",
            start_tls=security == "starttls", validate_certs=True,
            cert_bundle=settings.smtp_ca_file or None)
    del refused  # the server answered 250 to DATA: it took the message


# --- the background loop ----------------------------------------------------------------


@dataclass(slots=True)
class _Recipients:
    org: str
    with_email: list[tuple[str, str]]  # (username, address)
    without_email: list[str]


class Notifier:
    """Claims due jobs and carries them out; one per gateway process, all sharing the
    jobs in Redis."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        s = svc.settings
        self.queue = NotifyQueue(svc.redis, s.redis_prefix, clock=svc.clock)
        assert svc.secretbox is not None
        self.store = IncidentStore(svc.redis, s.redis_prefix, clock=svc.clock,
                                   secretbox=svc.secretbox)
        # a job is held this long by its claimant before another process may take it
        self.lease_s = float(s.smtp_timeout_s * 3 + 30)
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        task = asyncio.current_task()
        try:
            while True:
                if task is not None and task.cancelling():
                    # The Redis client can swallow a cancellation that lands mid-command;
                    # stopping must still stop (as in audit.sequencer).
                    raise asyncio.CancelledError
                try:
                    await self.run_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - Redis away: retry on the next tick
                    log.warning("notification queue unavailable: %r", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_S)
                self._wake.clear()
        finally:
            # A job cut short here is claimed again once its lease runs out.
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def run_once(self) -> int:
        """Claim what is due and start it in the background; how many jobs."""
        jobs = await self.queue.claim(self.lease_s)
        for job in jobs:
            task = asyncio.create_task(self._guarded(job))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return len(jobs)

    async def drain(self) -> None:
        """Wait for the jobs this process started (tests, shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def _guarded(self, job: dict[str, Any]) -> None:
        try:
            if job.get("kind") == "check":
                await self._check(job)
            else:
                await self._mail(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            # the lease runs out and another claim retries the job
            log.exception("notification job %s failed", job_id(job))

    async def _check(self, job: dict[str, Any]) -> None:
        inc = await self.store.get(str(job["incident"]))
        level = int(job["level"])
        if inc is not None and inc.status != "closed" and inc.acknowledged_by is None:
            await self.queue.queue_mail(inc.id, level, "unacknowledged")
            await self.queue.queue_check(inc.id, level + 1,
                                         self.svc.settings.incident_ack_timeout_s)
            self.wake()
        await self.queue.finish(job)

    async def _recipients(self, inc: Incident, level: int) -> _Recipients | None:
        staff = self.svc.staff
        assert staff is not None
        chain = await staff.org_ancestors(inc.org)
        if level >= len(chain):
            return None
        org = chain[level]
        admins = [u for u in await staff.list_users(org_subtree={org})
                  if u.org == org and u.role == "admin" and not u.disabled]
        return _Recipients(org, [(u.username, u.email) for u in admins if u.email],
                           [u.username for u in admins if not u.email])

    async def _mail(self, job: dict[str, Any]) -> None:
        svc, s = self.svc, self.svc.settings
        inc = await self.store.get(str(job["incident"]))
        level, reason = int(job["level"]), str(job["reason"])
        if inc is None:
            await self.queue.finish(job)
            return
        if reason == "unacknowledged" and inc.acknowledged_by is not None:
            await self.queue.finish(job)
            return
        rcpt = await self._recipients(inc, level)
        if rcpt is None:  # no org that high above the school
            await self.queue.finish(job)
            return
        attempt = int(job.get("attempt", 0)) + 1
        base = {"incident": inc.id, "level": level, "to_org": rcpt.org, "reason": reason,
                "recipients": [u for u, _ in rcpt.with_email] or None,
                "without_email": rcpt.without_email or None}
        why = ("smtp_not_configured" if not s.smtp_host else
               "no_recipients" if not rcpt.with_email else None)
        if why is not None:
            await self._result(inc, "incident.notify_skipped", {**base, "why": why},
                               result="skipped", why=why)
            await self.queue.finish(job)
            return
        assert svc.store is not None
        info = await svc.store.get_class(inc.class_id)
        msg = build_message(s, iid=inc.id, class_title=info.title if info else inc.class_id,
                            created_at=inc.created_at, level=level, reason=reason,
                            recipients=[a for _, a in rcpt.with_email])
        try:
            await send_message(s, msg, [a for _, a in rcpt.with_email],
                               password=smtp_password(s, svc.secretbox))
        except Exception as exc:  # noqa: BLE001 - every failure is a failed attempt, retried
            error = _error_code(exc)
            final = attempt >= s.smtp_max_attempts
            retry_at = None if final else self.svc.clock() + s.smtp_retry_base_s * 2 ** (
                attempt - 1)
            await self._result(inc, "incident.notify_failed",
                               {**base, "attempt": attempt, "final": final, "error": error,
                                "retry_at": retry_at},
                               result="failed" if final else "retrying", why=error,
                               attempt=attempt)
            await self.queue.finish({**job, "attempt": attempt}, retry_at=retry_at)
            return
        if await svc.redis.set(self.queue.k.first(inc.id), repr(svc.clock()), nx=True):
            origin = float(job.get("origin_at") or inc.created_at)
            svc.metrics.incident_first_notification.observe(max(0.0, svc.clock() - origin))
        await self._result(inc, "incident.notified", {**base, "attempt": attempt},
                           result="sent", attempt=attempt)
        await self.queue.finish(job)

    async def _result(self, inc: Incident, event: str, facts: dict[str, Any], *,
                      result: str, why: str | None = None, attempt: int | None = None) -> None:
        assert self.svc.auditor is not None
        await self.svc.auditor.record(event, actor=ACTOR, org=inc.org, class_id=inc.class_id,
                                      facts=facts)
        await self.queue.add_log(inc.id, {
            "at": self.svc.clock(), "level": facts["level"], "to_org": facts["to_org"],
            "reason": facts["reason"], "result": result, "why": why, "attempt": attempt,
            "recipients": facts.get("recipients") or []})


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"smtp_{exc.code}"
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = sorted({r.code for r in exc.recipients})
        return "smtp_" + "_".join(str(c) for c in codes) if codes else "smtp_refused"
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return "timeout"
    if isinstance(exc, aiosmtplib.SMTPConnectError | OSError):
        return "connect_failed"
    return type(exc).__name__


# --- sealing the SMTP password ----------------------------------------------------------


def seal_password(box: SecretBox, password: str) -> str:
    return box.encrypt(password.encode(), aad=SEALED_PASSWORD_AAD)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.notify seal-password --data-dir DIR``: read the SMTP password
    from standard input and print it sealed with the gateway's secret box, for the
    ``smtp_password_sealed`` setting."""
    ap = argparse.ArgumentParser(prog="python -m gateway.notify")
    sub = ap.add_subparsers(dest="command", required=True)
    seal = sub.add_parser("seal-password", help="seal the SMTP password read from stdin")
    seal.add_argument("--data-dir", required=True, type=Path)
    args = ap.parse_args(argv)
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("no password on standard input", file=sys.stderr)
        return 2
    box = SecretBox.load_or_create(args.data_dir.absolute() / "keys" / "secretbox.key")
    print(seal_password(box, password))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
