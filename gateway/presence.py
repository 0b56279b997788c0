"""Presence reconciliation: who is really in the upstream room versus who we admitted.

One process at a time does the polling, chosen by a Redis lease (audit/lease.py; any
process takes over when the holder stops). Every
``interval_s`` the leader walks the classes registered with ``watch_class`` that are not
over yet and whose platform has PRESENCE, lists the upstream participants and compares
them with ``ClassStore.admitted`` (a platform that names signed-in accounts,
``Present.account``, is matched by the roster's school e-mails; never by display name).
Anyone else is an intruder: an ``intruder_in_room``
alert reaches the control room and the audit log (once per person and class), and when the
class policy says ``auto_remove_intruders`` and the platform can remove people, they are
removed. Platform webhooks (``routes/platform_hooks.py``) feed the same
``Reconciler.judge``. What a platform can do here is what its adapter declares
(``meeting_adapters.Feature``); this module never names a platform.

Failing platforms: each listing is retried with exponential backoff inside the sweep,
then the class is skipped with a growing delay; every failure counts in
``classguard_upstream_errors`` and a run of failures raises one ``platform_unreachable``
alert. Nobody is admitted around a failing platform: the join flow itself fails closed
(``/go`` shows the "platform not reachable" page).

After-the-fact attendance (``Feature.ATTENDANCE``): a platform that reports who
attended only once a session is over is read every ``attendance_every_s``, also for a day
after the class ended (the last session's report comes late); each report is read once
(its id is kept) and whoever in it matches no roster student raises the same
``intruder_in_room`` alert, with ``source = attendance_report``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from audit.lease import Lease
from meeting_adapters import (
    ADAPTERS,
    AdapterError,
    Capability,
    Feature,
    MeetingAdapter,
    Present,
    Room,
    RosterName,
    Unsupported,
)

from .hostctl import HostControls, room_capabilities
from .joinflow import JoinFlow, policy_of
from .services import Services
from .stores import ClassInfo
from .stores.keys import Keys

log = logging.getLogger("classguard.presence")

# Seconds before a removal the platform refused is tried again for the same person.
EVICT_RETRY_S = 60

INTRUDER: Final = "intruder_in_room"


# --- pure ----------------------------------------------------------------------------------


def has_feature(kind: str, feature: Feature) -> bool:
    cls = ADAPTERS.get(kind)
    return cls is not None and feature in cls.features


def who_is_it(p: Present, identify: Mapping[str, str]) -> str | None:
    return p.student_id or identify.get(p.upstream_id)


def identify_accounts(present: Iterable[Present],
                      accounts: Mapping[str, str]) -> dict[str, str]:
    """Upstream id -> student id for people signed in with a roster student's school
    account (``accounts``: e-mail in lower case -> student id). Names are never matched:
    anyone can type a classmate's name."""
    return {p.upstream_id: accounts[p.account.lower()] for p in present
            if p.student_id is None and p.account and p.account.lower() in accounts}


def find_intruders(present: Iterable[Present], admitted: Iterable[str],
                   identify: Mapping[str, str]) -> list[Present]:
    """Everyone in the room who is not an admitted student.

    ``identify`` maps upstream ids the platform cannot name itself (``Feature.IDENTIFY``)
    to student ids. A roster student who was removed but is still inside is an intruder
    as well.
    """
    ok = set(admitted)
    return [p for p in present if who_is_it(p, identify) not in ok]


def backoff_s(failures: int, base: float = 5.0, cap: float = 300.0) -> float:
    return float(min(cap, base * (2 ** max(0, failures - 1))))


# --- registration of classes ---------------------------------------------------------------


def _keys(svc: Services) -> Keys:
    return Keys(svc.settings.redis_prefix)


def room_index_key(svc: Services, kind: str, room_key: str) -> str:
    """The class of the room a ``kind`` platform's events call ``room_key``
    (``MeetingAdapter.room_key``, ``Feature.ROOM_INDEX``)."""
    return _keys(svc).room_index(kind, room_key)


async def watch_class(svc: Services, info: ClassInfo) -> None:
    """Register a new class for reconciliation (until a day after it ends)."""
    classes = _keys(svc).presence_classes()
    s = info.schedule
    end = (s.term_ends_at or s.ends_at).timestamp() + 86400
    await svc.redis.zadd(classes, {info.id: end})
    if has_feature(info.platform_kind, Feature.ROOM_INDEX):
        await register_room(svc, info, end)


