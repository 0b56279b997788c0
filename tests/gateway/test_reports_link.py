"""Reporting through the student's own link (``/j/{token}/report``), from any device,
and the report entries of the refusal page and of the pages a student sees once in
(``GET /report``, the demo's meeting page and Janus room)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.config import load_settings
from gateway.demo import JANUS_ROOM_MSGS, add_demo
from gateway.i18n import t
from gateway.stores import device_hash
from gateway.tokens import issue_join_token, peek_claims

from .helpers import Gateway, audit_events, host_control, make_class, open_link, token_of
from .test_incident_notify import World, world

pytestmark = pytest.mark.timeout(120)

REPORT = {"category": "link_misuse", "role": "student"}
JSON = {"Accept": "application/json"}


async def _form_token(client: aiohttp.ClientSession, token: str, lang: str = "vi") -> str:
    r = await client.get(f"/j/{token}/report?lang={lang}")
    assert r.status == 200, await r.text()
    page = await r.text()
    assert f'action="/j/{token}/report?lang={lang}"' in page
    found = re.search(r'name="token" value="([0-9a-f]{64})"', page)
    assert found, page
    return found.group(1)


async def _state(w: World, sid: str) -> tuple[Any, ...]:
    """What a join would change: the binding, the student's ticket, the room."""
    store = w.gw.svc.store
    return (await store.bound_device(w.cid, sid), await store.current_ticket_of(w.cid, sid),
            sorted(await store.waiting(w.cid)), sorted(await store.admitted(w.cid)))


def _cookie(client: aiohttp.ClientSession) -> str | None:
    for c in client.cookie_jar:
        if c.key == "cg_dev":
            return c.value
    return None


