"""The control room in a real browser, for a teacher on a phone and on a desktop, in
Vietnamese and English: a student who closes the waiting page is shown as gone within
seconds and "Admit all" leaves them out; revoking a link can be undone; a device reset
says what it did and the teacher is told when the student comes back; bans are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from gateway.i18n import t
from tests.gateway.helpers import ROSTER, Gateway, class_body

from .conftest import MeetingServer, check_page, new_context, sign_in

VIEWS = [("vi", 360), ("vi", 1280), ("en", 360), ("en", 1280)]


async def _class(gw: Gateway, meeting: MeetingServer) -> tuple[str, dict[str, dict[str, Any]]]:
    api = gw.api(await gw.staff_user("co.lan", "teacher", org="thpt-a"))
    body = class_body("strict")
    body["platform"] = {"kind": "generic", "url": meeting.url("toan-10a1")}
    r = await api.post("/api/v1/classes", json=body)
    assert r.status == 201, await r.text()
    cid = (await r.json())["id"]
    r = await api.put(f"/api/v1/classes/{cid}/roster", json=ROSTER)
    assert r.status == 200, await r.text()
    r = await api.post(f"/api/v1/classes/{cid}/links", json={})
    assert r.status == 200, await r.text()
    return cid, {x["name"]: x for x in (await r.json())["links"]}


def _waiting_row(page: Page, name: str) -> Any:
    return page.locator("#waiting li.person").filter(has_text=name)


@pytest.mark.parametrize(("lang", "width"), VIEWS)
async def test_gone_students_are_shown_and_left_out_of_admit_all(
        browser: Browser, gateway: Gateway, meeting: MeetingServer, tmp_path: Path,
        lang: str, width: int) -> None:
    gw = gateway
    cid, links = await _class(gw, meeting)
    teacher_ctx, tw = await new_context(browser, width=width,
                                        locale="vi-VN" if lang == "vi" else "en-GB")
    page = await teacher_ctx.new_page()
    await sign_in(page, gw, "co.lan", lang=lang)
    await page.goto(gw.url(f"/classes/{cid}/control"))
    await expect(page.locator("#conn")).to_have_text(t(lang, "control.connected"))

    an_ctx, _ = await new_context(browser, phone=True)
    an = await an_ctx.new_page()
    await an.goto(links["Nguyễn Văn An"]["url"])
    await expect(an.locator("#status")).to_have_text(t("vi", "wait.waiting"))
    binh_ctx, _ = await new_context(browser, phone=True)
    binh = await binh_ctx.new_page()
    await binh.goto(links["Trần Thị Bình"]["url"])
    await expect(binh.locator("#status")).to_have_text(t("vi", "wait.waiting"))
    await expect(page.locator("#waiting li.person")).to_have_count(2)
    await expect(page.locator("#waiting li.gone")).to_have_count(0)

    # An closes the browser: within seconds the teacher sees it.
    await an_ctx.close()
    gone = _waiting_row(page, "Nguyễn Văn An")
    await expect(gone).to_have_class("person gone", timeout=5_000)
    await expect(gone).to_contain_text(t(lang, "control.gone"))
    await expect(_waiting_row(page, "Trần Thị Bình")).to_have_class("person")
    await page.screenshot(path=str(tmp_path / f"control-gone-{lang}-{width}.png"), full_page=True)

    # "Admit all" lets Bình in and leaves An waiting, and says so.
    await page.get_by_role("button", name=t(lang, "action.admit_all"), exact=True).click()
    await binh.wait_for_url(meeting.url("toan-10a1") + "*")
    await expect(page.locator("#admitted")).to_contain_text("Trần Thị Bình")
    await expect(page.locator("#waiting li.person")).to_have_count(1)
    await expect(gone).to_be_visible()
    await expect(page.locator("#notice")).to_have_text(
        t(lang, "control.admitted_all", n=1) + " " + t(lang, "control.skipped_gone", n=1))
    assert meeting.arrivals == ["toan-10a1"]
    await check_page(page, tw, lang=lang, where=f"control room ({lang}, {width}px)",
                     shots=tmp_path, name="control-after-admit-all",
                     data=("Toán 10A1", "Nguyễn Văn An", "Trần Thị Bình", "Lê Hoàng Cường"))
    for ctx in (teacher_ctx, binh_ctx):
        await ctx.close()


@pytest.mark.parametrize(("lang", "width"), [("vi", 360), ("en", 1280)])
async def test_revoke_undo_reset_result_and_named_bans(
        browser: Browser, gateway: Gateway, meeting: MeetingServer, tmp_path: Path,
        lang: str, width: int) -> None:
    gw = gateway
    cid, links = await _class(gw, meeting)
    teacher_ctx, tw = await new_context(browser, width=width,
                                        locale="vi-VN" if lang == "vi" else "en-GB")
    page = await teacher_ctx.new_page()
    await sign_in(page, gw, "co.lan", lang=lang)
    await page.goto(gw.url(f"/classes/{cid}/control"))
    await expect(page.locator("#conn")).to_have_text(t(lang, "control.connected"))
    binh_name, an_name = "Trần Thị Bình", "Nguyễn Văn An"

    # Bình is let in from her phone.
    binh_ctx, _ = await new_context(browser, phone=True)
    binh = await binh_ctx.new_page()
    await binh.goto(links[binh_name]["url"])
    await page.get_by_role("button", name=f"{t(lang, 'action.admit')}: {binh_name}").click()
    await binh.wait_for_url(meeting.url("toan-10a1") + "*")
    admitted = page.locator("#admitted li.person").filter(has_text=binh_name)
    await expect(admitted).to_have_count(1)

    # Revoking her link waits with an undo that names her; undone, nothing happened.
    await page.get_by_role("button", name=f"{t(lang, 'action.revoke_link')}: {binh_name}").click()
    await expect(page.locator("#undo")).to_contain_text(
        t(lang, "control.undo_revoke_link", name=binh_name))
    await page.screenshot(path=str(tmp_path / f"control-revoke-undo-{lang}-{width}.png"),
                          full_page=True)
    await page.locator("#undo li").get_by_role("button").click()
    await expect(page.locator("#undo")).to_be_hidden()
    await page.wait_for_timeout(6_000)  # longer than the undo delay
    await expect(admitted).to_have_count(1)

    # Resetting her device says so; when she comes back on a new phone the teacher
    # is alerted, with that phone named.
    await page.get_by_role("button",
                           name=f"{t(lang, 'action.reset_device')}: {binh_name}").click()
    await expect(page.locator("#notice")).to_have_text(
        t(lang, "control.reset_done", name=binh_name))
    new_ctx, _ = await new_context(browser, phone=True)
    new_phone = await new_ctx.new_page()
    await new_phone.goto(links[binh_name]["url"])
    alert = page.locator("#alerts li.alert-device_reset_returned")
    await expect(alert).to_have_count(1)
    await expect(alert).to_contain_text(binh_name)

    # An waits; the teacher bans An's device: the ban is shown by An's name.
    an_ctx, _ = await new_context(browser, phone=True)
    an = await an_ctx.new_page()
    await an.goto(links[an_name]["url"])
    await page.get_by_role("button", name=f"{t(lang, 'action.ban')}: {an_name}").click()
    await expect(an.get_by_role("heading", level=1)).to_have_text(
        t("vi", "wait.denied_heading"), timeout=15_000)
    bans = page.locator("#bans li.person strong")
    await page.locator("details.panel summary").click()
    await expect(bans.first).to_have_text(t(lang, "control.ban_device_of", name=an_name))
    texts = await bans.all_inner_texts()
    assert not any(x.strip().lower() in ("device", "ip") for x in texts), texts
    await check_page(page, tw, lang=lang, where=f"control room ({lang}, {width}px)",
                     shots=tmp_path, name="control-bans",
                     data=("Toán 10A1", an_name, binh_name, "Lê Hoàng Cường"))
    for ctx in (teacher_ctx, binh_ctx, new_ctx, an_ctx):
        await ctx.close()
