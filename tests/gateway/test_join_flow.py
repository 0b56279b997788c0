"""The join flow and host controls through a real gateway on real Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import both_redis_servers

from .helpers import (
    audit_events,
    host_control,
    make_class,
    next_message,
    open_link,
    running_gateway,
    token_of,
)

# Redis commands differ between 6.2 (the embedded default) and 7: run on both.
redis_url = both_redis_servers(transports=True)


async def test_strict_flow_admit_go_once(tmp_path: Path, redis_url: str, redis_prefix: str,
                                         redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        assert len(links) == 3
        assert all(len(link["code"]) == 11 and link["code"][5] == "-" for link in links)
        # names never travel in the token
        assert "Nguy" not in token_of(links[0])

        teacher_ws = await api.ws_connect(f"/api/v1/classes/{cid}/control")
        state = await next_message(teacher_ws, type_="state")
        assert state["waiting"] == [] and state["host_present"] is True

        phone = gw.client()
        status, body = await open_link(phone, links[0])
        assert status == 200 and body["status"] == "waiting"
        assert body["reason"] == "awaiting_host"
        knock = await next_message(teacher_ws, type_="knock")
        assert knock["ticket"] == body["ticket"] and knock["name"] == links[0]["name"]

        student_ws = await phone.ws_connect(body["ws"])
        assert (await next_message(student_ws))["type"] == "waiting"

        await teacher_ws.send_json({"action": "admit", "ticket": body["ticket"]})
        admitted = await next_message(student_ws, type_="admitted")
        assert admitted["redirect"].startswith("/go/")
        r = await phone.get(admitted["redirect"], allow_redirects=False)
        assert r.status == 302
        assert r.headers["Location"] == "https://meet.example.org/abc"
        # single use
        r = await phone.get(admitted["redirect"], allow_redirects=False)
        assert r.status == 404

        # the state API agrees
        st = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        assert [a["student_id"] for a in st["admitted"]] == [links[0]["student_id"]]

        # reopening the link on the same phone goes straight in
        status, body2 = await open_link(phone, links[0])
        assert body2["status"] == "admitted" and body2["redirect"].startswith("/go/")

        await teacher_ws.close()
        await student_ws.close()


async def test_second_device_refused_and_teacher_alerted(tmp_path: Path, redis_url: str,
                                                         redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        teacher_ws = await host_control(api, cid)
        owner = gw.client()
        status, body = await open_link(owner, links[1])
        assert body["status"] == "waiting"
        intruder = gw.client(user_agent="Mozilla/5.0 (Windows NT 10.0; Win64) Chrome/120")
        status, body = await open_link(intruder, links[1])
        assert status == 403 and body == {"status": "denied", "reason": "device_mismatch"}
        alert = await next_message(teacher_ws, type_="alert")
        assert alert["kind"] == "link_shared" and alert["name"] == links[1]["name"]
        assert alert["device_hint"] == "Windows PC, Chrome"
        # /go nonce of the owner does not work on the intruder's device
        await teacher_ws.send_json({"action": "admit_all"})
        await next_message(teacher_ws, type_="admitted")
        s2, b2 = await open_link(owner, links[1])
        assert b2["status"] == "admitted"
        r = await intruder.get(b2["redirect"], allow_redirects=False)
        assert r.status == 403
        r = await owner.get(b2["redirect"], allow_redirects=False)
        assert r.status == 302
        # the teacher resets the binding: the new device may now bind
        r = await api.post(f"/api/v1/classes/{cid}/actions",
                           json={"action": "remove", "student_id": links[1]["student_id"]})
        assert r.status == 200
        r = await api.post(f"/api/v1/classes/{cid}/actions",
                           json={"action": "reset_device", "student_id": links[1]["student_id"]})
        assert (await r.json())["ok"] is True
        r = await api.post(f"/api/v1/classes/{cid}/actions",
                           json={"action": "admit", "student_id": links[1]["student_id"]})
        assert r.status == 200
        status, body = await open_link(intruder, links[1])
        assert body["status"] == "waiting"
        await teacher_ws.close()


async def test_remove_closes_student_socket_and_blocks_return(
    tmp_path: Path, redis_url: str, redis_prefix: str, redis
) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        phone = gw.client()
        _, body = await open_link(phone, links[2])
        ws = await phone.ws_connect(body["ws"])
        await next_message(ws, type_="waiting")
        r = await api.post(f"/api/v1/classes/{cid}/actions",
                           json={"action": "remove", "student_id": links[2]["student_id"]})
        assert r.status == 200
        msg = await next_message(ws)
        assert msg == {"type": "removed", "reason": "removed_by_host"}
        closed = await asyncio.wait_for(ws.receive(), 5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        status, body = await open_link(phone, links[2])
        assert status == 403 and body["reason"] == "removed_by_host"


async def test_revoke_and_reissue(tmp_path: Path, redis_url: str, redis_prefix: str,
                                  redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        sid = links[0]["student_id"]
        phone = gw.client()
        _, body = await open_link(phone, links[0])
        ws = await phone.ws_connect(body["ws"])
        await next_message(ws, type_="waiting")
        r = await api.post(f"/api/v1/classes/{cid}/links", json={"student_ids": [sid]})
        new = (await r.json())["links"][0]
        assert new["url"] != links[0]["url"] and new["code"] != links[0]["code"]
        msg = await next_message(ws)
        assert msg["type"] == "removed" and msg["reason"] == "token_revoked"
        status, body = await open_link(gw.client(), links[0])
        assert status == 403 and body["reason"] == "token_revoked"
        state = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        assert state["waiting"] == []  # the old link's knock left the waiting room
        # the device the old link was bound to is held for the host and binds nothing
        status, body = await open_link(phone, new)
        assert body["status"] == "waiting" and body["reason"] == "awaiting_host"
        status, body = await open_link(gw.client(), new)
        assert body["status"] == "waiting", body
        r = await api.post(f"/api/v1/classes/{cid}/actions",
                           json={"action": "revoke_link", "student_id": sid})
        assert (await r.json())["revoked"] is True
        status, body = await open_link(phone, new)
        assert body["reason"] == "token_revoked"


async def test_reissue_ends_the_old_links_admission(tmp_path: Path, redis_url: str,
                                                    redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api, preset="standard")
        teacher_ws = await host_control(api, cid)
        phone = gw.client()
        _, body = await open_link(phone, links[0])
        assert body["status"] == "admitted"
        nonce = body["redirect"]
        r = await api.post(f"/api/v1/classes/{cid}/links",
                           json={"student_ids": [links[0]["student_id"]]})
        new = (await r.json())["links"][0]
        removed = await next_message(teacher_ws, type_="removed")
        assert removed["student_id"] == links[0]["student_id"]
        state = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        assert state["admitted"] == []
        r = await phone.get(nonce, headers={"Accept": "application/json"},
                            allow_redirects=False)
        assert r.status == 403 and (await r.json())["error"]["code"] == "go_not_admitted"
        # standard admits on arrival, but not the device bound to the reissued link
        _, body = await open_link(phone, new)
        assert body["status"] == "waiting" and body["reason"] == "awaiting_host"
        _, body = await open_link(gw.client(), links[1])
        assert body["status"] == "admitted"
        await teacher_ws.close()


async def test_standard_preset_admits_when_host_present(
    tmp_path: Path, redis_url: str, redis_prefix: str, redis
) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api, preset="standard")
        phone = gw.client()
        _, body = await open_link(phone, links[0])
        assert body["status"] == "waiting" and body["reason"] == "awaiting_host"
        ws = await phone.ws_connect(body["ws"])
        await next_message(ws, type_="waiting")
        teacher_ws = await host_control(api, cid)
        # the student who waited only for the host is let in when the host arrives
        admitted = await next_message(ws, type_="admitted")
        r = await phone.get(admitted["redirect"], allow_redirects=False)
        assert r.status == 302
        _, body = await open_link(gw.client(), links[1])
        assert body["status"] == "admitted" and body["reason"] == "admitted_by_policy"
        await teacher_ws.close()


async def test_lock_end_and_short_code(tmp_path: Path, redis_url: str, redis_prefix: str,
                                       redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        r = await api.post(f"/api/v1/classes/{cid}/actions", json={"action": "lock"})
        assert r.status == 200
        status, body = await open_link(gw.client(), links[0])
        assert body["reason"] == "class_locked"
        await api.post(f"/api/v1/classes/{cid}/actions", json={"action": "unlock"})
        # the short code leads to the same decision as the link
        kid = gw.client()
        code = links[0]["code"].lower().replace("-", " ")
        r = await kid.post("/join", json={"code": code}, headers={"Accept": "application/json"})
        body = await r.json()
        assert body["status"] == "waiting", body
        r = await kid.post("/join", json={"code": "00000-00000"},
                           headers={"Accept": "application/json"})
        assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_code"
        r = await api.post(f"/api/v1/classes/{cid}/actions", json={"action": "mute_all"})
        assert r.status == 409
        assert (await r.json())["error"]["code"] == "unsupported_by_platform"
        r = await api.post(f"/api/v1/classes/{cid}/actions", json={"action": "end"})
        assert r.status == 200
        status, body = await open_link(kid, links[0])
        assert body["reason"] == "class_ended"


async def test_it_staff_and_other_teacher_cannot_act(tmp_path: Path, redis_url: str,
                                                     redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, _ = await make_class(gw, api)
        other = gw.api(await gw.staff_user("thay.minh"))
        r = await other.post(f"/api/v1/classes/{cid}/actions", json={"action": "lock"})
        assert r.status == 404
        it = gw.api(await gw.staff_user("it.hung", role="it"))
        r = await it.post(f"/api/v1/classes/{cid}/actions", json={"action": "lock"})
        assert r.status == 403
        r = await it.get(f"/api/v1/classes/{cid}/state")
        assert r.status == 200
        anon = gw.client()
        r = await anon.get(f"/api/v1/classes/{cid}/state")
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthenticated"


async def test_rate_limited_refusals_are_aggregated_in_the_audit_log(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        await gw.svc.staff.init_root("school-a")  # type: ignore[union-attr]
        api = gw.api(await gw.staff_user("co.lan"))
        # the deployment's administrator: the refusals name no class, so no school
        admin = gw.api(await gw.staff_user("qt.hoa", role="admin"))
        cid, links = await make_class(gw, api)
        phone = gw.client()
        statuses = [(await open_link(phone, links[0]))[0] for _ in range(25)]
        assert statuses.count(429) == 15  # the link's budget: burst 10
        events = await audit_events(admin, at_least=2, reason="rate_limited", type="join")
        # the 1st and the 10th refusal of the window, not one event per request
        assert [e["facts"]["count"] for e in events] == [10, 1]
        assert {e["facts"]["bucket"] for e in events} == {"jti"}
        assert {e["personal"]["ip"] for e in events} == {"127.0.0.1"}
        assert all("class" not in e for e in events)  # unverified claims name no class


async def test_waiting_room_sockets_newest_wins(tmp_path: Path, redis_url: str,
                                                redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        teacher = await host_control(api, cid)
        phone = gw.client()
        _, body = await open_link(phone, links[0])
        await next_message(teacher, type_="knock")
        sockets = []
        for _ in range(3):
            ws = await phone.ws_connect(body["ws"])
            await next_message(ws, type_="waiting")
            sockets.append(ws)
        # the third socket replaced the first; two stay open
        msg = await sockets[0].receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4009, msg
        # the host is told only when the student's last socket is gone
        await sockets[1].close()
        await sockets[2].send_str("ping")
        assert (await sockets[2].receive(timeout=5)).data == "pong"
        await sockets[2].close()
        left = await next_message(teacher, type_="left")
        assert left["ticket"] == body["ticket"]
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.5):
                await next_message(teacher, type_="left")
        with pytest.raises(asyncio.TimeoutError):  # internal to the gateway processes
            async with asyncio.timeout(0.2):
                await next_message(teacher, type_="socket_replaced")
        # handshakes on one ticket are budgeted: a burst of 4, then 429
        fourth = await phone.ws_connect(body["ws"])
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await phone.ws_connect(body["ws"])
        assert exc.value.status == 429 and int(exc.value.headers["Retry-After"]) >= 1
        await fourth.close()
        await teacher.close()


@pytest.mark.parametrize(("on_host_leave", "action", "reason"), [
    ("lock", "deny", "class_locked"),
    ("pause", "wait", "awaiting_host"),
])
async def test_host_leaving_applies_the_policy_at_once(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis, on_host_leave: str,
        action: str, reason: str) -> None:
    """The host's control room closes: everyone watching is told at once (not when the
    30 s presence lapses), and the class's on_host_leave decides the next arrival."""
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api, "standard", on_host_leave=on_host_leave)
        watcher = gw.api(await gw.staff_user("admin.a", role="admin"))
        watch_ws = await host_control(watcher, cid)
        host_ws = await host_control(api, cid)
        status, body = await open_link(gw.client(), links[0])
        assert (status, body["status"]) == (200, "admitted")

        await host_ws.close()
        await watch_ws.close()
        st = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        assert st["host_present"] is False
        status, body = await open_link(gw.client(), links[1])
        assert body["status"] == {"deny": "denied", "wait": "waiting"}[action], body
        assert body["reason"] == reason



