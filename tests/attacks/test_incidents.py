"""Incident integrity and legal hold: the people an incident is about cannot rewrite or
close it, every revision is kept and travels in the evidence bundle, and an erasure
order cannot destroy the personal data an open incident holds.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .kit import Deployment, Klass, Scene, Staff, scene

pytestmark = pytest.mark.slow


def _window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"since": (now - timedelta(minutes=30)).isoformat(),
            "until": (now + timedelta(minutes=30)).isoformat()}


async def _file(s: Scene, who: Staff, k: Klass, title: str, **extra: Any) -> str:
    r = await who.call("POST", "/api/v1/incidents",
                       json={"class_id": k.id, "title": title, **_window(), **extra})
    assert r.status == 201, r
    return str(r.body["id"])


async def test_incident_cannot_be_rewritten_by_the_people_it_is_about(
        deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class()
        # IT staff file an incident about co.lan's class: the teacher is a viewer, not
        # the reporter
        iid = await _file(s, s.it, k, "Giáo viên để người lạ vào lớp",
                          description="Người lạ vào lớp lúc 19:05.",
                          student_ids=[k.sid(0)])
        path = f"/api/v1/incidents/{iid}"
        # the teacher the incident is about can read it but not rewrite or close it
        assert (await s.teacher.call("GET", path)).status == 200
        for body in ({"title": "Không có gì"}, {"description": "Nhầm lẫn"},
                     {"status": "closed"}, {"status": "closed", "reason": "nhầm"}):
            r = await s.teacher.call("PATCH", path, json=body)
            assert r.status == 403, (body, r)
        assert (await s.other_teacher.call("PATCH", path, json={"title": "x"})).status == 404
        # the reporter edits; the reporter, not an administrator, cannot close
        r = await s.it.call("PATCH", path, json={"description": "Người lạ vào lớp lúc 19:07.",
                                                 "reason": "giờ chính xác"})
        assert r.status == 200, r
        assert (await s.it.call("PATCH", path, json={"status": "closed", "reason": "x"})
                ).status == 403
        # an administrator closes, with a reason, and may reopen
        r = await s.admin.call("PATCH", path, json={"status": "closed"})
        assert r.status == 400 and r.body["error"]["field"] == "reason", r
        r = await s.admin.call("PATCH", path, json={"status": "closed", "reason": "đã xử lý"})
        assert r.status == 200 and r.body["status"] == "closed", r
        assert (await s.it.call("PATCH", path, json={"title": "sau khi đóng"})).status == 409
        r = await s.admin.call("PATCH", path, json={"status": "open",
                                                    "reason": "phụ huynh khiếu nại"})
        assert r.status == 200 and r.body["status"] == "open", r
        # every revision is kept, with who, when and why
        r = await s.admin.call("GET", f"{path}/history")
        assert r.status == 200, r
        revs = r.body["revisions"]
        assert [v["n"] for v in revs] == [0, 1, 2, 3]
        assert revs[0]["by"] == "it.hung" and revs[0]["changes"]["description"]["new"] == \
            "Người lạ vào lớp lúc 19:05."
        assert revs[1]["changes"]["description"] == {"old": "Người lạ vào lớp lúc 19:05.",
                                                     "new": "Người lạ vào lớp lúc 19:07."}
        assert revs[1]["reason"] == "giờ chính xác"
        assert revs[2]["by"] == "qt.hoa" and revs[2]["reason"] == "đã xử lý"
        assert revs[2]["changes"]["status"] == {"old": "open", "new": "closed"}
        assert revs[3]["changes"]["status"] == {"old": "closed", "new": "open"}
        # the evidence bundle carries the whole history
        r = await s.admin.session.get(f"{path}/evidence.zip", params={"lang": "vi"})
        assert r.status == 200, await r.text()
        with zipfile.ZipFile(io.BytesIO(await r.read())) as zf:
            custody = json.loads(zf.read("custody.json"))
            report = zf.read("report.html").decode()
        assert [v["n"] for v in custody["revisions"]] == [0, 1, 2, 3]
        assert custody["revisions"][1]["changes"]["description"]["old"] == \
            "Người lạ vào lớp lúc 19:05."
        assert "Người lạ vào lớp lúc 19:05." in report and "phụ huynh khiếu nại" in report


async def test_administrator_cannot_close_an_incident_about_their_own_class(
        deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class(owner=s.admin, title="Lớp của quản trị viên")
        iid = await _file(s, s.it, k, "Sự cố lớp của quản trị viên")
        r = await s.admin.call("PATCH", f"/api/v1/incidents/{iid}",
                               json={"status": "closed", "reason": "không có gì"})
        assert r.status == 403 and r.body["error"]["code"] == "own_class", r
        r = await s.admin.call("GET", f"/api/v1/incidents/{iid}")
        assert r.body["status"] == "open"


async def test_erasure_order_is_refused_under_legal_hold(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("open")
        phone = await s.admit_legit(k, 0)
        sid = k.sid(0)
        joined = await s.await_audit(
            lambda ev: any(e.get("personal", {}).get("ip") == phone.ip for e in ev),
            reader="qt.hoa", student=sid)
        assert joined
        iid = await _file(s, s.teacher, k, "Bạn An bị quấy rối", student_ids=[sid])
        order = {"student_id": sid, "class_id": k.id, "reason": "Phụ huynh yêu cầu xóa"}
        # refused while the incident is open, naming it; nothing erased
        r = await s.admin.call("POST", "/api/v1/audit/erase", json=order)
        assert r.status == 409 and r.body["error"]["code"] == "legal_hold", r
        assert iid in r.body["error"]["message"] and r.body["error"]["incidents"] == [iid]
        still = await s.audit(reader="qt.hoa", student=sid)
        assert any(e.get("personal", {}).get("ip") == phone.ip for e in still)
        refused = await s.await_audit(lambda ev: len(ev) >= 1, reader="qt.hoa",
                                      type="audit.erase_refused")
        assert refused[0]["facts"]["incidents"] == [iid]
        # only administrators order erasures, and only in their own organisation
        assert (await s.it.call("POST", "/api/v1/audit/erase", json=order)).status == 403
        assert (await s.teacher.call("POST", "/api/v1/audit/erase", json=order)).status == 403
        # closing releases the hold (audited); the order then goes through
        r = await s.admin.call("PATCH", f"/api/v1/incidents/{iid}",
                               json={"status": "closed", "reason": "đã xử lý xong"})
        assert r.status == 200, r
        await s.await_audit(
            lambda ev: any(e["facts"].get("hold") == "released"
                           and e["facts"].get("incident") == iid for e in ev),
            reader="qt.hoa", type="incident.hold")
        r = await s.admin.call("POST", "/api/v1/audit/erase", json=order)
        assert r.status == 200 and r.body["erased"] >= 1, r
        await s.await_audit(lambda ev: len(ev) >= 1, reader="qt.hoa", type="audit.erase")
        for e in await s.audit(reader="qt.hoa", class_=k.id):
            if e.get("subject") == sid:
                assert "personal" not in e, e
