"""Every page in a real browser, in Vietnamese and English, on a 360 px phone and a
1280 px screen: no console error or CSP violation, no sideways scrolling, every control
named, nothing untranslated. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from gateway.i18n import t
from tests.gateway.helpers import Gateway, make_class, open_link

from .conftest import check_page, new_context, sign_in

LANGS = ("vi", "en")
STUDENTS = [
    {"name": "Nguyễn Văn An", "external_id": "HS001"},
    {"name": "Trần Thị Bình", "external_id": "HS002"},
    {"name": "Lê Hoàng Cường", "external_id": "HS003"},
    {"name": "Phạm Thu Dung", "external_id": "HS004"},
    {"name": "Võ Minh Đức", "external_id": "HS005"},
]
# What the school typed: it stays as typed on the English pages.
DATA = ("Toán 10A1", "Người lạ vào bằng link của Nguyễn Văn An", "Một người lạ vào lớp.",
        "Sở Giáo dục và Đào tạo", "Trường THPT A", *(s["name"] for s in STUDENTS))


async def school(gw: Gateway) -> dict[str, Any]:
    staff = gw.svc.staff
    assert staff is not None
    await staff.init_root("so-gd", name="Sở Giáo dục và Đào tạo")
    await staff.ensure_org("thpt-a", name="Trường THPT A", parent="so-gd")
    teacher = await gw.staff_user("co.lan", "teacher", org="thpt-a", parent="so-gd")
    it = await gw.staff_user("anh.it", "it", org="so-gd")
    await gw.staff_user("chi.admin", "admin", org="so-gd")
    api = gw.api(teacher)
    cid, links = await make_class(gw, api, roster=STUDENTS)
    # Someone knocks (so the control room has a waiting student) and an address is banned.
    await open_link(gw.client(), links[-1])
    r = await gw.api(it).post("/api/v1/orgs/so-gd/bans",
                             json={"ip": "203.0.113.7", "reason": "spam"})
    assert r.status == 201, await r.text()
    now = datetime.now(UTC)
    r = await api.post("/api/v1/incidents", json={
        "class_id": cid, "title": "Người lạ vào bằng link của Nguyễn Văn An",
        "description": "Một người lạ vào lớp.", "student_ids": [links[0]["student_id"]],
        "since": (now - timedelta(minutes=30)).isoformat(), "until": now.isoformat()})
    assert r.status == 201, await r.text()
    incident = (await r.json())["id"]
    # A wrong password at the teacher's account: her pages then show the banner.
    r = await gw.client().post("/api/v1/session", json={"username": "co.lan",
                                                        "password": "not her password"})
    assert r.status == 401, await r.text()
    return {"cid": cid, "links": links, "incident": incident}


def staff_pages(cid: str, incident: str) -> dict[str, list[tuple[str, str]]]:
    """(screenshot name, path) of the pages each role works with."""
    report = [("incident-new", f"/incidents/new?class_id={cid}")]
    incidents = [("incidents", "/incidents"), ("incident", f"/incidents/{incident}")]
    return {
        "co.lan": [("classes", "/classes"), ("class-new", "/classes/new"),
                   ("class", f"/classes/{cid}"), ("roster", f"/classes/{cid}/roster"),
                   ("links", f"/classes/{cid}/links"), ("control", f"/classes/{cid}/control"),
                   ("account-password", "/account/password"), *report],
        "anh.it": [("audit", "/audit"), ("bans", "/bans")],
        "chi.admin": [("admin-staff", "/admin/staff"), ("admin-keys", "/admin/keys"),
                      ("admin-signin", "/admin/sign-in?org=thpt-a"),
                      ("admin-staff-sessions", "/admin/staff/co.lan/sessions"),
                      ("admin-rules", "/admin/rules"),
                      *incidents],
    }


@pytest.mark.parametrize("width", [360, 1280])
async def test_staff_pages(browser: Browser, gateway: Gateway, artifacts: Path,
                           width: int) -> None:
    s = await school(gateway)
    for user, pages in staff_pages(s["cid"], s["incident"]).items():
        ctx, watch = await new_context(browser, width=width)
        page = await ctx.new_page()
        await sign_in(page, gateway, user)
        for lang in LANGS:
            for name, path in pages:
                resp = await page.goto(gateway.url(path) + ("&" if "?" in path else "?")
                                       + f"lang={lang}")
                assert resp is not None and resp.status == 200, (user, path)
                if name == "control":
                    await expect(page.locator("#conn")).to_have_text(t(lang, "control.connected"))
                    await expect(page.locator("#waiting li.person")).to_have_count(1)
                await check_page(page, watch, lang=lang, where=f"{user} {path} ({lang}, {width}px)",
                                 shots=artifacts, name=name, data=DATA)
        await ctx.close()


@pytest.mark.parametrize("width", [360, 1280])
async def test_student_and_public_pages(browser: Browser, gateway: Gateway, artifacts: Path,
                                        width: int) -> None:
    s = await school(gateway)
    phone = width == 360
    for i, lang in enumerate(LANGS):
        ctx, watch = await new_context(browser, phone=phone, width=width)
        page = await ctx.new_page()
        for name, path in (("login", "/login"), ("join", "/join")):
            await page.goto(gateway.url(f"{path}?lang={lang}"))
            await check_page(page, watch, lang=lang, where=f"{path} ({lang}, {width}px)",
                             shots=artifacts, name=name)
        # A wrong short code: the page says so next to the field.
        await page.get_by_label(t(lang, "join.code_label")).fill("AAAAA-AAAAA")
        watch.allow(r"status of 404")
        async with page.expect_navigation():
            await page.get_by_role("button", name=t(lang, "join.submit")).click()
        await expect(page.get_by_role("alert")).to_have_text(t(lang, "join.bad_code"))
        await check_page(page, watch, lang=lang, where=f"bad code ({lang}, {width}px)",
                         shots=artifacts, name="join-bad-code")
        watch.reset()
        # The waiting room of one's own link.
        link = s["links"][i]
        await page.goto(link["url"] + f"?lang={lang}")
        await expect(page.locator("#status")).to_have_text(t(lang, "wait.waiting"))
        if phone:
            assert await page.evaluate("innerWidth") == 360
        await check_page(page, watch, lang=lang, where=f"wait page ({lang}, {width}px)",
                         shots=artifacts, name="wait", data=DATA)
        # The same link on another device: refused, in plain words.
        other, owatch = await new_context(browser, phone=phone, width=width)
        owatch.allow(r"status of 403")
        opage = await other.new_page()
        resp = await opage.goto(link["url"] + f"?lang={lang}")
        assert resp is not None and resp.status == 403
        await expect(opage.locator("#reason")).to_have_text(t(lang, "reason.device_mismatch"))
        await check_page(opage, owatch, lang=lang, where=f"refusal page ({lang}, {width}px)",
                         shots=artifacts, name="denied-shared-link", data=DATA)
        # ... which offers the report page through the link, on this device
        async with other.expect_page() as opened:
            await opage.get_by_role("link", name=t(lang, "report.entry")).click()
        form = await opened.value
        await form.wait_for_load_state()
        await expect(form.get_by_role("heading", name=t(lang, "report.heading"))).to_be_visible()
        await check_page(form, owatch, lang=lang, where=f"link report form ({lang}, {width}px)",
                         shots=artifacts, name="report-form-link", data=DATA)
        await other.close()
        await ctx.close()
