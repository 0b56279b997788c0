"""The join: everything one attempt reads (the snapshot) and the one step that acts on
the decision (admit or knock), each in one round trip."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from audit.scripts import Call, Script, ScriptRunner
from policies.model import ClassId, ClassState, TokenFacts

from ..bans import match as match_bans
from ..bans import parse_bans
from .classes import ClassInfo, Student, class_from_flat, student_from_json
from .ids import new_secret, pairs
from .keys import Keys
from .limits import Limit, Limits, gcra_result
from .links import LinkRecord, link_from_json
from .outbox import RecordedWrites
from .room import HOST_TTL_S

Clock = Callable[[], float]

SNAPSHOT = Script.load("gateway.stores", "snapshot")
_APPLY = Script.load("gateway.stores", "apply_entry")


@dataclass(slots=True)
class Snapshot:
    """The class as seen for one attempt: the policy input plus what the gateway
    needs to act on the decision."""

    info: ClassInfo | None
    state: ClassState | None
    link: LinkRecord | None
    student: Student | None
    extra: dict[str, Any] = field(default_factory=dict)


class Join:
    def __init__(self, keys: Keys, scripts: ScriptRunner, limits: Limits,
                 recorded: RecordedWrites, *, clock: Clock) -> None:
        self.k = keys
        self.scripts = scripts
        self.limits = limits
        self.recorded = recorded
        self.clock = clock
        # A class's org chain never changes after creation: a read-through cache of
        # immutable data (not state), so the ban lookup joins the snapshot round trip.
        self._chains: dict[str, list[str]] = {}

    def _snapshot_keys(self, cid: str) -> list[str]:
        k = self.k
        return [k.meta(cid), k.links(cid), k.revoked(cid), k.roster(cid), k.bind(cid),
                k.rebinds(cid), k.admitted(cid), k.removed(cid), k.denied(cid), k.bans(cid),
                k.hosts(cid), k.jtis(cid), k.released(cid), k.device_resets(cid)]

    async def snapshot(
        self, cid: str, facts: TokenFacts, *, device: str | None, ip: str,
        limits: Sequence[Limit] = (),
    ) -> Snapshot:
        """Everything the policy needs for one attempt, in one round trip; with
        ``limits``, the rate limiter runs in the same round trip and its answer is in
        ``extra["wait"]`` (seconds, 0.0 when allowed)."""
        sid = facts.student_id or ""
        jti = facts.jti or ""
        now = self.clock()
        chain = self._chains.get(cid)
        calls: list[Call] = []
        if limits:
            calls.append(self.limits.gcra_call(limits, now))
        calls.append((SNAPSHOT, self._snapshot_keys(cid), [sid, jti]))
        res = await self.scripts.pipeline(
            calls, [("HGETALL", self.k.org_bans(org)) for org in chain or ()])
        wait = 0.0
        limited_by: Limit | None = None
        if limits:
            gcra, res = res[0], res[1:]
            wait, limited_by = gcra_result(gcra, limits)
        snap_raw, org_raw = res[0], res[1:]
        (meta_flat, cur_jti, is_revoked, roster_v, bound, rebinds, admitted_v, removed, denied,
         bans_flat, admitted_count, hosts_flat, jti_raw, released_raw, reset_v) = snap_raw
        meta = pairs(meta_flat)
        bans = pairs(bans_flat)
        hosts = [(hosts_flat[i], float(hosts_flat[i + 1])) for i in range(0, len(hosts_flat), 2)]
        if not meta:
            return Snapshot(None, None, None, None, {"wait": wait, "limited_by": limited_by})
        info = class_from_flat(tuple(meta_flat))
        all_bans = parse_bans(bans, "class", cid)
        if chain is None:
            # First attempt for this class in this process: learn the chain once.
            chain = json.loads(meta.get("org_chain") or "[]") or [info.org]
            if len(self._chains) > 50_000:
                self._chains.clear()
            self._chains[cid] = chain
            org_raw = await self.scripts.pipeline(
                [], [("HGETALL", self.k.org_bans(org)) for org in chain])
        for org, raw in zip(chain, org_raw, strict=True):
            # (a dict through redis-py, the flat reply through the multiplexed client)
            all_bans += parse_bans(raw if isinstance(raw, dict) else pairs(raw), "org", org)
        dev_b, ip_b = match_bans(all_bans, device=device, ip=ip, now=now)
        ban = dev_b or ip_b
        student = student_from_json(sid, roster_v) if roster_v else None
        link = link_from_json(cid, jti_raw) if jti_raw else None
        live_hosts = [s for _, s in hosts if s > now]
        host_present = bool(live_hosts)
        host_left_at: datetime | None = None
        if not host_present:
            left = meta.get("host_left_at")
            if hosts:
                left_ts = max(s for _, s in hosts) - HOST_TTL_S
                left = repr(max(float(left or 0), left_ts))
            if left:
                host_left_at = datetime.fromtimestamp(float(left), UTC)
        admitted = orjson.loads(admitted_v) if admitted_v else None
        revoked = bool(is_revoked) or (cur_jti is None) or (cur_jti != jti)
        released = False
        if released_raw and device is not None and device != bound:
            try:
                released = device in json.loads(released_raw)
            except ValueError:
                released = True  # NOTE: a corrupt entry holds the device for the host

        state = ClassState(
            class_id=ClassId(cid),
            schedule=info.schedule,
            locked=info.locked,
            ended=info.ended,
            host_present=host_present,
            host_left_at=host_left_at,
            revoked=revoked,
            on_roster=student is not None,
            bound_device=bound,
            rebinds_used=int(rebinds or 0),
            device_released=released,
            student_admitted=admitted is not None,
            admitted_device=admitted.get("device") if admitted else None,
            removed=bool(removed),
            denied=bool(denied),
            banned_device=dev_b is not None,
            banned_ip=ip_b is not None,
            ban_reason=ban.reason if ban else None,
            admitted_count=int(admitted_count),
        )
        return Snapshot(info, state, link, student,
                        {"admitted": admitted, "wait": wait, "limited_by": limited_by,
                         "ban_key": ban.key if ban else None,
                         # the host reset this student's device (stores/room.py)
                         "device_reset": bool(int(reset_v or 0))})

    async def apply_entry(
        self, cid: str, sid: str, device: str, *, mode: str, bind: str, ip: str,
        ticket_fields: Mapping[str, Any], entry: Mapping[str, Any], event: Mapping[str, Any],
        budget: Limit, nonce_ttl_s: int, bus_channel: str | None = None, jti: str = "",
        ticket_ttl_s: int = 12 * 3600, attempts: tuple[str, int] = ("attempts", 10),
        record: str,
    ) -> tuple[str, str | None, str | None, bool, int]:
        """Admit (``admit``/``readmit``) or knock (``wait``) in one atomic step.

        Returns (status, ticket, nonce, is_new, attempts): status ``ok``, ``limited``
        (ticket holds the wait in seconds) or ``conflict`` (another device bound the link
        first); ``attempts`` is the class's counter ``attempts`` (name, window s, as
        ``Alerts.note_refusal``) after counting this attempt, whatever the status.
        ``record`` (an outbox entry, audit.outbox) is written in the same step when the
        status is ``ok``, with the ticket in ``facts.ticket``. The event is published on
        ``bus_channel`` (by default the class events' channel, gateway/bus.py)."""
        rand = new_secret(16)
        nonce = new_secret(24)
        now_ms = int(self.clock() * 1000)
        k = self.k
        res = await self.recorded.run(
            cid, _APPLY,
            [k.ratelimit(budget.key), k.bind(cid), k.rebinds(cid), k.admitted(cid),
             k.removed(cid), k.denied(cid), k.tickets_by_student(cid), k.waiting(cid),
             k.ticket(cid, rand), k.last_ip(cid), k.nonce(cid, nonce),
             k.counter(cid, attempts[0]), k.outbox(cid)],
            [mode, sid, device, bind, now_ms, max(1, int(1000 / budget.per_second)),
             max(1, budget.burst), rand, orjson.dumps(dict(ticket_fields)),
             orjson.dumps(dict(entry)), ticket_ttl_s, ip, nonce, nonce_ttl_s,
             k.ticket(cid, ""), bus_channel or k.bus(), orjson.dumps(dict(event)),
             cid, jti, attempts[1], record],
        )
        status = str(res[0])
        counted = int(res[-1])
        if status == "limited":
            return status, str(float(res[1]) / 1000.0), None, False, counted
        if status != "ok":
            return status, None, None, False, counted
        ticket = f"{cid}.{res[1]}"
        minted = f"{cid}.{nonce}" if mode != "wait" else None
        return status, ticket, minted, bool(int(res[2])), counted
