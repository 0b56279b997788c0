"""Many students behind one address: budgets keyed on what a request proves.

A carrier's NAT puts thousands of phones behind one public address, and a school's
Wi-Fi is one address too. This module's gateway trusts one reverse proxy (``PROXY``,
a loopback address): every student and attacker arrives through it, their public
address in ``X-Forwarded-For``, exactly as behind the nginx of ``deploy/``. Each student
is a phone of its own (its own device cookie), many phones share an address.

The defences under test: a verified link is charged to its link and its class, never
to its address; a correct short code likewise; a waiting-room socket on a genuine
ticket is charged to its ticket; a live ``/go`` nonce is never charged. Only failures
(garbage, forgeries, unknown links, wrong codes) are charged to the address, its
network and the deployment, so an attacker behind the students' address throttles
nobody but themself.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from . import forge
from .kit import MEETING_URL, PHONE_UA, Deployment, Klass, Scene, next_message, scene

# (the module's gateway starts with the first test, which alone spreads 1,000 joins over
# 10 s: more than the suite's default per-test timeout on a busy machine)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROXY = "127.0.0.1"
SERVE_ENV = {"CLASSGUARD_TRUSTED_PROXIES": f"{PROXY}/32"}

# Public addresses in four different networks (a carrier NAT, a school, ...).
ADDRESSES = ("203.0.113.7", "198.51.100.23", "100.64.12.9", "192.0.2.200")


def _roster(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"name": f"Học sinh {tag} {i:03d}", "external_id": f"HS{tag}{i:03d}"}
            for i in range(n)]


@dataclass(slots=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass(slots=True)
class Phone:
    """One student's phone behind a shared address, relayed by the trusted proxy."""

    session: aiohttp.ClientSession
    address: str
    cookie: str | None = None
    answers: list[Answer] = field(default_factory=list)

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        h = {"Accept": accept, "X-Forwarded-For": self.address, "User-Agent": PHONE_UA}
        if self.cookie:
            h["Cookie"] = f"cg_dev={self.cookie}"
        return h

    async def _answer(self, r: aiohttp.ClientResponse) -> Answer:
        text = await r.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        morsel = r.cookies.get("cg_dev")
        if morsel is not None and morsel.value:
            self.cookie = morsel.value
        a = Answer(r.status, body, dict(r.headers))
        self.answers.append(a)
        return a

    async def open(self, token: str) -> Answer:
        async with self.session.get(f"/j/{token}", headers=self._headers(),
                                    allow_redirects=False) as r:
            return await self._answer(r)

    async def enter_code(self, code: str) -> Answer:
        async with self.session.post("/join", json={"code": code}, headers=self._headers(),
                                     allow_redirects=False) as r:
            return await self._answer(r)

    async def go(self, path: str) -> Answer:
        async with self.session.get(path, headers=self._headers(),
                                    allow_redirects=False) as r:
            return await self._answer(r)

    async def ws(self, path: str) -> aiohttp.ClientWebSocketResponse:
        h = self._headers()
        del h["Accept"]
        return await self.session.ws_connect(path, headers=h)


class Proxy:
    """The trusted reverse proxy: one connection pool, no cookies of its own."""

    def __init__(self, dep: Deployment) -> None:
        self.session = aiohttp.ClientSession(
            base_url=dep.base, cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(local_addr=(PROXY, 0), limit=0),
            timeout=aiohttp.ClientTimeout(total=60))

    def phone(self, address: str) -> Phone:
        return Phone(self.session, address)

    async def close(self) -> None:
        await self.session.close()


async def _classes(s: Scene, n: int, size: int, preset: str) -> list[Klass]:
    return [await s.new_class(preset, roster=_roster(size, f"{c:02d}"), title=f"Lớp {c:02d}")
            for c in range(n)]


async def _host_present(s: Scene, classes: list[Klass]) -> list[aiohttp.ClientWebSocketResponse]:
    sockets = []
    for k in classes:
        ctl = await s.teacher.control(k.id)
        await next_message(ctl, type_="state")
        sockets.append(ctl)
    return sockets


