"""A student reports a stranger from the waiting page, on a phone (360 px) and on a
desktop, in Vietnamese and English; the teacher sees the report arrive live in the
control room and opens an incident from it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, expect

from gateway.i18n import t
from gateway.routes.reports import report_store
from tests.gateway.helpers import Gateway, class_body, host_control, make_class

from .conftest import _free_port, check_page, new_context, sign_in


def rep_ticket(url: str) -> str:
    """The ticket in a report page's address."""
    return url.split("/report/", 1)[1].split("?", 1)[0]


WORDS = "Một người lạ tên <b>Tuấn</b> bật micro và nói bậy"


@pytest.mark.parametrize(("lang", "phone"), [("vi", True), ("en", True), ("vi", False),
                                             ("en", False)])
async def test_a_student_reports_a_stranger_and_the_teacher_opens_an_incident(
        browser: Browser, gateway: Gateway, redis: object, artifacts: Path,
        lang: str, phone: bool) -> None:
    gw = gateway
    token = await gw.staff_user("co.lan", "teacher", org="thpt-a")
    cid, links = await make_class(gw, gw.api(token), "strict")  # the host admits

    # The teacher's control room is open.
    tctx, twatch = await new_context(browser, locale="vi-VN" if lang == "vi" else "en-GB")
    teacher = await tctx.new_page()
    await sign_in(teacher, gw, "co.lan", lang=lang)
    await teacher.goto(gw.url(f"/classes/{cid}/control?lang={lang}"))
    await expect(teacher.locator("#conn")).to_have_text(t(lang, "control.connected"))
    await expect(teacher.locator("#reports-box")).to_be_hidden()

    # The student waits, and opens the report page from the waiting page.
    sctx, swatch = await new_context(browser, phone=phone,
                                     locale="vi-VN" if lang == "vi" else "en-GB")
    student = await sctx.new_page()
    await student.goto(str(links[0]["url"]) + f"?lang={lang}")
    await expect(student.locator("#wait")).to_be_visible()
    entry = student.get_by_role("link", name=t(lang, "report.entry"))
    await expect(entry).to_be_visible()
    async with sctx.expect_page() as opened:
        await entry.click()
    form = await opened.value
    await form.wait_for_load_state()
    await expect(form.get_by_role("heading", name=t(lang, "report.heading"))).to_be_visible()
    name = f"report-form-{'phone' if phone else 'desktop'}"
    await check_page(form, swatch, lang=lang, where="report form", shots=artifacts, name=name)
    await form.get_by_label(t(lang, "report_form.category.stranger")).check()
    await expect(form.get_by_label(t(lang, "report_form.role.student"))).to_be_checked()
    await form.get_by_label(t(lang, "report.text")).fill(WORDS)
    async with form.expect_navigation():
        await form.get_by_role("button", name=t(lang, "report.submit")).click()
    await expect(form.get_by_role("heading", name=t(lang, "report.done_heading"))).to_be_visible()
    await check_page(form, swatch, lang=lang, where="report sent", shots=artifacts,
                     name=f"report-done-{'phone' if phone else 'desktop'}")

    # The teacher sees it at once, the reporter's words as text, and opens an incident.
    box = teacher.locator("#reports-box")
    await expect(box).to_be_visible()
    await expect(teacher.locator("#nreports")).to_have_text("1")
    item = box.locator("li.report")
    await expect(item.get_by_text(t(lang, "report.category.stranger"))).to_be_visible()
    await expect(item.locator(".reporttext")).to_have_text(WORDS)
    assert await item.locator("b").count() == 0
    await teacher.screenshot(path=str(artifacts / f"report-control-{lang}-1280.png"),
                             full_page=True)
    await item.get_by_role("button", name=t(lang, "report.to_incident")).click()
    await expect(teacher.locator("#notice")).to_contain_text(t(lang, "report.opened"))
    link = teacher.get_by_role("link", name=t(lang, "report.open_incident_link"))
    await expect(link).to_be_visible()
    await expect(teacher.locator("#nreports")).to_have_text("0")
    (rep,) = await report_store(gw.svc).of_classes([cid])
    assert rep.status == "incident" and rep.incident and rep.category == "stranger"
    assert rep.text == WORDS
    async with teacher.expect_navigation():
        await link.click()
    assert teacher.url.split("?")[0].endswith(f"/incidents/{rep.incident}")
    twatch.assert_clean("control room")

    # A second report, about something else, is dismissed from the incidents page.
    await form.goto(gw.url(f"/report/{rep_ticket(form.url)}?lang={lang}"))
    await form.get_by_label(t(lang, "report_form.category.other")).check()
    await form.get_by_label(t(lang, "report_form.role.parent")).check()
    async with form.expect_navigation():
        await form.get_by_role("button", name=t(lang, "report.submit")).click()
    await expect(form.get_by_role("heading", name=t(lang, "report.done_heading"))).to_be_visible()
    await teacher.goto(gw.url(f"/incidents?lang={lang}"))
    listed = teacher.locator("#reports li.report")
    await expect(listed).to_have_count(2)
    await expect(listed.nth(1).get_by_text(t(lang, "report.status.incident"))).to_be_visible()
    await expect(listed.nth(0).get_by_text(t(lang, "report.category.other"))).to_be_visible()
    await check_page(teacher, twatch, lang=lang, where="incidents with reports",
                     shots=artifacts, name=f"report-incidents-{'phone' if phone else 'desktop'}",
                     data=(WORDS, "Toán 10A1", t("vi", "report.category.stranger")))
    teacher.once("dialog", lambda dialog: dialog.accept("Đã gọi điện cho phụ huynh"))
    await listed.nth(0).get_by_role("button", name=t(lang, "report.dismiss")).click()
    await expect(teacher.locator("#reports-status")).to_have_text(t(lang, "report.dismissed"))
    await expect(listed.nth(0).get_by_text(t(lang, "report.dismissed"))).to_be_visible()
    other = [r for r in await report_store(gw.svc).of_classes([cid]) if r.category == "other"]
    assert [(r.status, r.role, r.reason) for r in other] == [
        ("dismissed", "parent", "Đã gọi điện cho phụ huynh")]
    await sctx.close()
    await tctx.close()


