"""Incident emails end to end, in Chromium on a phone (360 px) and a desktop, in
Vietnamese and English, against a real SMTP server on loopback (aiosmtpd): a student
reports a stranger, the teacher opens an incident from the report in the control room,
the school's administrator is mailed at once (Vietnamese first, the incident's link, no
student's name); nobody acknowledges it, so the district office is mailed after the
timeout; the school's administrator follows the link in the mail, signs in and
acknowledges the incident, and the province department is never mailed."""

from __future__ import annotations

import asyncio
import re
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from gateway.i18n import t
from gateway.notify import Notifier
from gateway.routes.reports import report_store
from tests.gateway.helpers import ROSTER, TEACHER_PASSWORD, make_class
from tests.gateway.test_incident_notify import Mailbox, smtp_server, smtp_settings

from .conftest import check_page, new_context, serve_gateway, sign_in

pytestmark = pytest.mark.timeout(180)

# Short enough for a test, long enough for a person's browser to acknowledge in time.
ACK_TIMEOUT_S = 4
WORDS = "Một người lạ tên Tuấn bật micro và nói bậy"
SCHOOL_MAIL, DISTRICT_MAIL, PROVINCE_MAIL = (
    "ht@school-a.example.vn", "phong@phong.example.vn", "so@so-gd.example.vn")
# What the school typed or the gateway stored in its own language: on an English page too.
STORED = ("Toán 10A1", t("vi", "report.category.stranger"), WORDS)


def body_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def link_in(body: str) -> str:
    """The one incident link a mail carries."""
    links = {str(m) for m in re.findall(r"https?://\S+/incidents/[\w-]+", body)}
    assert len(links) == 1, body
    return links.pop()


@pytest.mark.parametrize(("lang", "phone"), [("vi", True), ("en", True), ("vi", False),
                                             ("en", False)])
