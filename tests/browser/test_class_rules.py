"""A student acknowledges the class rules before being admitted, in a real browser, on a
phone (360 px) and a desktop, in Vietnamese and English: the first join of the term shows
the rules and the "I have read and agree" button instead of the waiting room; the
teacher cannot see (or admit) the student until then; after agreeing, the student waits,
is admitted, and is not asked again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from gateway.i18n import t
from tests.gateway.helpers import ROSTER, Gateway, class_body

from .conftest import MeetingServer, check_page, new_context

VIEWS = [("vi", 360), ("vi", 1280), ("en", 360), ("en", 1280)]
NAMES = ("Toán 10A1", "Nguyễn Văn An", "Trần Thị Bình", "Lê Hoàng Cường")


async def _class(gw: Gateway, room: str) -> tuple[Any, str, dict[str, dict[str, Any]]]:
    api = gw.api(await gw.staff_user("co.lan", "teacher", org="thpt-a"))
    body = class_body("strict", require_rules_ack=True)
    body["platform"]["url"] = room
    r = await api.post("/api/v1/classes", json=body)
    assert r.status == 201, await r.text()
    cid = (await r.json())["id"]
    r = await api.put(f"/api/v1/classes/{cid}/roster", json=ROSTER)
    assert r.status == 200, await r.text()
    r = await api.post(f"/api/v1/classes/{cid}/links", json={})
    assert r.status == 200, await r.text()
    return api, cid, {x["name"]: x for x in (await r.json())["links"]}


@pytest.mark.parametrize(("lang", "width"), VIEWS)
async def test_student_acknowledges_the_rules_before_being_admitted(
        browser: Browser, gateway: Gateway, meeting: MeetingServer, tmp_path: Path, lang: str,
        width: int) -> None:
    api, cid, links = await _class(gateway, meeting.url("toan-10a1"))
    an = links["Nguyễn Văn An"]
    ctx, watch = await new_context(browser, phone=width == 360, width=width,
                                   locale="vi-VN" if lang == "vi" else "en-GB")
    watch.allow(r"status of 403")  # the rules page answers 403: not admitted yet
    page = await ctx.new_page()
    await page.goto(an["url"])
    await expect(page.get_by_role("heading", level=1)).to_have_text(t(lang, "join.rules_heading"))
    rules = page.locator("#rules-text")
    for line in t(lang, "join.rules_default_text").splitlines():
        await expect(rules).to_contain_text(line)
    agree = page.get_by_role("button", name=t(lang, "join.rules_agree"))
    await expect(agree).to_be_visible()
    await check_page(page, watch, lang=lang, where=f"rules ({lang}, {width}px)",
                     shots=tmp_path, name="student-rules", data=NAMES)
    # not in the waiting room yet: the teacher has nobody to admit
    state = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
    assert state["waiting"] == []
    await agree.click()
    await expect(page.locator("#status")).to_have_text(t(lang, "wait.waiting"))
    await check_page(page, watch, lang=lang, where=f"waiting after rules ({lang}, {width}px)",
                     shots=tmp_path, name="student-waiting-after-rules", data=NAMES)
    state = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
    assert [w["student_id"] for w in state["waiting"]] == [an["student_id"]]
    r = await api.post(f"/api/v1/classes/{cid}/actions",
                       json={"action": "admit", "student_id": an["student_id"]})
    assert r.status == 200, await r.text()
    # admitted: the phone lands in the meeting
    await page.wait_for_url(meeting.url("toan-10a1") + "*")
    assert meeting.arrivals == ["toan-10a1"]
    # asked once: opening the link again on the same phone goes on without the rules
    again = await ctx.new_page()
    await again.goto(an["url"])
    await again.wait_for_url(meeting.url("toan-10a1") + "*")
    await ctx.close()
