"""Two gateway processes (two apps, each with its own pub/sub listener and sockets)
sharing one Redis: the teacher on one, the students on the other."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from .helpers import host_control, make_class, next_message, open_link, running_gateway


async def test_teacher_on_a_student_on_b(tmp_path: Path, redis_url: str, redis_prefix: str,
                                         redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as a, \
            running_gateway(tmp_path, redis_url, redis_prefix) as b:
        api = a.api(await a.staff_user("co.lan"))
        cid, links = await make_class(a, api)
        teacher = await host_control(api, cid)

        phone = b.client()
        _, body = await open_link(phone, links[0])
        assert body["status"] == "waiting"
        knock = await next_message(teacher, type_="knock")  # crossed processes
        ws = await phone.ws_connect(body["ws"])
        await next_message(ws, type_="waiting")
        await teacher.send_json({"action": "admit", "ticket": knock["ticket"]})
        admitted = await next_message(ws, type_="admitted")
        r = await phone.get(admitted["redirect"], allow_redirects=False)
        assert r.status == 302

        # a second student on B, removed from A: B closes their socket at once
        phone2 = b.client()
        _, body = await open_link(phone2, links[1])
        ws2 = await phone2.ws_connect(body["ws"])
        await next_message(ws2, type_="waiting")
        await teacher.send_json({"action": "remove", "student_id": links[1]["student_id"]})
        assert (await next_message(ws2))["type"] == "removed"
        closed = await ws2.receive()
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

        # the device binding made on B is enforced on A
        _, body = await open_link(a.client(), links[0])
        assert body["reason"] == "device_mismatch"
        alert = await next_message(teacher, type_="alert")
        assert alert["kind"] == "link_shared"
        await teacher.close()


async def test_signing_out_closes_control_socket_on_other_process(
    tmp_path: Path, redis_url: str, redis_prefix: str, redis
) -> None:
    from .helpers import TEACHER_PASSWORD

    async with running_gateway(tmp_path, redis_url, redis_prefix) as a, \
            running_gateway(tmp_path, redis_url, redis_prefix) as b:
        api = a.api(await a.staff_user("co.lan"))
        cid, _ = await make_class(a, api)
        browser = b.client()
        r = await browser.post("/api/v1/session",
                               json={"username": "co.lan", "password": TEACHER_PASSWORD})
        csrf = (await r.json())["csrf_token"]
        ws = await host_control(browser, cid)
        # a cross-site page cannot open the control socket with the cookie
        evil = await browser.get(f"/api/v1/classes/{cid}/control",
                                 headers={"Origin": "https://evil.example", "Upgrade": "websocket",
                                          "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert evil.status == 403
        # sign out through process A: the socket on B closes
        cookie = browser.cookie_jar.filter_cookies(b.server.make_url("/"))["cg_session"].value
        other = a.client()
        other.cookie_jar.update_cookies({"cg_session": cookie}, a.server.make_url("/"))
        r = await other.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
        assert r.status == 204
        msg = await ws.receive(timeout=5)
        while msg.type == aiohttp.WSMsgType.TEXT:  # events already on their way
            msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4401
