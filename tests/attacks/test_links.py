"""Link sharing and leaks, revocation, replay of the one-time ``/go`` nonce, entry after
the class is locked or ended.

Each attack is played from a machine of its own against a running ``classguard serve``;
each test checks (1) the attacker is never handed a way into the meeting, (2) the real
students of the class still get in, (3) the audit trail has the attempt and its reason.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from .kit import LAPTOP_UA, MEETING_URL, Deployment, assert_kept_out, reasons, scene

pytestmark = pytest.mark.slow


async def test_leaked_link_opened_while_owner_in_class(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        owner = await s.admit_legit(k, 0)
        attacker = s.device(user_agent=LAPTOP_UA)
        for _ in range(2):
            r = await attacker.open(k.token(0))
            assert r.status == 403 and r.body == {"status": "denied",
                                                  "reason": "device_mismatch"}, r
        assert_kept_out(attacker)
        st = await s.teacher.state(k.id)
        assert [a["student_id"] for a in st["admitted"]] == [k.sid(0)]
        shared = [a for a in st["alerts"] if a["kind"] == "link_shared"]
        assert shared and shared[0]["name"] == k.links[0]["name"]
        assert shared[0]["device_hint"] == "Windows PC, Chrome"
        # the owner keeps their place, a classmate still gets in
        r = await owner.open(k.token(0))
        assert r.body["status"] == "admitted"
        assert (await owner.go(r.body["redirect"])).status == 302
        await s.admit_legit(k, 1)
        events = await s.await_audit(lambda ev: len(ev) >= 2, class_=k.id, ip=attacker.ip)
        assert reasons(events) == ["device_mismatch", "device_mismatch"]
        assert {e["subject"] for e in events} == {k.sid(0)}


async def test_leaked_link_opened_before_owner(deployment: Deployment) -> None:
    """The intruder is first to open a classmate's link, so the link binds to the
    intruder's device. Under ``strict`` they only wait; the owner's arrival is refused
    and raises ``link_shared``; the teacher refuses the intruder, reissues the link and
    resets the device binding."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        ctl = await s.teacher.control(k.id)
        attacker = s.device(user_agent=LAPTOP_UA)
        r = await attacker.open(k.token(0))
        assert r.status == 200 and r.body["status"] == "waiting", r
        attacker_ticket = r.body["ticket"]
        ws = await attacker.ws(r.body["ws"])
        assert (await attacker.next_message(ws))["type"] == "waiting"
        owner = s.device()
        r = await owner.open(k.token(0))
        assert r.status == 403 and r.body["reason"] == "device_mismatch"
        st = await s.teacher.state(k.id)
        assert [w["ticket"] for w in st["waiting"]] == [attacker_ticket]
        assert any(a["kind"] == "link_shared" for a in st["alerts"])
        # The teacher refuses the intruder, issues the owner a new link and lifts the
        # refusal for the student (not for the intruder's device, which the old link binds).
        assert (await s.teacher.action(k.id, action="deny", ticket=attacker_ticket)).status == 200
        msg = await attacker.next_message(ws)
        assert msg == {"type": "denied", "reason": "denied_by_host"}
        r = await s.teacher.call("POST", f"/api/v1/classes/{k.id}/links",
                                 json={"student_ids": [k.sid(0)]})
        new_link = r.body["links"][0]
        assert (await s.teacher.action(k.id, action="reset_device",
                                       student_id=k.sid(0))).status == 200
        assert (await s.teacher.action(k.id, action="admit", student_id=k.sid(0))).status == 200
        r = await attacker.open(k.token(0))
        assert r.status == 403 and r.body["reason"] == "token_revoked"
        assert_kept_out(attacker)
        phone = s.device()
        r = await phone.open(new_link["url"].rsplit("/j/", 1)[1])
        assert r.body["status"] == "waiting", r
        assert (await s.teacher.action(k.id, action="admit", ticket=r.body["ticket"])).status == 200
        r = await phone.open(new_link["url"].rsplit("/j/", 1)[1])
        assert (await phone.go(r.body["redirect"])).headers["Location"] == MEETING_URL
        await ctl.close()
        events = await s.await_audit(lambda ev: len(ev) >= 2, class_=k.id, ip=attacker.ip)
        assert reasons(events) == ["token_revoked", "awaiting_host"]  # newest first
        events = await s.await_audit(lambda ev: len(ev) >= 1, class_=k.id, ip=owner.ip)
        assert reasons(events) == ["device_mismatch"]


