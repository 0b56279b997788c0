"""A school behind one router: every browser of the class reaches the gateway from the same
address. The report must still tell the students from the stranger, by device.

An and Cường join from their own phones; Bình too (she is not involved); then a stranger
opens An's link on another device. Everyone has the same address. Cô Lan reports the
incident with An and Cường involved and the school's address as the visitor's.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from gateway import i18n
from tests.gateway.helpers import make_class, next_message, open_link, running_gateway

from .scenario import OVERRIDES, ROSTER

IP_SCHOOL = "198.51.100.99"


class _Tables(HTMLParser):
    """Every table of a page as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _table(html: str, first_header: str) -> list[dict[str, str]]:
    parser = _Tables()
    parser.feed(html)
    for rows in parser.tables:
        if rows and rows[0] and rows[0][0].startswith(first_header):
            return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    raise AssertionError(f"no table headed {first_header!r}")


async def test_students_sharing_the_strangers_address_are_not_strangers(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix, **OVERRIDES) as gw:
        assert gw.svc.staff is not None
        await gw.svc.staff.ensure_org("thpt-nguyen-du", name="Trường THPT Nguyễn Du")
        teacher = gw.api(await gw.staff_user("co.lan", "teacher", "thpt-nguyen-du"))
        admin = gw.api(await gw.staff_user("thay.hieu", "admin", "thpt-nguyen-du"))
        since = datetime.now(UTC) - timedelta(minutes=1)
        cid, links = await make_class(gw, teacher, roster=ROSTER)
        by_name = {x["name"]: x for x in links}
        an, binh, cuong = (by_name[r["name"]] for r in ROSTER[:3])
        control = await teacher.ws_connect(f"/api/v1/classes/{cid}/control")
        await next_message(control, type_="state")
        for link in (an, cuong, binh):
            phone = gw.client(headers={"X-Forwarded-For": IP_SCHOOL})
            _, body = await open_link(phone, link)
            assert body["status"] == "waiting", body
        await control.send_json({"action": "admit_all"})
        await next_message(control, type_="result")
        stranger = gw.client(headers={"X-Forwarded-For": IP_SCHOOL})
        _, body = await open_link(stranger, an)
        assert body["reason"] == "device_mismatch", body
        await next_message(control, type_="alert")
        await control.close()
        r = await teacher.post("/api/v1/incidents", json={
            "class_id": cid, "title": "Người lạ vào lớp", "description": "",
            "since": since.isoformat(),
            "until": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
            "student_ids": [an["student_id"], cuong["student_id"]],
            "visitors": [{"ip": IP_SCHOOL}],
        })
        assert r.status == 201, await r.text()
        iid = (await r.json())["id"]
        r = await admin.get(f"/api/v1/incidents/{iid}/evidence.zip?lang=vi")
        assert r.status == 200, await r.text()
        bundle = await r.read()

    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        html = zf.read("report.html").decode()
        events = [json.loads(x) for x in zf.read("events.jsonl").decode().splitlines()]
    joins = [e for e in events if e["record"]["type"] == "join"]
    assert all(e["personal"]["ip"] == IP_SCHOOL for e in joins)

    def device_of(sid: str, *, shared: bool) -> str:
        found = {e["personal"]["device"] for e in joins if e["record"]["subject"] == sid
                 and (e["record"]["reason"] == "device_mismatch") is shared}
        assert len(found) == 1, found
        return found.pop()[:12]

    an_dev = device_of(an["student_id"], shared=False)
    cuong_dev = device_of(cuong["student_id"], shared=False)
    stranger_dev = device_of(an["student_id"], shared=True)
    assert len({an_dev, cuong_dev, stranger_dev}) == 3

    def t(key: str) -> str:
        return i18n.t("vi", key)

    # the students are themselves, with their own device and the address they used
    students = {row[t("evidence.col_name")]: row
                for row in _table(html, t("evidence.col_name"))}
    assert set(students) == {an["name"], cuong["name"]}
    for name, dev in ((an["name"], an_dev), (cuong["name"], cuong_dev)):
        assert students[name][t("evidence.col_ips")] == IP_SCHOOL
        assert students[name][t("evidence.col_devices")] == dev
    # one stranger, known by its device, who used An's link
    strangers = _table(html, t("evidence.col_visitor"))
    assert len(strangers) == 1, strangers
    assert strangers[0][t("evidence.col_devices")] == stranger_dev
    assert strangers[0][t("evidence.col_ips")] == IP_SCHOOL
    assert strangers[0][t("evidence.col_links_used")] == an["name"]
    # the timeline says who was who
    timeline = _table(html, t("evidence.col_index"))
    person = t("evidence.col_person")
    by_device = {}
    for row in timeline:
        if row[t("evidence.col_event")] == t("evidence.type.join"):
            by_device.setdefault(row[t("evidence.col_device")], set()).add(row[person])
    assert by_device[cuong_dev] == {cuong["name"]}
    assert by_device[an_dev] == {an["name"]}
    assert by_device[stranger_dev] == {f"{t('evidence.col_visitor')} 1 → {an['name']}"}
    # Bình shares the address but is not involved: nothing of hers is in the bundle
    assert binh["name"] not in html and binh["student_id"] not in bundle.decode("latin-1")


