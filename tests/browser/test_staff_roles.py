"""IT staff and administrators in the browser: each role reaches its own pages (and is
refused the others with a page in its language), and the pages' scripts work: audit
search and integrity check, adding and lifting a ban, creating a staff account, rotating
the join-token keys."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Browser, Page, expect

from gateway.i18n import t
from tests.gateway.helpers import TEACHER_PASSWORD, Gateway, make_class

from .conftest import check_page, new_context, sign_in

VI = "vi"


async def status_of(page: Page, gw: Gateway, path: str) -> int:
    resp = await page.goto(gw.url(path))
    assert resp is not None
    return resp.status


async def test_each_role_reaches_its_pages_and_no_other(browser: Browser, gateway: Gateway,
                                                       artifacts: Path) -> None:
    gw = gateway
    await gw.svc.staff.init_root("so-gd", name="Sở GD&ĐT")  # type: ignore[union-attr]
    teacher = await gw.staff_user("co.lan", "teacher", org="thpt-a", parent="so-gd")
    await gw.staff_user("anh.it", "it", org="so-gd")
    await gw.staff_user("chi.admin", "admin", org="so-gd")
    cid, _links = await make_class(gw, gw.api(teacher))
    expected = {
        "co.lan": {"/classes": 200, f"/classes/{cid}/control": 200, "/audit": 403,
                   "/bans": 403, "/admin/staff": 403, "/admin/keys": 403},
        "anh.it": {"/audit": 200, "/bans": 200, f"/classes/{cid}": 200,
                   f"/classes/{cid}/control": 403, "/admin/staff": 403, "/admin/keys": 403},
        "chi.admin": {"/audit": 200, "/bans": 200, "/admin/staff": 200, "/admin/keys": 200,
                      f"/classes/{cid}/control": 200},
    }
    for user in expected:  # teachers see their classes' incidents, the others their org's
        expected[user]["/incidents"] = 200
    for user, pages in expected.items():
        ctx, watch = await new_context(browser)
        watch.allow(r"status of 403")
        page = await ctx.new_page()
        await sign_in(page, gw, user)
        for path, status in pages.items():
            assert await status_of(page, gw, path) == status, (user, path)
            if status == 403:
                await expect(page.get_by_role("heading", level=1)).to_have_text(
                    t(VI, "error.title"))
                await expect(page.get_by_role("alert")).to_have_text(t(VI, "error.forbidden"))
        await check_page(page, watch, lang=VI, where=f"{user} refused", shots=artifacts,
                         name="error-forbidden")
        await ctx.close()
    # The control room's "report an incident" leads to the report form.
    ctx, watch = await new_context(browser)
    page = await ctx.new_page()
    await sign_in(page, gw, "co.lan", next_path=f"/classes/{cid}/control")
    report = page.locator(".toolbar").get_by_text(t(VI, "control.report_incident"))
    await expect(report).to_have_attribute("href", f"/incidents/new?class_id={cid}")
    await report.click()
    await expect(page).to_have_url(gw.url(f"/incidents/new?class_id={cid}"))
    watch.assert_clean("report an incident")
    await ctx.close()
    # Signed out, a staff page sends to the sign-in page and back after signing in.
    ctx, watch = await new_context(browser)
    page = await ctx.new_page()
    await page.goto(gw.url("/audit?type=class.created"))
    await expect(page).to_have_url(gw.url("/login?next=%2Faudit%3Ftype%3Dclass.created"))
    await page.get_by_label(t(VI, "login.username")).fill("anh.it")
    await page.get_by_label(t(VI, "login.password")).fill(TEACHER_PASSWORD)
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(VI, "login.submit"), exact=True).click()
    await expect(page).to_have_url(gw.url("/audit?type=class.created"))
    await expect(page.get_by_label(t(VI, "audit.f.type"))).to_have_value("class.created")
    watch.assert_clean("sign-in redirect")
    await ctx.close()


async def test_it_staff_search_verify_and_ban(browser: Browser, gateway: Gateway) -> None:
    gw = gateway
    teacher = await gw.staff_user("co.lan", "teacher", org="school-a")
    await gw.staff_user("anh.it", "it", org="school-a")
    await make_class(gw, gw.api(teacher))
    ctx, watch = await new_context(browser, width=360)
    page = await ctx.new_page()
    await sign_in(page, gw, "anh.it")
    await expect(page).to_have_url(gw.url("/audit"))
    # Search by event type through the filter form.
    await page.get_by_label(t(VI, "audit.f.type")).fill("roster.imported")
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(VI, "audit.search")).click()
    events = page.locator("ul.events > li")
    await expect(events).to_have_count(1)
    await expect(events).to_contain_text("roster.imported")
    await events.locator("summary").click()
    await expect(events.locator("pre")).to_contain_text('"type": "roster.imported"')
    # Verify the whole log from the page.
    await page.get_by_role("button", name=t(VI, "audit.verify_now")).click()
    result = page.locator("#verify-result")
    await expect(result).to_have_class("ok")
    await expect(result).to_contain_text(t(VI, "audit.verify_ok", size="")[:8])
    # Ban an address, see it listed, lift it.
    await page.goto(gw.url("/bans"))
    await page.get_by_label(t(VI, "bans.value")).fill("198.51.100.23")
    await page.get_by_label(t(VI, "bans.reason")).fill("gửi tin rác")
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(VI, "bans.add_submit"), exact=True).click()
    row = page.locator("tr", has_text="198.51.100.23")
    await expect(row).to_contain_text("gửi tin rác")
    page.once("dialog", lambda d: d.accept())
    async with page.expect_navigation():
        await page.get_by_role("button", name=f"{t(VI, 'bans.lift')}: 198.51.100.23").click()
    await expect(page.locator("tr", has_text="198.51.100.23")).to_have_count(0)
    watch.assert_clean("IT pages")
    await ctx.close()


async def test_admin_creates_an_account_and_rotates_keys(browser: Browser,
                                                         gateway: Gateway) -> None:
    gw = gateway
    await gw.svc.staff.init_root("so-gd")  # type: ignore[union-attr]
    await gw.staff_user("chi.admin", "admin", org="so-gd")
    ctx, watch = await new_context(browser)
    page = await ctx.new_page()
    await sign_in(page, gw, "chi.admin")
    await page.goto(gw.url("/admin/staff"))
    await page.get_by_label(t(VI, "login.username")).fill("thay.minh")
    await page.get_by_label(t(VI, "staff.role")).select_option("teacher")
    await page.get_by_role("button", name=t(VI, "staff.add_submit")).click()
    otp = page.locator("#otp")
    await expect(otp).to_be_visible()
    await expect(page.locator("#otp-text")).to_have_text(
        t(VI, "staff.created", name="thay.minh"))
    password = (await page.locator("#otp-value").inner_text()).strip()
    assert len(password) >= 12
    # The new teacher signs in with the one-time password and must choose a new one
    # before anything else; a common one is refused.
    other, owatch = await new_context(browser)
    opage = await other.new_page()
    await sign_in(opage, gw, "thay.minh", password=password)
    assert "/account/password" in opage.url, opage.url
    await expect(opage.locator("#pw-forced")).to_be_visible()
    await check_page(opage, owatch, lang=VI, where="forced password change")
    owatch.allow(r"status of 400")  # the refused password's page
    for new in ("password1234", "một câu rất dài làm mật khẩu mới"):
        await opage.get_by_label(t(VI, "account.pw_current"), exact=True).fill(password)
        await opage.get_by_label(t(VI, "account.pw_new"), exact=True).fill(new)
        await opage.get_by_label(t(VI, "account.pw_again"), exact=True).fill(new)
        async with opage.expect_navigation():
            await opage.get_by_role("button", name=t(VI, "account.pw_submit")).click()
        if new == "password1234":
            await expect(opage.locator("#pw-error")).to_have_text(t(VI, "account.pw_common"))
    assert opage.url.endswith("/classes"), opage.url
    owatch.assert_clean("new account's first sign-in")
    # The administrator resets it: a new one-time password, the teacher's session ends.
    await page.goto(gw.url("/admin/staff"))
    page.once("dialog", lambda d: d.accept())
    await page.get_by_role("button", name=f"{t(VI, 'staff.reset')}: thay.minh").click()
    await expect(page.locator("#otp-text")).to_have_text(
        t(VI, "staff.reset_done", name="thay.minh"))
    assert len((await page.locator("#otp-value").inner_text()).strip()) >= 12
    await opage.goto(gw.url("/classes"))
    assert "/login" in opage.url, opage.url
    await other.close()
    # Rotate the join-token keys: the old key is kept, retired.
    await page.goto(gw.url("/admin/keys"))
    before = await page.locator("code.kid").all_inner_texts()
    page.once("dialog", lambda d: d.accept())
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(VI, "keys.rotate")).click()
    after = await page.locator("code.kid").all_inner_texts()
    assert set(before) < set(after) and len(after) == len(before) + 1
    watch.assert_clean("admin pages")
    await ctx.close()
