"""The student's own pages in a real browser, on a phone (360 px) and a desktop, in
Vietnamese and English: an early arrival sees when the class opens and a countdown; a
student who is denied or banned from the waiting room reads what happened and what
to do, and is no longer told to keep the page open; the demo's meeting room speaks
the student's language, fits a phone and says plainly when it cannot let them in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from gateway.i18n import t
from tests.conftest import require_program
from tests.gateway.helpers import ROSTER, Gateway, class_body

from .conftest import _free_port, check_page, new_context

VIEWS = [("vi", 360), ("vi", 1280), ("en", 360), ("en", 1280)]
NAMES = ("Toán 10A1", "Nguyễn Văn An", "Trần Thị Bình", "Lê Hoàng Cường")


async def _class(gw: Gateway, **schedule: Any) -> tuple[Any, str, dict[str, dict[str, Any]]]:
    api = gw.api(await gw.staff_user("co.lan", "teacher", org="thpt-a"))
    body = class_body("strict")
    body["schedule"].update(schedule)
    r = await api.post("/api/v1/classes", json=body)
    assert r.status == 201, await r.text()
    cid = (await r.json())["id"]
    r = await api.put(f"/api/v1/classes/{cid}/roster", json=ROSTER)
    assert r.status == 200, await r.text()
    r = await api.post(f"/api/v1/classes/{cid}/links", json={})
    assert r.status == 200, await r.text()
    return api, cid, {x["name"]: x for x in (await r.json())["links"]}


async def _student(browser: Browser, lang: str, width: int) -> Any:
    return await new_context(browser, phone=width == 360, width=width,
                             locale="vi-VN" if lang == "vi" else "en-GB")


@pytest.mark.parametrize(("lang", "width"), VIEWS)
async def test_early_arrival_sees_the_opening_time_and_a_countdown(
        browser: Browser, gateway: Gateway, tmp_path: Path, lang: str, width: int) -> None:
    now = datetime.now(UTC)
    _, _, links = await _class(gateway, starts_at=(now + timedelta(minutes=40)).isoformat(),
                               ends_at=(now + timedelta(minutes=85)).isoformat())
    ctx, watch = await _student(browser, lang, width)
    watch.allow(r"status of 403")  # the refusal page answers 403 on purpose
    page = await ctx.new_page()
    await page.goto(links["Nguyễn Văn An"]["url"])
    await expect(page.get_by_role("heading", level=1)).to_have_text(t(lang, "wait.notyet_heading"))
    await expect(page.locator("#reason")).to_have_text(t(lang, "reason.not_open_yet"))
    await expect(page.locator("#countdown")).to_contain_text(
        t(lang, "wait.opens_in", time="").strip())
    body = await page.locator("main").inner_text()
    assert t(lang, "reason.outside_schedule") not in body
    assert t(lang, "advice.outside_schedule") not in body
    await check_page(page, watch, lang=lang, where=f"early arrival ({lang}, {width}px)",
                     shots=tmp_path, name="student-not-open-yet", data=NAMES)
    await ctx.close()


@pytest.mark.parametrize(("lang", "width"), VIEWS)
@pytest.mark.parametrize("action", ["deny", "ban"])
async def test_denied_or_banned_student_is_told_what_to_do(
        browser: Browser, gateway: Gateway, tmp_path: Path, lang: str, width: int,
        action: str) -> None:
    api, cid, links = await _class(gateway)
    ctx, watch = await _student(browser, lang, width)
    page = await ctx.new_page()
    await page.goto(links["Trần Thị Bình"]["url"])
    await expect(page.locator("#status")).to_have_text(t(lang, "wait.waiting"))
    await expect(page.locator("#keep-open")).to_be_visible()
    r = await api.post(f"/api/v1/classes/{cid}/actions",
                       json={"action": action, "student_id": links["Trần Thị Bình"]["student_id"],
                             **({"scope": "device"} if action == "ban" else {})})
    assert r.status == 200, await r.text()
    reason = "denied_by_host" if action == "deny" else "banned_device"
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        t(lang, "wait.denied_heading"))
    await expect(page.locator("#status")).to_have_text(t(lang, f"reason.{reason}"))
    await expect(page.locator("#advice")).to_have_text(t(lang, f"advice.{reason}"))
    await expect(page.locator("#keep-open")).to_be_hidden()
    assert t(lang, "wait.keep_open") not in await page.locator("main").inner_text()
    await check_page(page, watch, lang=lang, where=f"{action} ({lang}, {width}px)",
                     shots=tmp_path, name=f"student-{action}", data=NAMES)
    await ctx.close()


@pytest.fixture
async def demo_gateway(tmp_path: Path, redis_url: str, redis_prefix: str,
                       redis: Any) -> AsyncIterator[str]:
    """The demo with its own Janus (skipped without the janus program)."""
    require_program("janus")
    from aiohttp.test_utils import TestServer

    from gateway.app import create_app
    from gateway.config import load_settings
    from gateway.demo import add_demo

    port = _free_port()  # the page reaches Janus through the gateway's public address
    settings = load_settings({"data_dir": str(tmp_path / "data"), "redis_url": redis_url,
                              "redis_prefix": redis_prefix,
                              "public_url": f"http://127.0.0.1:{port}",
                              "cookie_secure": False}, {}, None)
    app = create_app(settings)
    add_demo(app)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield str(server.make_url(""))
    finally:
        await server.close()


@pytest.mark.parametrize(("lang", "width"), [("vi", 360), ("en", 1280)])
async def test_demo_meeting_room_speaks_plainly_and_fits_a_phone(
        browser: Browser, demo_gateway: str, tmp_path: Path, lang: str, width: int) -> None:
    ctx, watch = await _student(browser, lang, width)
    page = await ctx.new_page()
    # No such room and no valid token: Janus refuses, and the page says so plainly.
    await page.goto(demo_gateway.rstrip("/") + "/demo/janus?room=1&id=2&token=t&name=An")
    await expect(page.get_by_role("heading", level=1)).to_have_text(t(lang, "room.heading"))
    await expect(page.locator("#status")).to_have_text(t(lang, "room.refused"), timeout=10_000)
    await expect(page.locator("#advice")).to_have_text(t(lang, "room.refused_advice"))
    await check_page(page, watch, lang=lang, where=f"demo meeting room ({lang}, {width}px)",
                     shots=tmp_path, name="demo-room", data=("An",))
    await ctx.close()
