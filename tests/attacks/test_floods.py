"""Brute force and floods: guessing short codes (from one address and from many), a join
flood on one class, a flood of waiting-room WebSockets.

This module has a gateway of its own: the short-code space is one rate-limit bucket for
the whole deployment, and these attacks drain it on purpose.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import pytest

from .kit import (
    LAPTOP_UA,
    Deployment,
    Device,
    Klass,
    Resp,
    Scene,
    assert_kept_out,
    next_message,
    reasons,
    scene,
)

pytestmark = pytest.mark.slow

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _code(n: int) -> str:
    digits = "".join(ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(10)))
    return f"{digits[:5]}-{digits[5:]}"


async def test_short_code_brute_force_sequential(deployment: Deployment) -> None:
    """One machine walks the code space in order, as fast as it can."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        attacker = s.device()
        answers = [await attacker.enter_code(_code(n)) for n in range(40)]
        statuses = [r.status for r in answers]
        assert set(statuses) <= {404, 429}
        assert statuses[:10] == [404] * 10, statuses  # the per-address burst
        assert statuses[-20:] == [429] * 20, statuses
        assert all(int(r.headers["Retry-After"]) >= 1 for r in answers if r.status == 429)
        assert_kept_out(attacker)
        # students typing their own codes are not slowed down by it
        for i in (0, 1):
            kid = s.device()
            r = await kid.enter_code(k.links[i]["code"])
            assert r.status == 200 and r.body["status"] == "waiting", r
        await s.admit_legit(k, 2)
        events = await s.attempts_from(attacker.ip, statuses.count(404), type_="join.code_failed")
        assert reasons(events) == ["token_invalid"] * statuses.count(404)


async def test_short_code_brute_force_distributed(deployment: Deployment) -> None:
    """Many machines, each under its own per-address limit: the limit on the whole code
    space still holds the total guess rate down."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        attackers = [s.device() for _ in range(60)]
        rng = random.Random(7)

        async def guess(d: Device) -> list[Resp]:
            return [await d.enter_code(_code(rng.getrandbits(50))) for _ in range(5)]

        answers = [r for rs in await asyncio.gather(*(guess(d) for d in attackers)) for r in rs]
        statuses = [r.status for r in answers]
        assert set(statuses) <= {404, 429}, statuses
        assert statuses.count(429) >= 60, statuses.count(429)  # code space: burst 200
        assert_kept_out(*attackers)
        await s.admit_legit(k, 0)  # links are a separate budget
        failed = statuses.count(404)
        mine = {d.ip for d in attackers}

        def all_there(ev: list[dict[str, Any]]) -> bool:
            return len([e for e in ev if e["personal"]["ip"] in mine]) >= failed

        events = await s.await_audit(all_there, reader="qt.hoa", type="join.code_failed")
        assert {e["reason"] for e in events if e["personal"]["ip"] in mine} == {"token_invalid"}


async def test_rate_limited_attempts_are_audited(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        attacker = s.device()
        answers = [await attacker.open(k.token(0)) for _ in range(15)]
        answers += [await attacker.enter_code(_code(n)) for n in range(15)]
        assert 429 in [r.status for r in answers]
        assert_kept_out(attacker)
        # The sequencer indexes records asynchronously, later under load: wait until the
        # refusals are searchable (the bound is generous; the wait ends as soon as they are).
        events = await s.await_audit(
            lambda ev: len(ev) >= 10 and "rate_limited" in reasons(ev), reader="qt.hoa",
            ip=attacker.ip, within_s=60)
        assert "rate_limited" in reasons(events)


async def test_join_flood_on_one_class(deployment: Deployment) -> None:
    """A leaked link and forged tokens for one class, from 40 machines at once, while
    the class is running: the link's own budget absorbs it, real students get in."""
    async with scene(deployment) as s:
        k = await s.new_class("standard")
        ctl = await s.teacher.control(k.id)
        await next_message(ctl, type_="state")
        owner = await s.admit_legit(k, 0)
        attackers = [s.device(user_agent=LAPTOP_UA) for _ in range(40)]
        garbage = k.token(0)[:-12] + "AAAAAAAAAAAA"  # genuine shape, broken signature

        async def flood(d: Device) -> list[Resp]:
            out = []
            for i in range(8):
                out.append(await d.open(k.token(0) if i % 2 == 0 else garbage))
            return out

        async def students() -> list[Device]:
            await asyncio.sleep(0.05)  # in the middle of the flood
            return [await s.admit_legit(k, i) for i in (1, 2, 3)]

        floods, legit = await asyncio.gather(
            asyncio.gather(*(flood(d) for d in attackers)), students())
        answers = [r for rs in floods for r in rs]
        assert_kept_out(*attackers)
        assert len(legit) == 3
        statuses = [r.status for r in answers]
        assert set(statuses) <= {403, 429}
        limited = [r for r in answers if r.status == 429]
        assert len(limited) >= 100, len(limited)  # one link: 1/s, burst 10
        assert {r.reason for r in answers if r.status == 403} <= {"device_mismatch",
                                                                 "token_invalid"}
        assert all(int(r.headers["Retry-After"]) >= 1 for r in limited)
        # the owner is still inside and comes back without trouble
        r = await owner.open(k.token(0))
        assert r.status in (200, 429)
        st = await s.teacher.state(k.id)
        assert any(a["kind"] == "link_shared" for a in st["alerts"])
        assert sorted(a["student_id"] for a in st["admitted"]) == sorted(k.sid(i) for i in range(4))
        await ctl.close()
        shared = [r for r in answers if r.reason == "device_mismatch"]
        events = await s.await_audit(lambda ev: len(ev) >= len(shared), class_=k.id,
                                     reason="device_mismatch")
        assert {e["personal"]["ip"] for e in events} <= {d.ip for d in attackers}


