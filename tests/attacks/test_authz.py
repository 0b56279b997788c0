"""Authorisation and CSRF: staff acting outside their role or class, cross-site requests
riding a teacher's session cookie, a student's device acting as staff, password
guessing against a teacher account.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.collation import name_key

from .kit import JSON, Deployment, Klass, Scene, Staff, assert_kept_out, scene

pytestmark = pytest.mark.slow

HOST_ACTIONS: list[dict[str, Any]] = [
    {"action": "lock"},
    {"action": "end"},
    {"action": "admit_all"},
    {"action": "mute_all"},
]


def _student_actions(k: Klass) -> list[dict[str, Any]]:
    sid = k.sid(0)
    return [{"action": a, "student_id": sid}
            for a in ("admit", "remove", "ban", "revoke_link", "reset_device")]


async def _try_everything(s: Scene, who: Staff, k: Klass, ticket: str) -> list[int]:
    statuses = []
    for body in [*HOST_ACTIONS, *_student_actions(k), {"action": "admit", "ticket": ticket}]:
        statuses.append((await who.action(k.id, **body)).status)
    for method, path, kw in (
        ("POST", f"/api/v1/classes/{k.id}/links", {"json": {}}),
        ("GET", f"/api/v1/classes/{k.id}/links", {}),
        ("PUT", f"/api/v1/classes/{k.id}/roster", {"json": [{"name": "Kẻ Lạ"}]}),
        ("GET", f"/api/v1/classes/{k.id}/roster", {}),
        ("PUT", f"/api/v1/classes/{k.id}/policy", {"json": {"preset": "open"}}),
    ):
        statuses.append((await who.call(method, path, **kw)).status)
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await who.control(k.id)
    statuses.append(exc.value.status)
    return statuses


async def _untouched(s: Scene, k: Klass, ticket: str) -> None:
    st = await s.teacher.state(k.id)
    assert not st["locked"] and not st["ended"] and st["admitted"] == [] and st["bans"] == []
    assert [w["ticket"] for w in st["waiting"]] == [ticket]
    r = await s.teacher.call("GET", f"/api/v1/classes/{k.id}/links")
    assert [link["url"] for link in r.body["links"]] == sorted(
        (link["url"] for link in k.links),
        # class-list order: given name first, Vietnamese alphabet (gateway/collation.py)
        key=lambda u: next(name_key(link["name"]) for link in k.links if link["url"] == u))


async def test_teacher_acts_on_another_teachers_class(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        knocker = s.device()
        ticket = (await knocker.open(k.token(0))).body["ticket"]
        statuses = await _try_everything(s, s.other_teacher, k, ticket)
        # 404, not 403: another teacher does not even learn that the class exists
        assert set(statuses) == {404}, statuses
        assert (await s.other_teacher.call("GET", f"/api/v1/classes/{k.id}/state")).status == 404
        r = await s.other_teacher.call("GET", "/api/v1/classes")
        assert k.id not in [c["id"] for c in r.body["classes"]]
        await _untouched(s, k, ticket)
        await s.admit_legit(k, 0, knocker)
        trail = await s.await_audit(lambda ev: any(e["type"] == "join.enter" for e in ev),
                                    class_=k.id)
        # every try is in the class's trail as a refusal, and nothing else they did is
        mine = [e for e in trail if e["actor"] == "user:thay.minh"]
        assert len(mine) == len(statuses) + 1  # and the state probe
        assert {e["type"] for e in mine} == {"staff.refused"}
        assert {e["reason"] for e in mine} == {"not_found"}


async def test_it_staff_issues_host_actions(deployment: Deployment) -> None:
    """IT staff read logs and manage bans; they never host a class, so they cannot admit
    anyone, print links (credentials) or change the roster."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        knocker = s.device()
        ticket = (await knocker.open(k.token(1))).body["ticket"]
        statuses = await _try_everything(s, s.it, k, ticket)
        assert set(statuses) == {403}, statuses
        assert (await s.it.call("GET", f"/api/v1/classes/{k.id}/state")).status == 200
        await _untouched(s, k, ticket)
        await s.admit_legit(k, 1, knocker)
        trail = await s.await_audit(lambda ev: any(e["type"] == "join.enter" for e in ev),
                                    class_=k.id)
        mine = [e for e in trail if e["actor"] == "user:it.hung"]
        assert len(mine) == len(statuses) and {e["type"] for e in mine} == {"staff.refused"}
        assert {e["reason"] for e in mine} == {"forbidden"}


