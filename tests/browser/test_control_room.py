"""The control room in a real browser when the class's events come several to a frame:
students opening their links together each show up, and a frame that lists several
events shows every one of them."""

from __future__ import annotations

import asyncio
import json
import time

from playwright.async_api import Browser, WebSocket, expect

from gateway.i18n import t
from gateway.joinflow import JoinFlow
from tests.gateway.helpers import Gateway, make_class, token_of

from .conftest import new_context, sign_in

UA = "Mozilla/5.0 (Linux; Android 13; Mobile) Chrome/120"


async def test_the_control_room_shows_each_event_of_a_frame(
        browser: Browser, gateway: Gateway, redis: object) -> None:
    gw = gateway
    vi = "vi"
    token = await gw.staff_user("co.lan", "teacher", org="thpt-a")
    api = gw.api(token)
    roster = [{"name": f"Học sinh {i}", "external_id": f"HS{i:03d}"} for i in range(5)]
    cid, links = await make_class(gw, api, "strict", roster=roster)  # the host admits
    ctx, watch = await new_context(browser)
    page = await ctx.new_page()
    frames: list[object] = []

    def on_socket(ws: WebSocket) -> None:
        if ws.url.endswith("/control"):
            ws.on("framereceived", lambda payload: frames.append(json.loads(payload)))

    page.on("websocket", on_socket)
    await sign_in(page, gw, "co.lan")
    await page.goto(gw.url(f"/classes/{cid}/control"))
    await expect(page.locator("#conn")).to_have_text(t(vi, "control.connected"))

    # Five students open their links together: each knocks, each is listed once.
    flow = JoinFlow(gw.svc)
    outs = await asyncio.gather(*(
        flow.with_token(token_of(link), ip=f"203.0.113.{i}", device_cookie=None,
                        user_agent=UA) for i, link in enumerate(links)))
    assert [o.decision.action.value for o in outs] == ["wait"] * 5
    await expect(page.locator("#nwaiting")).to_have_text("5")
    for i in range(5):
        await expect(page.locator("#waiting").get_by_text(f"Học sinh {i}")).to_have_count(1)

    # The host admits three of them from elsewhere (another device, the API): the
    # three admissions reach the gateway together and leave in one frame, a list.
    bus = gw.svc.bus
    assert bus is not None
    by_student = {link["student_id"]: o.ticket for o, link in zip(outs, links, strict=True)}
    assert all(by_student.values())
    admitted = [link["student_id"] for link in links[:3]]
    async with gw.svc.redis.pipeline(transaction=False) as p:
        for i, sid in enumerate(admitted):
            p.publish(*bus.message(cid, {"type": "admitted", "ticket": by_student[sid],
                                         "student_id": sid, "by": "host",
                                         "name": f"Học sinh {i}"}))
        await p.execute()
    time.sleep(0.2)  # noqa: ASYNC251 - holds the event loop: all three arrive in one turn
    await expect(page.locator("#nadmitted")).to_have_text("3")
    await expect(page.locator("#nwaiting")).to_have_text("2")
    for i in range(3):
        await expect(page.locator("#admitted").get_by_text(f"Học sinh {i}")).to_have_count(1)
    for i in (3, 4):
        await expect(page.locator("#waiting").get_by_text(f"Học sinh {i}")).to_have_count(1)
    lists = [f for f in frames if isinstance(f, list)]
    assert [[e["student_id"] for e in f] for f in lists if f[0]["type"] == "admitted"] == [
        admitted]
    knocks = [e for f in frames for e in (f if isinstance(f, list) else [f])
              if isinstance(e, dict) and e.get("type") == "knock"]
    assert sorted(e["student_id"] for e in knocks) == sorted(x["student_id"] for x in links)
    watch.assert_clean("control room")
    await ctx.close()