async def test_the_school_is_mailed_the_district_after_the_timeout_and_an_acknowledgment_stops_it(
        browser: Browser, tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any,
        artifacts: Path, lang: str, phone: bool) -> None:
    locale = "vi-VN" if lang == "vi" else "en-GB"
    device = "phone" if phone else "desktop"
    box = Mailbox()
    with smtp_server(box) as port:
        async with serve_gateway(tmp_path, redis_url, redis_prefix, **smtp_settings(
                port, incident_ack_timeout_s=ACK_TIMEOUT_S)) as gw:
            # A province department above a district office above a school.
            province = gw.api(await gw.staff_user("so.admin", "admin", org="so-gd"))
            await gw.staff_user("phong.admin", "admin", org="phong-gd", parent="so-gd")
            await gw.staff_user("hieu.truong", "admin", org="school-a", parent="phong-gd")
            teacher_api = gw.api(await gw.staff_user("co.lan", "teacher", org="school-a"))
            for name, address in (("so.admin", PROVINCE_MAIL), ("phong.admin", DISTRICT_MAIL),
                                  ("hieu.truong", SCHOOL_MAIL)):
                r = await province.put(f"/api/v1/admin/users/{name}/email",
                                       json={"email": address})
                assert r.status == 200, await r.text()
            cid, links = await make_class(gw, teacher_api, "strict")  # the host admits

            # The teacher's control room is open.
            tctx, twatch = await new_context(browser, locale=locale)
            teacher = await tctx.new_page()
            await sign_in(teacher, gw, "co.lan", lang=lang)
            await teacher.goto(gw.url(f"/classes/{cid}/control?lang={lang}"))
            await expect(teacher.locator("#conn")).to_have_text(t(lang, "control.connected"))

            # The student, waiting to be admitted, reports a stranger.
            sctx, _swatch = await new_context(browser, phone=phone, locale=locale)
            student = await sctx.new_page()
            await student.goto(str(links[0]["url"]) + f"?lang={lang}")
            await expect(student.locator("#wait")).to_be_visible()
            async with sctx.expect_page() as opened:
                await student.get_by_role("link", name=t(lang, "report.entry")).click()
            form = await opened.value
            await form.wait_for_load_state()
            await form.get_by_label(t(lang, "report_form.category.stranger")).check()
            await form.get_by_label(t(lang, "report.text")).fill(WORDS)
            async with form.expect_navigation():
                await form.get_by_role("button", name=t(lang, "report.submit")).click()
            await expect(form.get_by_role("heading", name=t(lang, "report.done_heading"))
                         ).to_be_visible()
            assert box.messages == []  # a report alone mails nobody

            # The teacher opens an incident from it: the school's administrator is mailed.
            item = teacher.locator("#reports-box li.report")
            await expect(item.locator(".reporttext")).to_have_text(WORDS)
            await item.get_by_role("button", name=t(lang, "report.to_incident")).click()
            await expect(teacher.locator("#notice")).to_contain_text(t(lang, "report.opened"))
            opened_at = time.monotonic()
            twatch.assert_clean("control room")
            (rep,) = await report_store(gw.svc).of_classes([cid])
            assert rep.status == "incident" and rep.incident
            incident_url = gw.url(f"/incidents/{rep.incident}")

            (rcpts, msg), = await box.wait(1)
            assert rcpts == [SCHOOL_MAIL] and msg["To"] == SCHOOL_MAIL
            assert msg["Subject"] == ("[ClassGuard] Sự cố ở lớp Toán 10A1 / "
                                      "[ClassGuard] Incident in class Toán 10A1")
            body = body_of(msg)
            vi = body.index("Một sự cố vừa được mở ở lớp Toán 10A1")
            en = body.index("An incident was opened in class Toán 10A1")
            assert vi < en  # Vietnamese first, whatever language the teacher uses
            assert link_in(body) == incident_url
            personal = [s["name"] for s in ROSTER] + [str(x["student_id"]) for x in links]
            for secret in (*personal, WORDS, "Tuấn", "co.lan"):
                assert secret not in body and secret not in str(msg["Subject"]), secret

            # The school's administrator follows the link, signs in, lands on the incident.
            actx, awatch = await new_context(browser, phone=phone, locale=locale)
            admin = await actx.new_page()
            await admin.goto(link_in(body) + f"?lang={lang}")
            await expect(admin).to_have_url(re.compile(r"/login\?"))
            await admin.get_by_label(t(lang, "login.username")).fill("hieu.truong")
            await admin.get_by_label(t(lang, "login.password")).fill(
                TEACHER_PASSWORD)
            async with admin.expect_navigation():
                await admin.get_by_role("button", name=t(lang, "login.submit"),
                                        exact=True).click()
            assert admin.url.split("?")[0] == incident_url
            await expect(admin.locator("#ack-state")).to_have_text(
                t(lang, "incident.not_acknowledged"))
            acknowledge = admin.get_by_role("button", name=t(lang, "incident.acknowledge"))
            await expect(acknowledge).to_be_visible()
            await check_page(admin, awatch, lang=lang, where="incident from the mail",
                             shots=artifacts, name=f"incident-mail-{device}",
                             data=STORED)

            # Left unacknowledged, the incident reaches the district office.
            got = await box.wait(2, within_s=ACK_TIMEOUT_S + 15)
            reached_district = time.monotonic()
            assert reached_district - opened_at >= ACK_TIMEOUT_S - 0.5
            rcpts, msg = got[1]
            assert rcpts == [DISTRICT_MAIL]
            body = body_of(msg)
            vi = body.index("chưa được quản trị viên nào của trường xác nhận")
            en = body.index("No administrator of the school acknowledged")
            assert vi < en
            assert "quản trị viên của phòng giáo dục" in body
            assert link_in(body) == incident_url
            for secret in (*personal, WORDS, "Tuấn", "co.lan"):
                assert secret not in body, secret

            # The school's administrator acknowledges it, and no one further is mailed.
            await admin.reload()
            async with admin.expect_navigation():
                await acknowledge.click()
            acked = time.monotonic()
            await expect(admin.locator("#ack-state")).to_contain_text("hieu.truong")
            assert acked - reached_district < ACK_TIMEOUT_S, "acknowledged too late to judge"
            await expect(admin.locator("#notifications li")).to_have_count(2)
            await check_page(admin, awatch, lang=lang, where="incident acknowledged",
                             shots=artifacts, name=f"incident-mail-acked-{device}",
                             data=STORED)
            # past the moment the province department would have been mailed
            await asyncio.sleep(max(0.0, reached_district + ACK_TIMEOUT_S + 2 - time.monotonic()))
            assert [r for r, _ in box.messages] == [[SCHOOL_MAIL], [DISTRICT_MAIL]]
            assert PROVINCE_MAIL not in str([r for r, _ in box.messages])
            assert isinstance(gw.svc.notifier, Notifier)
            assert await gw.svc.notifier.queue.pending() == 0  # no check left to fire
            r = await province.get(f"/api/v1/incidents/{rep.incident}/notifications")
            found = (await r.json())["notifications"]
            assert [(n["level"], n["reason"], n["result"]) for n in found] == [
                (0, "opened", "sent"), (1, "unacknowledged", "sent")]
            awatch.assert_clean("incident page")
            await actx.close()
            await sctx.close()
            await tctx.close()
