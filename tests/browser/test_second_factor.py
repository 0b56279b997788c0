"""A person adds a passkey (Chromium's virtual authenticator, over CDP) and an
authenticator app, then signs in with each; the sessions page at 360 px."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyotp
from playwright.async_api import Browser

from gateway.i18n import t

from ..gateway.helpers import TEACHER_PASSWORD, running_gateway
from .conftest import _free_port, check_page, new_context


async def test_passkey_and_totp_enrolment_and_sign_in(
        browser: Browser, tmp_path: Path, redis_url: str, redis_prefix: str,
        redis: Any) -> None:
    port = _free_port()
    # WebAuthn wants a domain: "localhost" (a secure context over http), not 127.0.0.1
    base = f"http://localhost:{port}"
    async with running_gateway(tmp_path, redis_url, redis_prefix, port=port,
                               public_url=base) as gw:
        await gw.staff_user("thay.hieu", "admin", "school-a")
        context, watch = await new_context(browser, width=360)
        page = await context.new_page()
        cdp = await context.new_cdp_session(page)

        async def authenticator() -> str:
            # NOTE: Chromium keeps the virtual authenticator with the document's frame
            # host; a navigation that swaps it drops the authenticator (and its keys).
            await cdp.send("WebAuthn.enable")
            added = await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
                "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
                "hasUserVerification": True, "isUserVerified": True,
                "automaticPresenceSimulation": True}})
            return str(added["authenticatorId"])

        lang = "vi"

        async def password_step() -> None:
            await page.goto(f"{base}/login?lang={lang}")
            await page.get_by_label(t(lang, "login.username")).fill("thay.hieu")
            await page.get_by_label(t(lang, "login.password")).fill(TEACHER_PASSWORD)
            async with page.expect_navigation():
                await page.get_by_role("button", name=t(lang, "login.submit"), exact=True).click()

        await password_step()
        await page.goto(f"{base}/account/security?lang={lang}")
        # a passkey: ten recovery codes shown once
        auth_id = await authenticator()
        await page.get_by_role("button", name=t(lang, "security.passkey_add")).click()
        await page.locator("#recovery-codes li").nth(9).wait_for()
        assert await page.locator("#recovery-codes li").count() == 10
        keys = (await cdp.send("WebAuthn.getCredentials",
                               {"authenticatorId": auth_id}))["credentials"]
        assert len(keys) == 1
        # an authenticator app
        await page.goto(f"{base}/account/security?lang={lang}")
        assert await page.locator("#passkey-on").count() == 1
        await page.get_by_role("button", name=t(lang, "security.totp_add")).click()
        await page.locator("#totp-setup").wait_for(state="visible")
        secret = (await page.locator("#totp-secret").text_content() or "").strip()
        assert secret
        totp = pyotp.TOTP(secret)
        await page.locator("#totp-code").fill(totp.now())
        async with page.expect_navigation():
            await page.get_by_role("button", name=t(lang, "security.totp_confirm")).click()
        await page.locator("#totp-on").wait_for()
        await check_page(page, watch, lang=lang, where="account security")

        # the sessions page, at 360 px
        await page.goto(f"{base}/account/sessions?lang={lang}")
        assert await page.locator("#sessions tbody tr").count() == 1
        await check_page(page, watch, lang=lang, where="sessions")

        # sign in again with the passkey
        await context.clear_cookies()
        await password_step()
        assert "/login/second-factor" in page.url
        await check_page(page, watch, lang=lang, where="second factor")
        auth_id = await authenticator()
        await cdp.send("WebAuthn.addCredential", {"authenticatorId": auth_id,
                                                  "credential": keys[0]})
        async with page.expect_navigation(url=lambda u: "/login" not in u):
            await page.get_by_role("button", name=t(lang, "mfa.use_passkey")).click()
        assert any(c["name"] == "cg_session" for c in await context.cookies())

        # and with the app (the next step's code: the current one was spent enrolling)
        await context.clear_cookies()
        await password_step()
        assert "/login/second-factor" in page.url
        await page.get_by_label(t(lang, "mfa.code")).fill(totp.at(time.time() + 30))
        async with page.expect_navigation():
            await page.get_by_role("button", name=t(lang, "mfa.submit")).click()
        assert "/login" not in page.url
        assert any(c["name"] == "cg_session" for c in await context.cookies())
        watch.assert_clean("second factor flow")
        await context.close()
