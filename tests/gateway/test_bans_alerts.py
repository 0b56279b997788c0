"""Bans (device, address, network; class and org wide; expiry) and live alerts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bans import Ban, make_key, match
from gateway.errors import ApiError
from tests.conftest import both_redis_servers

from .helpers import host_control, make_class, next_message, open_link, running_gateway

# Redis commands differ between 6.2 (the embedded default) and 7: run on both.
redis_url = both_redis_servers(transports=True)


def test_ban_keys_and_matching() -> None:
    assert make_key(ip="10.1.2.3") == "i:10.1.2.3"
    assert make_key(cidr="10.1.2.0/24") == "n:10.1.2.0/24"
    with pytest.raises(ApiError):
        make_key(cidr="10.0.0.0/8")  # too wide
    with pytest.raises(ApiError):
        make_key(ip="10.1.2.3", cidr="10.1.2.0/24")
    bans = [
        Ban("n:10.1.2.0/24", "flood", "co.lan", 0, None, "org", "school-a"),
        Ban("d:" + "a" * 64, "intruder", "co.lan", 0, 100.0, "class", "c1"),
    ]
    dev, ip = match(bans, device="a" * 64, ip="10.1.2.99", now=50)
    assert dev is not None and ip is not None and ip.reason == "flood"
    dev, ip = match(bans, device="a" * 64, ip="10.1.3.1", now=150)  # device ban expired
    assert dev is None and ip is None


async def test_ban_by_device_and_address(tmp_path: Path, redis_url: str, redis_prefix: str,
                                         redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        teacher = await host_control(api, cid)
        intruder = gw.client()
        _, body = await open_link(intruder, links[0])
        knock = await next_message(teacher, type_="knock")
        await teacher.send_json({"action": "ban", "ticket": knock["ticket"], "scope": "device",
                                 "reason": "obscene images"})
        res = await next_message(teacher, type_="result")
        assert res["banned"] == ["d"]
        # the banned device is refused even with another student's link, and the host is told
        status, body = await open_link(intruder, links[1])
        assert status == 403 and body["reason"] == "banned_device"
        alert = await next_message(teacher, type_="alert")
        assert alert["kind"] == "banned_returning"
        state = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        assert state["bans"][0]["kind"] == "device" and "value" not in state["bans"][0]
        # address ban: a fresh device from the same address is refused too
        await teacher.send_json({"action": "ban", "ticket": knock["ticket"],
                                 "scope": "ip", "expires_in_s": 3600})
        res = await next_message(teacher, type_="result")
        status, body = await open_link(gw.client(), links[2])
        assert body["reason"] == "banned_ip"
        # lift it
        state = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        key = next(b["key"] for b in state["bans"] if b["kind"] == "ip")
        r = await api.post(f"/api/v1/classes/{cid}/actions", json={"action": "unban", "ban": key})
        assert r.status == 200
        status, body = await open_link(gw.client(), links[2])
        assert body["status"] == "waiting"
        # only administrators ban across the org
        r = await api.post(f"/api/v1/classes/{cid}/actions",
                           json={"action": "ban", "student_id": links[2]["student_id"],
                                 "scope": "ip", "org_wide": True})
        assert r.status == 403
        await teacher.close()


async def test_repeated_failures_alert(tmp_path: Path, redis_url: str, redis_prefix: str,
                                       redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        teacher = await host_control(api, cid)
        await open_link(gw.client(), links[0])  # the owner binds the link
        kinds = []
        for _ in range(5):
            await open_link(gw.client(), links[0])  # five other devices try the leaked link
        for _ in range(6):
            msg = await next_message(teacher, type_="alert")
            kinds.append(msg["kind"])
            if msg["kind"] == "repeated_failures":
                break
        assert "link_shared" in kinds and kinds[-1] == "repeated_failures"
        # the link-sharing alert carries a handle to ban exactly that second device
        state = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        shared = next(a for a in state["alerts"] if a["kind"] == "link_shared")
        r = await api.post(f"/api/v1/classes/{cid}/actions",
                           json={"action": "ban", "ban": shared["ban_device"]})
        assert r.status == 200 and (await r.json())["banned"] == ["d"]
        await teacher.close()


async def test_alerts_are_counted_not_repeated_and_kinds_cannot_flush_each_other(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        await open_link(gw.client(), links[0])  # the owner binds the link
        intruder = gw.client()
        for _ in range(3):  # one second device, three tries: one alert, counted
            await open_link(intruder, links[0])
        state = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        shared = [a for a in state["alerts"] if a["kind"] == "link_shared"]
        assert len(shared) == 1 and shared[0]["count"] == 3
        assert shared[0]["last_at"] >= shared[0]["at"]
        # a flood of one kind keeps only its newest; the other kinds stay in view
        store = gw.svc.store
        assert store is not None
        await store.add_alert(cid, {"id": "returning", "kind": "banned_returning", "at": 1})
        for i in range(60):
            await store.add_alert(cid, {"id": f"shared{i}", "kind": "link_shared", "at": 2})
        alerts = await store.alerts(cid)
        kinds = [a["kind"] for a in alerts]
        assert kinds.count("link_shared") == 20 and "banned_returning" in kinds
        assert alerts[0]["id"] == "shared59"  # newest first