async def _sheet_flood(s: Scene, alerts: list[str]) -> tuple[Klass, list[Resp], Any]:
    """The whole printed sheet (96 links of a class of 100) hammered from 50 machines
    while the teacher's control room is open; ``alerts`` collects what it is told."""
    roster = [{"name": f"Học sinh {i:03d}", "external_id": f"HS{i:03d}"} for i in range(100)]
    k = await s.new_class("strict", roster=roster)
    leaked = [k.token(i) for i in range(4, 100)]
    attackers = [s.device() for _ in range(50)]
    ctl = await s.teacher.control(k.id)
    await next_message(ctl, type_="state")

    async def watch() -> None:
        while True:
            msg = await next_message(ctl, type_="alert", wait_s=60)
            alerts.append(msg["kind"])

    watcher = asyncio.create_task(watch())

    async def flood(n: int, d: Device) -> list[Resp]:
        return [await d.open(leaked[(n * 32 + j) % len(leaked)]) for j in range(32)]

    answers = [r for rs in await asyncio.gather(*(flood(n, d) for n, d in
                                                  enumerate(attackers))) for r in rs]
    await asyncio.sleep(0.5)  # let the last alerts arrive
    assert_kept_out(*attackers)

    async def stop() -> None:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await ctl.close()

    return k, answers, stop


async def test_join_flood_with_a_leaked_link_sheet(deployment: Deployment) -> None:
    """Every link of the printed sheet, 1600 opens from 50 machines: nobody gets past
    the waiting room, each link's budget throttles it, the teacher's control room is
    alerted, and a real student (retrying after ``Retry-After`` as the page does) still
    reaches the waiting room and the meeting."""
    async with scene(deployment) as s:
        alerts: list[str] = []
        k, answers, stop = await _sheet_flood(s, alerts)
        try:
            assert len([r for r in answers if r.status == 429]) >= 50
            odd = [(r.status, r.body) for r in answers if r.reason is None][:3]
            assert {r.reason for r in answers} <= {"awaiting_host", "device_mismatch",
                                                   "rate_limited"}, odd
            assert {"link_shared", "repeated_failures"} & set(alerts), set(alerts)
            assert (await s.teacher.state(k.id))["admitted"] == []
            phone = s.device()
            r = await phone.open_patiently(k.token(0))
            assert r.status == 200 and r.body["status"] == "waiting", r
            await s.admit_legit(k, 0, phone)
        finally:
            await stop()
        # the audit API pages at 500 events: a full first page and the oldest attacker
        # address on it are enough to show the refusals are there
        refused = [r for r in answers if r.reason == "device_mismatch"]
        want = min(500, len(refused))
        events = await s.await_audit(lambda ev: len(ev) >= want, class_=k.id,
                                     reason="device_mismatch")
        assert len(events) == want
        assert {e["subject"] for e in events} <= {k.sid(i) for i in range(4, 100)}