async def test_refused_staff_actions_are_audited(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        assert (await s.other_teacher.action(k.id, action="end")).status == 404
        assert (await s.it.action(k.id, action="admit_all")).status == 403
        # (the class's trail already holds its creation, roster and links events)
        refused = {"user:thay.minh", "user:it.hung"}
        events = await s.await_audit(lambda ev: refused <= {e["actor"] for e in ev},
                                     reader="qt.hoa", within_s=3, class_=k.id)
        actors = {e["actor"] for e in events}
        assert refused <= actors
        assert {e["type"] for e in events if e["actor"] in refused} == {"staff.refused"}


async def _browser_session(s: Scene) -> tuple[aiohttp.ClientSession, str]:
    """The teacher signed in to the web UI: session cookie plus a CSRF token."""
    jar = aiohttp.CookieJar(unsafe=True)
    ip = s.dep.new_ip()
    browser = aiohttp.ClientSession(base_url=s.dep.base, cookie_jar=jar,
                                    connector=aiohttp.TCPConnector(local_addr=(ip, 0)))
    acct = s.dep.accounts["co.lan"]
    r = await browser.post("/api/v1/session", json={"username": acct.username,
                                                    "password": acct.password})
    assert r.status == 200, await r.text()
    return browser, (await r.json())["csrf_token"]


async def test_csrf_on_cookie_authenticated_action(deployment: Deployment) -> None:
    """A page on another site makes the teacher's browser post a host action with the
    session cookie (the worst case: a same-site sibling page, which SameSite does not
    stop). Without the session's CSRF token nothing happens."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        knocker = s.device()
        ticket = (await knocker.open(k.token(2))).body["ticket"]
        browser, csrf = await _browser_session(s)
        try:
            url = f"/api/v1/classes/{k.id}/actions"
            evil = {"Origin": "http://evil.example", "Referer": "http://evil.example/x"}
            attempts = [
                # a plain HTML form: no custom header possible
                browser.post(url, data={"action": "admit", "ticket": ticket}, headers=evil),
                browser.post(url, data={"action": "admit", "ticket": ticket,
                                        "csrf_token": "guess"}, headers=evil),
                # text/plain "simple request" carrying JSON
                browser.post(url, data='{"action": "end"}',
                             headers={**evil, "Content-Type": "text/plain"}),
                # fetch() with JSON and a forged or empty token
                browser.post(url, json={"action": "lock"}, headers=evil),
                browser.post(url, json={"action": "lock"}, headers={**evil, "X-CSRF-Token": ""}),
                browser.post(url, json={"action": "lock"},
                             headers={**evil, "X-CSRF-Token": csrf[:-2] + "xx"}),
                browser.post(f"/api/v1/classes/{k.id}/links", json={}, headers=evil),
                browser.delete("/api/v1/session", headers=evil),
            ]
            for coro in attempts:
                async with await coro as r:
                    body = await r.json()
                    assert r.status == 403 and body["error"]["code"] == "csrf_failed", body
            # the control socket is not covered by a header: the Origin must be ours
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await browser.ws_connect(f"/api/v1/classes/{k.id}/control", headers=evil)
            assert exc.value.status == 403
            await _untouched(s, k, ticket)
            # the teacher's own page, with the token, works
            r = await browser.post(url, json={"action": "admit", "ticket": ticket},
                                   headers={"X-CSRF-Token": csrf})
            assert r.status == 200
        finally:
            await browser.close()
        r = await knocker.open(k.token(2))
        assert r.body["status"] == "admitted"
        assert (await knocker.go(r.body["redirect"])).status == 302
        events = await s.await_audit(lambda ev: len(ev) >= 1, class_=k.id, type="host.admit")
        assert [e["facts"].get("via") for e in events] == ["session"]


async def test_student_device_cannot_act_as_staff(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        kid = s.device()
        ticket = (await kid.open(k.token(3))).body["ticket"]
        assert kid.cookie is not None
        for bearer in (None, kid.cookie, ticket, k.token(3)):
            headers = {**JSON, **({"Authorization": f"Bearer {bearer}"} if bearer else {})}
            r = await kid.post(f"/api/v1/classes/{k.id}/actions",
                               json={"action": "admit", "ticket": ticket}, headers=headers)
            assert r.status == 401, r
            r = await kid.get(f"/api/v1/classes/{k.id}/state", headers=headers)
            assert r.status == 401, r
            r = await kid.get("/api/v1/audit/events", params={"class": k.id}, headers=headers)
            assert r.status == 401, r
        assert_kept_out(kid)
        st = await s.teacher.state(k.id)
        assert st["admitted"] == [] and len(st["waiting"]) == 1


async def test_teacher_password_guessing(deployment: Deployment) -> None:
    """Guessing a teacher's password from many addresses: each guessing address is
    regulated at the account (429 with Retry-After, even for the right password), the
    account as a whole is slowed once many addresses have failed, and every failure is
    audited. Last in the module: it slows ``co.lan``'s password sign-in for a while (the
    owner is not locked out: see ``test_accounts.py``)."""
    async with scene(deployment) as s:
        guessers = [s.device() for _ in range(10)]
        statuses = []
        for i in range(4):
            r = await guessers[0].post("/api/v1/session", json={"username": "co.lan",
                                                                 "password": f"123456{i}"})
            statuses.append(r.status)
            if r.status == 401:
                assert r.body["error"]["code"] == "invalid_credentials"
        assert statuses == [401, 401, 401, 429], statuses
        spread = []
        for i, d in enumerate(guessers[1:]):
            r = await d.post("/api/v1/session", json={"username": "co.lan",
                                                      "password": f"654321{i}"})
            spread.append(r.status)
        assert spread[:7] == [401] * 7 and 429 in spread, spread
        r = await guessers[0].post("/api/v1/session", json={
            "username": "co.lan", "password": s.dep.accounts["co.lan"].password})
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        assert "cg_session" not in r.headers.get("Set-Cookie", "")
        # bearer tokens of scripts keep working; the class goes on
        k = await s.new_class("strict")
        await s.admit_legit(k, 0)
        events = await s.await_audit(lambda ev: len(ev) >= 4, reader="qt.hoa",
                                     type="staff.login_failed")
        assert {e["personal"]["username"] for e in events} == {"co.lan"}
        assert {e["personal"]["ip"] for e in events} >= {d.ip for d in guessers[:3]}
