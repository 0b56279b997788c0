"""Driving a real gateway from class creation to a student's upstream credential."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from tests.gateway.helpers import ROSTER, Gateway, open_link


def class_with(platform: dict[str, Any], **policy: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "title": "Toán 10A1",
        "platform": platform,
        "schedule": {"starts_at": (now - timedelta(minutes=5)).isoformat(),
                     "ends_at": (now + timedelta(hours=2)).isoformat(),
                     "term_ends_at": (now + timedelta(days=60)).isoformat()},
        "policy": {"preset": "strict", **policy},
    }


async def create_class(gw: Gateway, api: aiohttp.ClientSession, platform: dict[str, Any],
                       **policy: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    r = await api.post("/api/v1/classes", json=class_with(platform, **policy))
    assert r.status == 201, await r.text()
    klass = await r.json()
    cid = klass["id"]
    r = await api.put(f"/api/v1/classes/{cid}/roster", json=ROSTER)
    assert r.status == 200, await r.text()
    r = await api.post(f"/api/v1/classes/{cid}/links", json={})
    assert r.status == 200, await r.text()
    return klass, (await r.json())["links"]


async def enter(gw: Gateway, api: aiohttp.ClientSession, cid: str,
                link: dict[str, Any]) -> tuple[aiohttp.ClientSession, aiohttp.ClientResponse]:
    """A student's phone opens the link, the teacher admits, the phone follows /go.
    Returns the phone session and the /go answer (not followed)."""
    phone = gw.client()
    status, body = await open_link(phone, link)
    assert status == 200 and body["status"] == "waiting", body
    r = await api.post(f"/api/v1/classes/{cid}/actions",
                       json={"action": "admit", "ticket": body["ticket"]})
    assert r.status == 200, await r.text()
    status, body = await open_link(phone, link)
    assert body["status"] == "admitted", body
    go = await phone.get(body["redirect"], allow_redirects=False,
                         headers={"Accept": "application/json"})
    return phone, go


async def action(api: aiohttp.ClientSession, cid: str, **body: Any) -> dict[str, Any]:
    r = await api.post(f"/api/v1/classes/{cid}/actions", json=body)
    data: dict[str, Any] = await r.json()
    data["_status"] = r.status
    return data


async def alerts(api: aiohttp.ClientSession, cid: str, kind: str) -> list[dict[str, Any]]:
    st = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
    return [a for a in st["alerts"] if a["kind"] == kind]