async def test_flood_of_refused_attempts_raises_flood_alert(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        alerts: list[str] = []
        _, _, stop = await _sheet_flood(s, alerts)
        await stop()
        assert "flood" in alerts, set(alerts)


async def test_alert_feed_cannot_be_flushed(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict", roster=[
            {"name": f"Học sinh {i:02d}", "external_id": f"HS{i:03d}"} for i in range(24)])
        intruder = s.device()
        r = await intruder.open(k.token(0))
        assert (await s.teacher.action(k.id, action="ban", ticket=r.body["ticket"])).status == 200
        r = await intruder.open(k.token(0))
        assert r.body["reason"] == "banned_device"
        # links 1..20 leaked and opened first by one accomplice, then by 15 others
        first = s.device()
        for i in range(1, 21):
            await first.open(k.token(i))
        others = [s.device() for _ in range(15)]

        async def push(n: int, d: Device) -> None:
            for j in range(12):
                await d.open(k.token(1 + (n * 12 + j) % 20))

        await asyncio.gather(*(push(n, d) for n, d in enumerate(others)))
        assert_kept_out(intruder, first, *others)
        kinds = [a["kind"] for a in (await s.teacher.state(k.id))["alerts"]]
        assert "banned_returning" in kinds, kinds


async def test_waiting_room_socket_flood_without_credentials(deployment: Deployment) -> None:
    """Hundreds of WebSocket handshakes for made-up, stolen or cookie-less tickets: all
    refused before the upgrade, and the waiting room keeps working."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        phone = s.device()
        r = await phone.open(k.token(0))
        ticket, path = r.body["ticket"], r.body["ws"]
        fake = f"/ws/wait/{k.id}.{'A' * 22}"
        attackers = [s.device() for _ in range(20)]

        async def storm(d: Device) -> list[int]:
            out = []
            for p in (path, fake, "/ws/wait/not-a-ticket") * 5:
                try:
                    ws = await d.ws(p)
                except aiohttp.WSServerHandshakeError as exc:
                    out.append(exc.status)
                else:
                    await ws.close()
                    out.append(101)
            return out

        ws = await phone.ws(path)
        assert (await phone.next_message(ws))["type"] == "waiting"
        codes = [c for cs in await asyncio.gather(*(storm(d) for d in attackers)) for c in cs]
        assert 101 not in codes and set(codes) <= {403, 404}, set(codes)
        assert (await s.teacher.action(k.id, action="admit", ticket=ticket)).status == 200
        msg = await phone.next_message(ws, type_="admitted")
        assert (await phone.go(msg["redirect"])).status == 302
        assert_kept_out(*attackers)


async def test_waiting_room_socket_flood_on_one_ticket(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        attacker = s.device()
        r = await attacker.open(k.token(1))  # a leaked link: a genuine ticket
        path = r.body["ws"]
        opened = 0
        refused = 0
        for _ in range(60):
            try:
                await attacker.ws(path)
                opened += 1
            except aiohttp.WSServerHandshakeError:
                refused += 1
        assert_kept_out(attacker)
        await s.admit_legit(k, 0)
        assert opened <= 5, f"{opened} sockets open for one ticket"


async def test_concurrent_request_flood_does_not_deny_real_students(
        deployment: Deployment) -> None:
    """500 simultaneous opens of a forged link from 500 machines: they wait for a Redis
    connection instead of failing with 503, and a real student in the middle of them
    reaches the waiting room."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        attackers = [s.device() for _ in range(500)]
        garbage = k.token(0)[:-12] + "AAAAAAAAAAAA"
        kid = s.device()
        answers = await asyncio.gather(*(d.open(garbage) for d in attackers),
                                       kid.open(k.token(1)))
        assert_kept_out(*attackers)
        statuses = [r.status for r in answers]
        assert 503 not in statuses, statuses.count(503)
        assert answers[-1].body["status"] == "waiting"
