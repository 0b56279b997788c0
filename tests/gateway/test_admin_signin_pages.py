"""The administrators' sign-in settings page (an org's OpenID provider, passwords, the
second-factor policy) and an account's sessions page, against the running app with a
real Redis: render, save, refusals, CSRF, bad input keeping nothing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp

from gateway.oidc import OidcStore

from .helpers import TEACHER_PASSWORD, Gateway, audit_events, running_gateway

TID = "6f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b"


async def browser(gw: Gateway, username: str) -> tuple[aiohttp.ClientSession, str]:
    """A signed-in browser (session cookie) and its CSRF token."""
    c = gw.client()
    r = await c.post("/api/v1/session", json={"username": username,
                                              "password": TEACHER_PASSWORD})
    assert r.status == 200, await r.text()
    return c, str((await r.json())["csrf_token"])


def oidc_store(gw: Gateway) -> OidcStore:
    from gateway.routes.oidc import oidc_store as of
    return of(gw.svc)


def google_form(csrf: str, **over: str) -> dict[str, str]:
    form = {"csrf_token": csrf, "what": "oidc", "provider": "google",
            "client_id": "cid-123.apps.googleusercontent.com", "client_secret": "s3cret-value",
            "domains": "thpt-a.edu.vn, GV.thpt-a.edu.vn", "hosted_domain": "thpt-a.edu.vn",
            "auto_provision": "on", "default_role": "teacher",
            "group_roles": "admins@thpt-a.edu.vn=admin", "passwords": "on"}
    form.update(over)
    return {k: v for k, v in form.items() if v != ""}


async def test_admin_configures_provider_and_policy(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        reader = gw.api(await gw.staff_user("thay.hieu", "admin", "school-a"))
        c, csrf = await browser(gw, "thay.hieu")
        for lang, heading in (("vi", "Cài đặt đăng nhập của tổ chức"),
                              ("en", "Organisation sign-in settings")):
            r = await c.get(f"/admin/sign-in?lang={lang}")
            assert r.status == 200
            html = await r.text()
            assert heading in html and 'href="/admin/sign-in"' in html
            assert "/auth/oidc/callback" in html
        r = await c.post("/admin/sign-in?org=school-a&lang=en", data=google_form(csrf))
        assert r.status == 200, await r.text()
        html = await r.text()
        assert "Sign-in settings saved." in html
        assert "s3cret-value" not in html  # write-only
        assert "A secret is stored" in html
        saved = await oidc_store(gw).get("school-a")
        assert saved is not None and saved.provider == "google"
        assert saved.domains == ("gv.thpt-a.edu.vn", "thpt-a.edu.vn")
        assert saved.hosted_domain == "thpt-a.edu.vn" and saved.auto_provision
        assert saved.group_roles == {"admins@thpt-a.edu.vn": "admin"} and saved.passwords
        assert await oidc_store(gw).client_secret("school-a") == "s3cret-value"
        # an empty secret keeps the stored one; passwords off; single-tenant Entra
        r = await c.post("/admin/sign-in?org=school-a", data={
            "csrf_token": csrf, "what": "oidc", "provider": "entra-single",
            "client_id": "app-id", "tenant": TID, "default_role": "teacher"})
        assert r.status == 200, await r.text()
        saved = await oidc_store(gw).get("school-a")
        assert saved is not None and saved.provider == "entra" and saved.tenant == TID
        assert saved.tenant_ids == (TID,) and not saved.passwords
        assert await oidc_store(gw).client_secret("school-a") == "s3cret-value"
        r = await c.get("/admin/sign-in?org=school-a")
        assert 'value="entra-single" selected' in await r.text()
        # the second-factor policy
        r = await c.post("/admin/sign-in?org=school-a&lang=vi",
                         data={"csrf_token": csrf, "what": "policy", "policy": "required"})
        assert r.status == 200
        assert "Đã lưu chính sách" in await r.text()
        from gateway.signin import mfa_store
        assert await mfa_store(gw.svc).policy(["school-a"]) == "required"
        # audit records as the API writes them
        set_events = await audit_events(reader, at_least=2, type="org.oidc_set")
        assert {e["facts"]["provider"] for e in set_events} == {"google", "entra"}
        pol = await audit_events(reader, at_least=1, type="org.second_factor_policy_set")
        assert pol[-1]["facts"]["policy"] == "required"


async def test_bad_input_keeps_nothing_and_says_why(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        await gw.staff_user("thay.hieu", "admin", "school-a")
        c, csrf = await browser(gw, "thay.hieu")
        r = await c.post("/admin/sign-in?org=school-a&lang=en", data=google_form(csrf))
        assert r.status == 200
        before = await oidc_store(gw).get("school-a")
        cases = [
            ({"domains": "not a domain"}, "An email domain is not valid"),
            ({"provider": "generic", "discovery_url": "file:///etc/passwd"},
             "discovery URL must be an https://"),
            ({"provider": "entra-single", "tenant": ""}, "tenant ID must be a GUID"),
            ({"provider": "entra-multi", "tenant_ids": ""}, "at least one tenant ID"),
            ({"group_roles": "staff=root"}, "group-id=teacher"),
            ({"client_id": ""}, "client ID must be 1 to 256"),
            ({"provider": "okta"}, "Choose a provider"),
        ]
        for over, message in cases:
            r = await c.post("/admin/sign-in?org=school-a&lang=en",
                             data=google_form(csrf, client_secret="other-secret", **over))
            assert r.status == 400, over
            html = await r.text()
            assert message in html and "Nothing was saved." in html, (over, html)
            assert "other-secret" not in html
            assert await oidc_store(gw).get("school-a") == before
            assert await oidc_store(gw).client_secret("school-a") == "s3cret-value"
        r = await c.post("/admin/sign-in?org=school-a&lang=vi",
                         data={"csrf_token": csrf, "what": "policy", "policy": "always"})
        assert r.status == 400
        assert "không có gì được lưu" in (await r.text()).lower()
        assert await redis.get(f"{redis_prefix}mfa:policy:school-a") is None


async def test_refusals_and_csrf(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        await gw.staff_user("thay.hieu", "admin", "school-a")
        await gw.staff_user("thay.khac", "admin", "school-b")
        await gw.staff_user("co.lan", "teacher", "school-a")
        teacher, tcsrf = await browser(gw, "co.lan")
        r = await teacher.get("/admin/sign-in")
        assert r.status == 403
        assert 'href="/admin/sign-in"' not in await (await teacher.get("/classes")).text()
        r = await teacher.post("/admin/sign-in?org=school-a", data=google_form(tcsrf))
        assert r.status == 403
        r = await teacher.post("/admin/sign-in?org=school-a",
                               data={"csrf_token": tcsrf, "what": "policy",
                                     "policy": "required"})
        assert r.status == 403
        r = await teacher.get("/admin/staff/co.lan/sessions")
        assert r.status == 403
        other, ocsrf = await browser(gw, "thay.khac")
        r = await other.get("/admin/sign-in?org=school-a")
        assert r.status == 404
        r = await other.post("/admin/sign-in?org=school-a", data=google_form(ocsrf))
        assert r.status == 404
        r = await other.post("/admin/sign-in?org=school-a",
                             data={"csrf_token": ocsrf, "what": "policy", "policy": "required"})
        assert r.status == 404
        r = await other.get("/admin/staff/co.lan/sessions")
        assert r.status == 404
        r = await other.post("/admin/staff/co.lan/sessions", data={"csrf_token": ocsrf})
        assert r.status == 404
        admin, _ = await browser(gw, "thay.hieu")
        r = await admin.post("/admin/sign-in?org=school-a", data=google_form("wrong"))
        assert r.status == 403
        r = await admin.post("/admin/sign-in?org=school-a",
                             data={"csrf_token": "wrong", "what": "policy", "policy": "required"})
        assert r.status == 403
        r = await admin.post("/admin/staff/co.lan/sessions", data={"csrf_token": "wrong"})
        assert r.status == 403
        assert await oidc_store(gw).get("school-a") is None
        from gateway.signin import mfa_store
        assert await mfa_store(gw.svc).policy(["school-a"]) == "optional"
        # the teacher is still signed in: nothing above ended the session
        assert (await teacher.get("/api/v1/account/sessions")).status == 200


async def test_admin_lists_and_ends_a_teachers_sessions(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        reader = gw.api(await gw.staff_user("thay.hieu", "admin", "school-a"))
        await gw.staff_user("co.lan", "teacher", "school-a")
        phone, _ = await browser(gw, "co.lan")
        laptop, _ = await browser(gw, "co.lan")
        admin, csrf = await browser(gw, "thay.hieu")
        r = await admin.get("/admin/staff?lang=vi")
        html = await r.text()
        assert 'href="/admin/staff/co.lan/sessions?lang=vi"' in html
        assert "Phiên đăng nhập" in html and "Chưa bật" in html
        r = await admin.get("/admin/staff/co.lan/sessions?lang=en")
        assert r.status == 200
        html = await r.text()
        assert "Sessions of co.lan" in html and "no second step" in html
        sids = re.findall(r'name="session" value="([0-9a-f]{64})"', html)
        assert len(sids) == 2
        r = await admin.post("/admin/staff/co.lan/sessions?lang=en",
                             data={"csrf_token": csrf, "session": sids[0]})
        assert r.status == 200
        assert "The session has ended." in await r.text()
        still = [c for c in (phone, laptop)
                 if (await c.get("/api/v1/account/sessions")).status == 200]
        assert len(still) == 1
        r = await admin.post("/admin/staff/co.lan/sessions?lang=en",
                             data={"csrf_token": csrf})
        assert "1 sessions ended." in await r.text()
        assert (await still[0].get("/api/v1/account/sessions")).status == 401
        events = await audit_events(reader, at_least=2, type="staff.session_revoked")
        assert all(e["subject"] == "user:co.lan" for e in events)
        # the administrator's own session is untouched
        assert (await admin.get("/admin/staff")).status == 200


async def test_ending_sessions_needs_a_fresh_second_factor(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    import pyotp
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        await gw.staff_user("thay.hieu", "admin", "school-a")
        await gw.staff_user("co.lan", "teacher", "school-a")
        admin, csrf = await browser(gw, "thay.hieu")
        h = {"X-CSRF-Token": csrf}
        r = await admin.post("/api/v1/account/second-factor/totp", headers=h)
        secret = (await r.json())["secret"]
        r = await admin.post("/api/v1/account/second-factor/totp/confirm",
                             json={"code": pyotp.TOTP(secret).now()}, headers=h)
        assert r.status == 200
        r = await admin.get("/admin/staff")
        assert "Đã bật" in await r.text()
        # a second factor proved at enrolment counts as fresh; drop the freshness
        await redis.delete(*[k async for k in redis.scan_iter(f"{redis_prefix}mfa:fresh:*")])
        r = await admin.post("/admin/staff/co.lan/sessions", data={"csrf_token": csrf},
                             allow_redirects=False)
        assert r.status == 303
        assert r.headers["Location"].startswith("/account/verify?next=")
