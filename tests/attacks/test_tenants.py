"""Tenant isolation between schools that share one gateway, through the platform layer:
a teacher of another school who knows a school's Zoom ids (identifiers, not secrets) or
runs a Janus that answers with another class's room number.

Two schools on a real gateway (in process, real Redis), Zoom as the local Zoom API server
of ``tests/fakes/zoom.py``, the attacker's own servers on loopback. The operator allows
loopback platforms explicitly (``platform_allow_networks``), as for a school network.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fakes.janus import FakeJanus
from tests.fakes.zoom import FakeZoom
from tests.gateway.helpers import Gateway, running_gateway
from tests.meeting_adapters.gateway_flow import alerts, class_with, create_class

LOCAL_PLATFORMS = ["127.0.0.1/32"]
CLIENT_URL = "https://meet.example.org/room?r={room}&id={id}&t={token}&n={display}"


class AttackerApi:
    """The attacker's "Zoom API": records every Authorization header it is sent and
    answers like Zoom, so the gateway carries on and sends more."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._any)
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def _any(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization", ""))
        if request.path.endswith("/oauth/token"):
            return web.json_response({"access_token": "attacker-token", "expires_in": 3599})
        return web.json_response({"id": 81234567890}, status=201)

    async def start(self) -> str:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        return self.base

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def gateway(tmp_path: Path, redis_url: str, redis_prefix: str) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=LOCAL_PLATFORMS) as gw:
        yield gw


# --- 1: Zoom tokens ----------------------------------------------------------------------


async def test_zoom_token_of_one_school_never_reaches_another(gateway: Gateway) -> None:
    gw = gateway
    school_zoom = FakeZoom("acct-truong-a", "client-truong-a", "real-secret-of-truong-a",
                           "webhook-secret-a")
    attacker = AttackerApi()
    await school_zoom.start()
    await attacker.start()
    try:
        teacher = gw.api(await gw.staff_user("co.lan", org="truong-a"))
        mallory = gw.api(await gw.staff_user("thay.ke", org="truong-b"))
        genuine = {"kind": "zoom", "account_id": school_zoom.account_id,
                   "client_id": school_zoom.client_id,
                   "client_secret": school_zoom.client_secret,
                   "host_user": school_zoom.host_user,
                   "registrant_email_domain": "students.truong-a.example",
                   "api_url": f"{school_zoom.base}/v2/",
                   "oauth_url": f"{school_zoom.base}/oauth/token"}
        await create_class(gw, teacher, genuine)  # the school's token is now cached
        assert len(school_zoom.tokens) == 1

        # The other school's teacher names the same (public) ids, any secret, their own API.
        forged = {**genuine, "client_secret": "anything-at-all",
                  "registrant_email_domain": "students.truong-b.example",
                  "api_url": f"{attacker.base}/v2/"}
        r = await mallory.post("/api/v1/classes", json=class_with(forged))
        body = await r.json()
        # Zoom itself refused the wrong secret; the teacher sees a generic message only.
        assert r.status == 502 and body["error"]["code"] == "platform_refused", body
        assert "client_id" not in body["error"]["message"]
        sent = " ".join(attacker.authorizations)
        for token in school_zoom.tokens:
            assert token not in sent, "a school's Zoom token was sent to another school's API"

        # Even with the right secret, a token is only sent to the API it was minted for:
        # the same account on another API URL gets a token of its own.
        (minted,) = school_zoom.tokens
        twin = {**genuine, "api_url": f"{attacker.base}/v2/"}
        r = await teacher.post("/api/v1/classes", json=class_with(twin))
        assert r.status == 201, await r.text()
        (fresh,) = school_zoom.tokens - {minted}
        assert f"Bearer {fresh}" in attacker.authorizations
        assert f"Bearer {minted}" not in attacker.authorizations
    finally:
        await attacker.stop()
        await school_zoom.stop()


# --- 8: Janus room numbers ---------------------------------------------------------------


def _janus_platform(ws_url: str) -> dict[str, Any]:
    return {"kind": "janus", "ws_url": ws_url, "client_url": CLIENT_URL}


async def _post_joined(gw: Gateway, ws_url: str, room: int, pid: int, name: str) -> int:
    """What the event handler of the Janus at ``ws_url`` posts when someone joins."""
    from meeting_adapters.janus import hook_credentials

    user, password = hook_credentials(_hook_secret(gw), ws_url)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    event = [{"emitter": "janus", "type": 64, "timestamp": 1, "session_id": 1, "handle_id": 2,
              "event": {"plugin": "janus.plugin.videoroom",
                        "data": {"event": "joined", "room": room, "id": pid,
                                 "display": name, "token": f"{pid}-x"}}}]
    async with aiohttp.ClientSession() as s, s.post(
            gw.url("/hooks/janus"), json=event,
            headers={"Authorization": f"Basic {auth}"}) as r:
        return r.status


def _hook_secret(gw: Gateway) -> str:
    from gateway.routes.platform_hooks import HOOK_SECRETS

    return gw.server.app[HOOK_SECRETS].values["janus"]


async def _names(api: aiohttp.ClientSession, cid: str) -> list[str]:
    return [str(a.get("name")) for a in await alerts(api, cid, "intruder_in_room")]


async def test_janus_answering_another_class_room_number_gets_none_of_its_events(
        gateway: Gateway) -> None:
    gw = gateway
    school_janus = FakeJanus()
    await school_janus.start()
    try:
        teacher = gw.api(await gw.staff_user("co.lan", org="truong-a"))
        victim, links = await create_class(gw, teacher, _janus_platform(school_janus.ws_url))
        room = next(iter(school_janus.rooms))

        # The other school's teacher runs a Janus that answers "create" with that number.
        rogue = FakeJanus(room_number=room)
        await rogue.start()
        try:
            mallory = gw.api(await gw.staff_user("thay.ke", org="truong-b"))
            stolen, _ = await create_class(gw, mallory, _janus_platform(rogue.ws_url))
            assert int(next(iter(rogue.rooms))) == room

            # A student of the school joins the school's room (unadmitted, so an alert
            # with the name goes to the class the room belongs to).
            student = links[0]["name"]
            assert await _post_joined(gw, school_janus.ws_url, room, 4242, student) == 200
            for _ in range(100):
                if student in await _names(teacher, victim["id"]):
                    break
                await asyncio.sleep(0.05)
            assert student in await _names(teacher, victim["id"])
            assert student not in await _names(mallory, stolen["id"])

            # The rogue server (given credentials of its own) cannot report on the
            # school's room: its events land in its own class only.
            assert await _post_joined(gw, rogue.ws_url, room, 777, "Người giả") == 200
            await asyncio.sleep(0.3)
            assert "Người giả" not in await _names(teacher, victim["id"])
            # and the school's credentials are no credentials for the rogue server's name
            from meeting_adapters.janus import hook_credentials

            user, password = hook_credentials(_hook_secret(gw),
                                              school_janus.ws_url)
            rogue_user, _ = hook_credentials(_hook_secret(gw), rogue.ws_url)
            forged = base64.b64encode(f"{rogue_user}:{password}".encode()).decode()
            async with aiohttp.ClientSession() as s, s.post(
                    gw.url("/hooks/janus"), json=[],
                    headers={"Authorization": f"Basic {forged}"}) as r:
                assert r.status == 401
            assert user != rogue_user
        finally:
            await rogue.stop()
    finally:
        await gw.svc.adapter_pools["janus"].aclose()
        await school_janus.stop()
