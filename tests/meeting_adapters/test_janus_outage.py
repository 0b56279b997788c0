"""Janus killed while a class runs: students admitted meanwhile get a clear page and no
credential, nobody is let in upstream, and presence reconciliation resumes once Janus is
back (a real Janus from the Debian package, killed with -9 and started again)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from gateway.janus_runner import JanusConfig, free_port
from tests.gateway.helpers import open_link, running_gateway

from .conftest import start_janus, stop_janus
from .gateway_flow import alerts, create_class, enter
from .janus_peer import Peer
from .test_e2e_janus import janus_platform, q


async def _admit(api: Any, cid: str, phone: Any, link: dict[str, Any]) -> dict[str, Any]:
    status, body = await open_link(phone, link)
    assert status == 200 and body["status"] == "waiting", body
    r = await api.post(f"/api/v1/classes/{cid}/actions",
                       json={"action": "admit", "ticket": body["ticket"]})
    assert r.status == 200, await r.text()
    status, body = await open_link(phone, link)
    assert body["status"] == "admitted", body
    return body


async def test_janus_killed_while_a_class_runs(tmp_path: Path, redis_url: str,
                                               redis_prefix: str) -> None:
    base = free_port() % 500
    cfg = JanusConfig(ws_port=free_port(), rtp_min=36000 + base * 20,
                      rtp_max=36019 + base * 20)
    folder = tmp_path / "janus"
    proc = start_janus(folder, cfg)
    try:
        # the Janus of this test listens on loopback: the operator setting allows it
        async with running_gateway(tmp_path, redis_url, redis_prefix,
                                   platform_allow_networks=["127.0.0.1/32"]) as gw:
            reconciler = gw.svc.reconciler
            reconciler.attempts, reconciler.retry_base_s = 1, 0.05  # keep the test short
            api = gw.api(await gw.staff_user("co.lan"))
            klass, links = await create_class(gw, api, janus_platform(cfg))
            cid = klass["id"]
            info = await gw.svc.store.get_class(cid)
            _, go = await enter(gw, api, cid, links[0])
            assert go.status == 302
            assert await reconciler.reconcile(info) == []

            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # a student admitted now: a clear page, in Vietnamese, and no credential
            phone = gw.client()
            body = await _admit(api, cid, phone, links[1])
            r = await phone.get(body["redirect"], allow_redirects=False,
                                headers={"Accept": "text/html"})
            assert r.status == 503 and "Location" not in r.headers
            page = await r.text()
            assert 'data-reason="platform_down"' in page
            assert "Không kết nối được tới phòng học trực tuyến" in page
            assert "meet.example.org" not in page
            _status, body = await open_link(phone, links[1])
            r = await phone.get(body["redirect"], allow_redirects=False,
                                headers={"Accept": "application/json"})
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "platform_unreachable"
            # presence cannot be checked meanwhile: no verdict, and the teacher is told
            assert await reconciler.reconcile(info) is None
            assert await reconciler.reconcile(info) is None
            assert await alerts(api, cid, "platform_unreachable")

            proc = await asyncio.to_thread(start_janus, folder, cfg)
            # Janus is back (its rooms forgotten): the student gets in, presence resumes
            assert await reconciler.reconcile(info) is not None
            assert await alerts(api, cid, "platform_reachable")
            _status, body = await open_link(phone, links[1])
            go = await phone.get(body["redirect"], allow_redirects=False,
                                 headers={"Accept": "application/json"})
            assert go.status == 302, await go.text()
            cred = q(go.headers["Location"])
            async with Peer(cfg.ws_url) as student:
                joined = await student.join(int(cred["r"]), int(cred["id"]), cred["t"],
                                            cred["n"])
                assert joined["videoroom"] == "joined", joined
                assert await reconciler.reconcile(info) == []
            # and an intruder is caught again: the third student's token under another id
            _, go3 = await enter(gw, api, cid, links[2])
            cred3 = q(go3.headers["Location"])
            async with Peer(cfg.ws_url) as friend:
                assert (await friend.join(int(cred3["r"]), 77, cred3["t"], "Bạn"))[
                    "videoroom"] == "joined"
                intruders = await reconciler.reconcile(info)
                assert intruders is not None and [p.upstream_id for p in intruders] == ["77"]
    finally:
        await asyncio.to_thread(stop_janus, proc)
