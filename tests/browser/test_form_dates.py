"""Dates are typed and shown day first (dd/mm/yyyy, 24-hour times) whatever the
browser's own locale: the class form and the audit filter, in Vietnamese and English,
on a phone and a desktop."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, expect

from gateway.i18n import t
from tests.gateway.helpers import Gateway

from .conftest import check_page, new_context, sign_in

VIEWS = [("vi", 360), ("vi", 1280), ("en", 360), ("en", 1280)]


@pytest.mark.parametrize(("lang", "width"), VIEWS)
async def test_class_form_takes_day_first_dates(
        browser: Browser, gateway: Gateway, tmp_path: Path, lang: str, width: int) -> None:
    gw = gateway
    token = await gw.staff_user("co.lan", "teacher", org="thpt-a")
    # An American browser: a native date field would show mm/dd/yyyy here.
    ctx, watch = await new_context(browser, width=width, locale="en-US")
    page = await ctx.new_page()
    await sign_in(page, gw, "co.lan", lang=lang)
    await page.goto(gw.url(f"/classes/new?lang={lang}"))
    date = page.get_by_label(t(lang, "classform.date"), exact=True)
    assert re.fullmatch(r"\d{2}/\d{2}/\d{4}", await date.input_value())
    await expect(date).to_have_attribute("placeholder", t(lang, "classform.date_format"))
    await check_page(page, watch, lang=lang, where=f"class form ({lang}, {width}px)",
                     shots=tmp_path, name="class-form")
    await page.get_by_label(t(lang, "classform.class_title")).fill("Toán 10A1")
    day = datetime.now(ZoneInfo("Asia/Ho_Chi_Minh")).date() + timedelta(days=10)
    await date.fill(day.strftime("%d/%m/%Y"))
    await page.get_by_label(t(lang, "classform.start"), exact=True).fill("7:30")
    await page.get_by_label(t(lang, "classform.end"), exact=True).fill("08:15")
    await page.get_by_label(t(lang, "classform.platform_kind")).select_option("generic")
    await page.get_by_label(t(lang, "pfield.url")).fill("https://meet.example.org/toan")
    await page.get_by_role("button", name=t(lang, "classform.submit")).click()
    await expect(page).to_have_url(re.compile(r"/classes/[^/]+/roster$"))
    cid = page.url.rsplit("/", 2)[-2]
    r = await gw.api(token).get(f"/api/v1/classes/{cid}")
    sched = (await r.json())["schedule"]
    assert sched["starts_at"].startswith(f"{day.isoformat()}T07:30:00"), sched
    assert sched["ends_at"].startswith(f"{day.isoformat()}T08:15:00"), sched
    await ctx.close()


@pytest.mark.parametrize(("lang", "width"), [("vi", 360), ("en", 1280)])
async def test_audit_filter_takes_day_first_times(
        browser: Browser, gateway: Gateway, tmp_path: Path, lang: str, width: int) -> None:
    gw = gateway
    await gw.staff_user("anh.it", "it", org="thpt-a")
    ctx, watch = await new_context(browser, width=width, locale="en-US")
    page = await ctx.new_page()
    await sign_in(page, gw, "anh.it", lang=lang, next_path="/audit")
    await page.goto(gw.url(f"/audit?lang={lang}"))
    since = page.locator("#f-since")
    await expect(since).to_have_attribute("placeholder", t(lang, "audit.datetime_format"))
    await since.fill("01/01/2020 07:00")
    await page.get_by_role("button", name=t(lang, "audit.search")).click()
    await expect(page).to_have_url(re.compile(r"since=01%2F01%2F2020"))
    await expect(page.locator("p.error")).to_have_count(0)
    await expect(page.locator("ul.events li").first).to_be_visible()
    await check_page(page, watch, lang=lang, where=f"audit ({lang}, {width}px)",
                     shots=tmp_path, name="audit-filtered")
    await ctx.close()
