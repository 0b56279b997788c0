"""The incidents API: who may do what, validation, attachments, status, custody events."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from gateway.incidents import sniff
from tests.gateway.helpers import make_class, running_gateway

from .scenario import ROSTER, screenshot_png


@pytest.mark.parametrize(("head", "expected"), [
    (b"\x89PNG\r\n\x1a\n....", "image/png"),
    (b"\xff\xd8\xff\xe0JFIF", "image/jpeg"),
    (b"%PDF-1.7\n", "application/pdf"),
    (b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
    ("Tin nhắn: xin chào".encode(), "text/plain"),
    ("Tin nhắn: xin chào".encode()[:-1], "text/plain"),  # cut inside a character
    (b"MZ\x90\x00\x03\x00\x00\x00", "application/octet-stream"),
])
def test_sniffing_uses_the_bytes(head: bytes, expected: str) -> None:
    assert sniff(head)[0] == expected


def _window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"since": (now - timedelta(minutes=10)).isoformat(),
            "until": (now + timedelta(minutes=10)).isoformat()}


async def test_permissions_validation_and_custody(tmp_path: Path, redis_url: str,
                                                  redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               attachment_max_bytes=4096) as gw:
        teacher = gw.api(await gw.staff_user("co.lan"))
        other = gw.api(await gw.staff_user("thay.minh"))
        it = gw.api(await gw.staff_user("it.hoa", "it"))
        admin = gw.api(await gw.staff_user("hieu.truong", "admin"))
        outsider = gw.api(await gw.staff_user("admin.b", "admin", org="school-b"))
        cid, links = await make_class(gw, teacher, roster=ROSTER)
        body = {"class_id": cid, "title": "Quấy rối", **_window(),
                "student_ids": [links[0]["student_id"]]}
        # another teacher, an admin of another school: the class does not exist for them
        for api in (other, outsider):
            r = await api.post("/api/v1/incidents", json=body)
            assert r.status == 404
        # validation names the field
        for bad, field in [
            ({**body, "until": body["since"]}, "until"),
            ({**body, "since": "2026-11-23T07:30:00"}, "since"),
            ({**body, "student_ids": ["s-not-on-roster"]}, "student_ids"),
            ({**body, "visitors": [{"ip": "not-an-ip"}]}, "visitors[0].ip"),
            ({**body, "visitors": [{"device": "short"}]}, "visitors[0].device"),
            ({**body, "visitors": [{}]}, "visitors[0]"),
            ({**body, "indexes": [-1]}, "indexes"),
            ({**body, "extra": 1}, "extra"),
        ]:
            r = await teacher.post("/api/v1/incidents", json=bad)
            assert r.status == 400, (bad, await r.text())
            assert (await r.json())["error"]["field"] == field
        r = await it.post("/api/v1/incidents", json=body)  # IT staff for their org
        assert r.status == 201
        r = await teacher.post("/api/v1/incidents", json=body)
        assert r.status == 201
        inc = await r.json()
        iid = inc["id"]
        assert inc["status"] == "open" and inc["created_by"] == "co.lan"
        # lists: the teacher sees incidents of their classes, others nothing
        assert len((await (await teacher.get("/api/v1/incidents")).json())["incidents"]) == 2
        assert (await (await other.get("/api/v1/incidents")).json())["incidents"] == []
        assert (await (await outsider.get("/api/v1/incidents")).json())["incidents"] == []
        assert (await other.get(f"/api/v1/incidents/{iid}")).status == 404
        assert (await it.get(f"/api/v1/incidents/{iid}")).status == 200
        # attachments: size limit, type from the bytes
        form = aiohttp.FormData()
        form.add_field("file", b"x" * 5000, filename="big.txt")
        r = await teacher.post(f"/api/v1/incidents/{iid}/attachments", data=form)
        assert r.status == 413
        form = aiohttp.FormData()
        form.add_field("file", screenshot_png(), filename="../../ảnh.PNG.exe",
                       content_type="text/html")
        r = await teacher.post(f"/api/v1/incidents/{iid}/attachments", data=form)
        assert r.status == 201, await r.text()
        att = (await r.json())["attachments"][0]
        assert att["content_type"] == "image/png" and att["filename"] == "ảnh.PNG.exe"
        r = await teacher.post(f"/api/v1/incidents/{iid}/attachments", json={"x": 1})
        assert r.status == 415
        # attachments are sealed at rest, on disk: content-addressed, mode 0600, the
        # bytes nowhere in the clear; Redis holds only metadata and hashes
        keys = [k async for k in redis.scan_iter(match=f"{redis_prefix}{{i:{iid}}}:att:*")]
        assert keys == []
        files = list((tmp_path / "data" / "attachments").glob("*/*.sealed"))
        assert len(files) == 1
        sealed = files[0].read_bytes()
        assert b"IHDR" not in sealed and files[0].stat().st_mode & 0o777 == 0o600
        assert files[0].name == hashlib.sha256(sealed).hexdigest() + ".sealed"
        # only administrators export
        assert (await teacher.get(f"/api/v1/incidents/{iid}/evidence.zip")).status == 403
        assert (await it.get(f"/api/v1/incidents/{iid}/evidence.zip")).status == 403
        assert (await outsider.get(f"/api/v1/incidents/{iid}/evidence.zip")).status == 404
        # status: exported only by exporting; closed is final
        r = await teacher.patch(f"/api/v1/incidents/{iid}", json={"status": "exported"})
        assert r.status == 400
        r = await admin.get(f"/api/v1/incidents/{iid}/evidence.zip")
        assert r.status == 200, await r.text()
        # the reporter edits; only an administrator closes, with a reason
        r = await teacher.patch(f"/api/v1/incidents/{iid}", json={"title": "Quấy rối (đã xử lý)"})
        assert r.status == 200
        r = await teacher.patch(f"/api/v1/incidents/{iid}", json={"status": "closed"})
        assert r.status == 403
        r = await admin.patch(f"/api/v1/incidents/{iid}", json={"status": "closed"})
        assert r.status == 400 and (await r.json())["error"]["field"] == "reason"
        r = await admin.patch(f"/api/v1/incidents/{iid}",
                              json={"status": "closed", "reason": "đã xử lý"})
        assert r.status == 200 and (await r.json())["status"] == "closed"
        r = await teacher.patch(f"/api/v1/incidents/{iid}", json={"status": "open"})
        assert r.status == 403
        r = await teacher.patch(f"/api/v1/incidents/{iid}", json={"title": "x"})
        assert r.status == 409
        form = aiohttp.FormData()
        form.add_field("file", b"late", filename="late.txt")
        r = await teacher.post(f"/api/v1/incidents/{iid}/attachments", data=form)
        assert r.status == 409
        # every view, edit, attachment and export is in the log
        log = gw.svc.audit_log
        assert log is not None
        expected = {"incident.create", "incident.view", "incident.attach", "incident.export",
                    "incident.update", "incident.hold"}
        # the sequencer indexes the records in the background: wait for all of them (a
        # bounded wait on the condition, not a fixed time)
        deadline = time.monotonic() + 30
        while True:
            events, _c = await log.query({"class": cid}, limit=500)
            types = [e.record["type"] for e in events
                     if (e.record.get("facts") or {}).get("incident") == iid]
            if expected <= set(types) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert expected <= set(types)


async def test_incident_changes_record_their_intent_first(tmp_path: Path, redis_url: str,
                                                          redis_prefix: str, redis) -> None:
    """Create, attach, edit and close: each change follows its ``intent`` in the log and
    its outcome names it; an edit refused by the store after validation (the incident is
    closed) leaves ``intent.failed`` and no revision."""
    import asyncio

    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        teacher = gw.api(await gw.staff_user("co.lan"))
        admin = gw.api(await gw.staff_user("hieu.truong", "admin"))
        cid, links = await make_class(gw, teacher, roster=ROSTER)
        r = await teacher.post("/api/v1/incidents", json={
            "class_id": cid, "title": "Quấy rối", **_window(),
            "student_ids": [links[0]["student_id"]]})
        assert r.status == 201, await r.text()
        iid = (await r.json())["id"]
        form = aiohttp.FormData()
        form.add_field("file", screenshot_png(), filename="ảnh.png")
        r = await teacher.post(f"/api/v1/incidents/{iid}/attachments", data=form)
        assert r.status == 201, await r.text()
        r = await admin.patch(f"/api/v1/incidents/{iid}",
                              json={"status": "closed", "reason": "đã xử lý"})
        assert r.status == 200, await r.text()
        r = await teacher.patch(f"/api/v1/incidents/{iid}", json={"title": "sửa sau"})
        assert r.status == 409 and (await r.json())["error"]["code"] == "incident_closed"
        log = gw.svc.audit_log
        assert log is not None
        want = {"incident.create", "incident.attach", "incident.update", "intent.failed"}
        for _ in range(100):
            events, _c = await log.query({"class": cid}, limit=200)
            if want <= {e.record["type"] for e in events}:
                break
            await asyncio.sleep(0.05)
        by_intent: dict[str, list[tuple[int, dict]]] = {}
        for e in events:
            iid_ = (e.record.get("facts") or {}).get("intent")
            if iid_:
                by_intent.setdefault(iid_, []).append((e.index, e.record))
        seen: list[str] = []
        for recs in by_intent.values():
            recs.sort(key=lambda x: x[0])
            first, rest = recs[0][1], [r for _, r in recs[1:]]
            assert first["type"] == "intent", recs
            assert [r["type"] for r in rest] in ([first["facts"]["action"]], ["intent.failed"])
            seen.append(rest[0]["type"] if rest[0]["type"] != "intent.failed"
                        else f"failed:{rest[0]['reason']}")
        # the class's own creation, roster and links follow their intents too
        assert {"class.created", "roster.imported", "links.issued"} <= set(seen)
        seen = [s for s in seen if s.startswith(("incident.", "failed:"))]
        assert sorted(seen) == ["failed:incident_closed", "incident.attach",
                                "incident.create", "incident.update"]
        created = next(r for recs in by_intent.values() for _, r in recs
                       if r["type"] == "incident.create")
        assert created["facts"]["incident"] == iid
        revisions = (await (await admin.get(f"/api/v1/incidents/{iid}/history")).json())
        assert [rv.get("title") for rv in revisions["revisions"]].count("sửa sau") == 0
