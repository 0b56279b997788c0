"""Students and parents report a problem through the student's own ticket; teachers and
administrators see it live and on the incidents page, open an incident from it (the
school is emailed, at a real SMTP server) or dismiss it with a reason."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from markupsafe import escape
from prometheus_client import generate_latest

from gateway.i18n import t

from .helpers import Gateway, audit_events, host_control, next_message, open_link
from .test_incident_notify import Mailbox, smtp_server, smtp_settings, world

pytestmark = pytest.mark.timeout(120)

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> Người lạ tên "Tuấn"'


async def _ticket(gw: Gateway, link: dict[str, Any]) -> tuple[aiohttp.ClientSession, str]:
    """A student's browser waiting in the class; its ticket."""
    student = gw.client()
    status, body = await open_link(student, link)
    assert status == 200 and body["status"] == "waiting", body
    return student, str(body["ticket"])


async def _token(student: aiohttp.ClientSession, ticket: str, lang: str = "vi") -> str:
    r = await student.get(f"/report/{ticket}?lang={lang}")
    assert r.status == 200, await r.text()
    page = await r.text()
    found = re.search(r'name="token" value="([0-9a-f]{64})"', page)
    assert found, page
    return found.group(1)


async def _report(student: aiohttp.ClientSession, ticket: str, token: str,
                  **body: Any) -> aiohttp.ClientResponse:
    return await student.post(f"/report/{ticket}", json={
        "category": "stranger", "role": "student", "token": token, **body})


