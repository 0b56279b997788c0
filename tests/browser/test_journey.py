"""The whole class in real browsers: a teacher signs in, creates a class, imports a roster
(one bad line), prints the links; students on phones wait, are admitted (and land in the
meeting) or denied; a shared link is caught and the teacher is told whose it was."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from playwright.async_api import Browser, Page, expect

from gateway.i18n import t
from tests.gateway.helpers import Gateway

from .conftest import MeetingServer, new_context, sign_in

ROSTER_CSV = (
    "Họ và tên,Mã học sinh\n"
    "Nguyễn Văn An,HS001\n"
    "=HYPERLINK(\"http://evil.example/\"),HS002\n"  # line 3: a spreadsheet formula
    "Trần Thị Bình,HS003\n"
    "Lê Hoàng Cường,HS004\n"
)


def lesson_times(now: datetime) -> tuple[str, str, str]:
    """Date, start and end (wall clock in Hanoi) of a lesson running now."""
    local = now.astimezone(ZoneInfo("Asia/Ho_Chi_Minh"))
    start = max(local - timedelta(minutes=5), local.replace(hour=0, minute=0))
    end = min(local + timedelta(hours=2), local.replace(hour=23, minute=59))
    return start.date().isoformat(), start.strftime("%H:%M"), end.strftime("%H:%M")


async def shot(page: Page, artifacts: Path, name: str) -> None:
    await page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


async def test_teacher_runs_a_class_and_students_join_from_phones(
        browser: Browser, gateway: Gateway, meeting: MeetingServer, artifacts: Path) -> None:
    gw = gateway
    vi = "vi"
    await gw.staff_user("co.lan", "teacher", org="thpt-a")
    teacher_ctx, tw = await new_context(browser)
    page = await teacher_ctx.new_page()

    # Sign in through the sign-in page.
    await sign_in(page, gw, "co.lan")
    await expect(page).to_have_url(gw.url("/classes"))
    await expect(page.get_by_role("heading", level=1)).to_have_text(t(vi, "classes.title"))

    # Create a class through the form (plain link platform, strict policy).
    await page.get_by_role("link", name=t(vi, "classes.create")).click()
    await expect(page).to_have_url(gw.url("/classes/new"))
    date, start, end = lesson_times(datetime.now(UTC))
    await page.get_by_label(t(vi, "classform.class_title")).fill("Toán 10A1")
    await page.get_by_label(t(vi, "classform.date"), exact=True).fill(date)
    await page.get_by_label(t(vi, "classform.start"), exact=True).fill(start)
    await page.get_by_label(t(vi, "classform.end"), exact=True).fill(end)
    await page.get_by_label(t(vi, "classform.platform_kind")).select_option("generic")
    await page.get_by_label(t(vi, "pfield.url")).fill(meeting.url("toan-10a1"))
    await page.get_by_label(t(vi, "preset.strict"), exact=True).check()
    await shot(page, artifacts, "journey-01-class-form-vi-1280")
    await page.get_by_role("button", name=t(vi, "classform.submit")).click()
    await expect(page).to_have_url(re.compile(r"/classes/[^/]+/roster$"))
    class_id = page.url.rsplit("/", 2)[-2]

    # Import a roster with one bad line: the preview names the line and why.
    await page.get_by_label(t(vi, "roster.file")).set_input_files(
        {"name": "lop-10a1.csv", "mimeType": "text/csv", "buffer": ROSTER_CSV.encode()})
    await page.get_by_role("button", name=t(vi, "roster.preview")).click()
    rejected = page.locator("#rejected li")
    await expect(rejected).to_have_count(1)
    await expect(rejected).to_have_text(
        t(vi, "roster.line", line=3) + ": " + t(vi, "roster.reject.formula"))
    await expect(page.locator("#preview-table tbody tr")).to_have_count(3)
    await shot(page, artifacts, "journey-02-roster-preview-vi-1280")
    await page.get_by_role("button", name=t(vi, "roster.confirm")).click()
    await expect(page.locator("#saved-msg")).to_have_text(t(vi, "roster.saved", count=3))
    # The current list below agrees with the confirmation, without a reload.
    await expect(page.locator("#current-count")).to_have_text("3")
    await expect(page.locator("#current-table tbody tr")).to_have_count(3)
    await expect(page.locator("#current-empty")).to_be_hidden()

    # The links page: issue the links, see a card with a QR code per student.
    await page.get_by_role("link", name=t(vi, "roster.to_links")).click()
    await expect(page).to_have_url(gw.url(f"/classes/{class_id}/links"))
    issue = page.get_by_role("button", name=t(vi, "links.issue"))
    if await issue.count():
        async with page.expect_navigation():
            await issue.click()
    cards = page.locator("li.linkcard")
    await expect(cards).to_have_count(3)
    await expect(cards.locator("img.qr").first).to_have_attribute(
        "src", re.compile("^data:image/svg"))
    await shot(page, artifacts, "journey-03-links-vi-1280")

    def link_of(name: str):  # type: ignore[no-untyped-def]
        return cards.filter(has_text=name).locator("input.urlbox").input_value()

    an_link, binh_link = await link_of("Nguyễn Văn An"), await link_of("Trần Thị Bình")
    assert an_link.startswith(gw.url("/j/")) and binh_link != an_link

    # The printable sheet opens in a new tab and is a PDF.
    async with page.expect_popup() as popup_info, \
            teacher_ctx.expect_event("response", lambda r: "links.pdf" in r.url) as resp_info:
        await page.get_by_role("link", name=t(vi, "links.pdf")).click()
    pdf = await resp_info.value
    assert pdf.status == 200, pdf.status
    assert pdf.headers["content-type"].startswith("application/pdf")
    # (Chromium shows the PDF in its viewer; fetch the bytes with the same cookies.)
    body = await (await teacher_ctx.request.get(pdf.url)).body()
    assert body.startswith(b"%PDF-"), body[:64]
    await (await popup_info.value).close()
    tw.assert_clean("teacher: sign-in, class form, roster, links")

    # The live control room.
    await page.get_by_role("link", name=t(vi, "classes.open_control")).click()
    await expect(page).to_have_url(gw.url(f"/classes/{class_id}/control"))
    await expect(page.locator("#conn")).to_have_text(t(vi, "control.connected"))

    # A student on a phone opens their link and waits.
    an_ctx, aw = await new_context(browser, phone=True)
    an = await an_ctx.new_page()
    await an.goto(an_link)
    await expect(an.get_by_role("heading", level=1)).to_have_text(t(vi, "wait.heading"))
    await expect(an.locator("#status")).to_have_text(t(vi, "wait.waiting"))
    await expect(an.get_by_text("Nguyễn Văn An")).to_be_visible()
    assert await an.evaluate("innerWidth") == 360
    await shot(an, artifacts, "journey-04-student-waiting-vi-360")

    # The teacher sees the knock and admits with one click; the phone lands in the meeting.
    admit = page.get_by_role("button", name=f"{t(vi, 'action.admit')}: Nguyễn Văn An")
    await expect(admit).to_be_visible()
    await shot(page, artifacts, "journey-05-control-knock-vi-1280")
    await admit.click()
    await an.wait_for_url(meeting.url("toan-10a1") + "*")
    await expect(an.locator("#room")).to_have_text("Meeting room toan-10a1")
    assert meeting.arrivals == ["toan-10a1"]
    await expect(page.locator("#admitted")).to_contain_text("Nguyễn Văn An")
    aw.assert_clean("admitted student")

    # A second student is denied (after the undo delay) and reads the plain reason.
    binh_ctx, bw = await new_context(browser, phone=True)
    binh = await binh_ctx.new_page()
    await binh.goto(binh_link)
    await expect(binh.locator("#status")).to_have_text(t(vi, "wait.waiting"))
    deny = page.get_by_role("button", name=f"{t(vi, 'action.deny')}: Trần Thị Bình")
    await deny.click()
    await expect(page.locator("#undo")).to_contain_text("Trần Thị Bình")
    await expect(binh.get_by_role("heading", level=1)).to_have_text(
        t(vi, "wait.denied_heading"), timeout=15_000)
    await expect(binh.locator("#status")).to_have_text(t(vi, "reason.denied_by_host"))
    await shot(binh, artifacts, "journey-06-student-denied-vi-360")
    bw.assert_clean("denied student")

    # An's link opened on a third device: refused, and the teacher is told whose it was.
    third_ctx, xw = await new_context(browser, phone=True)
    xw.allow(r"status of 403")  # the refusal page answers 403 on purpose
    third = await third_ctx.new_page()
    resp = await third.goto(an_link)
    assert resp is not None and resp.status == 403
    await expect(third.locator("#reason")).to_have_text(t(vi, "reason.device_mismatch"))
    await shot(third, artifacts, "journey-07-shared-link-vi-360")
    alert = page.locator("#alerts li.alert-link_shared")
    await expect(alert).to_have_count(1)
    await expect(alert).to_contain_text("Nguyễn Văn An")
    await shot(page, artifacts, "journey-08-control-alert-vi-1280")
    xw.assert_clean("shared link")
    # Locking: only the action that applies is offered, and the state says so.
    lock = page.get_by_role("button", name=t(vi, "action.lock"), exact=True)
    unlock = page.get_by_role("button", name=t(vi, "action.unlock"), exact=True)
    await expect(unlock).to_be_hidden()
    await lock.click()
    await expect(page.locator("#lockstate")).to_have_text(t(vi, "control.locked"))
    await expect(lock).to_be_hidden()
    await unlock.click()
    await expect(page.locator("#lockstate")).to_have_text(t(vi, "control.unlocked"))
    await expect(lock).to_be_visible()
    tw.assert_clean("control room")
    for ctx in (teacher_ctx, an_ctx, binh_ctx, third_ctx):
        await ctx.close()