async def test_knock_of_a_reissued_link_cannot_be_admitted(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        attacker = s.device(user_agent=LAPTOP_UA)
        r = await attacker.open(k.token(0))
        ws_path = r.body["ws"]
        r = await s.teacher.call("POST", f"/api/v1/classes/{k.id}/links",
                                 json={"student_ids": [k.sid(0)]})
        assert r.status == 200
        # A teacher admitting everyone who waits must not let the old knock in.
        await s.teacher.action(k.id, action="admit_all")
        ws = await attacker.ws(ws_path)
        msg = await attacker.next_message(ws)
        if msg["type"] == "admitted":
            await attacker.go(msg["redirect"])
        assert_kept_out(attacker)
        assert msg["type"] in ("removed", "denied"), msg
        st = await s.teacher.state(k.id)
        assert k.sid(0) not in [a["student_id"] for a in st["admitted"]]


async def test_reissued_link_is_not_bound_to_the_intruders_device(
        deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        attacker = s.device(user_agent=LAPTOP_UA)
        r = await attacker.open(k.token(0))
        assert r.body["status"] == "waiting"
        assert (await s.teacher.action(k.id, action="deny", ticket=r.body["ticket"])).status == 200
        r = await s.teacher.call("POST", f"/api/v1/classes/{k.id}/links",
                                 json={"student_ids": [k.sid(0)]})
        new_token = r.body["links"][0]["url"].rsplit("/j/", 1)[1]
        assert (await s.teacher.action(k.id, action="admit", student_id=k.sid(0))).status == 200
        try:
            # the new link leaks to the same intruder: their device is not "the" device
            r = await attacker.open(new_token)
            assert r.body["status"] == "waiting" and r.body.get("reason") == "awaiting_host", r
            # the owner's phone can use the new link
            owner = s.device()
            r = await owner.open(new_token)
            assert r.status != 403 or r.body["reason"] != "device_mismatch", r
        finally:
            assert_kept_out(attacker)


async def test_revoked_link(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        holder = s.device()
        r = await holder.open(k.token(2))
        assert r.body["status"] == "waiting"
        r = await s.teacher.action(k.id, action="revoke_link", student_id=k.sid(2))
        assert r.status == 200 and r.body["revoked"] is True
        attacker = s.device()
        for dev in (holder, attacker):
            r = await dev.open(k.token(2))
            assert r.status == 403 and r.body["reason"] == "token_revoked", r
        r = await attacker.enter_code(k.links[2]["code"])
        assert r.status == 404 and r.body["error"]["code"] == "unknown_code"
        assert_kept_out(holder, attacker)
        await s.admit_legit(k, 0)
        events = await s.await_audit(lambda ev: len(ev) >= 1, class_=k.id, ip=attacker.ip)
        assert reasons(events) == ["token_revoked"]
        events = await s.attempts_from(attacker.ip, 2)
        assert reasons(events) == ["token_invalid", "token_revoked"]
        assert events[0]["type"] == "join.code_failed"


async def test_old_link_after_reissue(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        r = await s.teacher.call("POST", f"/api/v1/classes/{k.id}/links",
                                 json={"student_ids": [k.sid(1)]})
        new = r.body["links"][0]
        assert new["url"] != k.links[1]["url"] and new["code"] != k.links[1]["code"]
        attacker = s.device()
        r = await attacker.open(k.token(1))
        assert r.status == 403 and r.body["reason"] == "token_revoked"
        r = await attacker.enter_code(k.links[1]["code"])
        assert r.status == 404
        assert_kept_out(attacker)
        # the owner's new link and code work
        kid = s.device()
        r = await kid.enter_code(new["code"])
        assert r.body["status"] == "waiting", r
        assert (await s.teacher.action(k.id, action="admit", ticket=r.body["ticket"])).status == 200
        r = await kid.enter_code(new["code"])
        assert r.body["status"] == "admitted"
        assert (await kid.go(r.body["redirect"])).status == 302
        events = await s.await_audit(lambda ev: len(ev) >= 1, class_=k.id, ip=attacker.ip)
        assert reasons(events) == ["token_revoked"]


async def test_go_nonce_replay_same_device(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        phone = s.device()
        r = await phone.open(k.token(0))
        await s.teacher.action(k.id, action="admit", ticket=r.body["ticket"])
        r = await phone.open(k.token(0))
        nonce = r.body["redirect"]
        assert (await phone.go(nonce)).status == 302
        for _ in range(3):
            r = await phone.go(nonce)
            assert r.status == 404 and r.body["error"]["code"] == "go_unknown", r
        assert phone.locations == [MEETING_URL]
        # Replays are refusals counted per address and window: the first is recorded
        # (the 10th, 100th... would be, with their count).
        events = await s.attempts_from(phone.ip, 4)
        assert [e["type"] for e in events][:2] == ["go.refused", "join.enter"]
        assert reasons(events)[:2] == ["unknown", "entered"]
        assert events[0]["facts"]["count"] == 1


async def test_go_nonce_replay_other_device(deployment: Deployment) -> None:
    """The ``/go`` address leaks (a screenshot, a shared screen, a history sync) and is
    opened on another device before and after its owner used it."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        phone = s.device()
        r = await phone.open(k.token(0))
        await s.teacher.action(k.id, action="admit", ticket=r.body["ticket"])
        r = await phone.open(k.token(0))
        nonce = r.body["redirect"]
        attacker = s.device()
        # any link-shaped visit gives the attacker a device cookie of its own (noise not
        # in three parts gets none)
        await attacker.open("x.y.z")
        assert attacker.cookie is not None
        r = await attacker.go(nonce)
        assert r.status == 403 and r.body["error"]["code"] == "go_wrong_device", r
        attacker.forget_cookies()
        r = await attacker.go(nonce)  # no device cookie at all
        assert r.status == 404
        # the attacker's tries did not burn the owner's nonce
        g = await phone.go(nonce)
        assert g.status == 302 and g.headers["Location"] == MEETING_URL
        r = await attacker.go(nonce)
        assert r.status in (403, 404)
        assert not attacker.locations
        # the two refusals without a cookie are one record, counted per address
        events = await s.attempts_from(attacker.ip, 3)
        assert reasons(events) == ["unknown", "wrong_device", "token_invalid"]
        await s.admit_legit(k, 1)


async def test_go_nonce_after_removal(deployment: Deployment) -> None:
    """A student removed between admission and ``/go`` cannot use the nonce they hold."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        phone = s.device()
        r = await phone.open(k.token(3))
        await s.teacher.action(k.id, action="admit", ticket=r.body["ticket"])
        r = await phone.open(k.token(3))
        nonce = r.body["redirect"]
        assert (await s.teacher.action(k.id, action="remove", student_id=k.sid(3))).status == 200
        r = await phone.go(nonce)
        assert r.status == 403 and r.body["error"]["code"] == "go_not_admitted"
        assert not phone.locations
        events = await s.attempts_from(phone.ip, 3)
        assert reasons(events)[0] == "not_admitted"
        await s.admit_legit(k, 0)


async def test_waiting_room_ticket_hijack(deployment: Deployment) -> None:
    """The waiting-room ticket leaks (it is in the socket URL); another device connects
    to it hoping to receive the admission meant for the student."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        phone = s.device()
        r = await phone.open(k.token(1))
        ticket, path = r.body["ticket"], r.body["ws"]
        attacker = s.device()
        for dev in (attacker, s.device()):
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await dev.ws(path)
            assert exc.value.status == 403
        # a cookie of the attacker's own (from opening some link) does not help either
        await attacker.open(k.token(2))
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await attacker.ws(path)
        ws = await phone.ws(path)
        assert (await phone.next_message(ws))["type"] == "waiting"
        await s.teacher.action(k.id, action="admit", ticket=ticket)
        msg = await phone.next_message(ws, type_="admitted")
        assert (await phone.go(msg["redirect"])).status == 302
        assert_kept_out(attacker)


async def test_entry_after_lock(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        inside = await s.admit_legit(k, 0)
        assert (await s.teacher.action(k.id, action="lock")).status == 200
        attacker = s.device()
        for i in (1, 2):  # leaked links nobody has used yet
            r = await attacker.open(k.token(i))
            assert r.status == 403 and r.body["reason"] == "class_locked", r
        r = await attacker.enter_code(k.links[3]["code"])
        assert r.status == 403 and r.body["reason"] == "class_locked"
        assert_kept_out(attacker)
        # who was already inside can come back (a dropped connection); after unlock
        # the others can enter
        r = await inside.open(k.token(0))
        assert r.body["status"] == "admitted"
        assert (await s.teacher.action(k.id, action="unlock")).status == 200
        await s.admit_legit(k, 3)
        events = await s.await_audit(lambda ev: len(ev) >= 3, class_=k.id, ip=attacker.ip)
        assert reasons(events) == ["class_locked"] * 3


async def test_entry_after_end(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        inside = await s.admit_legit(k, 0)
        r = await inside.open(k.token(0))
        unused_nonce = r.body["redirect"]
        waiting = s.device()
        r = await waiting.open(k.token(1))
        ws = await waiting.ws(r.body["ws"])
        await waiting.next_message(ws, type_="waiting")
        assert (await s.teacher.action(k.id, action="end")).status == 200
        msg = await waiting.next_message(ws)
        assert msg == {"type": "denied", "reason": "class_ended"}
        attacker = s.device()
        for i in (0, 2, 3):
            r = await attacker.open(k.token(i))
            assert r.status == 403 and r.body["reason"] == "class_ended", r
        # a nonce minted before the end is dead, and reloading does not reopen the door
        r = await inside.go(unused_nonce)
        assert r.status == 403
        r = await inside.open(k.token(0))
        assert r.status == 403 and r.body["reason"] == "class_ended"
        assert_kept_out(attacker)
        assert inside.locations == [MEETING_URL]
        await asyncio.sleep(0)
        events = await s.await_audit(lambda ev: len(ev) >= 3, class_=k.id, ip=attacker.ip)
        assert reasons(events) == ["class_ended"] * 3
