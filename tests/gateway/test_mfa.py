"""Second factor (TOTP, recovery codes), step-up and sessions, against the running app
with a real Redis and an injected clock."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pyotp

from gateway.mfa import RECOVERY_CODES

from ..evidence.scenario import run_scenario
from .helpers import (
    TEACHER_PASSWORD,
    Gateway,
    audit_events,
    host_control,
    make_class,
    running_gateway,
)


class Clock:
    def __init__(self) -> None:
        # the start of a TOTP step, so +30 s is always the next step
        self.t = float(int(time.time()) // 30 * 30 + 1)

    def __call__(self) -> float:
        return self.t


class MovingClock(Clock):
    """Real time plus what the test adds (the evidence export waits on real time)."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0

    def __call__(self) -> float:
        return time.time() + self.t

    def now(self) -> int:
        return int(self())


async def sign_in(gw: Gateway, username: str, **kw: Any) -> tuple[aiohttp.ClientSession,
                                                                   aiohttp.ClientResponse]:
    c = gw.client(**kw)
    r = await c.post("/api/v1/session", json={"username": username,
                                              "password": TEACHER_PASSWORD})
    return c, r


async def csrf_of(r: aiohttp.ClientResponse) -> str:
    return str((await r.json())["csrf_token"])


async def enrol_totp(c: aiohttp.ClientSession, csrf: str, clock: MovingClock
                     ) -> tuple[str, list[str]]:
    r = await c.post("/api/v1/account/second-factor/totp", headers={"X-CSRF-Token": csrf})
    assert r.status == 200, await r.text()
    secret = (await r.json())["secret"]
    r = await c.post("/api/v1/account/second-factor/totp/confirm",
                     json={"code": pyotp.TOTP(secret).at(clock.now())},
                     headers={"X-CSRF-Token": csrf})
    assert r.status == 200, await r.text()
    return secret, (await r.json())["recovery_codes"]


