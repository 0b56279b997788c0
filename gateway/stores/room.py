"""The waiting room: tickets, admissions, waiting-room sockets, ``/go`` nonces, the
devices and addresses students join from, and the hosts' presence."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from audit.scripts import Script, ScriptRunner
from policies.model import ClassId, StudentId

from . import reads
from .ids import new_secret, split_ticket
from .keys import Keys
from .outbox import RecordedWrites

Clock = Callable[[], float]

# A host's heartbeat keeps them present this long.
HOST_TTL_S = 30.0
# A waiting-room socket marks itself live every WAIT_SOCKET_REFRESH_S; one not marked
# for WAIT_SOCKET_STALE_S (its process died) no longer keeps its student present.
WAIT_SOCKET_REFRESH_S = 20.0
WAIT_SOCKET_STALE_S = 60.0
# How long a device reset is remembered for the host's alert when the student returns.
DEVICE_RESET_TTL_S = 180 * 86400
# How long a device's last entry is remembered (a school day's classes).
DEVICE_ENTERED_TTL_S = 12 * 3600

_ADMIT_TICKET = Script.load("gateway.stores", "admit_ticket")
_DENY_TICKET = Script.load("gateway.stores", "deny_ticket")
_REMOVE_STUDENT = Script.load("gateway.stores", "remove_student")
_MINT_NONCE = Script.load("gateway.stores", "mint_nonce")
_CONSUME_NONCE = Script.load("gateway.stores", "consume_nonce")
_SOCKET_OPEN = Script.load("gateway.stores", "socket_open")


@dataclass(frozen=True, slots=True)
class Ticket:
    id: str  # the public ticket string "<class_id>.<random>"
    class_id: ClassId
    student_id: StudentId
    device: str
    status: str  # waiting | admitted | denied | removed
    reason: str
    created: float
    device_hint: str
    jti: str = ""  # the link the ticket was issued for ("" on tickets of older versions)
    ip: str = ""  # the address it was issued to (for a ban from the waiting room)


class Room:
    def __init__(self, redis: aioredis.Redis, keys: Keys, scripts: ScriptRunner,
                 recorded: RecordedWrites, *, clock: Clock) -> None:
        self.r = redis
        self.k = keys
        self.scripts = scripts
        self.recorded = recorded
        self.clock = clock

    # --- tickets and admissions -----------------------------------------------------

    async def ticket(self, ticket: str) -> Ticket | None:
        parsed = split_ticket(ticket)
        if parsed is None:
            return None
        cid, rand = parsed
        d = await reads.hgetall(self.r, self.k.ticket(cid, rand))
        if not d:
            return None
        return Ticket(
            id=ticket,
            class_id=ClassId(cid),
            student_id=StudentId(d["student_id"]),
            device=d["device"],
            status=d.get("status", "waiting"),
            reason=d.get("reason", ""),
            created=float(d.get("created", 0)),
            device_hint=d.get("device_hint", ""),
            jti=d.get("jti", ""),
            ip=d.get("ip", ""),
        )

    async def current_ticket_of(self, cid: str, sid: str) -> str | None:
        rand = await reads.hget(self.r, self.k.tickets_by_student(cid), sid)
        return f"{cid}.{rand}" if rand else None

    async def admit_ticket(self, ticket: str, *, by: str,
                           record: str | None = None) -> dict[str, Any] | None:
        """Admit a waiting ticket; ``record`` (an outbox entry) is written with it."""
        parsed = split_ticket(ticket)
        if parsed is None:
            return None
        cid, rand = parsed
        keys = [self.k.waiting(cid), self.k.admitted(cid), self.k.removed(cid),
                self.k.denied(cid), self.k.ticket(cid, rand), self.k.outbox(cid)]
        args = [rand, repr(self.clock()), by, record or ""]
        if record is not None:
            res = await self.recorded.run(cid, _ADMIT_TICKET, keys, args)
        else:
            res = await self.scripts.run(_ADMIT_TICKET, keys, args)
        return cast(dict[str, Any], json.loads(res)) if res else None

    async def deny_ticket(self, ticket: str) -> dict[str, Any] | None:
        parsed = split_ticket(ticket)
        if parsed is None:
            return None
        cid, rand = parsed
        res = await self.scripts.run(
            _DENY_TICKET, [self.k.waiting(cid), self.k.denied(cid), self.k.ticket(cid, rand)],
            [rand])
        return cast(dict[str, Any], json.loads(res)) if res else None

    async def admit_student(self, cid: str, sid: str, *, by: str) -> str | None:
        """Admit by student id: their waiting ticket if any; else clear a previous
        deny/remove so their next attempt is decided afresh."""
        tk = await self.current_ticket_of(cid, sid)
        if tk is not None and await self.admit_ticket(tk, by=by) is not None:
            return tk
        async with self.r.pipeline(transaction=True) as p:
            p.srem(self.k.removed(cid), sid)
            p.srem(self.k.denied(cid), sid)
            await p.execute()
        return None

    async def remove_student(self, cid: str, sid: str, *, status: str, reason: str) -> str | None:
        res = await self.scripts.run(
            _REMOVE_STUDENT,
            [self.k.admitted(cid), self.k.waiting(cid), self.k.removed(cid),
             self.k.tickets_by_student(cid)],
            [sid, self.k.ticket(cid, ""), status, reason])
        return f"{cid}.{res}" if res else None

    async def waiting(self, cid: str) -> dict[str, dict[str, Any]]:
        raw = await reads.hgetall(self.r, self.k.waiting(cid))
        return {f"{cid}.{k}": json.loads(v) for k, v in raw.items()}

    async def admitted(self, cid: str) -> dict[str, dict[str, Any]]:
        raw = await reads.hgetall(self.r, self.k.admitted(cid))
        return {k: json.loads(v) for k, v in raw.items()}

    async def clear_room(self, cid: str) -> tuple[list[str], list[str]]:
        """End of class: everyone waiting or admitted is let go. Returns their tickets."""
        w = await self.waiting(cid)
        a = await self.admitted(cid)
        async with self.r.pipeline(transaction=True) as p:
            p.delete(self.k.waiting(cid), self.k.admitted(cid))
            for tk in w:
                p.hset(self.k.ticket(cid, tk.split(".", 1)[1]),
                       mapping={"status": "denied", "reason": "class_ended"})
            await p.execute()
        return list(w), [f"{cid}.{v['ticket']}" for v in a.values()]

    # --- devices and addresses ------------------------------------------------------

    async def bound_device(self, cid: str, sid: str) -> str | None:
        """The device (hash) the student's link is bound to, if any."""
        return await reads.hget(self.r, self.k.bind(cid), sid)

    async def reset_device(self, cid: str, sid: str) -> None:
        """Forget the student's device; the next device they join from is remembered
        for the host's alert (take_device_reset)."""
        async with self.r.pipeline(transaction=True) as p:
            p.hdel(self.k.bind(cid), sid)
            p.hdel(self.k.rebinds(cid), sid)
            p.hset(self.k.device_resets(cid), sid, repr(self.clock()))
            p.expire(self.k.device_resets(cid), DEVICE_RESET_TTL_S)
            await p.execute()

    async def take_device_reset(self, cid: str, sid: str) -> bool:
        """True once after the student's device was reset (see reset_device)."""
        return bool(await self.r.hdel(self.k.device_resets(cid), sid))

    async def note_ip(self, cid: str, sid: str, ip: str) -> None:
        """The student's last address, kept for a day so the host can ban it."""
        key = self.k.last_ip(cid)
        async with self.r.pipeline(transaction=False) as p:
            p.hset(key, sid, ip)
            p.expire(key, 86400)
            await p.execute()

    async def last_ip(self, cid: str, sid: str) -> str | None:
        """The student's last address (noted by ``note_ip`` or a join), for a day."""
        return await reads.hget(self.r, self.k.last_ip(cid), sid)

    # --- waiting-room sockets -------------------------------------------------------

    async def socket_opened(self, ticket: str, socket_id: str, *, keep: int,
                            ttl_s: int = 12 * 3600) -> tuple[list[str], bool]:
        """Register a socket on ``ticket`` (across every process); returns the ids of
        the older sockets beyond the newest ``keep``, which their processes close, and
        whether the student's page had left and is back."""
        parsed = split_ticket(ticket)
        if parsed is None:
            return [], False
        cid, rand = parsed
        now = self.clock()
        res = await self.scripts.run(
            _SOCKET_OPEN, [self.k.ticket_sockets(cid, rand), self.k.ticket(cid, rand)],
            [socket_id, repr(now), keep, ttl_s, repr(now - WAIT_SOCKET_STALE_S)])
        return [str(x) for x in res[1:]], bool(int(res[0]))

    async def socket_seen(self, ticket: str, socket_id: str) -> None:
        """A live socket's periodic mark: sockets of a process that died without
        closing them go stale after WAIT_SOCKET_STALE_S."""
        parsed = split_ticket(ticket)
        if parsed is not None:
            await self.r.zadd(self.k.ticket_sockets(*parsed), {socket_id: self.clock()},
                              xx=True)

    async def socket_closed(self, ticket: str, socket_id: str) -> int:
        """Unregister a socket; returns how many live sockets the ticket still has."""
        parsed = split_ticket(ticket)
        if parsed is None:
            return 0
        key = self.k.ticket_sockets(*parsed)
        async with self.r.pipeline(transaction=True) as p:
            p.zrem(key, socket_id)
            p.zcount(key, self.clock() - WAIT_SOCKET_STALE_S, "+inf")
            _, left = await p.execute()
        return int(left)

    async def gone_tickets(self, tickets: Iterable[str]) -> set[str]:
        """The waiting tickets whose page was open and no longer is (closed, or its
        socket silent for WAIT_SOCKET_STALE_S). A ticket that never had a page open
        (an API client, or a page still loading) is not gone."""
        parsed = [(tk, split_ticket(tk)) for tk in tickets]
        valid = [(tk, pr) for tk, pr in parsed if pr is not None]
        if not valid:
            return set()
        stale = self.clock() - WAIT_SOCKET_STALE_S
        async with self.r.pipeline(transaction=False) as p:
            for _, (cid, rand) in valid:
                p.hget(self.k.ticket(cid, rand), "ws")
                p.zcount(self.k.ticket_sockets(cid, rand), stale, "+inf")
            res = await p.execute()
        return {tk for i, (tk, _) in enumerate(valid)
                if res[2 * i] in ("1", b"1") and int(res[2 * i + 1]) == 0}

    # --- /go nonces ---------------------------------------------------------------

    async def mint_nonce(self, t: Ticket, ttl_s: int) -> str | None:
        """A ``/go`` nonce for the ticket's device, or None when the student is not
        admitted on that device or the ticket's link is no longer current."""
        parsed = split_ticket(t.id)
        if parsed is None:
            return None
        cid, trand = parsed
        rand = new_secret(24)
        ok = await self.scripts.run(
            _MINT_NONCE,
            [self.k.admitted(cid), self.k.links(cid), self.k.ticket(cid, trand),
             self.k.nonce(cid, rand)],
            [t.student_id, t.device, t.id, ttl_s],
        )
        return f"{cid}.{rand}" if int(ok) == 1 else None

    async def consume_nonce(self, nonce: str, device: str) -> tuple[str, dict[str, Any] | None]:
        """('ok', data) | ('unknown', None) | ('wrong_device', None) | ('not_admitted', None)"""
        parsed = split_ticket(nonce)
        if parsed is None:
            return "unknown", None
        cid, rand = parsed
        res = await self.scripts.run(
            _CONSUME_NONCE, [self.k.nonce(cid, rand), self.k.admitted(cid), self.k.links(cid)],
            [device])
        code = int(res[0])
        if code == 1:
            d = json.loads(res[1])
            d["class_id"] = cid
            return "ok", d
        return {0: "unknown", 2: "wrong_device", 3: "not_admitted"}[code], None

    async def note_entered(self, device: str, ticket: str) -> None:
        """Remember the ticket this device last entered a class by (``/go``), for the
        pages a student sees once admitted (``GET /report``)."""
        await self.r.set(self.k.device_entered(device), ticket, ex=DEVICE_ENTERED_TTL_S)

    async def entered_ticket(self, device: str) -> str | None:
        """The ticket this device last entered a class by, while remembered."""
        v = await reads.get(self.r, self.k.device_entered(device))
        return str(v) if v else None

    # --- host presence -------------------------------------------------------------

    async def host_heartbeat(self, cid: str, conn_id: str) -> None:
        now = self.clock()
        async with self.r.pipeline(transaction=True) as p:
            p.zadd(self.k.hosts(cid), {conn_id: now + HOST_TTL_S})
            p.zremrangebyscore(self.k.hosts(cid), "-inf", now - 3600)
            p.hdel(self.k.meta(cid), "host_left_at")
            p.expire(self.k.hosts(cid), 86400)
            await p.execute()

    async def host_gone(self, cid: str, conn_id: str) -> bool:
        """Returns True when no host is left."""
        now = self.clock()
        async with self.r.pipeline(transaction=True) as p:
            p.zrem(self.k.hosts(cid), conn_id)
            p.zcount(self.k.hosts(cid), now, "+inf")
            _, remaining = await p.execute()
        if int(remaining) == 0:
            await self.r.hset(self.k.meta(cid), "host_left_at", repr(now))
            return True
        return False

    async def host_present(self, cid: str) -> bool:
        return int(await self.r.zcount(self.k.hosts(cid), self.clock(), "+inf")) > 0

    async def once(self, cid: str, name: str, ttl_s: int) -> bool:
        """True for the first caller in ``ttl_s`` seconds (across all processes)."""
        return await self.scripts.command(
            "SET", self.k.once(cid, name), "1", "NX", "EX", ttl_s) is not None
