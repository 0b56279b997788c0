"""Janus end to end: class creation -> admission -> /go -> a real Janus lets the student in
with the gateway's token; presence, removal and the event handler, all on real servers."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.hostctl import HostControls
from gateway.janus_runner import JanusConfig, free_port
from gateway.routes.platform_hooks import HOOK_SECRETS
from gateway.services import services_of
from meeting_adapters.egress import EgressPolicy
from meeting_adapters.janus import JanusClient, hook_credentials
from tests.gateway.helpers import audit_events, running_gateway

from .conftest import RunningJanus, start_janus, stop_janus
from .gateway_flow import action, alerts, create_class, enter
from .janus_peer import Peer

# The fakes and Janus of these tests listen on loopback: the operator setting allows it.
LOCAL_PLATFORMS = ["127.0.0.1/32"]

CLIENT = "https://meet.example.org/room?r={room}&id={id}&t={token}&n={display}"


def janus_platform(janus: RunningJanus | JanusConfig) -> dict[str, Any]:
    return {"kind": "janus", "ws_url": janus.ws_url, "client_url": CLIENT,
            "admin_key": janus.admin_key}


async def room_secret(gw: Any, cid: str) -> str:
    info = await gw.svc.store.get_class(cid)
    _, room = HostControls(gw.svc).adapter_and_room(info)
    return str(room.data["secret"])


def q(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def test_janus_class_to_student_entry(tmp_path: Path, redis_url: str, redis_prefix: str,
                                            janus: RunningJanus) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=LOCAL_PLATFORMS) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        klass, links = await create_class(gw, api, janus_platform(janus),
                                          auto_remove_intruders=True)
        cid = klass["id"]
        assert set(klass["platform"]["capabilities"]) >= {"enforced_entry", "remove", "presence"}
        assert "admin_key" not in str(klass)
        _, go = await enter(gw, api, cid, links[0])
        assert go.status == 302
        cred = q(go.headers["Location"])
        assert cred["n"] == links[0]["name"]  # the roster name, never typed input
        room = int(cred["r"])

        async with Peer(janus.ws_url) as stranger:
            assert (await stranger.join(room, None, "guess")).get("error_code") == 433
        async with Peer(janus.ws_url) as student:
            joined = await student.join(room, int(cred["id"]), cred["t"], cred["n"])
            assert joined["videoroom"] == "joined"

            info = await gw.svc.store.get_class(cid)  # type: ignore[union-attr]
            assert info is not None
            intruders = await gw.svc.reconciler.reconcile(info)
            assert intruders == []
            # the token was single use: retired once the join was seen
            async with Peer(janus.ws_url) as copycat:
                assert (await copycat.join(room, 424242, cred["t"])).get("error_code") == 433

            # the teacher removes the student: Janus kicks them
            res = await action(api, cid, action="remove", student_id=links[0]["student_id"])
            assert res["upstream"] == "done", res
            pushed = await student.next_push()
            assert pushed["plugindata"]["data"].get("reason") == "kicked"

        # a second student's token passed on and used under another id: flagged and removed
        _, go2 = await enter(gw, api, cid, links[1])
        cred2 = q(go2.headers["Location"])
        async with Peer(janus.ws_url) as friend:
            assert (await friend.join(room, 99, cred2["t"], "Bạn"))["videoroom"] == "joined"
            intruders = await gw.svc.reconciler.reconcile(info)
            assert [p.upstream_id for p in intruders] == ["99"]
            assert (await friend.next_push())["plugindata"]["data"].get("reason") == "kicked"
        found = await alerts(api, cid, "intruder_in_room")
        assert found and found[0]["action"] == "removed" and found[0]["upstream_id"] == "99"
        # the removal upstream was announced by its intent before it happened
        it = gw.api(await gw.staff_user("it.hung", role="it"))
        removed = await audit_events(it, **{"class": cid, "type": "presence.intruder"})
        assert removed and removed[0]["facts"]["action"] == "removed", removed
        intents = await audit_events(it, **{"class": cid, "type": "intent"})
        announced = [e for e in intents
                     if e["facts"].get("intent") == removed[0]["facts"]["intent"]]
        assert len(announced) == 1 and announced[0]["index"] < removed[0]["index"]
        assert announced[0]["facts"]["action"] == "presence.intruder"

        res = await action(api, cid, action="end")
        assert res["upstream"] == "done"
        async with Peer(janus.ws_url) as late:
            assert (await late.join(room, 1, "x")).get("error_code") == 426


async def test_janus_event_handler_retires_tokens(tmp_path: Path, redis_url: str,
                                                  redis_prefix: str) -> None:
    proc = None
    try:
        async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=LOCAL_PLATFORMS) as gw:
            proc = await _event_test(gw, tmp_path)
    finally:
        if proc is not None:
            await asyncio.to_thread(stop_janus, proc)


async def _event_test(gw: Any, tmp_path: Path) -> Any:
    """Returns the Janus process, stopped by the caller once the gateway is closed (Janus
    posts events until it stops)."""
    secret = gw.server.app[HOOK_SECRETS].values["janus"]
    base = free_port() % 500
    port = free_port()
    user, password = hook_credentials(secret, f"ws://127.0.0.1:{port}")
    cfg = JanusConfig(ws_port=port, event_url=gw.url("/hooks/janus"), event_user=user,
                      event_password=password, rtp_min=30000 + base * 20,
                      rtp_max=30019 + base * 20)
    proc = start_janus(tmp_path / "janus-evh", cfg)
    try:
        # the endpoint refuses anyone without the password
        anon = gw.client()
        r = await anon.post("/hooks/janus", json=[])
        assert r.status == 401
        # neither a wrong password nor the bare hook secret (the old shared credential)
        for pair in (f"{user}:wrong", f"janus:{secret}", f"{user}:{secret}"):
            bad = base64.b64encode(pair.encode()).decode()
            r = await anon.post("/hooks/janus", json=[],
                                headers={"Authorization": f"Basic {bad}"})
            assert r.status == 401

        api = gw.api(await gw.staff_user("co.lan"))
        klass, links = await create_class(gw, api, janus_platform(cfg))
        cid = klass["id"]
        _, go = await enter(gw, api, cid, links[0])
        cred = q(go.headers["Location"])
        room = int(cred["r"])
        async with Peer(cfg.ws_url) as student:
            assert (await student.join(room, int(cred["id"]), cred["t"]))["videoroom"] == \
                "joined"
            # Janus posts the "joined" event (with the token) to the gateway, which
            # retires the token: watch the room's allowed list empty itself.
            probe = JanusClient(cfg.ws_url, egress=EgressPolicy.from_settings(LOCAL_PLATFORMS))
            await probe.connect()
            try:
                secret_of_room = await room_secret(gw, cid)
                for _ in range(100):
                    listed = await probe.request({"request": "allowed", "action": "add",
                                                  "room": room, "secret": secret_of_room,
                                                  "allowed": []})
                    if cred["t"] not in listed["allowed"]:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the token was not retired after the join event")
            finally:
                await probe.close()
            # Janus itself now refuses the used token
            async with Peer(cfg.ws_url) as copycat:
                assert (await copycat.join(room, 5150, cred["t"])).get("error_code") == 433
    finally:
        await gw.svc.adapter_pools["janus"].aclose()
    return proc


async def test_demo_uses_a_local_janus(tmp_path: Path, redis_url: str,
                                       redis_prefix: str) -> None:
    """`classguard demo` with the janus program: a loopback Janus, a Janus class, a client
    page allowed to reach that Janus only."""
    from tests.conftest import require_program

    require_program("janus")
    from aiohttp.test_utils import TestServer

    from gateway.app import create_app
    from gateway.config import load_settings
    from gateway.demo import DEMO_JANUS, add_demo, announcement

    settings = load_settings({"data_dir": str(tmp_path / "data"), "redis_url": redis_url,
                              "redis_prefix": redis_prefix, "public_url": "http://127.0.0.1:9",
                              "cookie_secure": False}, {}, None)
    app = create_app(settings)
    add_demo(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        out = announcement(app) or ""
        assert "Meeting:         janus" in out, out
        ws_url = app[DEMO_JANUS].ws_url
        async with Peer(ws_url) as p:  # the Janus is up, and refuses a tokenless join
            classes = await services_of(app).store.classes_of_owner("teacher")
            _, room = HostControls(services_of(app)).adapter_and_room(classes[0])
            assert (await p.join(int(room.upstream_id), None, None)).get("error_code") == 433
        import aiohttp

        async with aiohttp.ClientSession() as s:
            r = await s.get(server.make_url("/demo/janus?room=1&id=2&token=t&name=x"))
            assert r.status == 200
            # the browser reaches Janus through the gateway (a phone has no loopback Janus)
            assert "ws://127.0.0.1:9/demo/janus/ws" in r.headers["Content-Security-Policy"]
            async with s.ws_connect(server.make_url("/demo/janus/ws"),
                                    protocols=("janus-protocol",)) as relayed:
                await relayed.send_json({"janus": "info", "transaction": "t1"})
                info = await relayed.receive_json(timeout=10)
                assert info["janus"] == "server_info" and info["transaction"] == "t1"
            assert "camera=(self)" in r.headers["Permissions-Policy"]
            r = await s.get(server.make_url("/static/janus_room.js"))
            assert r.status == 200
        proc = app[DEMO_JANUS].process
    finally:
        await server.close()
    assert proc is not None and proc._proc is None  # stopped with the app
