"""The language switch: Vietnamese by default, English on request, remembered, and the
switch keeps where the person was going."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from playwright.async_api import Browser, expect

from gateway.i18n import t
from tests.gateway.helpers import TEACHER_PASSWORD, Gateway, make_class

from .conftest import new_context


async def test_sign_in_page_is_vietnamese_first_and_switches(browser: Browser,
                                                             gateway: Gateway) -> None:
    await gateway.staff_user("co.lan", "teacher", org="thpt-a")
    # A browser that prefers neither language gets Vietnamese.
    ctx, watch = await new_context(browser, locale="fr-FR")
    page = await ctx.new_page()
    await page.goto(gateway.url("/login?next=/classes/new"))
    assert await page.evaluate("document.documentElement.lang") == "vi"
    await expect(page.get_by_role("heading", level=1)).to_have_text(t("vi", "login.title"))
    # Switching keeps the destination; the choice is remembered.
    await page.get_by_role("link", name=t("vi", "lang.switch")).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(t("en", "login.title"))
    query = parse_qs(urlsplit(page.url).query)
    assert query == {"next": ["/classes/new"], "lang": ["en"]}, page.url
    await page.get_by_label(t("en", "login.username")).fill("co.lan")
    await page.get_by_label(t("en", "login.password")).fill(TEACHER_PASSWORD)
    async with page.expect_navigation():
        await page.get_by_role("button", name=t("en", "login.submit"), exact=True).click()
    await expect(page).to_have_url(gateway.url("/classes/new"))
    await expect(page.get_by_role("heading", level=1)).to_have_text(t("en", "classform.title"))
    await page.goto(gateway.url("/classes"))
    assert await page.evaluate("document.documentElement.lang") == "en"
    # ... and back.
    await page.get_by_role("link", name=t("en", "lang.switch")).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(t("vi", "classes.title"))
    watch.assert_clean("sign-in and language switch")
    # A browser asking for English gets English without choosing.
    en_ctx, en_watch = await new_context(browser, locale="en-GB")
    en_page = await en_ctx.new_page()
    await en_page.goto(gateway.url("/login"))
    await expect(en_page.get_by_role("heading", level=1)).to_have_text(t("en", "login.title"))
    en_watch.assert_clean("English browser")
    await ctx.close()
    await en_ctx.close()


async def test_student_page_switches_language_and_keeps_waiting(browser: Browser,
                                                               gateway: Gateway) -> None:
    token = await gateway.staff_user("co.lan", "teacher", org="thpt-a")
    _cid, links = await make_class(gateway, gateway.api(token))
    url = links[0]["url"]
    ctx, watch = await new_context(browser, phone=True, locale="fr-FR")
    page = await ctx.new_page()
    await page.goto(url)
    assert await page.evaluate("document.documentElement.lang") == "vi"
    await expect(page.locator("#status")).to_have_text(t("vi", "wait.waiting"))
    await page.get_by_role("link", name=t("vi", "lang.switch")).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(t("en", "wait.heading"))
    # Still this student's own waiting room on the same device, now in English.
    await expect(page.locator("#status")).to_have_text(t("en", "wait.waiting"))
    await expect(page.get_by_text(links[0]["name"])).to_be_visible()
    # The short-code page remembers the choice.
    await page.goto(gateway.url("/join"))
    await expect(page.get_by_role("heading", level=1)).to_have_text(t("en", "join.heading"))
    await page.get_by_role("link", name=t("en", "lang.switch")).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(t("vi", "join.heading"))
    watch.assert_clean("student language switch")
    await ctx.close()
