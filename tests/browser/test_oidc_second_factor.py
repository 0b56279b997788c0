"""An administrator signs in through the school's OpenID provider (oidc-provider under
node), adds a passkey (Chromium's virtual authenticator, over CDP) and an authenticator
app, and from then on the provider's sign-in is followed by the second factor; exporting
an incident's evidence needs a second factor less than five minutes old.

The account was given a one-time password it never uses: a sign-in through the provider
is not sent to change it, with or without the second factor.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from playwright.async_api import Browser, CDPSession

from gateway.auth import Principal
from gateway.i18n import t
from gateway.routes.pages import home_of
from tests.fakes.oidc_provider import CLIENT_ID, CLIENT_SECRET, running_provider
from tests.gateway.helpers import running_gateway

from ..evidence.scenario import run_scenario
from .conftest import _free_port, check_page, new_context
from .test_oidc_signin import World, outcome, through_provider

ORG = "thpt-nguyen-du"  # the org of tests/evidence/scenario.py, with its incident
ADMIN = "thay.hieu"
EMAIL = "thay.hieu@nguyendu.edu.vn"
ACCOUNTS = {"qt-hieu": {"email": EMAIL, "email_verified": True, "name": "Thầy Hiếu"}}


class MovingClock:
    """Real time plus what the test adds: the gateway's clock, moved past the five
    minutes a proved second factor lasts."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return time.time() + self.t

    def now(self) -> int:
        return int(self())


async def _authenticator(cdp: CDPSession, credential: dict[str, Any] | None = None) -> str:
    # NOTE: Chromium keeps the virtual authenticator with the document's frame host; a
    # navigation that swaps it (coming back from the provider) drops the authenticator
    # and its keys, so it is added again, with the key, where a passkey is asked for.
    await cdp.send("WebAuthn.enable")
    added = await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True}})
    auth_id = str(added["authenticatorId"])
    if credential is not None:
        await cdp.send("WebAuthn.addCredential", {"authenticatorId": auth_id,
                                                  "credential": credential})
    return auth_id


@pytest.fixture
async def clock() -> MovingClock:
    return MovingClock()