async def test_totp_enrolment_sign_in_replay_and_recovery_codes(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    clock = Clock()
    async with running_gateway(tmp_path, redis_url, redis_prefix, clock=clock) as gw:
        reader = gw.api(await gw.staff_user("thay.hieu", "admin", "school-a"))
        c, r = await sign_in(gw, "thay.hieu")
        assert r.status == 200
        csrf = await csrf_of(r)
        # a wrong first code does not enable the app
        r = await c.post("/api/v1/account/second-factor/totp", headers={"X-CSRF-Token": csrf})
        secret = (await r.json())["secret"]
        totp = pyotp.TOTP(secret)
        wrong = f"{(int(totp.at(int(clock.t))) + 1) % 1_000_000:06d}"
        r = await c.post("/api/v1/account/second-factor/totp/confirm", json={"code": wrong},
                         headers={"X-CSRF-Token": csrf})
        assert r.status == 401
        r = await c.post("/api/v1/account/second-factor/totp/confirm",
                         json={"code": totp.at(int(clock.t))}, headers={"X-CSRF-Token": csrf})
        assert r.status == 200
        codes = (await r.json())["recovery_codes"]
        assert len(codes) == RECOVERY_CODES == len(set(codes))
        # the codes are kept only as HMACs, the secret only sealed
        stored = await redis.hkeys(f"{redis_prefix}mfa:recovery:thay.hieu")
        assert len(stored) == RECOVERY_CODES
        assert not {c.replace("-", "") for c in codes} & set(stored)
        assert secret not in str(await redis.hgetall(f"{redis_prefix}mfa:totp:thay.hieu"))

        # the password alone no longer opens a session
        d, r = await sign_in(gw, "thay.hieu")
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "second_factor_required"
        assert "totp" in (await r.json())["error"]["methods"]
        assert "cg_session" not in {m.key for m in d.cookie_jar}
        # the code used at enrolment, same step: a replay, refused
        r = await d.post("/api/v1/session/second-factor", json={"code": totp.at(int(clock.t))})
        assert r.status == 401
        # a minute later, the code of the step before (one step of skew) is accepted once
        clock.t += 60
        code = totp.at(int(clock.t) - 30)
        r = await d.post("/api/v1/session/second-factor", json={"code": code})
        assert r.status == 200, await r.text()
        assert (await d.get("/api/v1/account/sessions")).status == 200
        e, r = await sign_in(gw, "thay.hieu")
        r = await e.post("/api/v1/session/second-factor", json={"code": code})
        assert r.status == 401  # replayed on another device
        # two steps away: outside the skew
        r = await e.post("/api/v1/session/second-factor",
                         json={"code": totp.at(int(clock.t) + 90)})
        assert r.status == 401
        # a recovery code opens one sign-in, once
        r = await e.post("/api/v1/session/second-factor", json={"code": codes[3].upper()})
        assert r.status == 200
        f, r = await sign_in(gw, "thay.hieu")
        r = await f.post("/api/v1/session/second-factor", json={"code": codes[3]})
        assert r.status == 401
        assert await redis.hlen(f"{redis_prefix}mfa:recovery:thay.hieu") == RECOVERY_CODES - 1

        # removing the app needs the fresh factor of this sign-in; then the password
        # alone opens a session again, and the recovery codes are gone with the factor
        r = await e.get("/api/v1/account/second-factor")
        assert (await r.json())["methods"] == ["totp"]
        cookies_e = e.cookie_jar.filter_cookies(gw.server.make_url("/"))
        assert "cg_session" in cookies_e
        g, r = await sign_in(gw, "thay.hieu")
        clock.t += 30
        r = await g.post("/api/v1/session/second-factor", json={"code": totp.at(int(clock.t))})
        assert r.status == 200
        h = {"X-CSRF-Token": (await r.json())["csrf_token"]}
        r = await g.delete("/api/v1/account/second-factor/totp", headers=h)
        assert r.status == 204
        assert await redis.hlen(f"{redis_prefix}mfa:recovery:thay.hieu") == 0
        _, r = await sign_in(gw, "thay.hieu")
        assert r.status == 200
        removed = await audit_events(reader, at_least=1, type="staff.second_factor_removed")
        assert removed[0]["facts"]["method"] == "totp"

        events = await audit_events(reader, at_least=1, type="staff.second_factor_enrolled")
        assert events and events[0]["facts"]["method"] == "totp"
        used = await audit_events(reader, at_least=1, type="staff.recovery_code_used")
        assert used[0]["facts"]["left"] == RECOVERY_CODES - 1
        logins = await audit_events(reader, at_least=2, type="staff.login")
        assert {ev["facts"]["second_factor"] for ev in logins if ev.get("facts")} >= {
            "totp", "recovery"}


async def test_step_up_for_evidence_export(tmp_path: Path, redis_url: str, redis_prefix: str,
                                           redis: Any) -> None:
    clock = MovingClock()
    async with running_gateway(tmp_path, redis_url, redis_prefix, clock=clock) as gw:
        s = await run_scenario(gw)
        url = f"/api/v1/incidents/{s.incident['id']}/evidence.zip?lang=en"
        c, r = await sign_in(gw, "thay.hieu")
        csrf = await csrf_of(r)
        # no second factor and an optional policy: as before
        assert (await c.get(url)).status == 200
        # the org requires one of its administrators: refused, and told where to go
        r = await s.admin.put("/api/v1/orgs/thpt-nguyen-du/second-factor-policy",
                              json={"policy": "required"})
        assert r.status == 200, await r.text()
        r = await c.get(url, headers={"Referer": gw.url("/incidents/x")})
        assert r.status == 403
        body = await r.json()
        assert body["error"]["code"] == "step_up_required"
        assert body["error"]["verify_url"].startswith("/account/verify?next=")
        # the incident page leads to re-verification instead of the downloads
        page = f"/incidents/{s.incident['id']}"
        html = await (await c.get(page)).text()
        assert 'id="export-verify"' in html and "evidence.zip" not in html
        assert "/account/verify?next=" + quote(page, safe="") in html
        # enrolling proves the factor: the export works now
        secret, _codes = await enrol_totp(c, csrf, clock)
        assert "evidence.zip" in await (await c.get(page)).text()
        r = await c.get(url)
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/zip"
        # five minutes later the proof is stale
        clock.t += 301
        r = await c.get(url)
        assert r.status == 403
        assert (await r.json())["error"]["code"] == "step_up_required"
        r = await c.post("/api/v1/account/step-up",
                         json={"code": pyotp.TOTP(secret).at(clock.now())},
                         headers={"X-CSRF-Token": csrf})
        assert r.status == 200, await r.text()
        assert (await c.get(url)).status == 200
        # managing staff is covered too; listing is not
        clock.t += 301
        r = await c.post("/api/v1/admin/users", json={"username": "co.mai", "role": "teacher",
                                                      "org": "thpt-nguyen-du"},
                         headers={"X-CSRF-Token": csrf})
        assert r.status == 403 and (await r.json())["error"]["code"] == "step_up_required"
        assert (await c.get("/api/v1/admin/users")).status == 200


async def _closed_within(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> float:
    start = time.monotonic()
    msg = await ws.receive(timeout=seconds)
    while msg.type == aiohttp.WSMsgType.TEXT:  # events already on their way
        msg = await ws.receive(timeout=seconds)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    # the close frame names the reason (close_code may read 1006 when the client's
    # answer to it races the server's end of the connection)
    assert msg.data == 4401 or ws.close_code == 4401, msg
    return time.monotonic() - start


async def test_revoking_a_session_closes_its_socket_on_another_process(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as a, \
            running_gateway(tmp_path, redis_url, redis_prefix) as b:
        api = a.api(await a.staff_user("co.lan"))
        cid, _ = await make_class(a, api)
        phone, r = await sign_in(b, "co.lan",
                                 user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Safari/604")
        assert r.status == 200
        ws = await host_control(phone, cid)
        laptop, r = await sign_in(a, "co.lan",
                                  user_agent="Mozilla/5.0 (Windows NT 10.0) Chrome/120")
        csrf = await csrf_of(r)
        r = await laptop.get("/api/v1/account/sessions")
        sessions = (await r.json())["sessions"]
        assert len(sessions) == 2
        other = next(s for s in sessions if not s["current"])
        assert other["device"] == "iPhone, Safari" and other["ip"] == "127.0.0.1"
        assert other["created"] and other["last_seen"]
        # another person cannot end it
        teacher2 = a.api(await a.staff_user("co.binh"))
        r = await teacher2.delete(f"/api/v1/account/sessions/{other['id']}")
        assert r.status == 404
        r = await laptop.delete(f"/api/v1/account/sessions/{other['id']}",
                                headers={"X-CSRF-Token": csrf})
        assert r.status == 204
        assert await _closed_within(ws, 1.0) < 1.0
        assert (await phone.get("/api/v1/account/sessions")).status == 401
        assert len((await (await laptop.get("/api/v1/account/sessions")).json())["sessions"]) == 1


async def test_administrator_ends_sessions_and_disabling_closes_sockets(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as a, \
            running_gateway(tmp_path, redis_url, redis_prefix) as b:
        admin = a.api(await a.staff_user("thay.hieu", "admin", "school-a"))
        outsider = a.api(await a.staff_user("thay.khac", "admin", "school-b"))
        api = a.api(await a.staff_user("co.lan"))
        cid, _ = await make_class(a, api)
        phone, r = await sign_in(b, "co.lan")
        ws = await host_control(phone, cid)
        r = await admin.get("/api/v1/admin/users/co.lan/sessions")
        assert r.status == 200
        [sess] = (await r.json())["sessions"]
        # an administrator of another school does not see the account
        r = await outsider.delete(f"/api/v1/admin/users/co.lan/sessions/{sess['id']}")
        assert r.status == 404
        r = await admin.delete(f"/api/v1/admin/users/co.lan/sessions/{sess['id']}")
        assert r.status == 204
        assert await _closed_within(ws, 1.0) < 1.0

        # disabling the account closes its sockets everywhere too
        phone, r = await sign_in(b, "co.lan")
        ws = await host_control(phone, cid)
        r = await admin.post("/api/v1/admin/users/co.lan/disable")
        assert r.status == 200, await r.text()
        assert await _closed_within(ws, 1.0) < 1.0
        await asyncio.sleep(0)