async def _enter(phone: Phone, token: str) -> tuple[Answer, Answer | None]:
    """Open the link; when admitted, follow ``/go`` into the meeting.

    A 503 (Redis overdue: the gateway fails closed when the machine is saturated, as
    the shared test machine sometimes is) is answered the way the student's page
    does, by opening the link again; any 4xx is final."""
    for _ in range(3):
        a = await phone.open(token)
        g = None
        if a.status == 200 and isinstance(a.body, dict) and a.body.get("redirect"):
            g = await phone.go(a.body["redirect"])
        if a.status != 503 and (g is None or g.status != 503):
            break
        await asyncio.sleep(1.0)
    return a, g


def _entered(result: tuple[Answer, Answer | None]) -> bool:
    a, g = result
    return (a.status == 200 and a.body.get("status") == "admitted" and g is not None
            and g.status == 302 and g.headers.get("Location") == MEETING_URL)


async def test_a_thousand_students_behind_four_addresses(deployment: Deployment) -> None:
    """1,000 roster students of 20 classes (host present, ``standard``) open their own
    links evenly over 10 s from 4 public addresses: every one is admitted and every
    ``/go`` leads into the meeting. (With per-address budgets on every open, each
    address let about 70 of its 250 students in.)"""
    async with scene(deployment) as s:
        proxy = Proxy(deployment)
        try:
            classes = await _classes(s, 20, 50, "standard")
            controls = await _host_present(s, classes)
            due = [(classes[i % 20], i // 20, ADDRESSES[i % 4]) for i in range(1000)]
            start = time.monotonic() + 0.2

            every: list[Answer] = []

            async def student(n: int, k: Klass, i: int, address: str
                              ) -> tuple[Answer, Answer | None]:
                await asyncio.sleep(max(0.0, start + n * 0.01 - time.monotonic()))
                phone = proxy.phone(address)
                try:
                    return await _enter(phone, k.token(i))
                finally:
                    every.extend(phone.answers)

            results = await asyncio.gather(*(student(n, k, i, a)
                                             for n, (k, i, a) in enumerate(due)))
            elapsed = time.monotonic() - start
            refused = [(r[0].status, r[0].body, r[1] and (r[1].status, r[1].body))
                       for r in results if not _entered(r)]
            assert refused == [], (f"{len(refused)} of 1000 not admitted "
                                   f"({elapsed:.1f} s): {refused[:3]}")
            # nobody was ever refused on the way (a retried 503 is not a refusal)
            assert not {403, 404, 429} & {a.status for a in every}
            st = await s.teacher.state(classes[7].id)
            assert len(st["admitted"]) == 50
            for ctl in controls:
                await ctl.close()
        finally:
            await proxy.close()


async def test_an_attacker_behind_the_students_address_throttles_only_themself(
        deployment: Deployment) -> None:
    """An attacker floods garbage links, forged tokens naming made-up links and wrong
    short codes from the same public address as 50 students of a running class: every
    student is admitted and enters, the attacker is throttled (429) and never let in."""
    shared = "203.0.113.50"
    async with scene(deployment) as s:
        proxy = Proxy(deployment)
        try:
            (k,) = await _classes(s, 1, 50, "standard")
            (ctl,) = await _host_present(s, [k])
            attacker = proxy.phone(shared)
            attacker_key = forge.fixture_key("attacker_key")
            stop = asyncio.Event()

            def garbage(n: int) -> str:
                if n % 3 == 0:
                    return secrets.token_urlsafe(40)  # not even shaped like a token
                if n % 3 == 1:  # our kid, the attacker's key, a link nobody was given
                    return forge.resigned(k.token(0), attacker_key,
                                          jti=secrets.token_hex(12), sub=f"x{n}")
                return forge.resigned(k.token(0), attacker_key, cls=f"c{n:08d}",
                                      jti=secrets.token_hex(12))

            links: list[Answer] = []
            codes: list[Answer] = []

            async def flood(lane: int) -> None:
                n = lane
                while not stop.is_set():
                    links.append(await attacker.open(garbage(n)))
                    codes.append(await attacker.enter_code(f"{secrets.randbits(50):013X}"[:10]))
                    n += 8

            began = time.monotonic()
            lanes = [asyncio.create_task(flood(i)) for i in range(8)]
            await asyncio.sleep(0.5)  # the flood is well under way

            async def student(i: int) -> tuple[Answer, Answer | None]:
                await asyncio.sleep(i * 0.02)
                return await _enter(proxy.phone(shared), k.token(i))

            try:
                results = await asyncio.gather(*(student(i) for i in range(50)))
            finally:
                stop.set()
                await asyncio.gather(*lanes)
            flooded_s = time.monotonic() - began
            refused = [(r[0].status, r[0].body) for r in results if not _entered(r)]
            assert refused == [], f"{len(refused)} of 50 students refused: {refused[:3]}"
            # the attacker is throttled, on links and codes alike, and never let in
            link_statuses = [a.status for a in links]
            code_statuses = [a.status for a in codes]
            assert set(link_statuses) <= {403, 429}, set(link_statuses)
            assert set(code_statuses) <= {404, 429}, set(code_statuses)
            assert 429 in link_statuses and 429 in code_statuses
            # answered at most what the address's failure budget holds (burst 20, then
            # 5/s) and the wrong codes what its code budget holds (10, then 1 per 5 s)
            assert link_statuses.count(403) <= 20 + 5 * flooded_s + 1, (
                link_statuses, flooded_s)
            assert code_statuses.count(404) <= 10 + 0.2 * flooded_s + 1, code_statuses
            assert not any(isinstance(a.body, dict) and a.body.get("redirect")
                           for a in attacker.answers)
            st = await s.teacher.state(k.id)
            assert len(st["admitted"]) == 50
            await ctl.close()
        finally:
            await proxy.close()


async def test_a_class_of_sixty_at_once_from_one_address(deployment: Deployment) -> None:
    """A class of 60 behind one school address opens its links at the same instant
    before the teacher arrives: all 60 are answered (waiting), all 60 waiting-room
    sockets open at once, and when the host arrives all 60 are admitted through their
    sockets and enter through ``/go``."""
    school = "198.51.100.77"
    async with scene(deployment) as s:
        proxy = Proxy(deployment)
        try:
            (k,) = await _classes(s, 1, 60, "standard")
            phones = [proxy.phone(school) for _ in range(60)]
            answers = await asyncio.gather(*(p.open(k.token(i)) for i, p in enumerate(phones)))
            odd = [(a.status, a.body) for a in answers
                   if a.status != 200 or a.body.get("status") != "waiting"]
            assert odd == [], f"{len(odd)} of 60 not waiting: {odd[:3]}"
            assert {a.body["reason"] for a in answers} == {"awaiting_host"}
            sockets = await asyncio.gather(*(p.ws(a.body["ws"])
                                             for p, a in zip(phones, answers, strict=True)))
            for ws in sockets:
                assert (await next_message(ws))["type"] == "waiting"
            (ctl,) = await _host_present(s, [k])
            admitted = [await next_message(ws, type_="admitted", wait_s=20) for ws in sockets]
            entries = await asyncio.gather(*(p.go(m["redirect"])
                                             for p, m in zip(phones, admitted, strict=True)))
            assert [(e.status, e.headers.get("Location")) for e in entries] == \
                [(302, MEETING_URL)] * 60
            for ws in sockets:
                await ws.close()
            await ctl.close()
        finally:
            await proxy.close()


async def test_correct_codes_from_one_address_wrong_codes_throttled(
        deployment: Deployment) -> None:
    """40 students behind one address type their own short codes at once: all answered
    (a correct code is charged to its link, not the address). Wrong codes from that
    address are still charged to it (10, then 429) and, while its budget is drained,
    every code from it is refused before it is looked up, a correct one included: the
    answer must not tell a guesser which guess was right. Garbage links from the same
    address do not shut code entry: they draw on other budgets."""
    school = "100.64.200.1"
    async with scene(deployment) as s:
        proxy = Proxy(deployment)
        try:
            (k,) = await _classes(s, 1, 41, "strict")
            noise = proxy.phone(school)
            garbage = await asyncio.gather(*(noise.open(secrets.token_urlsafe(30))
                                             for _ in range(40)))
            assert 429 in {a.status for a in garbage}  # the address's failure budget
            phones = [proxy.phone(school) for _ in range(40)]
            answers = await asyncio.gather(*(p.enter_code(k.links[i]["code"])
                                             for i, p in enumerate(phones)))
            odd = [(a.status, a.body) for a in answers
                   if a.status != 200 or a.body.get("status") != "waiting"]
            assert odd == [], f"{len(odd)} of 40 codes refused: {odd[:3]}"
            guesser = proxy.phone(school)
            wrong = [await guesser.enter_code(f"{n:010d}") for n in range(14)]
            assert [a.status for a in wrong] == [404] * 10 + [429] * 4
            late = await proxy.phone(school).enter_code(k.links[40]["code"])
            assert late.status == 429 and int(late.headers["Retry-After"]) >= 1
            # links from that address are unaffected
            a = await proxy.phone(school).open(k.token(40))
            assert a.status == 200 and a.body["status"] == "waiting", a
        finally:
            await proxy.close()


async def test_a_school_waiting_behind_one_address_keeps_its_sockets(
        deployment: Deployment) -> None:
    """Five classes of 60 behind one school address wait for their teachers: all 300
    waiting-room sockets open and stay open (the per-address cap is 5,000 per process;
    it was 200, and the handshakes were charged to the address: 30, then 5/s)."""
    school = "192.0.2.99"
    async with scene(deployment) as s:
        proxy = Proxy(deployment)
        try:
            classes = await _classes(s, 5, 60, "standard")
            phones = [(proxy.phone(school), k.token(i)) for k in classes for i in range(60)]
            answers = await asyncio.gather(*(p.open(t) for p, t in phones))
            assert {(a.status, a.body.get("status")) for a in answers} == {(200, "waiting")}
            sockets = await asyncio.gather(*(p.ws(a.body["ws"])
                                             for (p, _), a in zip(phones, answers, strict=True)))
            firsts = await asyncio.gather(*(next_message(ws, wait_s=20) for ws in sockets))
            assert {m["type"] for m in firsts} == {"waiting"}
            for ws in sockets:
                await ws.send_str("ping")
            pongs = await asyncio.gather(*(ws.receive(timeout=20) for ws in sockets))
            assert {m.data for m in pongs} == {"pong"}
            for ws in sockets:
                await ws.close()
        finally:
            await proxy.close()


async def test_made_up_go_nonces_are_throttled_but_not_the_students_own(
        deployment: Deployment) -> None:
    """Someone behind a school's address tries made-up ``/go`` nonces: 20 answers, then
    429 (audited in aggregate, not one event each); a student behind the same address
    still enters with the nonce they were handed."""
    school = "203.0.113.150"
    async with scene(deployment) as s:
        proxy = Proxy(deployment)
        try:
            (k,) = await _classes(s, 1, 2, "standard")
            (ctl,) = await _host_present(s, [k])
            prober = proxy.phone(school)
            prober.cookie = secrets.token_urlsafe(16)
            began = time.monotonic()
            tried = await asyncio.gather(*(prober.go(f"/go/{k.id}.{secrets.token_urlsafe(24)}")
                                           for _ in range(40)))
            took = time.monotonic() - began
            statuses = [a.status for a in tried]
            assert set(statuses) == {404, 429}, statuses
            # the address's failure budget: a burst of 20, then 5 a second
            assert 20 <= statuses.count(404) <= 20 + 5 * took + 1, (statuses, took)
            assert all(int(a.headers["Retry-After"]) >= 1 for a in tried if a.status == 429)
            assert _entered(await _enter(proxy.phone(school), k.token(0)))
            await ctl.close()
        finally:
            await proxy.close()
