"""Class rules: inherited down the org tree, overridden per class, acknowledged once per
rules version, audited, in evidence bundles, and required before admission when the
class policy says so. Real gateway, real Redis."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from gateway.class_rules import DEFAULT_RULES, check_rules_body
from gateway.errors import ApiError
from gateway.evidence_gather import checkpoint_size, gather, wait_sequenced
from gateway.i18n import t
from gateway.routes.incidents import incident_store

from .helpers import Gateway, audit_events, make_class, open_link, running_gateway, token_of


async def _setup(gw: Gateway, **policy: Any) -> dict[str, Any]:
    """A department, a district under it and a school under that; a teacher, an
    administrator of the school and of the department; one class of the teacher."""
    await gw.staff_user("so.admin", "admin", org="so-gd")
    await gw.staff_user("phong.admin", "admin", org="phong-gd", parent="so-gd")
    school_admin = gw.api(await gw.staff_user("hieu.truong", "admin", org="school-a",
                                              parent="phong-gd"))
    teacher = gw.api(await gw.staff_user("co.lan", org="school-a"))
    so = gw.api(await gw.svc.staff.create_api_token("so.admin"))
    other_teacher = gw.api(await gw.staff_user("co.hoa", org="school-a"))
    cid, links = await make_class(gw, teacher, preset="standard", **policy)
    return {"teacher": teacher, "school_admin": school_admin, "so": so,
            "other_teacher": other_teacher, "cid": cid, "links": links}


async def _rules(api: aiohttp.ClientSession, path: str) -> dict[str, Any]:
    r = await api.get(path)
    assert r.status == 200, await r.text()
    return dict(await r.json())


def test_body_is_bounded_and_checked() -> None:
    assert check_rules_body({"text": " Luật \r\n lớp ", "term": " HK1 "}) == \
        {"text": "Luật \n lớp", "term": "HK1"}
    assert check_rules_body({"text": None, "term": ""}) is None
    assert check_rules_body({"text": None, "term": "HK2"}) == {"text": None, "term": "HK2"}
    for bad, field in (({"text": "x" * 4001}, "text"), ({"text": ""}, "text"),
                       ({"text": 5}, "text"), ({"text": "a\x00b"}, "text"),
                       ({"term": "x" * 65}, "term"), ({"term": "a\nb"}, "term"),
                       ({"other": 1}, "other")):
        try:
            check_rules_body(bad)
        except ApiError as exc:
            assert exc.status == 400 and exc.field == field, (bad, exc.field)
        else:
            raise AssertionError(bad)


async def test_rules_are_inherited_and_overridden(tmp_path: Path, redis_url: str,
                                                  redis_prefix: str, redis: object) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        s = await _setup(gw)
        cid = s["cid"]
        got = await _rules(s["teacher"], f"/api/v1/classes/{cid}/rules")
        assert got["rules"] is None and got["effective"]["source"] == "default"
        assert got["effective"]["version"] == DEFAULT_RULES.version
        assert got["effective"]["shown_text"] == t("vi", "join.rules_default_text")
        # the department's rules reach the school's class through the district
        r = await s["so"].put("/api/v1/orgs/so-gd/rules",
                              json={"text": "Nội quy của Sở <b>1</b>", "term": "2026-2027 HK1"})
        assert r.status == 200, await r.text()
        got = await _rules(s["teacher"], f"/api/v1/classes/{cid}/rules")
        assert got["effective"]["source"] == "org" and got["effective"]["org"] == "so-gd"
        assert got["effective"]["text"] == "Nội quy của Sở <b>1</b>"
        so_version = got["effective"]["version"]
        # the school's own rules win over the department's
        r = await s["school_admin"].put("/api/v1/orgs/school-a/rules",
                                        json={"text": "Nội quy trường A", "term": "HK1"})
        assert r.status == 200
        got = await _rules(s["teacher"], f"/api/v1/classes/{cid}/rules")
        assert got["effective"]["org"] == "school-a"
        assert got["effective"]["version"] != so_version
        # the class's teacher overrides for the class; clearing it inherits again
        r = await s["teacher"].put(f"/api/v1/classes/{cid}/rules",
                                   json={"text": "Nội quy riêng lớp 10A1"})
        assert r.status == 200
        assert (await r.json())["effective"]["source"] == "class"
        r = await s["teacher"].put(f"/api/v1/classes/{cid}/rules", json={"text": None})
        assert r.status == 200 and (await r.json())["effective"]["org"] == "school-a"
        # who may do what
        r = await s["teacher"].put("/api/v1/orgs/school-a/rules", json={"text": "x"})
        assert r.status == 403
        r = await s["other_teacher"].put(f"/api/v1/classes/{cid}/rules", json={"text": "x"})
        assert r.status in (403, 404)
        r = await s["school_admin"].put(f"/api/v1/classes/{cid}/rules", json={"text": "y"})
        assert r.status == 200
        r = await s["school_admin"].put("/api/v1/orgs/so-gd/rules", json={"text": "z"})
        assert r.status == 404
        r = await s["teacher"].put(f"/api/v1/classes/{cid}/rules", json={"text": "x" * 4001})
        assert r.status == 400 and (await r.json())["error"]["field"] == "text"
        events = await audit_events(s["so"], at_least=4, type="rules.changed")
        assert len(events) >= 4


def _ack_path(page: str) -> str:
    m = re.search(r'<form method="post" action="(/rules/[^"]+)"', page)
    assert m, page
    return html.unescape(m.group(1))


async def test_acknowledged_once_then_asked_again_for_a_new_version(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: object) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        s = await _setup(gw, require_rules_ack=True)
        cid, link = s["cid"], s["links"][0]
        await s["teacher"].put(f"/api/v1/classes/{cid}/rules",
                               json={"text": "Không chia sẻ link <script>x</script>",
                                     "term": "HK1"})
        phone = gw.client()
        # required before admission: refused with the rules and the button
        r = await phone.get(f"/j/{token_of(link)}")
        page = await r.text()
        assert r.status == 403
        assert "Không chia sẻ link &lt;script&gt;x&lt;/script&gt;" in page
        assert "<script>x</script>" not in page
        assert t("vi", "join.rules_agree") in page
        ack = _ack_path(page)
        # another device cannot use this student's form
        r = await gw.client().post(ack, allow_redirects=False)
        assert r.status == 404
        r = await phone.post(ack, allow_redirects=False)
        page = await r.text()
        assert r.status == 200 and "/ws/wait/" in page, page[:400]  # waits for the host
        # a used form does not work twice
        r = await phone.post(ack, allow_redirects=False)
        assert r.status == 404
        # acknowledged once: the next entry goes straight on
        status, body = await open_link(phone, link)
        assert body["status"] == "waiting" and body["reason"] == "awaiting_host", body
        # a new term asks again
        await s["teacher"].put(f"/api/v1/classes/{cid}/rules",
                               json={"text": "Không chia sẻ link <script>x</script>",
                                     "term": "HK2"})
        status, body = await open_link(phone, link)
        assert status == 403 and body["reason"] == "rules_not_acknowledged", body
        assert body["rules"]["term"] == "HK2"
        r = await phone.post(body["rules"]["acknowledge"],
                             headers={"Accept": "application/json"})
        body = await r.json()
        assert body["status"] == "waiting", body
        # the audit log holds both acknowledgments with their versions
        events = await audit_events(s["so"], at_least=2, type="rules.acknowledged")
        versions = {e["facts"]["version"] for e in events}
        assert len(versions) == 2
        assert all(e["subject"] == link["student_id"] for e in events)
        # the rule shows in the explanation for the teacher
        r = await s["teacher"].get(f"/api/v1/classes/{cid}/explain",
                                   params={"student_id": s["links"][1]["student_id"]})
        ex = await r.json()
        assert ex["decision"]["reason"] == "rules_not_acknowledged", ex


async def test_not_required_by_default(tmp_path: Path, redis_url: str, redis_prefix: str,
                                       redis: object) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        s = await _setup(gw)
        status, body = await open_link(gw.client(), s["links"][0])
        assert body["status"] == "waiting" and "rules" not in body, body


async def test_acknowledgment_is_in_the_evidence_bundle(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: object) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        s = await _setup(gw, require_rules_ack=True)
        cid, an, binh = s["cid"], s["links"][0], s["links"][1]
        for link in (an, binh):
            phone = gw.client()
            status, body = await open_link(phone, link)
            assert body["reason"] == "rules_not_acknowledged"
            r = await phone.post(body["rules"]["acknowledge"],
                                 headers={"Accept": "application/json"})
            assert (await r.json())["status"] == "waiting"
        await audit_events(s["so"], at_least=2, type="rules.acknowledged")
        # an incident about An whose window opens after the acknowledgments
        now = datetime.now(UTC)
        r = await s["teacher"].post("/api/v1/incidents", json={
            "class_id": cid, "title": "Người lạ", "student_ids": [an["student_id"]],
            "since": (now + timedelta(seconds=1)).isoformat(),
            "until": (now + timedelta(minutes=10)).isoformat()})
        assert r.status == 201, await r.text()
        inc = await incident_store(gw.svc).get((await r.json())["id"])
        assert inc is not None
        note = await wait_sequenced(gw.svc, class_id=cid)
        got = await gather(gw.svc, inc, checkpoint_size(note))
        acks = [ev for ev in got.events if ev.record.get("type") == "rules.acknowledged"]
        assert [ev.record["subject"] for ev in acks] == [an["student_id"]]
        assert acks[0].record["facts"]["version"]


async def test_class_page_shows_and_edits_the_rules(tmp_path: Path, redis_url: str,
                                                    redis_prefix: str, redis: object) -> None:
    from .test_pages import sign_in

    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        s = await _setup(gw)
        cid = s["cid"]
        await s["school_admin"].put("/api/v1/orgs/school-a/rules",
                                    json={"text": "Trường A: <i>không</i> ghi hình", "term": "HK1"})
        for lang in ("vi", "en"):
            browser = await sign_in(gw, "co.lan", lang)
            r = await browser.get(f"/classes/{cid}?lang={lang}")
            page = await r.text()
            assert r.status == 200
            assert "Trường A: &lt;i&gt;không&lt;/i&gt; ghi hình" in page
            assert t(lang, "rules.source.org") in page and 'id="rulesform"' in page
            assert 'name="policy.require_rules_ack"' in page
        # the school's administrator edits the school's rules on their page
        admin = await sign_in(gw, "hieu.truong", "en")
        r = await admin.get("/admin/rules?lang=en")
        page = await r.text()
        assert r.status == 200 and 'data-api="/api/v1/orgs/school-a/rules"' in page
        assert "Trường A: &lt;i&gt;không&lt;/i&gt; ghi hình" in page
        r = await admin.get("/admin/rules?org=so-gd")
        assert r.status == 404