async def test_someone_using_my_link_is_reported_from_another_device(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    async with world(tmp_path, redis_url, redis_prefix) as w:
        link = w.links[0]
        token, sid = token_of(link), str(link["student_id"])
        # someone else opened the link first: it is bound to their device
        intruder = w.gw.client()
        status, body = await open_link(intruder, link)
        assert status == 200 and body["status"] == "waiting", body
        before = await _state(w, sid)
        assert before[0] == device_hash(str(_cookie(intruder)))
        # the student's own phone is refused, and the refusal page offers the report page
        student = w.gw.client()
        r = await student.get(f"/j/{token}")
        assert r.status == 403
        page = await r.text()
        assert 'data-reason="device_mismatch"' in page
        assert f'href="/j/{token}/report?lang=vi"' in page
        assert t("vi", "report.entry") in page
        cookie = _cookie(student)
        assert cookie is not None
        # the form, and a report through the link (HTML form, then the JSON API)
        form_token = await _form_token(student, token)
        r = await student.post(f"/j/{token}/report?lang=en",
                               data={**REPORT, "token": form_token, "text": "Không phải em"})
        assert r.status == 201, await r.text()
        assert t("en", "report.done") in await r.text()
        r = await student.post(f"/j/{token}/report", json={**REPORT, "token": form_token},
                               headers=JSON)
        assert r.status == 201, await r.text()
        rid = (await r.json())["id"]
        # a browser without any device cookie reports too, and is given none
        fresh = w.gw.client()
        r = await fresh.get(f"/j/{token}/report")
        assert r.status == 200 and "cg_dev" not in r.cookies
        assert _cookie(fresh) is None
        r = await fresh.post(f"/j/{token}/report", json={
            **REPORT, "role": "parent", "token": await _form_token(fresh, token)})
        assert r.status == 201, await r.text()
        # nothing was joined, bound, issued or consumed
        assert await _state(w, sid) == before
        status, body = await open_link(intruder, link)
        assert status == 200 and body["status"] == "waiting"
        # the class's staff see the reports; the audit says they came through the link
        r = await w.teacher.get("/api/v1/reports")
        reports = (await r.json())["reports"]
        assert len(reports) == 3 and rid in [x["id"] for x in reports]
        assert {x["student_id"] for x in reports} == {sid}
        events = await audit_events(w.school, at_least=3, type="report.created")
        created = [e for e in events if e["type"] == "report.created"]
        assert len(created) == 3
        assert {e["facts"]["via"] for e in created} == {"link"}
        assert {e["actor"] for e in created} == {f"student:{sid}"}
        devices = [(e.get("personal") or {}).get("device") for e in created]
        assert devices.count(device_hash(cookie)) == 2
        assert devices.count(None) == 1


async def test_a_link_that_is_no_credential_is_refused_and_charged(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    async with world(tmp_path, redis_url, redis_prefix) as w:
        svc = w.gw.svc
        token = token_of(w.links[0])
        _kid, jti, sub, cls = peek_claims(token) or ("", "", "", "")
        head, payload, sig = token.split(".")
        forged = f"{head}.{payload}.{sig[:-4]}AAAA"
        now = int(time.time())
        expired = issue_join_token(svc.keyring.signing_key(), issuer=svc.settings.public_url,
                                   student_id=sub, class_id=cls, jti=jti, iat=now - 7200,
                                   nbf=now - 7200, exp=now - 3600)
        revoked = token_of(w.links[1])
        await svc.store.revoke_student_links(w.cid, str(w.links[1]["student_id"]))
        kid = w.gw.client()
        for bad, reason in ((forged, "token_invalid"), (expired, "token_expired"),
                            (revoked, "token_revoked"), ("garbage", "token_invalid")):
            r = await kid.get(f"/j/{bad}/report")
            assert r.status == 403, (reason, await r.text())
            page = await r.text()
            assert f'data-reason="{reason}"' in page, reason
            assert 'name="token"' not in page and 'id="report-link"' not in page
            r = await kid.post(f"/j/{bad}/report", json={**REPORT, "token": "0" * 64})
            assert r.status == 403, reason
            assert (await r.json())["error"]["code"] == reason
        assert "cg_dev" not in {c.key for c in kid.cookie_jar}
        assert await w.gw.svc.store.bound_device(w.cid, sub) is None
        # refusals naming the class are recorded in its log as refused uses of the link,
        # through the report page (a forgery names no class the school could read)
        events = await audit_events(w.school, at_least=2, type="join")
        refused = [e for e in events if e["facts"].get("via") == "report"]
        assert {e["reason"] for e in refused} == {"token_expired", "token_revoked"}
        # each failure was charged to the address, as a failed join is: its failure
        # budget (burst 20) runs out, for the report page and the join alike
        answers = []
        for _ in range(60):
            r = await kid.get(f"/j/{forged}/report")
            answers.append(r.status)
            if r.status == 429:
                break
        assert answers[-1] == 429 and "Retry-After" in r.headers, answers
        r = await kid.get(f"/j/{forged}", headers=JSON)
        assert r.status == 429
        # a current link still proves itself from that address (never charged to it)
        r = await kid.get(f"/j/{token}/report")
        assert r.status == 200


async def test_the_form_is_guarded_and_reports_are_limited_per_link(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    async with world(tmp_path, redis_url, redis_prefix) as w:
        token, other = token_of(w.links[0]), token_of(w.links[1])
        kid = w.gw.client()
        form_token = await _form_token(kid, token)
        # the same link gets the same token on any device; another link's is refused
        assert await _form_token(w.gw.client(), token) == form_token
        other_token = await _form_token(kid, other)
        assert other_token != form_token
        for bad in ("0" * 64, other_token, ""):
            r = await kid.post(f"/j/{token}/report", json={**REPORT, "token": bad})
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "csrf_failed"
        r = await kid.post(f"/j/{token}/report", json={**REPORT, "token": form_token},
                           headers={"Origin": "https://evil.example"})
        assert r.status == 403 and (await r.json())["error"]["code"] == "bad_origin"
        r = await kid.post(f"/j/{token}/report", json={**REPORT, "category": "ufo",
                                                       "token": form_token})
        assert r.status == 400 and (await r.json())["error"]["field"] == "category"
        r = await kid.post(f"/j/{token}/report?lang=en", data={
            **REPORT, "role": "teacher", "token": form_token})
        assert r.status == 400 and t("en", "report.error.role") in await r.text()
        for _ in range(5):
            r = await kid.post(f"/j/{token}/report", json={**REPORT, "token": form_token})
            assert r.status == 201, await r.text()
        r = await w.gw.client().post(f"/j/{token}/report",
                                     json={**REPORT, "token": form_token})
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        # the link's budget is shared with its ticket's form; other links are not held
        r = await kid.post(f"/j/{other}/report", json={**REPORT, "token": other_token})
        assert r.status == 201


async def test_the_pages_after_admission_lead_to_the_ticket_form(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    async with world(tmp_path, redis_url, redis_prefix) as w:
        cid, links = await make_class(w.gw, w.teacher, "standard")
        host = await host_control(w.teacher, cid)  # the policy admits while the host is in
        kid = w.gw.client()
        # no class entered on this device yet
        r = await kid.get("/report?lang=en", allow_redirects=False)
        assert r.status == 404
        assert t("en", "reason.report_no_class") in await r.text()
        status, body = await open_link(kid, links[0])
        assert status == 200 and body["status"] == "admitted", body
        # admitted, not yet entered: the waiting page's ticket form is not known here
        r = await kid.get("/report", allow_redirects=False)
        assert r.status == 404
        r = await kid.get(body["redirect"], allow_redirects=False)
        assert r.status == 302
        ticket = await w.gw.svc.store.current_ticket_of(cid, str(links[0]["student_id"]))
        assert ticket is not None
        r = await kid.get("/report?lang=en", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == f"/report/{ticket}?lang=en"
        r = await kid.get("/report")
        assert r.status == 200 and f'action="/report/{ticket}?lang=en"' in await r.text()
        # another device learns nothing of it
        r = await w.gw.client().get("/report", allow_redirects=False)
        assert r.status == 404
        await host.close()


def test_the_janus_room_offers_the_report_page_in_a_new_tab(gw_templates: Any) -> None:
    page = gw_templates.get_template("janus_room.html").render(
        lang="vi", ws="ws://x/demo/janus/ws", room_msgs=JANUS_ROOM_MSGS, lang_switch="")
    link = re.search(r'<a id="report-link"[^>]*>', page)
    assert link, page
    assert 'href="/report?lang=vi"' in link.group(0)
    assert 'target="_blank"' in link.group(0) and 'rel="noopener"' in link.group(0)
    assert t("vi", "report.entry") in page


@pytest.fixture
def gw_templates(tmp_path: Path) -> Any:
    from gateway.services import FOUNDATION

    settings = load_settings({"data_dir": str(tmp_path / "data"),
                              "public_url": "http://classguard.test"}, {}, None)
    return create_app(settings)[FOUNDATION].templates


async def test_the_demo_meeting_page_offers_the_report_page(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    settings = load_settings({"data_dir": str(tmp_path / "data"), "redis_url": redis_url,
                              "redis_prefix": redis_prefix,
                              "public_url": "http://classguard.test",
                              "cookie_secure": False}, {}, None)
    app = create_app(settings)
    add_demo(app, setup=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    gw = Gateway(server)
    try:
        for lang in ("vi", "en"):
            r = await gw.client().get(f"/demo/meeting?lang={lang}")
            assert r.status == 200
            page = await r.text()
            assert f'href="/report?lang={lang}"' in page
            assert t(lang, "report.entry") in page
    finally:
        await gw.close()
        await server.close()