async def test_a_report_reaches_the_control_room_and_becomes_an_incident(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    box = Mailbox()
    with smtp_server(box) as port:
        async with world(tmp_path, redis_url, redis_prefix, **smtp_settings(port)) as w:
            student, ticket = await _ticket(w.gw, w.links[0])
            # the waiting page offers the report page, by the ticket only
            r = await student.get(f"/j/{w.links[0]['url'].rsplit('/j/', 1)[1]}")
            page = await r.text()
            assert f'href="/report/{ticket}?lang=vi"' in page
            assert t("vi", "report.entry") in page
            ws = await host_control(w.teacher, w.cid)
            assert (await next_message(ws, type_="reports"))["reports"] == []
            token = await _token(student, ticket)
            r = await _report(student, ticket, token, role="parent", text=HOSTILE)
            assert r.status == 201, await r.text()
            rid = (await r.json())["id"]
            live = (await next_message(ws, type_="report"))["report"]
            assert live["id"] == rid and live["category"] == "stranger"
            assert live["role"] == "parent" and live["text"] == HOSTILE
            assert live["until"] - live["since"] == 600
            assert "ticket" not in live and "device" not in live
            # the incidents page lists it, escaped
            r = await w.teacher.get("/incidents?lang=en")
            page = await r.text()
            assert r.status == 200
            assert "<script>alert" not in page and "<img src=x" not in page
            assert str(escape(HOSTILE)) in page
            assert t("en", "report.category.stranger") in page
            # the audit record names the category and window, never the words
            events = await audit_events(w.school, at_least=1, type="report.created")
            created = [e for e in events if e["type"] == "report.created"]
            assert len(created) == 1
            assert created[0]["reason"] == "stranger"
            assert created[0]["facts"]["report"] == rid
            assert created[0]["facts"]["reporter"] == "parent"
            assert "Tuấn" not in json.dumps(created[0], ensure_ascii=False)
            # the teacher opens an incident from it: pre-filled, and the school is emailed
            r = await w.teacher.post(f"/api/v1/reports/{rid}/incident")
            assert r.status == 201, await r.text()
            out = await r.json()
            inc = out["incident"]
            assert out["report"]["status"] == "incident"
            assert out["report"]["incident"] == inc["id"]
            assert inc["class_id"] == w.cid
            assert inc["title"] == t("vi", "report.category.stranger")
            assert inc["description"] == HOSTILE
            decided = await next_message(ws, type_="report_decided")
            assert decided["report"]["id"] == rid
            (rcpts, msg), = await box.wait(1)
            assert rcpts == ["ht@school-a.example.vn"]
            assert "Tuấn" not in msg.as_string()
            # decided once only
            r = await w.school.post(f"/api/v1/reports/{rid}/incident")
            assert r.status == 409
            r = await w.school.post(f"/api/v1/reports/{rid}/dismiss", json={"reason": "x"})
            assert r.status == 409
            events = await audit_events(w.school, at_least=1, type="report.converted")
            assert [e["facts"]["incident"] for e in events
                    if e["type"] == "report.converted"] == [inc["id"]]
            await ws.close()


async def test_bad_input_gets_clear_errors(tmp_path: Path, redis_url: str,
                                           redis_prefix: str, redis: Any) -> None:
    async with world(tmp_path, redis_url, redis_prefix) as w:
        student, ticket = await _ticket(w.gw, w.links[0])
        token = await _token(student, ticket)
        for body, field in (({"category": "ufo"}, "category"), ({"role": "teacher"}, "role"),
                            ({"text": "a" * 1001}, "text"), ({"text": 5}, "text")):
            r = await _report(student, ticket, token, **body)
            assert r.status == 400, body
            err = (await r.json())["error"]
            assert err["field"] == field
        r = await _report(student, ticket, token, text="a" * 1000)
        assert r.status == 201
        # the form's token is required, and is this device's for this ticket
        r = await _report(student, ticket, "0" * 64)
        assert r.status == 403 and (await r.json())["error"]["code"] == "csrf_failed"
        r = await student.post(f"/report/{ticket}", json={"category": "stranger",
                                                          "role": "student"})
        assert r.status == 400
        # another site's form is refused
        r = await student.post(f"/report/{ticket}", json={
            "category": "stranger", "role": "student", "token": token},
            headers={"Origin": "https://evil.example"})
        assert r.status == 403
        # a browser posting the HTML form sees the error on the form, in its language
        r = await student.post(f"/report/{ticket}?lang=en", data={
            "category": "ufo", "role": "student", "token": token, "text": HOSTILE})
        assert r.status == 400
        page = await r.text()
        assert t("en", "report.error.category") in page
        assert "<script>alert" not in page
        # another device holding the ticket id cannot open or use the form
        other = w.gw.client()
        r = await other.get(f"/report/{ticket}")
        assert r.status == 404
        r = await other.post(f"/report/{ticket}", json={
            "category": "stranger", "role": "student", "token": token})
        assert r.status == 404
        # a well-formed ticket of no class
        r = await student.get("/report/cabcdefghijkm.abcdefghijkmnpqrstuv")
        assert r.status == 404


async def test_reports_are_rate_limited_per_ticket(tmp_path: Path, redis_url: str,
                                                   redis_prefix: str, redis: Any) -> None:
    async with world(tmp_path, redis_url, redis_prefix) as w:
        student, ticket = await _ticket(w.gw, w.links[0])
        token = await _token(student, ticket)
        for _ in range(3):
            r = await _report(student, ticket, token)
            assert r.status == 201
        r = await _report(student, ticket, token)
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        # another student of the class is not held back
        other, ticket2 = await _ticket(w.gw, w.links[1])
        r = await _report(other, ticket2, await _token(other, ticket2))
        assert r.status == 201


async def test_dismiss_with_a_reason_and_who_may(tmp_path: Path, redis_url: str,
                                                 redis_prefix: str, redis: Any) -> None:
    async with world(tmp_path, redis_url, redis_prefix) as w:
        student, ticket = await _ticket(w.gw, w.links[0])
        r = await _report(student, ticket, await _token(student, ticket), category="other")
        rid = (await r.json())["id"]
        other_teacher = w.gw.api(await w.gw.staff_user("co.ha", org="school-a"))
        other_school = w.gw.api(await w.gw.staff_user("qt.b", "admin", org="school-b"))
        for api in (other_teacher, other_school):
            r = await api.post(f"/api/v1/reports/{rid}/dismiss", json={"reason": "x"})
            assert r.status == 404
            r = await api.post(f"/api/v1/reports/{rid}/incident")
            assert r.status == 404
            r = await api.get("/api/v1/reports")
            assert (await r.json())["reports"] == []
        r = await w.teacher.get("/api/v1/reports")
        assert [x["id"] for x in (await r.json())["reports"]] == [rid]
        # the district above the school sees it too
        r = await w.district.get("/api/v1/reports?status=open")
        assert [x["id"] for x in (await r.json())["reports"]] == [rid]
        r = await w.school.post(f"/api/v1/reports/{rid}/dismiss", json={"reason": "  "})
        assert r.status == 400
        r = await w.school.post(f"/api/v1/reports/{rid}/dismiss",
                                json={"reason": "Đã kiểm tra: bạn cùng lớp"})
        assert r.status == 200, await r.text()
        rep = (await r.json())["report"]
        assert rep["status"] == "dismissed" and rep["decided_by"] == "hieu.truong"
        r = await w.teacher.post(f"/api/v1/reports/{rid}/incident")
        assert r.status == 409
        events = await audit_events(w.school, at_least=1, type="report.dismissed")
        dismissed = [e for e in events if e["type"] == "report.dismissed"]
        assert len(dismissed) == 1 and dismissed[0]["facts"]["report"] == rid
        # the reason is kept apart from the public record, in the erasable personal part
        public = {k: v for k, v in dismissed[0].items() if k != "personal"}
        assert "bạn cùng lớp" not in json.dumps(public, ensure_ascii=False)
        assert dismissed[0]["personal"]["reason"] == "Đã kiểm tra: bạn cùng lớp"


async def test_the_first_email_is_timed_from_the_report(tmp_path: Path, redis_url: str,
                                                        redis_prefix: str, redis: Any) -> None:
    """The report waited two minutes before a teacher opened an incident from it: the
    time to the first email counts those two minutes."""
    skew = [0.0]

    def clock() -> float:
        return time.time() + skew[0]

    box = Mailbox()
    with smtp_server(box) as port:
        async with world(tmp_path, redis_url, redis_prefix, clock=clock,
                         **smtp_settings(port)) as w:
            student, ticket = await _ticket(w.gw, w.links[0])
            r = await _report(student, ticket, await _token(student, ticket))
            rid = (await r.json())["id"]
            skew[0] = 120.0
            r = await w.teacher.post(f"/api/v1/reports/{rid}/incident")
            assert r.status == 201, await r.text()
            await box.wait(1)
            for _ in range(100):
                text = generate_latest(w.gw.svc.metrics.registry).decode()
                if "classguard_incident_first_notification_seconds_count 1.0" in text:
                    break
                await asyncio.sleep(0.05)
            found = re.search(r"^classguard_incident_first_notification_seconds_sum (\S+)$",
                              text, re.M)
            assert found, text
            assert 120.0 <= float(found.group(1)) < 180.0
