"""Bans and their evasion: a banned device coming back, with its cookies cleared, from
the same address, behind a forged ``X-Forwarded-For``; a removed student rejoining.

The intruder here holds leaked links of real students (a shared screenshot of the link
sheet): the ``standard`` preset admits roster links automatically while the teacher is
present, which is exactly when a ban must hold.
"""

from __future__ import annotations

import pytest

from .kit import LAPTOP_UA, Deployment, Device, Klass, Scene, assert_kept_out, reasons, scene

pytestmark = pytest.mark.slow


async def _intruder_banned(s: Scene, k: Klass, scope: str | None) -> tuple[Device, list[str]]:
    """The intruder walks in on student 0's leaked link; the teacher bans them."""
    intruder = s.device(user_agent=LAPTOP_UA)
    r = await intruder.open(k.token(0))
    assert r.body["status"] == "admitted", r  # standard + host present: this is the threat
    body = {"action": "ban", "student_id": k.sid(0), "reason": "not our student"}
    if scope:
        body["scope"] = scope
    r = await s.teacher.action(k.id, **body)
    assert r.status == 200, r
    intruder.redirects.clear()  # what they got before the ban is the premise, not the test
    return intruder, list(r.body["banned"])  # kinds of ban key: d(evice), i(p)


async def test_banned_device_returns(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("standard")
        ctl = await s.teacher.control(k.id)
        intruder, banned = await _intruder_banned(s, k, None)
        assert banned == ["d"]
        for i in (0, 1):  # the same link, and another leaked one
            r = await intruder.open(k.token(i))
            assert r.status == 403 and r.body["reason"] == "banned_device", r
        assert_kept_out(intruder)
        st = await s.teacher.state(k.id)
        assert [a["kind"] for a in st["alerts"]].count("banned_returning") == 2
        assert k.sid(0) not in [a["student_id"] for a in st["admitted"]]
        await s.admit_legit(k, 2)
        await ctl.close()
        events = await s.await_audit(lambda ev: len(reasons(ev)) >= 3, class_=k.id,
                                     ip=intruder.ip)
        assert reasons(events) == ["banned_device", "banned_device", "admitted_by_policy"]
        bans = await s.await_audit(lambda ev: len(ev) >= 1, class_=k.id, type="host.ban")
        assert bans[0]["actor"] == "user:co.lan"


async def test_banned_device_clears_cookies_same_ip(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("standard")
        ctl = await s.teacher.control(k.id)
        try:
            intruder, _ = await _intruder_banned(s, k, None)
            intruder.forget_cookies()
            r = await intruder.open(k.token(1))
            if r.body.get("redirect"):
                await intruder.go(r.body["redirect"])
            assert_kept_out(intruder)
            assert r.status == 403 and r.body["reason"] in ("banned_ip", "banned_device"), r
            st = await s.teacher.state(k.id)
            assert "banned_returning" in [a["kind"] for a in st["alerts"]]
            await s.admit_legit(k, 2)  # classmates elsewhere are unaffected
        finally:
            await ctl.close()


async def test_ip_ban_survives_cleared_cookies(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("standard")
        ctl = await s.teacher.control(k.id)
        intruder, banned = await _intruder_banned(s, k, "both")
        assert banned == ["d", "i"]
        intruder.forget_cookies()
        r = await intruder.open(k.token(1))
        assert r.status == 403 and r.body["reason"] == "banned_ip", r
        # another machine on the same address (a different browser profile)
        twin = s.device(intruder.ip)
        r = await twin.open(k.token(2))
        assert r.status == 403 and r.body["reason"] == "banned_ip", r
        assert_kept_out(intruder, twin)
        await s.admit_legit(k, 3)  # classmates elsewhere are unaffected
        await ctl.close()
        events = await s.await_audit(lambda ev: len(reasons(ev)) >= 3, class_=k.id,
                                     ip=intruder.ip)
        assert reasons(events) == ["banned_ip", "banned_ip", "admitted_by_policy"]


async def test_banned_address_with_fresh_devices_is_one_counted_alert(
        deployment: Deployment) -> None:
    """An intruder behind a banned address clears cookies again and again: every try is
    refused, and the host sees one banned_returning alert with the count, not a flood."""
    async with scene(deployment) as s:
        k = await s.new_class("standard")
        ctl = await s.teacher.control(k.id)
        intruder, banned = await _intruder_banned(s, k, "both")
        assert banned == ["d", "i"]
        for _ in range(10):
            intruder.forget_cookies()
            r = await intruder.open(k.token(1))
            assert r.status == 403 and r.body["reason"] == "banned_ip", r
        assert_kept_out(intruder)
        back = [a for a in (await s.teacher.state(k.id))["alerts"]
                if a["kind"] == "banned_returning"]
        assert len(back) == 1 and back[0]["count"] == 10, back
        await ctl.close()


async def test_spoofed_x_forwarded_for_does_not_evade_ip_ban(deployment: Deployment) -> None:
    """No trusted proxy is configured, so ``X-Forwarded-For`` is the attacker's word."""
    async with scene(deployment) as s:
        k = await s.new_class("standard")
        ctl = await s.teacher.control(k.id)
        intruder, _ = await _intruder_banned(s, k, "ip")
        intruder.forget_cookies()
        for xff in ("203.0.113.9", "203.0.113.9, 10.0.0.1", "::1"):
            r = await intruder.open(k.token(1), headers={"X-Forwarded-For": xff,
                                                         "X-Real-IP": "203.0.113.9"})
            assert r.status == 403 and r.body["reason"] == "banned_ip", (xff, r)
        assert_kept_out(intruder)
        await s.admit_legit(k, 2)
        await ctl.close()
        events = await s.await_audit(lambda ev: reasons(ev)[:3] == ["banned_ip"] * 3,
                                     class_=k.id, ip=intruder.ip)
        assert len(reasons(events)) >= 4
        assert {e["personal"]["ip"] for e in events} == {intruder.ip}
        assert await s.audit(class_=k.id, ip="203.0.113.9") == []


async def test_removed_student_rejoins(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        student = await s.admit_legit(k, 1)
        assert (await s.teacher.action(k.id, action="remove", student_id=k.sid(1))).status == 200
        student.redirects.clear()
        student.locations.clear()
        r = await student.open(k.token(1))
        assert r.status == 403 and r.body["reason"] == "removed_by_host"
        r = await student.enter_code(k.links[1]["code"])
        assert r.status == 403 and r.body["reason"] == "removed_by_host"
        student.forget_cookies()
        r = await student.open(k.token(1))
        assert r.status == 403 and r.body["reason"] in ("removed_by_host", "device_mismatch")
        third = r.body["reason"]
        assert_kept_out(student)
        await s.admit_legit(k, 2)
        # (sequenced asynchronously: wait for the three refusals themselves, newest first)
        refusals = [third, "removed_by_host", "removed_by_host"]
        events = await s.await_audit(lambda ev: reasons(ev)[:3] == refusals, class_=k.id,
                                     ip=student.ip)
        assert reasons(events)[:3] == refusals
        removal = await s.await_audit(lambda ev: len(ev) >= 1, class_=k.id, type="host.remove")
        assert removal[0]["reason"] == "removed_by_host" and removal[0]["subject"] == k.sid(1)
