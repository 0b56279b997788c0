"""The audit API as IT staff use it: search, proofs, checkpoint, key, verify; and every
read of the log is itself in the log."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

from audit import AuditVerifierKey, open_checkpoint
from audit.merkle import verify_inclusion

from .helpers import audit_events, make_class, open_link, running_gateway


async def test_audit_search_proofs_and_verify(tmp_path: Path, redis_url: str,
                                              redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        it = gw.api(await gw.staff_user("it.hung", role="it"))
        outsider = gw.api(await gw.staff_user("it.khac", role="it", org="school-z"))
        cid, links = await make_class(gw, api)
        await open_link(gw.client(), links[0])
        await open_link(gw.client(), links[0])  # a second device: device_mismatch

        found = await audit_events(it, **{"class": cid, "reason": "device_mismatch"})
        assert len(found) == 1
        ev = found[0]
        assert ev["type"] == "join" and ev["subject"] == links[0]["student_id"]
        assert "ip" not in ev and ev["personal"]["ip"] == "127.0.0.1"  # committed, disclosed
        assert ev["pd"] and ev["v"] == 1
        # staff of another school see nothing of this class
        r = await outsider.get("/api/v1/audit/events", params={"class": cid})
        assert (await r.json())["events"] == []
        # teachers do not read the log
        r = await api.get("/api/v1/audit/events")
        assert r.status == 403
        r = await it.get("/api/v1/audit/events", params={"bogus": "1"})
        assert r.status == 400 and (await r.json())["error"]["field"] == "bogus"

        # checkpoint + inclusion proof verify against the published key
        for _ in range(100):
            r = await it.get("/api/v1/audit/checkpoint")
            if r.status == 200:
                note = await r.text()
                key_text = await (await it.get("/api/v1/audit/key")).text()
                vkey = AuditVerifierKey.parse(key_text.strip())
                cp = open_checkpoint(note, vkey)
                if cp.size > ev["index"]:
                    break
            await asyncio.sleep(0.05)
        r = await it.get("/api/v1/audit/proof/inclusion",
                         params={"index": str(ev["index"]), "size": str(cp.size)})
        proof = await r.json()
        hashes = [base64.b64decode(h) for h in proof["hashes"]]
        leaf = base64.b64decode(proof["leaf_hash"])
        verify_inclusion(ev["index"], cp.size, leaf, hashes, cp.root_hash)
        raw = await gw.svc.audit_log.read_raw(ev["index"])  # type: ignore[union-attr]
        assert hashlib.sha256(b"\x00" + raw).digest() == leaf

        r = await it.post("/api/v1/audit/verify")
        report = await r.json()
        assert report["ok"] is True and report["size"] >= 1, report

        # the reads above are themselves in the log
        reads = await audit_events(it, type="audit.read")
        assert any(e["actor"] == "user:it.hung" for e in reads)


async def test_refused_staff_requests_are_audited_student_refusals_are_not(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        it = gw.api(await gw.staff_user("it.hung", role="it"))
        cid, links = await make_class(gw, api)
        assert (await api.get("/api/v1/audit/events")).status == 403  # teachers do not read
        _, body = await open_link(gw.client(), links[0])
        r = await gw.client().get(body["ws"])  # another device on the student's socket
        assert r.status in (403, 400)
        found = await audit_events(it, type="staff.refused")
        assert [(e["actor"], e["reason"], e["facts"]["status"]) for e in found] == [
            ("user:co.lan", "forbidden", 403)]
        assert found[0]["org"] == "school-a" and "class" not in found[0]
        assert found[0]["facts"]["route"] == "/api/v1/audit/events"