@pytest.fixture
async def demo_pages(tmp_path: Path, redis_url: str, redis_prefix: str,
                     redis: Any) -> AsyncIterator[Gateway]:
    """A gateway serving the demo's pages (no demo class, no Janus)."""
    from gateway.app import create_app
    from gateway.config import load_settings
    from gateway.demo import add_demo

    port = _free_port()
    settings = load_settings({"data_dir": str(tmp_path / "data"), "redis_url": redis_url,
                              "redis_prefix": redis_prefix,
                              "public_url": f"http://127.0.0.1:{port}",
                              "cookie_secure": False}, {}, None)
    app = create_app(settings)
    add_demo(app, setup=False)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    gw = Gateway(server)
    try:
        yield gw
    finally:
        await gw.close()
        await server.close()


async def test_the_admitted_meeting_page_opens_the_report_form(
        browser: Browser, demo_pages: Gateway, artifacts: Path) -> None:
    gw = demo_pages
    api = gw.api(await gw.staff_user("co.lan", "teacher", org="thpt-a"))
    body = class_body("standard")
    body["platform"] = {"kind": "generic", "url": gw.url("/demo/meeting")}
    r = await api.post("/api/v1/classes", json=body)
    assert r.status == 201, await r.text()
    cid = (await r.json())["id"]
    r = await api.put(f"/api/v1/classes/{cid}/roster",
                      json=[{"name": "Nguyễn Văn An", "external_id": "HS001"}])
    assert r.status == 200
    r = await api.post(f"/api/v1/classes/{cid}/links", json={})
    (link,) = (await r.json())["links"]
    host = await host_control(api, cid)  # the policy admits while the teacher is in
    ctx, watch = await new_context(browser, phone=True)
    page = await ctx.new_page()
    await page.goto(str(link["url"]))  # admitted at once: /go, then the meeting page
    await expect(page.get_by_role("heading", name=t("vi", "demo.meeting_title"))).to_be_visible()
    entry = page.get_by_role("link", name=t("vi", "report.entry"))
    async with ctx.expect_page() as opened:
        await entry.click()
    form = await opened.value
    await form.wait_for_load_state()
    await expect(form.get_by_role("heading", name=t("vi", "report.heading"))).to_be_visible()
    await check_page(form, watch, lang="vi", where="report form after admission",
                     shots=artifacts, name="report-form-admitted")
    await form.get_by_label(t("vi", "report_form.category.stranger")).check()
    async with form.expect_navigation():
        await form.get_by_role("button", name=t("vi", "report.submit")).click()
    await expect(form.get_by_role("heading", name=t("vi", "report.done_heading"))).to_be_visible()
    (rep,) = await report_store(gw.svc).of_classes([cid])
    assert rep.category == "stranger"
    await host.close()
    await ctx.close()