async def test_a_students_device_bound_before_the_window_is_still_theirs(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    """An joined before the reported window; in it, the teacher removes him, he opens his
    link again from his own phone and is refused, and a stranger tries it on another."""
    async with running_gateway(tmp_path, redis_url, redis_prefix, **OVERRIDES) as gw:
        assert gw.svc.staff is not None
        await gw.svc.staff.ensure_org("thpt-nguyen-du", name="Trường THPT Nguyễn Du")
        teacher = gw.api(await gw.staff_user("co.lan", "teacher", "thpt-nguyen-du"))
        admin = gw.api(await gw.staff_user("thay.hieu", "admin", "thpt-nguyen-du"))
        cid, links = await make_class(gw, teacher, roster=ROSTER)
        an = next(x for x in links if x["name"] == ROSTER[0]["name"])
        control = await teacher.ws_connect(f"/api/v1/classes/{cid}/control")
        await next_message(control, type_="state")
        phone = gw.client(headers={"X-Forwarded-For": IP_SCHOOL})
        _, body = await open_link(phone, an)
        assert body["status"] == "waiting", body
        await control.send_json({"action": "admit_all"})
        await next_message(control, type_="result")
        await asyncio.sleep(0.05)
        since = datetime.now(UTC)
        await asyncio.sleep(0.05)
        await control.send_json({"action": "remove", "student_id": an["student_id"],
                                 "reason": "mất trật tự"})
        await next_message(control, type_="result")
        _, body = await open_link(phone, an)
        assert body["status"] == "denied", body
        stranger = gw.client(headers={"X-Forwarded-For": IP_SCHOOL})
        _, body = await open_link(stranger, an)
        assert body["status"] == "denied", body
        await control.close()
        r = await teacher.post("/api/v1/incidents", json={
            "class_id": cid, "title": "Người lạ vào lớp", "description": "",
            "since": since.isoformat(),
            "until": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
            "student_ids": [an["student_id"]], "visitors": [{"ip": IP_SCHOOL}],
        })
        assert r.status == 201, await r.text()
        iid = (await r.json())["id"]
        r = await admin.get(f"/api/v1/incidents/{iid}/evidence.zip?lang=vi")
        assert r.status == 200, await r.text()
        bundle = await r.read()

    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        html = zf.read("report.html").decode()
        events = [json.loads(x) for x in zf.read("events.jsonl").decode().splitlines()]
    joins = [e for e in events if e["record"]["type"] == "join"]
    # only the two refused joins of the window are in the bundle, not the admission
    assert len(joins) == 2 and all(e["record"]["facts"]["action"] == "deny" for e in joins)
    own, other = joins if joins[0]["record"]["reason"] != "device_mismatch" else joins[::-1]
    own_dev, other_dev = own["personal"]["device"][:12], other["personal"]["device"][:12]
    assert own_dev != other_dev

    def t(key: str) -> str:
        return i18n.t("vi", key)

    (student,) = _table(html, t("evidence.col_name"))
    assert student[t("evidence.col_devices")] == own_dev
    assert student[t("evidence.col_ips")] == IP_SCHOOL
    (visitor,) = _table(html, t("evidence.col_visitor"))
    assert visitor[t("evidence.col_devices")] == other_dev
