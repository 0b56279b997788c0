"""Who is really in the waiting room: a closed page is gone at once, a silent one within
seconds (protocol heartbeats), one whose gateway process died when its mark goes stale;
"admit all" lets in only those still there."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from gateway.routes.join import WAIT_HEARTBEAT_S
from gateway.stores import WAIT_SOCKET_STALE_S, ClassStore, new_id

from .helpers import (
    host_control,
    make_class,
    next_event,
    next_message,
    open_link,
    running_gateway,
)


async def _event(ws: aiohttp.ClientWebSocketResponse, kind: str, *,
                 within: float) -> dict[str, Any]:
    """The next event of ``kind`` on the control socket, waiting up to ``within`` s."""
    async with asyncio.timeout(within):
        while True:
            data = await next_event(ws)  # a frame may carry several events
            if data.get("type") == kind:
                return data


Page = tuple[aiohttp.ClientSession, str, aiohttp.ClientWebSocketResponse]


async def _waiting_with_page(gw: Any, link: dict[str, Any],
                             phone: aiohttp.ClientSession | None = None) -> Page:
    phone = phone or gw.client()
    _, body = await open_link(phone, link)
    assert body["status"] == "waiting", body
    ws = await phone.ws_connect(body["ws"], autoping=False)
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "waiting", first
    return phone, body["ticket"], ws


async def test_closed_page_is_gone_and_admit_all_skips_it(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: aioredis.Redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        teacher = await host_control(api, cid)
        an_phone, an_ticket, an_ws = await _waiting_with_page(gw, links[0])
        _, binh_ticket, binh_ws = await _waiting_with_page(gw, links[1])
        # Cường opened the link from a script and never a page: not "gone".
        _, cuong = await open_link(gw.client(), links[2])
        assert cuong["status"] == "waiting"

        await an_ws.close()
        left = await next_message(teacher, type_="left")
        assert left["ticket"] == an_ticket
        st = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        gone = {w["ticket"]: w["gone"] for w in st["waiting"]}
        assert gone == {an_ticket: True, binh_ticket: False, cuong["ticket"]: False}

        await teacher.send_json({"action": "admit_all", "id": 1})
        result = await next_message(teacher, type_="result")
        assert (result["admitted"], result["skipped_gone"]) == (2, 1)
        st = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        assert [w["ticket"] for w in st["waiting"]] == [an_ticket]
        assert {a["student_id"] for a in st["admitted"]} == {links[1]["student_id"],
                                                             links[2]["student_id"]}
        # Bình's page hears it was admitted.
        msg = await binh_ws.receive_json(timeout=5)
        assert msg["type"] == "admitted"

        # An opens the page again: the host sees them back, and they can be admitted.
        an_again = await _waiting_with_page(gw, links[0], an_phone)
        assert an_again[1] == an_ticket
        back = await next_message(teacher, type_="back")
        assert back["ticket"] == an_ticket
        st = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        assert [w["gone"] for w in st["waiting"]] == [False]
        for ws in (teacher, an_again[2], binh_ws):
            await ws.close()


async def test_a_page_that_stops_answering_is_gone_within_seconds(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: aioredis.Redis) -> None:
    """The page's network dies without a close: its socket answers no ping."""
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        teacher = await host_control(api, cid)
        _, ticket, ws = await _waiting_with_page(gw, links[0])
        started = time.monotonic()
        # autoping=False and nobody reads: the server's pings go unanswered.
        left = await _event(teacher, "left", within=WAIT_HEARTBEAT_S * 2 + 5)
        assert left["ticket"] == ticket
        # (one ping interval, half of one for the pong, and room for a loaded machine)
        assert time.monotonic() - started <= WAIT_HEARTBEAT_S * 1.5 + 8
        st = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        assert [w["gone"] for w in st["waiting"]] == [True]
        await ws.close()
        await teacher.close()


async def test_sockets_of_a_dead_process_go_stale(redis: aioredis.Redis,
                                                  redis_prefix: str) -> None:
    """A socket whose process died is never closed; its mark ages out instead."""
    now = [1_000_000.0]
    store = ClassStore(redis, redis_prefix, clock=lambda: now[0])
    cid = new_id("c")
    ticket_key = store.keys.ticket(cid, "r" * 16)
    await redis.hset(ticket_key, mapping={"student_id": "s1", "status": "waiting"})
    ticket = f"{cid}.{'r' * 16}"
    replaced, back = await store.socket_opened(ticket, "sock1", keep=2)
    assert (replaced, back) == ([], False)
    assert await store.gone_tickets([ticket]) == set()
    now[0] += WAIT_SOCKET_STALE_S - 1
    await store.socket_seen(ticket, "sock1")  # still alive: marked again
    now[0] += WAIT_SOCKET_STALE_S - 1
    assert await store.gone_tickets([ticket]) == set()
    now[0] += 2  # the process died: no more marks
    assert await store.gone_tickets([ticket]) == {ticket}
    # a new page on the ticket is "back"
    replaced, back = await store.socket_opened(ticket, "sock2", keep=2)
    assert back is True and await store.gone_tickets([ticket]) == set()
