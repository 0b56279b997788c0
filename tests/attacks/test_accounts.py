"""Attacks on staff accounts themselves: a school's administrator acting for the whole
deployment, locking a teacher out with wrong passwords, one-time passwords kept for good,
and API tokens that never end.

The deployment root org is ``truong-a`` (``classguard init``, see conftest); a second
school is made under it here, with the ``classguard`` command as an operator would.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import datetime
from typing import Any

import aiohttp
import redis as sync_redis

from gateway.staff_secrets import parse_api_token

from .conftest import CLI
from .kit import JSON, Deployment, Device, Resp, scene

GOOD_NEW_PASSWORD = "the quiet river under the old bridge"


def cli(dep: Deployment, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=dep.env, input=stdin, capture_output=True,
                          text=True, timeout=60, check=False)


def ok_cli(dep: Deployment, *args: str, stdin: str | None = None) -> str:
    res = cli(dep, *args, stdin=stdin)
    assert res.returncode == 0, f"classguard {' '.join(args)}: {res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr
    return res.stdout


async def sign_in(d: Device, username: str, password: str) -> Resp:
    return await d.post("/api/v1/session", json={"username": username, "password": password},
                        headers=JSON)


async def staff_api(dep: Deployment, token: str, method: str, path: str, ip: str,
                    **kw: Any) -> Resp:
    async with aiohttp.ClientSession(
            base_url=dep.base, headers={"Authorization": f"Bearer {token}"},
            connector=aiohttp.TCPConnector(local_addr=(ip, 0))) as http, \
            http.request(method, path, allow_redirects=False, **kw) as r:
        text = await r.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return Resp(r.status, body, dict(r.headers))


async def test_school_admin_is_not_the_deployment_admin(deployment: Deployment) -> None:
    """The README's ``classguard user add --org <new school>`` made every school a
    top-level org, and the API took an administrator of any top-level org for the
    deployment's: they read every school's failed sign-ins and listed and rotated the
    join-token keys all schools share."""
    dep = deployment
    # 1. A new school cannot come into being as a top-level org by naming it.
    res = cli(dep, "user", "add", "qt.binh", "--role", "admin", "--org", "truong-b",
              "--password-stdin", stdin="a long school b admin password\n")
    assert res.returncode == 2, res.stdout
    assert "--parent truong-a" in res.stderr and "Traceback" not in res.stderr
    # 2. It is made under the deployment root, as docs/operations.md says.
    ok_cli(dep, "user", "add", "qt.binh", "--role", "admin", "--org", "truong-b",
           "--parent", "truong-a", "--password-stdin", stdin="a long school b admin password\n")
    school_b = ok_cli(dep, "user", "token", "qt.binh").split()[-1]
    root = dep.accounts["qt.hoa"].token
    async with scene(dep) as s:
        guesser = s.device()
        r = await sign_in(guesser, "co.lan", "not her password at all")
        assert r.status == 401
        ip_b, ip_root = dep.new_ip(), dep.new_ip()
        # 3. The root administrator sees the failed sign-in; school B's sees nothing of it.
        seen = await s.await_audit(lambda ev: len(ev) >= 1, reader="qt.hoa",
                                   type="staff.login_failed", ip=guesser.ip)
        assert seen[0]["personal"]["username"] == "co.lan"
        r = await staff_api(dep, school_b, "GET", "/api/v1/audit/events", ip_b,
                            params={"type": "staff.login_failed", "limit": "500"})
        assert r.status == 200 and r.body["events"] == [], r.body
        # 4. Keys: listed and rotated by the root administrator only.
        r = await staff_api(dep, school_b, "GET", "/api/v1/admin/keys", ip_b)
        assert r.status == 403, r
        r = await staff_api(dep, school_b, "POST", "/api/v1/admin/keys/rotate", ip_b)
        assert r.status == 403, r
        r = await staff_api(dep, root, "GET", "/api/v1/admin/keys", ip_root)
        assert r.status == 200 and len(r.body["keys"]) >= 1
        # 5. School B's administrator still runs school B.
        r = await staff_api(dep, school_b, "GET", "/api/v1/admin/users", ip_b)
        assert r.status == 200
        assert {u["username"] for u in r.body["users"]} == {"qt.binh"}


async def test_wrong_passwords_from_elsewhere_do_not_lock_the_owner_out(
        deployment: Deployment) -> None:
    """Three wrong passwords from any address used to refuse the account's right password
    from everywhere for five minutes, doubling up to a day."""
    dep = deployment
    password = dep.accounts["thay.minh"].password
    async with scene(dep) as s:
        home = s.device()  # the owner's usual machine
        r = await sign_in(home, "thay.minh", password)
        assert r.status == 200, r
        attacker = s.device()
        for i in range(3):
            r = await sign_in(attacker, "thay.minh", f"guess number {i}")
            assert r.status == 401, r
        # 1. The guessing source is held back, even with the right password ...
        r = await sign_in(attacker, "thay.minh", password)
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        # 2. ... the owner, from a machine with no failures, is not.
        phone = s.device()
        r = await sign_in(phone, "thay.minh", password)
        assert r.status == 200, r
        # 3. and is told, in the answer and on every page of the session.
        notice = r.body["user"]["failed_logins"]
        assert notice["count"] >= 4  # three wrong passwords and the refused attempt
        assert {x["ip"] for x in notice["recent"]} == {attacker.ip}
        page = await phone.get("/classes", headers={"Accept": "text/html",
                                                     "Accept-Language": "en"})
        assert page.status == 200
        assert 'id="account-attacked"' in page.body and attacker.ip in page.body
        assert "failed sign-ins at your account since your last sign-in" in page.body

        # 4. A distributed attack: many sources, one guess each. The account slows down
        # (one attempt per 10 s from new sources) instead of locking.
        statuses = []
        for i in range(12):
            r = await sign_in(s.device(), "thay.minh", f"distributed guess {i}")
            statuses.append(r.status)
        assert statuses.count(401) <= 10 and 429 in statuses, statuses
        assert statuses[-1] == 429
        # 5. The owner's usual machine still gets in at once.
        r = await sign_in(home, "thay.minh", password)
        assert r.status == 200, r
        def at_owner(ev: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in ev if e["personal"]["username"] == "thay.minh"]

        events = await s.await_audit(lambda ev: len(at_owner(ev)) >= 13, reader="qt.hoa",
                                     type="staff.login_failed")
        assert {e["reason"] for e in at_owner(events)} == {"invalid_credentials", "regulated"}


async def test_one_time_passwords_must_be_changed(deployment: Deployment) -> None:
    """A one-time password used to work for good (the must-change flag was never read),
    no route changed or reset a password, and ``12345678`` was accepted."""
    dep = deployment
    admin_ip = dep.new_ip()
    root = dep.accounts["qt.hoa"].token
    async with scene(dep) as s:
        r = await staff_api(dep, root, "POST", "/api/v1/admin/users", admin_ip,
                            json={"username": "co.moi", "role": "teacher", "org": "truong-a"})
        assert r.status == 201, r
        otp = r.body["one_time_password"]
        d = s.device()
        r = await sign_in(d, "co.moi", otp)
        assert r.status == 200 and r.body["user"]["must_change_password"] is True
        csrf = {"X-CSRF-Token": r.body["csrf_token"], **JSON}
        # 1. Nothing works with it but the change itself.
        r = await d.get("/api/v1/classes", headers=JSON)
        assert r.status == 403 and r.body["error"]["code"] == "password_change_required"
        r = await d.get("/classes", headers={"Accept": "text/html"})
        assert r.status == 303 and r.headers["Location"].startswith("/account/password?next=")
        r = await d.get("/account/password", headers={"Accept": "text/html"})
        assert r.status == 200 and 'id="pw-forced"' in r.body
        # 2. Weak, short and breached passwords are refused.
        for weak in ("12345678", "password1234", "iloveyou2024!", "123456789012", "co.moi rocks!!"):
            r = await d.post("/api/v1/account/password", headers=csrf,
                             json={"current_password": otp, "new_password": weak})
            assert r.status == 400 and r.body["error"]["code"] == "weak_password", (weak, r)
            assert r.body["error"]["field"] == "new_password"
        r = await d.post("/api/v1/account/password", headers=csrf,
                         json={"current_password": "not it at all", "new_password":
                               GOOD_NEW_PASSWORD})
        assert r.status == 403 and r.body["error"]["code"] == "wrong_password"
        r = await d.post("/api/v1/account/password", headers=csrf,
                         json={"current_password": otp, "new_password": GOOD_NEW_PASSWORD})
        assert r.status == 200, r
        r = await d.get("/api/v1/classes", headers=JSON)  # the fresh session works
        assert r.status == 200, r
        r = await sign_in(s.device(), "co.moi", otp)
        assert r.status == 401
        # 3. An administrator's reset: the sessions end, a new one-time password must
        # be changed again.
        r = await staff_api(dep, root, "POST", "/api/v1/admin/users/co.moi/password-reset",
                            admin_ip)
        assert r.status == 200, r
        otp2 = r.body["one_time_password"]
        r = await d.get("/api/v1/classes", headers=JSON)
        assert r.status == 401
        r = await sign_in(d, "co.moi", otp2)
        assert r.status == 200 and r.body["user"]["must_change_password"] is True
        r = await d.get("/api/v1/classes", headers=JSON)
        assert r.status == 403
        # 4. The same from the command line.
        out = ok_cli(dep, "user", "reset", "co.moi")
        otp3 = re.search(r"one-time password: (\S+)", out)
        assert otp3 is not None and otp3.group(1) not in (otp, otp2)
        r = await sign_in(s.device(), "co.moi", otp3.group(1))
        assert r.status == 200 and r.body["user"]["must_change_password"] is True
        # 5. Every change is in the audit trail.
        events = await s.await_audit(
            lambda ev: {e["type"] for e in ev} >= {"staff.password_changed",
                                                   "staff.password_reset"}
            and len([e for e in ev if e["type"] == "staff.password_reset"]) >= 2,
            reader="qt.hoa")
        mine = [e for e in events if e.get("subject") == "user:co.moi"]
        assert {e["actor"] for e in mine if e["type"] == "staff.password_reset"} >= {
            "user:qt.hoa"}


async def test_api_tokens_expire_and_can_be_revoked(deployment: Deployment) -> None:
    """``classguard user token`` printed a bearer token that worked for ever."""
    dep = deployment
    ip = dep.new_ip()
    out = ok_cli(dep, "user", "token", "it.hung", "--label", "nightly export")
    token = out.split()[-1]
    listed = ok_cli(dep, "user", "token", "it.hung", "--list")
    row = next(line for line in listed.splitlines() if "nightly export" in line)
    token_id, expires = row.split()[0], re.search(r"expires (\S+)", row)
    assert expires is not None
    days = (datetime.fromisoformat(expires.group(1)).timestamp() - time.time()) / 86400
    assert 89 < days <= 90  # the documented default
    res = cli(dep, "user", "token", "it.hung", "--expires-days", "400")
    assert res.returncode == 2 and "1-365" in res.stderr
    assert (await staff_api(dep, token, "GET", "/api/v1/audit/key", ip)).status == 200
    # 1. An expired token gets 401. (Time is moved on where the gateway keeps it: the
    # token's recorded expiry.)
    short = ok_cli(dep, "user", "token", "it.hung", "--expires-days", "1").split()[-1]
    assert (await staff_api(dep, short, "GET", "/api/v1/audit/key", ip)).status == 200
    short_id = (parse_api_token(short) or ("", b""))[0]
    assert short_id in ok_cli(dep, "user", "token", "it.hung", "--list")
    r = sync_redis.Redis.from_url(dep.env["CLASSGUARD_REDIS_URL"])
    try:
        key = f"{dep.env['CLASSGUARD_REDIS_PREFIX']}staff:apitoken:{short_id}"
        assert r.hget(key, "secret_sha256") and short.encode() not in b"".join(
            v for v in r.hgetall(key).values())  # stored hashed
        r.hset(key, "expires", str(time.time() - 1))
    finally:
        r.close()
    assert (await staff_api(dep, short, "GET", "/api/v1/audit/key", ip)).status == 401
    # 2. A revoked token gets 401, at once.
    ok_cli(dep, "user", "token", "it.hung", f"--revoke={token_id}")
    assert (await staff_api(dep, token, "GET", "/api/v1/audit/key", ip)).status == 401
    assert token_id not in ok_cli(dep, "user", "token", "it.hung", "--list")
    res = cli(dep, "user", "token", "co.lan", f"--revoke={short_id}")  # not co.lan's
    assert res.returncode == 2 and "Traceback" not in res.stderr
    # 3. Issue and revocation are audited.
    async with scene(dep) as s:
        events = await s.await_audit(
            lambda ev: {e["type"] for e in ev} >= {"staff.token_issued", "staff.token_revoked"},
            reader="qt.hoa")
        revoked = [e for e in events if e["type"] == "staff.token_revoked"]
        assert revoked[0]["facts"]["token"] == token_id
        assert revoked[0]["subject"] == "user:it.hung"

