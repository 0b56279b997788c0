"""Host controls: the same code serves ``POST .../actions`` and the control WebSocket.

Each action changes Redis atomically, tells every gateway process (pub/sub) so the
affected students' sockets react at once, asks the meeting platform to enforce it when
the platform can, and is recorded in the audit log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meeting_adapters import (
    AdapterError,
    Capability,
    Feature,
    MeetingAdapter,
    Room,
    Unsupported,
    create_adapter,
)

from .auth import Principal
from .authz import Action, Target, allows, listing_scope
from .bans import make_key
from .errors import ApiError
from .services import Services
from .stores import ClassInfo, split_ticket, valid_student_id

log = logging.getLogger("classguard.host")

ACTIONS = (
    "admit",
    "deny",
    "admit_all",
    "remove",
    "ban",
    "unban",
    "lock",
    "unlock",
    "mute_all",
    "end",
    "reset_device",
    "revoke_link",
)
_FIELDS = {"action", "student_id", "ticket", "scope", "reason", "ban", "org_wide",
           "expires_in_s"}

# NOTE: a ban without a scope also bans the address the device was last seen at, for an
# hour at most: an intruder who clears cookies comes back as a new device from the same
# address. Bounded, because one address can be a whole school behind NAT; a host who
# knows that asks for scope "device" explicitly (the control room does).
ADDRESS_FOLLOW_S = 3600


@dataclass(frozen=True, slots=True)
class ActionRequest:
    action: str
    student_id: str | None
    ticket: str | None
    scope: str | None
    reason: str | None
    ban: str | None
    org_wide: bool = False
    expires_in_s: int | None = None

    @classmethod
    def parse(cls, data: Any) -> ActionRequest:
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_body", "expected a JSON object")
        for k in data:
            if k not in _FIELDS:
                raise ApiError(400, "unknown_field", f"unknown field {k!r}", field=k)
        action = data.get("action")
        if action not in ACTIONS:
            raise ApiError(400, "invalid_action", f"action must be one of {', '.join(ACTIONS)}",
                           field="action")
        sid = data.get("student_id")
        if sid is not None and (not isinstance(sid, str) or not valid_student_id(sid)):
            raise ApiError(400, "invalid_student_id", "malformed student_id", field="student_id")
        ticket = data.get("ticket")
        if ticket is not None and (not isinstance(ticket, str) or split_ticket(ticket) is None):
            raise ApiError(400, "invalid_ticket", "malformed ticket", field="ticket")
        scope = data.get("scope")
        if scope is not None and scope not in ("device", "ip", "both"):
            raise ApiError(400, "invalid_scope", "scope must be device, ip or both", field="scope")
        reason = data.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
            raise ApiError(400, "invalid_reason", "reason must be a short text", field="reason")
        ban = data.get("ban")
        if ban is not None and (not isinstance(ban, str) or len(ban) > 200):
            raise ApiError(400, "invalid_ban", "ban must be a ban key", field="ban")
        org_wide = data.get("org_wide", False)
        if not isinstance(org_wide, bool):
            raise ApiError(400, "invalid_field", "org_wide must be true or false", field="org_wide")
        exp = data.get("expires_in_s")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int)
                                or not 60 <= exp <= 366 * 86400):
            raise ApiError(400, "invalid_field", "expires_in_s must be 60 s to 366 days",
                           field="expires_in_s")
        return cls(action, sid, ticket, scope, reason, ban, org_wide, exp)


async def class_target(svc: Services, info: ClassInfo) -> Target:
    """What gateway/authz.py needs to know about a class: its org chain and owner."""
    assert svc.staff is not None
    return Target.of_org(await svc.staff.org_ancestors(info.org), owner=info.owner)


async def visible_classes(svc: Services, p: Principal) -> list[ClassInfo]:
    """The classes ``p`` may see (authz ``VIEW_CLASS``), unsorted."""
    assert svc.store is not None and svc.staff is not None
    scope = listing_scope(p, Action.VIEW_CLASS)
    if scope == "subtree":
        return await svc.store.classes_of_orgs(await svc.staff.org_subtree(p.org))
    if scope == "owned":
        return await svc.store.classes_of_owner(p.username)
    return []


async def _require_org_wide(svc: Services, p: Principal, info: ClassInfo, message: str) -> None:
    if not allows(p, Action.BAN_ORG_WIDE, await class_target(svc, info)):
        raise ApiError(403, "forbidden", message)


def room_capabilities(adapter: MeetingAdapter, room: Room) -> frozenset[Capability]:
    """The capabilities of this class's room (a platform may add some per room:
    ``Feature.ROOM_CAPABILITIES``)."""
    if Feature.ROOM_CAPABILITIES in adapter.features:
        return frozenset(adapter.room_capabilities(room))
    return adapter.capabilities


class HostControls:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def sealed_platform(self, info: ClassInfo) -> dict[str, Any]:
        """The class's platform settings and provisioned room, decrypted."""
        raw = self.svc.secretbox.decrypt(info.platform_sealed, aad=info.id.encode())
        data: dict[str, Any] = json.loads(raw)
        return data

    def adapter(self, kind: str) -> MeetingAdapter:
        return create_adapter(kind, http_session=self.svc.http, pools=self.svc.adapter_pools)

    def adapter_and_room(self, info: ClassInfo) -> tuple[MeetingAdapter, Room]:
        sealed = self.sealed_platform(info)
        return self.adapter(info.platform_kind), Room.from_dict(sealed["room"])

    async def _upstream(self, info: ClassInfo, cap: Capability, call: str,
                        *args: Any) -> str:
        """Ask the platform to enforce an action; 'done', or 'unsupported' when the
        platform cannot (the gateway-side effect still holds)."""
        adapter, room = self.adapter_and_room(info)
        # NOTE: the adapter is asked even without the capability: a platform may do part
        # of it (cancel an entry although it cannot remove who is inside), then raise Unsupported.
        try:
            controls: dict[str, Callable[..., Awaitable[None]]] = {
                "remove": adapter.remove, "mute": adapter.mute, "lock": adapter.lock,
                "end": adapter.end}
            await controls[call](room, *args)
        except Unsupported:
            return "unsupported"
        except AdapterError as exc:
            self.svc.metrics.upstream_errors.labels(info.platform_kind).inc()
            log.warning("platform %s failed on %s: %s", info.platform_kind, call, exc)
            return "failed"
        return "done"

    async def remove_upstream(self, info: ClassInfo, sid: str) -> str:
        """Ask the platform to remove a student whose admission ended (as ``remove``)."""
        return await self._upstream(info, Capability.REMOVE, "remove", _participant(sid))

    async def perform(self, p: Principal, info: ClassInfo, req: ActionRequest) -> dict[str, Any]:
        """Carry out a host action. Its ``intent`` is recorded before any effect and its
        outcome (``host.<action>``) after (Auditor.intended)."""
        svc = self.svc
        a = req.action
        subject = req.student_id
        if a == "admit_all":
            # the intent names who may be admitted, before anyone is
            waiting = await svc.store.waiting(info.id)
            gone = await svc.store.gone_tickets(waiting)
            subject = ",".join(sorted({str(w.get("student_id")) for tk, w in waiting.items()
                                       if tk not in gone}))
        async with svc.auditor.intended(
                f"host.{a}", actor=p.actor, org=info.org, class_id=info.id,
                subject=subject[:2000] if subject else None,
                facts={"ticket": req.ticket, "scope": req.scope, "via": p.via}) as outcome:
            result, affected = await self._perform(p, info, req)
            svc.metrics.host_actions.labels(a).inc()
            outcome.subject = ",".join(affected)[:2000] if affected else None
            outcome.reason = {"deny": "denied_by_host", "remove": "removed_by_host",
                              "admit": "admitted_by_host",
                              "admit_all": "admitted_by_host"}.get(a)
            outcome.facts = {"ticket": req.ticket, "scope": req.scope, "via": p.via,
                             "upstream": result.get("upstream"),
                             "count": len(affected) or None,
                             "address_banned_until": result.get("address_banned_until")}
            outcome.personal = {"note": req.reason} if req.reason else None
        return result

    async def _perform(self, p: Principal, info: ClassInfo, req: ActionRequest
                       ) -> tuple[dict[str, Any], list[str]]:
        svc = self.svc
        store, bus = svc.store, svc.bus
        cid = info.id
        result: dict[str, Any] = {"ok": True, "action": req.action}
        affected: list[str] = []
        a = req.action

        if a == "admit":
            if req.ticket:
                self._same_class(cid, req.ticket)
                w = await store.admit_ticket(req.ticket, by=p.username)
                if w is None:
                    raise ApiError(409, "not_waiting", "that ticket is not waiting", field="ticket")
                sid = str(w["student_id"])
                await bus.publish(cid, {"type": "admitted", "ticket": req.ticket,
                                        "student_id": sid, "by": "host",
                                        "name": await self._name(cid, sid)})
                affected.append(sid)
            elif req.student_id:
                await self._require_student(cid, req.student_id)
                tk = await store.admit_student(cid, req.student_id, by=p.username)
                await bus.publish(cid, {"type": "admitted" if tk else "state",
                                        "ticket": tk, "student_id": req.student_id,
                                        "by": "host",
                                        "name": await self._name(cid, req.student_id)})
                affected.append(req.student_id)
            else:
                raise ApiError(400, "missing_field", "admit needs ticket or student_id",
                               field="ticket")
        elif a == "deny":
            ticket = req.ticket or (
                await store.current_ticket_of(cid, req.student_id) if req.student_id else None
            )
            if not ticket:
                raise ApiError(400, "missing_field", "deny needs ticket", field="ticket")
            self._same_class(cid, ticket)
            w = await store.deny_ticket(ticket)
            if w is None:
                raise ApiError(409, "not_waiting", "that ticket is not waiting", field="ticket")
            sid = str(w["student_id"])
            await bus.publish(cid, {"type": "denied", "ticket": ticket, "student_id": sid,
                                    "reason": "denied_by_host"})
            affected.append(sid)
        elif a == "admit_all":
            # Only students whose waiting page is still open: one who closed it is not
            # there to be let in (the teacher may still admit them one by one).
            waiting = list(await store.waiting(cid))
            gone = await store.gone_tickets(waiting)
            result["skipped_gone"] = len(gone)
            for ticket in waiting:
                if ticket in gone:
                    continue
                w = await store.admit_ticket(ticket, by=p.username)
                if w is not None:
                    sid = str(w["student_id"])
                    await bus.publish(cid, {"type": "admitted", "ticket": ticket,
                                            "student_id": sid, "by": "host",
                                            "name": await self._name(cid, sid)})
                    affected.append(sid)
            result["admitted"] = len(affected)
        elif a == "ban" and req.ban and not (req.student_id or req.ticket):
            # a ban handle from an alert (a visitor who never got in)
            result["banned"] = [await self._ban_handle(p, info, req)]
        elif a in ("remove", "revoke_link", "ban"):
            sid, ticket_info = await self._target(cid, req)
            if a == "ban":
                result["banned"], address_until = await self._ban(p, info, sid,
                                                                  ticket_info, req)
                if address_until is not None:
                    result["address_banned_until"] = address_until
            if a == "revoke_link":
                retired = await store.revoke_student_links(cid, sid)
                result["revoked"] = retired.jti is not None
            status_reason = {"remove": "removed_by_host",
                             "ban": "banned_ip" if req.scope == "ip" else "banned_device",
                             "revoke_link": "token_revoked"}[a]
            tk = await store.remove_student(cid, sid, status="removed", reason=status_reason)
            await bus.publish(cid, {"type": "removed", "student_id": sid, "ticket": tk,
                                    "reason": status_reason})
            result["upstream"] = await self._upstream(info, Capability.REMOVE, "remove",
                                                      _participant(sid))
            affected.append(sid)
        elif a == "unban":
            if not req.ban:
                raise ApiError(400, "missing_field", "unban needs the ban key", field="ban")
            if req.org_wide:
                await _require_org_wide(svc, p, info, "only administrators lift org-wide bans")
            where = {"org": info.org} if req.org_wide else {"class_id": cid}
            if not await store.lift_ban(req.ban, **where):
                raise ApiError(404, "not_found", "no such ban", field="ban")
        elif a in ("lock", "unlock"):
            await store.set_flag(cid, "locked", a == "lock")
            if a == "lock":
                result["upstream"] = await self._upstream(info, Capability.LOCK, "lock")
            await bus.publish(cid, {"type": "state", "locked": a == "lock"})
        elif a == "mute_all":
            adapter, room = self.adapter_and_room(info)
            if Capability.MUTE not in room_capabilities(adapter, room):
                raise ApiError(409, "unsupported_by_platform",
                               f"the {info.platform_kind} platform cannot mute participants")
            result["upstream"] = await self._upstream(info, Capability.MUTE, "mute", None)
        elif a == "end":
            await store.set_flag(cid, "ended", True)
            waiting, admitted = await store.clear_room(cid)
            for ticket in waiting:
                await bus.publish(cid, {"type": "denied", "ticket": ticket,
                                        "reason": "class_ended"})
            await bus.publish(cid, {"type": "ended", "reason": "class_ended"})
            result["upstream"] = await self._upstream(info, Capability.END, "end")
            result["released"] = len(waiting) + len(admitted)
        elif a == "reset_device":
            if not req.student_id:
                raise ApiError(400, "missing_field", "reset_device needs student_id",
                               field="student_id")
            await self._require_student(cid, req.student_id)
            await store.reset_device(cid, req.student_id)
            result["student_id"] = req.student_id
            result["name"] = await self._name(cid, req.student_id)
            affected.append(req.student_id)
            await bus.publish(cid, {"type": "state", "reset_device": req.student_id})

        return result, affected

    # --- helpers -------------------------------------------------------------------

    async def _ban_handle(self, p: Principal, info: ClassInfo, req: ActionRequest) -> str:
        store = self.svc.store
        assert req.ban is not None
        kind, _, value = req.ban.partition(":")
        if kind == "d":
            key = make_key(device=value)
        elif kind == "i":
            key = make_key(ip=value)
        else:
            raise ApiError(400, "invalid_ban", "ban must be a d: or i: handle", field="ban")
        if req.org_wide:
            await _require_org_wide(self.svc, p, info, "only administrators ban across the org")
        until = self.svc.clock() + req.expires_in_s if req.expires_in_s else None
        where = {"class_id": None, "org": info.org} if req.org_wide else \
            {"class_id": info.id, "org": None}
        await store.add_ban(**where, key=key, reason=req.reason or "banned_by_host",
                            by=p.username, until=until)
        return kind

    async def _ban(self, p: Principal, info: ClassInfo, sid: str, ticket: Any,
                   req: ActionRequest) -> tuple[list[str], float | None]:
        """Ban the student's device and/or address, for the class or the org subtree.
        Returns the kinds of ban key added and, for a ban without a scope, until when
        the device's address is banned with it (see ADDRESS_FOLLOW_S)."""
        store = self.svc.store
        if req.org_wide:
            await _require_org_wide(self.svc, p, info, "only administrators ban across the org")
        scope = req.scope or "device"
        # the address of the ticket when the host bans from the waiting room, else the
        # student's last address
        ip = (ticket.ip if ticket is not None and ticket.ip else None) or \
            await self._ip_of(info.id, sid)
        keys = []
        if scope in ("device", "both"):
            dev = ticket.device if ticket else await self._bound_device(info.id, sid)
            if dev:
                keys.append(make_key(device=dev))
        if scope in ("ip", "both") and ip:
            keys.append(make_key(ip=ip))
        if not keys:
            raise ApiError(409, "nothing_to_ban",
                           "no device or address is known for this student yet", field="scope")
        now = self.svc.clock()
        until = now + req.expires_in_s if req.expires_in_s else None
        where = {"class_id": None, "org": info.org} if req.org_wide else \
            {"class_id": info.id, "org": None}
        reason = req.reason or "banned_by_host"
        for key in keys:
            await store.add_ban(**where, key=key, reason=reason, by=p.username, until=until,
                                student_id=sid)
        address_until = None
        if req.scope is None and ip:
            address_until = min(now + ADDRESS_FOLLOW_S, until or float("inf"))
            # never shortens a ban of that address the host already placed
            if not await store.add_ban(**where, key=make_key(ip=ip), reason=reason,
                                       by=p.username, until=address_until, only_new=True,
                                       student_id=sid):
                address_until = None
        return [k.split(":", 1)[0] for k in keys], address_until

    @staticmethod
    def _same_class(cid: str, ticket: str) -> None:
        parsed = split_ticket(ticket)
        if parsed is None or parsed[0] != cid:
            raise ApiError(404, "not_found", "no such ticket in this class", field="ticket")

    async def _name(self, cid: str, sid: str) -> str | None:
        st = await self.svc.store.student(cid, sid)
        return st.name if st else None

    async def _require_student(self, cid: str, sid: str) -> None:
        if await self.svc.store.student(cid, sid) is None:
            raise ApiError(404, "not_found", "no such student in this class", field="student_id")

    async def _target(self, cid: str, req: ActionRequest) -> tuple[str, Any]:
        store = self.svc.store
        if req.ticket:
            self._same_class(cid, req.ticket)
            t = await store.ticket(req.ticket)
            if t is None:
                raise ApiError(404, "not_found", "no such ticket", field="ticket")
            return t.student_id, t
        if req.student_id:
            await self._require_student(cid, req.student_id)
            tk = await store.current_ticket_of(cid, req.student_id)
            t = await store.ticket(tk) if tk else None
            return req.student_id, t
        raise ApiError(400, "missing_field", f"{req.action} needs student_id or ticket",
                       field="student_id")

    async def _bound_device(self, cid: str, sid: str) -> str | None:
        return await self.svc.store.bound_device(cid, sid) or None

    async def _ip_of(self, cid: str, sid: str) -> str | None:
        return await self.svc.store.last_ip(cid, sid) or None


def _participant(sid: str) -> Any:
    from meeting_adapters import Participant

    return Participant(student_id=sid, display_name="", role="student", ticket="")