@pytest.fixture
async def world(tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any,
                clock: MovingClock) -> AsyncIterator[tuple[World, str, str]]:
    """The gateway at ``http://localhost:<port>`` (WebAuthn wants a domain; localhost is
    a secure context over http), the provider, and the scenario's incident."""
    port = _free_port()
    base = f"http://localhost:{port}"
    async with running_provider(redirect_uris=[f"{base}/auth/oidc/callback"],
                                accounts=ACCOUNTS) as provider:
        async with running_gateway(tmp_path, redis_url, redis_prefix, port=port,
                                   public_url=base, clock=clock,
                                   platform_allow_networks=["127.0.0.1/32"]) as gw:
            s = await run_scenario(gw)
            w = World(gw, provider, s.admin)
            r = await w.admin.put(f"/api/v1/orgs/{ORG}/oidc", json={
                "provider": "generic", "discovery_url": provider.issuer,
                "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "domains": ["nguyendu.edu.vn"]})
            assert r.status == 200, await r.text()
            r = await w.admin.put(f"/api/v1/orgs/{ORG}/oidc/emails",
                                  json={"username": ADMIN, "email": EMAIL})
            assert r.status == 200, await r.text()
            # A one-time password the administrator never uses: the provider signs them in.
            assert gw.svc.staff is not None
            user, _one_time = await gw.svc.staff.reset_password(ADMIN)
            assert user.must_change_password
            yield w, base, str(s.incident["id"])


@pytest.mark.parametrize("lang", ["vi", "en"])
async def test_admin_signs_in_through_provider_then_second_factor_and_steps_up_to_export(
        world: tuple[World, str, str], clock: MovingClock, browser: Browser,
        lang: str) -> None:
    w, base, incident = world
    home = base + home_of(Principal(ADMIN, "admin", ORG, "session"))
    context, watch = await new_context(browser, width=360,
                                       locale="vi-VN" if lang == "vi" else "en-GB")
    # The provider's own pages ask for a web font (no internet here) and a favicon.
    watch.allow(re.escape(w.provider.issuer))
    watch.allow(r"fonts\.googleapis\.com")
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)

    async def signed_in_at_home(step: str) -> None:
        assert page.url == home, f"{step}: {await outcome(page)}"
        assert ADMIN in await page.inner_text("header"), step
        assert any(c["name"] == "cg_session" for c in await context.cookies()), step

    # No second factor yet: the provider's sign-in opens the session, and the one-time
    # password is not asked to be changed.
    await through_provider(page, w, EMAIL, "qt-hieu", lang, base=base)
    await signed_in_at_home("first sign-in")

    # A passkey, then an authenticator app (enrolling the passkey proved a factor).
    await page.goto(f"{base}/account/security?lang={lang}")
    auth_id = await _authenticator(cdp)
    await page.get_by_role("button", name=t(lang, "security.passkey_add")).click()
    await page.locator("#recovery-codes li").nth(9).wait_for()
    [key] = (await cdp.send("WebAuthn.getCredentials",
                            {"authenticatorId": auth_id}))["credentials"]
    await page.goto(f"{base}/account/security?lang={lang}")
    await page.get_by_role("button", name=t(lang, "security.totp_add")).click()
    await page.locator("#totp-setup").wait_for(state="visible")
    totp = pyotp.TOTP((await page.locator("#totp-secret").text_content() or "").strip())
    await page.locator("#totp-code").fill(totp.at(clock.now()))
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(lang, "security.totp_confirm")).click()
    await page.locator("#totp-on").wait_for()
    await page.locator("#passkey-on").wait_for()

    # Sign out; through the provider again (its own session skips its pages): now the
    # second factor is asked for, on a phone-sized page.
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(lang, "login.signout")).click()
    assert "/auth/oidc/signed-out" in page.url
    await through_provider(page, w, EMAIL, "qt-hieu", lang, base=base)
    assert page.url.startswith(f"{base}/login/second-factor"), await outcome(page)
    assert not any(c["name"] == "cg_session" for c in await context.cookies())
    await check_page(page, watch, lang=lang, where="second factor after the provider")
    await _authenticator(cdp, key)
    async with page.expect_navigation(url=lambda u: "/login" not in u):
        await page.get_by_role("button", name=t(lang, "mfa.use_passkey")).click()
    await signed_in_at_home("provider, then passkey")

    # The passkey was proved just now: the export is offered. Five minutes later it is
    # refused, and the incident page leads to proving the factor again.
    incident_page = f"{base}/incidents/{incident}?lang={lang}"
    export = f"{base}/api/v1/incidents/{incident}/evidence.zip?lang={lang}"
    await page.goto(incident_page)
    assert await page.locator("#export-verify").count() == 0
    clock.t += 301
    r = await page.request.get(export)
    assert r.status == 403
    assert (await r.json())["error"]["code"] == "step_up_required"
    await page.goto(incident_page)
    async with page.expect_navigation():
        await page.locator("#export-verify").click()
    assert page.url.startswith(f"{base}/account/verify"), page.url
    await page.get_by_label(t(lang, "mfa.code")).fill(totp.at(clock.now()))
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(lang, "mfa.submit")).click()
    assert page.url.startswith(f"{base}/incidents/{incident}"), page.url
    assert await page.locator("#export-verify").count() == 0
    r = await page.request.get(export)
    assert r.status == 200, await r.text()
    assert r.headers["content-type"] == "application/zip"

    # Sign out and in once more, this time with the app's code.
    await page.goto(home)
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(lang, "login.signout")).click()
    clock.t += 60  # the code of a later step: the last one is spent
    await through_provider(page, w, EMAIL, "qt-hieu", lang, base=base)
    assert page.url.startswith(f"{base}/login/second-factor"), await outcome(page)
    await page.get_by_label(t(lang, "mfa.code")).fill(totp.at(clock.now()))
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(lang, "mfa.submit")).click()
    await signed_in_at_home("provider, then app code")
    assert w.gw.svc.staff is not None
    user = await w.gw.svc.staff.get_user(ADMIN)
    assert user is not None and user.must_change_password  # the password itself untouched
    watch.allow(r"status of 403")  # the refused export above
    watch.assert_clean("provider and second factor")
    await context.close()
