"""Erasure orders and legal hold: ``classguard audit erase`` is refused while an open
incident holds the data, naming it; retention stops before held records; closing the
incident lets both go through."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from audit import LegalHold, archive_before
from audit.holds import holding
from gateway.incidents import legal_holds
from tests.gateway.helpers import make_class, open_link, running_gateway

CLI = [sys.executable, "-m", "gateway.cli"]


def test_hold_covers_what_the_export_gathers() -> None:
    hold = LegalHold(name="iabc", class_id="c1", since_ms=1000, until_ms=2000,
                     students=frozenset({"s1"}), ips=frozenset({"203.0.113.9"}),
                     indexes=frozenset({7}))
    join = {"type": "join", "class": "c1", "ts": 1500, "subject": "s1"}
    assert hold.covers(1, join, None)
    assert not hold.covers(1, {**join, "subject": "s2"}, None)  # another child
    assert hold.covers(1, {**join, "subject": "s2"}, {"ip": "203.0.113.9"})  # the visitor
    assert not hold.covers(1, {**join, "ts": 2500}, None)  # outside the window
    assert not hold.covers(1, {**join, "class": "c2"}, None)
    assert hold.covers(1, {"type": "host.remove", "class": "c1", "ts": 1200}, None)
    assert hold.covers(7, {"type": "join", "class": "c9", "ts": 1}, None)  # listed
    custody = {"type": "incident.view", "class": "c1", "ts": 9999, "facts": {"incident": "iabc"}}
    assert hold.covers(1, custody, None)
    assert holding([hold], 1, {**join, "subject": "s2"}, None) is None


async def test_cli_erase_and_retention_respect_the_hold(tmp_path: Path, redis_url: str,
                                                        redis_prefix: str) -> None:
    env = dict(os.environ, CLASSGUARD_DATA_DIR=str(tmp_path / "data"),
               CLASSGUARD_REDIS_PREFIX=redis_prefix, CLASSGUARD_REDIS_URL=redis_url,
               CLASSGUARD_PUBLIC_URL="http://classguard.test")

    def erase(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(CLI + ["audit", "erase", *args], env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        teacher = gw.api(await gw.staff_user("co.lan"))
        admin = gw.api(await gw.staff_user("hieu.truong", "admin"))
        cid, links = await make_class(gw, teacher, "open")
        for link in links[:2]:
            await open_link(gw.client(), link)
        sid = links[0]["student_id"]
        log, rb, key = gw.svc.audit_log, gw.svc.redis_bytes, gw.svc.audit_key
        assert log is not None and rb is not None and key is not None
        for _ in range(200):
            if await log.indexes_of_student(sid):
                break
            await asyncio.sleep(0.05)
        held_ix = await log.indexes_of_student(sid)
        assert held_ix and await log.personal(held_ix[0]) is not None
        now = datetime.now(UTC)
        r = await teacher.post("/api/v1/incidents", json={
            "class_id": cid, "title": "Quấy rối", "student_ids": [sid],
            "since": (now - timedelta(minutes=5)).isoformat(),
            "until": (now + timedelta(minutes=5)).isoformat()})
        assert r.status == 201, await r.text()
        iid = (await r.json())["id"]

        # bad orders: a one-line message, exit 2
        assert erase("--reason", "x").returncode == 2
        assert erase("--student", sid, "--reason", " ").returncode == 2
        # an order reaching held data is refused, naming the incident; nothing erased
        res = await asyncio.to_thread(erase, "--student", sid, "--reason", "đơn số 12")
        assert res.returncode == 1 and iid in res.stderr and "Traceback" not in res.stderr, \
            res.stderr
        assert await log.personal(held_ix[0]) is not None

        # retention stops before the first held record, which keeps its personal data
        holds = await legal_holds(rb, gw.svc.settings.redis_prefix)
        assert [h.name for h in holds] == [iid]
        for _ in range(200):
            cp = await log.latest_checkpoint()
            if cp and int(cp.split("\n")[1]) > max(held_ix):
                break
            await asyncio.sleep(0.05)
        cutoff = int((now + timedelta(minutes=1)).timestamp() * 1000)
        got = await archive_before(rb, gw.svc.settings.redis_prefix, cutoff, tmp_path / "arch",
                                   key, holds=holds)
        assert got is None or got.end <= min(held_ix)
        assert await log.personal(held_ix[0]) is not None

        # closing releases the hold; the same order then goes through
        r = await admin.patch(f"/api/v1/incidents/{iid}",
                              json={"status": "closed", "reason": "đã xử lý"})
        assert r.status == 200, await r.text()
        assert await legal_holds(rb, gw.svc.settings.redis_prefix) == []
        res = await asyncio.to_thread(erase, "--student", sid, "--reason", "đơn số 12")
        assert res.returncode == 0 and "erased the personal data of" in res.stdout, res.stderr
        assert await log.personal(held_ix[0]) is None
        types: list[str] = []
        for _ in range(200):
            page, _c = await log.query({"type": "audit.erase_refused"}, limit=10)
            page2, _c = await log.query({"type": "audit.erase"}, limit=10)
            types = [e.record["type"] for e in page + page2]
            if len(types) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(types) == ["audit.erase", "audit.erase_refused"]
        assert page[0].record["facts"]["incidents"] == [iid]
        assert page[0].record["actor"].startswith("cli:")
        # each order was announced before it ran: the carried-out one by an intent that
        # precedes it, the refused one by an intent marked failed
        intents, _c = await log.query({"type": "intent"}, limit=50)
        failed, _c = await log.query({"type": "intent.failed"}, limit=50)
        done = page2[0]
        announced = [e for e in intents
                     if e.record["facts"].get("intent") == done.record["facts"]["intent"]]
        assert len(announced) == 1 and announced[0].index < done.index
        assert announced[0].record["facts"]["action"] == "audit.erase"
        assert [e.record["reason"] for e in failed
                if e.record["facts"]["action"] == "audit.erase"] == ["audit_legal_hold"]