async def test_joins_together_reach_the_teacher_in_frames_of_the_class_s_events(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: aioredis.Redis) -> None:
    """Students of one class opening their links together: the teacher's control socket
    shows every admission exactly once, in frames that are an event or a list of the
    events of one turn; the class's events that reach the process in one turn (here all
    published before it reads) leave in one frame, in order; a later one alone."""
    from gateway.joinflow import JoinFlow

    roster = [{"name": f"Học sinh {i}", "external_id": f"HS{i:03d}"} for i in range(8)]
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api, "standard", roster=roster)
        teacher = await api.ws_connect(f"/api/v1/classes/{cid}/control")
        state = await next_message(teacher, type_="state")
        assert state["host_present"] is True
        await next_message(teacher, type_="state")  # its own arrival, on the bus
        flow = JoinFlow(gw.svc)
        ua = "Mozilla/5.0 (Linux; Android 13; Mobile) Chrome/120"
        outs = await asyncio.gather(*(
            flow.with_token(token_of(link), ip=f"203.0.113.{i}", device_cookie=None,
                            user_agent=ua) for i, link in enumerate(links[:5])))
        assert [o.decision.action.value for o in outs] == ["admit"] * 5
        shown: list[str] = []
        while len(shown) < 5:
            frame = await asyncio.wait_for(teacher.receive_json(), 5)
            events = frame if isinstance(frame, list) else [frame]
            assert len(events) >= 1 and all(e["type"] == "admitted" for e in events), frame
            shown += [e["student_id"] for e in events]
        assert sorted(shown) == sorted(link["student_id"] for link in links[:5])

        # Events of the class that reach the gateway at once (as the join scripts
        # publish them): one frame, in order. Published in one round trip and read by
        # the gateway only after all of them are there.
        bus = gw.svc.bus
        assert bus is not None
        async with redis.pipeline(transaction=False) as p:
            for n in range(6):
                p.publish(*bus.message(cid, {"type": "knock", "ticket": f"t{n}",
                                             "student_id": f"s{n}", "name": f"HS {n}"}))
            await p.execute()
        time.sleep(0.2)  # noqa: ASYNC251 - holds the event loop on purpose
        frame = await asyncio.wait_for(teacher.receive_json(), 5)
        assert [e["ticket"] for e in frame] == [f"t{n}" for n in range(6)]
        await flow.with_token(token_of(links[5]), ip="203.0.113.9", device_cookie=None,
                              user_agent=ua)
        one = await asyncio.wait_for(teacher.receive_json(), 5)
        assert one["type"] == "admitted" and one["student_id"] == links[5]["student_id"]
        await teacher.close()
