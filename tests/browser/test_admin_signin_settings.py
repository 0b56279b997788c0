"""An administrator, in Chromium at 360 px and on a desktop screen, in Vietnamese and in
English: sets the school's OpenID provider and the second-factor policy on the sign-in
settings page, then ends a teacher's session from the staff page; the teacher's next
request is signed out. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from gateway.i18n import t
from gateway.routes.oidc import oidc_store
from gateway.signin import mfa_store
from tests.gateway.helpers import Gateway

from .conftest import check_page, new_context, sign_in

TID = "6f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b"


@pytest.mark.parametrize("lang, width", [("vi", 360), ("en", 1280)])
async def test_admin_configures_sign_in_and_ends_a_teachers_session(
        browser: Browser, gateway: Gateway, artifacts: Path, lang: str, width: int) -> None:
    gw = gateway
    await gw.staff_user("thay.hieu", "admin", "thpt-a")
    await gw.staff_user("co.lan", "teacher", "thpt-a")
    # the teacher, signed in on her own device
    tctx, twatch = await new_context(browser, width=width)
    teacher = await tctx.new_page()
    await sign_in(teacher, gw, "co.lan", lang=lang)
    resp = await teacher.goto(gw.url(f"/classes?lang={lang}"))
    assert resp is not None and resp.status == 200

    ctx, watch = await new_context(browser, width=width)
    page = await ctx.new_page()
    await sign_in(page, gw, "thay.hieu", lang=lang)
    await page.goto(gw.url(f"/admin/staff?lang={lang}"))
    # the navigation leads to the sign-in settings
    await page.get_by_role("link", name=t(lang, "nav.signin_settings")).first.click()
    await page.wait_for_url("**/admin/sign-in**")
    await check_page(page, watch, lang=lang, where=f"sign-in settings ({lang}, {width}px)",
                     shots=artifacts, name="admin-signin-settings")

    # a bad tenant id: said plainly (a 400 page), nothing kept
    watch.allow(r"status of 400")
    await page.get_by_label(t(lang, "signin_settings.provider"), exact=True).select_option(
        "entra-single")
    await page.get_by_label(t(lang, "signin_settings.client_id")).fill("app-id")
    await page.get_by_label(t(lang, "signin_settings.tenant"), exact=True).fill("contoso")
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(lang, "signin_settings.save")).click()
    await expect(page.locator("#signin-error")).to_have_text(
        t(lang, "signin_settings.bad.tenant"))
    assert await oidc_store(gw.svc).get("thpt-a") is None
    await check_page(page, watch, lang=lang, where=f"bad tenant ({lang}, {width}px)",
                     shots=artifacts, name="admin-signin-bad")
    watch.reset()

    # a single-tenant Microsoft Entra app, with its secret, passwords off
    await page.get_by_label(t(lang, "signin_settings.tenant"), exact=True).fill(TID)
    await page.get_by_label(t(lang, "signin_settings.client_secret")).fill("entra-secret")
    await page.get_by_label(t(lang, "signin_settings.domains")).fill("thpt-a.edu.vn")
    await page.get_by_label(t(lang, "signin_settings.passwords")).uncheck()
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(lang, "signin_settings.save")).click()
    await expect(page.locator("#signin-notice")).to_have_text(t(lang, "signin_settings.saved"))
    saved = await oidc_store(gw.svc).get("thpt-a")
    assert saved is not None and saved.provider == "entra" and saved.tenant_ids == (TID,)
    assert saved.domains == ("thpt-a.edu.vn",) and not saved.passwords
    assert await page.get_by_label(t(lang, "signin_settings.client_secret")).input_value() == ""
    assert "entra-secret" not in await page.content()

    # the teacher's sessions, from the staff page
    await page.goto(gw.url(f"/admin/staff?lang={lang}"))
    await page.get_by_role("link", name=f"{t(lang, 'staff_sessions.link')}: co.lan").click()
    await page.wait_for_url("**/admin/staff/co.lan/sessions**")
    await expect(page.locator("#staff-sessions tbody tr")).to_have_count(1)
    await check_page(page, watch, lang=lang, where=f"staff sessions ({lang}, {width}px)",
                     shots=artifacts, name="admin-staff-sessions")
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(lang, "sessions.end"), exact=False).first.click()
    await expect(page.locator("#staff-sessions .notice")).to_have_text(
        t(lang, "sessions.ended"))
    await expect(page.locator("#staff-sessions tbody tr")).to_have_count(0)

    # the teacher's next request: signed out
    await teacher.goto(gw.url(f"/classes?lang={lang}"))
    await teacher.wait_for_url("**/login**")
    # last, the second factor, required for administrators and IT staff (from now on
    # this administrator's own step-up actions need one)
    await page.goto(gw.url(f"/admin/sign-in?lang={lang}"))
    await page.get_by_label(t(lang, "signin_settings.policy.required"), exact=True).check()
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(lang, "signin_settings.policy_save")).click()
    await expect(page.locator("#signin-notice")).to_have_text(
        t(lang, "signin_settings.policy_saved"))
    assert await mfa_store(gw.svc).policy(["thpt-a"]) == "required"
    await check_page(page, watch, lang=lang, where=f"sign-in saved ({lang}, {width}px)",
                     shots=artifacts, name="admin-signin-saved")

    await ctx.close()
    await tctx.close()
    twatch.reset()