async def register_room(svc: Services, info: ClassInfo, end: float) -> None:
    """Map the class's room key to the class, for the platform's gateway-wide events."""
    adapter, room = HostControls(svc).adapter_and_room(info)
    room_key = adapter.room_key(room)
    if room_key is None:
        return
    key = room_index_key(svc, info.platform_kind, room_key)
    held = await svc.redis.get(key)
    if held == info.id:
        return
    if held and svc.store is not None:
        other = await svc.store.get_class(str(held))
        if other is not None and not other.ended:
            # NOTE: a server that hands out a room number a live class holds is broken
            # or hostile; the room keeps its class, this class gets no room events.
            log.warning("%s room %s already belongs to class %s; class %s gets no "
                        "room events", info.platform_kind, room.upstream_id, held, info.id)
            return
    await svc.redis.set(key, info.id, exat=int(end))


# --- the reconciler ------------------------------------------------------------------------


@dataclass(slots=True)
class _Backoff:
    failures: int = 0
    next_at: float = 0.0
    alerted: bool = False


@dataclass(slots=True)
class Reconciler:
    svc: Services
    interval_s: float = 5.0
    lease_ms: int = 15000
    attempts: int = 3
    retry_base_s: float = 0.2
    hook_refresh_s: float = 300.0
    token: str = field(default_factory=lambda: secrets.token_hex(12))
    _backoff: dict[str, _Backoff] = field(default_factory=dict)
    _hooks_at: dict[str, float] = field(default_factory=dict)
    _indexed_rooms: set[str] = field(default_factory=set)
    attendance_every_s: float = 60.0
    _attendance_at: dict[str, float] = field(default_factory=dict)
    leader: bool = False

    # --- lease ---------------------------------------------------------------------

    def _lease(self) -> Lease:
        return Lease(self.svc.redis, _keys(self.svc).presence_lease(), token=self.token,
                     ttl_ms=self.lease_ms)

    async def hold_lease(self) -> bool:
        lease = self._lease()
        if self.leader:
            self.leader = await lease.renew()
            if not self.leader:
                log.warning("presence reconciler lost its lease")
        if not self.leader:
            self.leader = await lease.acquire()
            if self.leader:
                log.info("presence reconciler leads on %s", self.svc.settings.node_id)
        return self.leader

    async def release(self) -> None:
        if self.leader:
            with contextlib.suppress(Exception):
                await self._lease().release()
        self.leader = False

    async def run(self) -> None:
        task = asyncio.current_task()
        try:
            while True:
                if task is not None and task.cancelling():
                    # The Redis client can swallow a cancellation that lands mid-command;
                    # stopping must still stop (as in audit.sequencer).
                    raise asyncio.CancelledError
                try:
                    if await self.hold_lease():
                        await self.sweep()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - keep reconciling after a bad sweep
                    log.warning("presence sweep failed: %r", exc)
                await asyncio.sleep(self.interval_s)
        finally:
            await asyncio.shield(self.release())

    # --- sweeping ------------------------------------------------------------------

    async def sweep(self) -> int:
        """One pass over the live classes; returns how many were reconciled."""
        svc = self.svc
        classes = _keys(svc).presence_classes()
        now = svc.clock()
        await svc.redis.zremrangebyscore(classes, "-inf", now)
        done = 0
        for raw in await svc.redis.zrange(classes, 0, -1):
            cid = str(raw)
            info = await svc.store.get_class(cid)
            if info is not None and info.ended and has_feature(info.platform_kind,
                                                               Feature.ATTENDANCE):
                # the report of the last session comes after the class ended
                if self._attendance_due(cid, now):
                    await self.attendance(info)
                continue
            if info is None or info.ended:
                await svc.redis.zrem(classes, cid)
                continue
            if cid not in self._indexed_rooms and has_feature(info.platform_kind,
                                                               Feature.ROOM_INDEX):
                # classes created before their platform's rooms were indexed get it here
                s = info.schedule
                await register_room(svc, info,
                                    (s.term_ends_at or s.ends_at).timestamp() + 86400)
                self._indexed_rooms.add(cid)
            b = self._backoff.get(cid)
            if b is not None and b.next_at > now:
                continue
            if await self.reconcile(info) is not None:
                done += 1
        return done

    async def _with_retries(self, info: ClassInfo, call: Any) -> Any:
        delay = self.retry_base_s
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except Unsupported:
                raise
            except AdapterError as exc:
                self.svc.metrics.upstream_errors.labels(info.platform_kind).inc()
                if attempt == self.attempts:
                    raise
                log.info("presence: %s attempt %d failed: %s", info.platform_kind, attempt, exc)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def reconcile(self, info: ClassInfo) -> list[Present] | None:
        """Compare one class; the intruders found, or None when it could not be checked."""
        svc = self.svc
        adapter, room = HostControls(svc).adapter_and_room(info)
        caps = room_capabilities(adapter, room)
        await self._refresh_hooks(info, adapter, room)
        if Feature.ATTENDANCE in adapter.features and self._attendance_due(info.id,
                                                                          svc.clock()):
            await self.attendance(info, adapter, room)
        if Capability.PRESENCE not in caps:
            return None
        try:
            present = await self._with_retries(info, lambda: adapter.participants(room))
        except Unsupported:
            return None
        except AdapterError as exc:
            await self._failed(info, exc)
            return None
        b = self._backoff.pop(info.id, None)
        if b is not None and b.alerted:
            await JoinFlow(svc).alert(info.id, "platform_reachable", platform=info.platform_kind)
        return await self.judge(info, adapter, room, present)

    def _attendance_due(self, cid: str, now: float) -> bool:
        return now - self._attendance_at.get(cid, -1e12) >= self.attendance_every_s

    async def attendance(self, info: ClassInfo, adapter: MeetingAdapter | None = None,
                         room: Room | None = None) -> list[Present] | None:
        """Read the platform's reports of finished sessions not read yet
        (``Feature.ATTENDANCE``) and flag everyone in them who matches no roster student.
        Returns them, or None when the reports could not be read."""
        svc = self.svc
        assert svc.store is not None
        if adapter is None or room is None:
            adapter, room = HostControls(svc).adapter_and_room(info)
        if Feature.ATTENDANCE not in adapter.features:
            return None
        self._attendance_at[info.id] = svc.clock()
        key = _keys(svc).attendance_reports(info.id)
        known = {str(x) for x in await svc.redis.smembers(key)}
        roster = [RosterName(s.id, s.name, s.external_id)
                  for s in await svc.store.roster(info.id)]
        try:
            reports = await self._with_retries(
                info, lambda: adapter.attendance(room, roster, known))
        except Unsupported:
            return None
        except AdapterError as exc:
            await self._failed(info, exc)
            return None
        b = self._backoff.pop(info.id, None)
        if b is not None and b.alerted:
            await JoinFlow(svc).alert(info.id, "platform_reachable", platform=info.platform_kind)
        unknown: list[Present] = []
        for report in reports:
            for p in report.present:
                if p.student_id is None:
                    await self.flag(info, adapter, room, p, {}, source="attendance_report")
                    unknown.append(p)
            await svc.redis.sadd(key, report.report_id)
            await svc.redis.expire(key, 40 * 86400)
        return unknown

    async def judge(self, info: ClassInfo, adapter: MeetingAdapter, room: Room,
                    present: list[Present]) -> list[Present]:
        """Flag (and maybe remove) everyone present who was not admitted."""
        svc = self.svc
        admitted = list(await svc.store.admitted(info.id))
        identify: Mapping[str, str] = {}
        if Feature.IDENTIFY in adapter.features:
            roster = [s.id for s in await svc.store.roster(info.id)]
            identify = adapter.identify(room, roster)
        if any(p.account for p in present):
            # the platform names signed-in accounts: the roster's school e-mails say whose
            accounts = {s.email: s.id for s in await svc.store.roster(info.id) if s.email}
            identify = {**identify, **identify_accounts(present, accounts)}
        # Single-use credentials: once an admitted student is seen inside, their token goes.
        seen_ok = [p.upstream_id for p in present if who_is_it(p, identify) in set(admitted)]
        if seen_ok and Feature.CONSUME in adapter.features:
            try:
                await adapter.consume(room, seen_ok)
            except AdapterError as exc:
                svc.metrics.upstream_errors.labels(info.platform_kind).inc()
                log.warning("presence: could not retire used tokens: %s", exc)
        intruders = find_intruders(present, admitted, identify)
        for p in intruders:
            await self.flag(info, adapter, room, p, identify)
        return intruders

    async def flag(self, info: ClassInfo, adapter: MeetingAdapter, room: Room, p: Present,
                   identify: Mapping[str, str], *, source: str | None = None) -> str:
        """Alert once per person and class; remove when the policy says so. Returns what
        was done: ``removed``, ``flagged`` or ``unsupported`` (could not remove).
        ``source``: where the sighting comes from when not the live room
        (``attendance_report``: after the session, nobody can be removed)."""
        svc = self.svc
        policy = policy_of(info)
        sid = who_is_it(p, identify)
        action = "flagged"
        can_remove = (Capability.REMOVE in room_capabilities(adapter, room)
                      and Feature.EVICT in adapter.features)
        facts = {"platform": info.platform_kind, "upstream_id": p.upstream_id}
        extra = {"source": source} if source else {}
        facts.update(extra)
        personal = {"name": p.display_name} if p.display_name else None
        recorded = False
        failed_key = _keys(svc).evict_failed(info.id, p.upstream_id)
        if policy.auto_remove_intruders:
            if can_remove and await svc.redis.exists(failed_key):
                # NOTE: a removal the platform refused is retried after a pause, not at
                # every sweep: each attempt writes two records (its intent, its outcome).
                action = "remove_failed"
            elif can_remove:
                # NOTE: an upstream removal is an effect: its intent is recorded first, so a
                # process killed mid-removal still leaves a record (docs/audit.md).
                async with svc.auditor.intended(
                        "presence.intruder", actor="system:presence", org=info.org,
                        class_id=info.id, subject=sid, facts=facts,
                        personal=personal) as out:
                    try:
                        await adapter.evict(room, p)
                        action = "removed"
                    except AdapterError as exc:
                        svc.metrics.upstream_errors.labels(info.platform_kind).inc()
                        log.warning("presence: could not remove an intruder: %s", exc)
                        action = "remove_failed"
                        await svc.redis.set(failed_key, "1", ex=EVICT_RETRY_S)
                    out.reason = INTRUDER
                    out.facts["action"] = action
                recorded = True
            else:
                action = "unsupported"
        key = _keys(svc).presence_seen(info.id, p.upstream_id)
        first = await svc.redis.set(key, action, nx=True, ex=6 * 3600)
        if first or action == "removed":
            await JoinFlow(svc).alert(info.id, INTRUDER, upstream_id=p.upstream_id,
                                      name=p.display_name, student_id=sid, action=action,
                                      platform=info.platform_kind, **extra)
            if not recorded:  # nothing was done upstream: the sighting is the record
                await svc.auditor.record(
                    "presence.intruder", actor="system:presence", org=info.org,
                    class_id=info.id, subject=sid, reason=INTRUDER,
                    facts={**facts, "action": action}, personal=personal,
                )
        return action

    async def _failed(self, info: ClassInfo, exc: AdapterError) -> None:
        b = self._backoff.setdefault(info.id, _Backoff())
        b.failures += 1
        b.next_at = self.svc.clock() + backoff_s(b.failures, self.interval_s)
        log.warning("presence: %s unreachable for class %s (%d): %s", info.platform_kind,
                    info.id, b.failures, exc)
        if b.failures >= 2 and not b.alerted:
            b.alerted = True
            await JoinFlow(self.svc).alert(info.id, "platform_unreachable",
                                           platform=info.platform_kind)

    async def _refresh_hooks(self, info: ClassInfo, adapter: MeetingAdapter,
                             room: Room) -> None:
        """A platform may drop hooks whose callbacks fail (bbb-webhooks does): register the
        class's webhook again now and then (``Feature.REGISTER_HOOK``)."""
        if Feature.REGISTER_HOOK not in adapter.features:
            return
        hook = next((h for h in adapter.webhooks if h.per_class), None)
        if hook is None:
            return
        now = self.svc.clock()
        if now - self._hooks_at.get(info.id, -1e12) < self.hook_refresh_s:
            return
        self._hooks_at[info.id] = now
        url = hook.url(self.svc.settings.public_url, info.id)
        try:
            await adapter.register_hook(room, url)
        except AdapterError as exc:
            self.svc.metrics.upstream_errors.labels(info.platform_kind).inc()
            log.warning("presence: hook registration failed: %s", exc)
