"""One disrupted class, end to end through a running gateway on real Redis.

Teacher cô Lan runs "Toán 10A1" (strict preset). An opens his own link, then shares it:
an intruder on another device and address opens An's link (``device_mismatch``, a
``link_shared`` alert). Bình and Cường, who have nothing to do with it, join normally.
Cô Lan removes An, reports the incident (An plus the intruder's address), attaches a
screenshot and a chat export; the administrator exports the evidence bundle.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import segno

from tests.gateway.helpers import Gateway, make_class, next_message, open_link, running_gateway

ROSTER = [
    {"name": "Nguyễn Văn An", "external_id": "HS1001"},
    {"name": "Trần Thị Bình", "external_id": "HS1002"},
    {"name": "Lê Hoàng Cường", "external_id": "HS1003"},
    {"name": "Phạm Thị Dung", "external_id": "HS1004"},
]
IP_AN = "198.51.100.10"
IP_INTRUDER = "203.0.113.66"
IP_BINH = "198.51.100.21"
IP_CUONG = "198.51.100.22"
CHAT = "Chat export\n08:01 Khách lạ: (nội dung xúc phạm)\n08:02 Cô Lan: mời bạn rời lớp\n"


def screenshot_png() -> bytes:
    buf = io.BytesIO()
    segno.make("screenshot of the disruption", error="m").save(buf, kind="png", scale=4)
    return buf.getvalue()


@dataclass
class Scenario:
    gw: Gateway
    admin: aiohttp.ClientSession
    teacher: aiohttp.ClientSession
    class_id: str
    links: list[dict[str, Any]]
    incident: dict[str, Any]
    bundle: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def involved(self) -> dict[str, Any]:
        return self.links[0]

    @property
    def others(self) -> list[dict[str, Any]]:
        return self.links[1:]


def device_of(client: aiohttp.ClientSession) -> str | None:
    for c in client.cookie_jar:
        if c.key.startswith("cg_dev") or "device" in c.key:
            return c.value
    return None


async def run_scenario(gw: Gateway) -> Scenario:
    svc = gw.svc
    assert svc.staff is not None
    await svc.staff.ensure_org("so-gd-hcm", name="Sở GD&ĐT TP.HCM")
    await svc.staff.ensure_org("thpt-nguyen-du", name="Trường THPT Nguyễn Du",
                               parent="so-gd-hcm")
    teacher = gw.api(await gw.staff_user("co.lan", "teacher", "thpt-nguyen-du"))
    admin = gw.api(await gw.staff_user("thay.hieu", "admin", "thpt-nguyen-du"))
    since = datetime.now(UTC) - timedelta(minutes=1)
    cid, links = await make_class(gw, teacher, roster=ROSTER)
    # An first, then the others (the API orders links its own way)
    links = sorted(links, key=lambda x: [r["name"] for r in ROSTER].index(x["name"]))
    control = await teacher.ws_connect(f"/api/v1/classes/{cid}/control")
    await next_message(control, type_="state")

    def device(ip: str) -> aiohttp.ClientSession:
        return gw.client(headers={"X-Forwarded-For": ip})

    an = device(IP_AN)
    status, body = await open_link(an, links[0])
    assert body["status"] == "waiting", body
    for ip, link in ((IP_BINH, links[1]), (IP_CUONG, links[2])):
        _, b = await open_link(device(ip), link)
        assert b["status"] == "waiting", b
    await control.send_json({"action": "admit_all"})
    await next_message(control, type_="result")
    intruder = device(IP_INTRUDER)
    status, body = await open_link(intruder, links[0])
    assert body["reason"] == "device_mismatch", body
    alert = await next_message(control, type_="alert")
    assert alert["kind"] == "link_shared"
    # Bình's own action after the intrusion: a record that names only her
    await control.send_json({"action": "reset_device", "student_id": links[1]["student_id"]})
    await next_message(control, type_="result")
    await control.send_json({"action": "remove", "student_id": links[0]["student_id"],
                             "reason": "chia sẻ đường dẫn cho người lạ"})
    await next_message(control, type_="result")
    await control.close()

    r = await teacher.post("/api/v1/incidents", json={
        "class_id": cid,
        "title": "Người lạ vào lớp bằng đường dẫn của học sinh",
        "description": "Khoảng 8 giờ, một người lạ dùng đường dẫn của em An.\nĐã mời em An ra.",
        "since": since.isoformat(),
        "until": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
        "student_ids": [links[0]["student_id"]],
        "visitors": [{"ip": IP_INTRUDER}],
    })
    assert r.status == 201, await r.text()
    incident = await r.json()
    form = aiohttp.FormData()
    form.add_field("file", screenshot_png(), filename="anh-chup-man-hinh.png",
                   content_type="application/octet-stream")
    form.add_field("file", CHAT.encode(), filename="tin-nhan.txt", content_type="image/png")
    r = await teacher.post(f"/api/v1/incidents/{incident['id']}/attachments", data=form)
    assert r.status == 201, await r.text()
    r = await teacher.get(f"/api/v1/incidents/{incident['id']}")
    assert r.status == 200
    incident = await r.json()
    return Scenario(gw, admin, teacher, cid, links, incident)


async def export(s: Scenario, lang: str = "vi") -> Scenario:
    r = await s.admin.get(f"/api/v1/incidents/{s.incident['id']}/evidence.zip?lang={lang}")
    assert r.status == 200, await r.text()
    s.bundle = await r.read()
    s.headers = dict(r.headers)
    return s


OVERRIDES: dict[str, Any] = {"trusted_proxies": ["127.0.0.1/32"]}


async def exported_bundle(tmp: Path, redis_url: str, prefix: str,
                          lang: str = "vi") -> tuple[bytes, dict[str, Any], str]:
    """(bundle, facts for assertions, pinned verifier key) of a fresh scenario."""
    async with running_gateway(tmp, redis_url, prefix, **OVERRIDES) as gw:
        s = await export(await run_scenario(gw), lang)
        assert gw.svc.audit_key is not None
        facts = {"links": s.links, "incident": s.incident, "headers": s.headers,
                 "class_id": s.class_id}
        return s.bundle, facts, gw.svc.audit_key.verifier().encode()
