"""Two ``classguard serve`` processes behind a real nginx, on one Redis.

nginx is configured from ``deploy/nginx/classguard.conf.template``, rendered three times
so the routing is deterministic: site ``a`` reaches only gateway A, site ``b`` only
gateway B, and site ``lb`` is the production shape (both gateways, round robin, retry on
a failed connect). The gateways trust only nginx's address for X-Forwarded-For.

NOTE: on loopback the test client and nginx share 127.0.0.1, which the gateways trust,
so an X-Forwarded-For sent by the client is believed. That is what lets one machine play
students at different addresses; in production clients never come from a trusted proxy
address and their forged headers are ignored (see the template).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_sync

from tests.conftest import require_program
from tests.gateway.helpers import next_event

from .cluster import (
    Nginx,
    Proc,
    free_port,
    gateway_env,
    make_teacher,
    run_cli,
    share_keys,
    start_gateway,
    start_nginx,
    write_nginx,
)

pytestmark = pytest.mark.slow

ROSTER = [
    {"name": "Nguyễn Văn An", "external_id": "HS001"},
    {"name": "Trần Thị Bình", "external_id": "HS002"},
    {"name": "Lê Hoàng Cường", "external_id": "HS003"},
]


@dataclass
class Cluster:
    nginx: Nginx
    gateways: dict[str, Proc]
    envs: dict[str, dict[str, str]]
    token: str
    tmp: Path

    def url(self, site: str) -> str:
        return self.nginx.url(site)

    def ws_url(self, site: str, path: str) -> str:
        return self.url(site).replace("http://", "ws://") + path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Cluster]:
    nginx = require_program("nginx")
    tmp = tmp_path_factory.mktemp("two-gateways")
    prefix = f"cgt:{uuid.uuid4().hex[:12]}:"
    ports = {"a": free_port(), "b": free_port()}
    ng = write_nginx(tmp / "nginx",
                     {"a": [ports["a"]], "b": [ports["b"]], "lb": [ports["a"], ports["b"]]})
    public = ng.url("lb")
    envs = {
        name: gateway_env(tmp / name, redis_url=redis_url, redis_prefix=prefix,
                          public_url=public, node_id=f"gw-{name}")
        for name in ports
    }
    run_cli(["init"], envs["a"])
    token = make_teacher(envs["a"])
    share_keys(tmp / "a", tmp / "b")  # what the Kubernetes Secret does for every replica
    gws: dict[str, Proc] = {}
    try:
        for name, port in ports.items():
            gws[name] = start_gateway(envs[name], port, tmp / f"{name}.log", f"gateway {name}")
        start_nginx(nginx, ng)
        yield Cluster(ng, gws, envs, token, tmp)
    finally:
        if ng.proc is not None:
            ng.proc.stop()
        for p in gws.values():
            p.stop()
        client = redis_sync.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
        client.close()


# --- clients ----------------------------------------------------------------------------


def class_body(preset: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "title": "Toán 10A1",
        "platform": {"kind": "generic", "url": "https://meet.example.org/abc"},
        "schedule": {"starts_at": (now - timedelta(minutes=5)).isoformat(),
                     "ends_at": (now + timedelta(hours=2)).isoformat(),
                     "term_ends_at": (now + timedelta(days=60)).isoformat()},
        "policy": {"preset": preset},
    }


def token_of(link: dict[str, Any]) -> str:
    return str(link["url"]).rsplit("/j/", 1)[1]


class Phone:
    """One student's device: its device cookie and its (simulated) address."""

    def __init__(self, http: aiohttp.ClientSession, c: Cluster, ip: str) -> None:
        self.http = http
        self.c = c
        self.ip = ip
        self.device: str | None = None

    def headers(self) -> dict[str, str]:
        h = {"X-Forwarded-For": self.ip, "Accept": "application/json",
             "User-Agent": "Mozilla/5.0 (Linux; Android 13; Mobile) Chrome/120"}
        if self.device:
            h["Cookie"] = f"cg_dev={self.device}"
        return h

    async def open(self, site: str, token: str) -> tuple[int, dict[str, Any]]:
        r = await self.http.get(f"{self.c.url(site)}/j/{token}", headers=self.headers(),
                                allow_redirects=False)
        if "cg_dev" in r.cookies and self.device is None:
            self.device = r.cookies["cg_dev"].value
        return r.status, await r.json()

    async def wait_socket(self, site: str, path: str) -> aiohttp.ClientWebSocketResponse:
        return await self.http.ws_connect(self.c.ws_url(site, path), headers=self.headers())

    async def go(self, site: str, redirect: str) -> aiohttp.ClientResponse:
        return await self.http.get(f"{self.c.url(site)}{redirect}", headers=self.headers(),
                                   allow_redirects=False)


async def next_json(ws: aiohttp.ClientWebSocketResponse, type_: str | None = None,
                    within: float = 5.0) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        while True:
            data = await next_event(ws)  # a frame may carry several events
            if type_ is None or data.get("type") == type_:
                return data
    return await asyncio.wait_for(read(), within)


async def closed(ws: aiohttp.ClientWebSocketResponse, within: float = 10.0) -> None:
    async def drain() -> None:
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                return
    await asyncio.wait_for(drain(), within)


class Teacher:
    def __init__(self, http: aiohttp.ClientSession, c: Cluster, site: str) -> None:
        self.http = http
        self.c = c
        self.site = site
        self.auth = {"Authorization": f"Bearer {c.token}"}
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def make_class(self, preset: str = "strict") -> tuple[str, list[dict[str, Any]]]:
        base = self.c.url(self.site)
        r = await self.http.post(f"{base}/api/v1/classes", json=class_body(preset),
                                 headers=self.auth)
        assert r.status == 201, await r.text()
        cid = (await r.json())["id"]
        r = await self.http.put(f"{base}/api/v1/classes/{cid}/roster", json=ROSTER,
                                headers=self.auth)
        assert r.status == 200, await r.text()
        r = await self.http.post(f"{base}/api/v1/classes/{cid}/links", json={},
                                 headers=self.auth)
        assert r.status == 200, await r.text()
        return cid, (await r.json())["links"]

    async def control(self, cid: str) -> aiohttp.ClientWebSocketResponse:
        self.ws = await self.http.ws_connect(
            self.c.ws_url(self.site, f"/api/v1/classes/{cid}/control"), headers=self.auth)
        assert (await next_json(self.ws))["type"] == "state"
        return self.ws

    async def act(self, **action: Any) -> dict[str, Any]:
        assert self.ws is not None
        req = uuid.uuid4().hex[:8]
        await self.ws.send_str(json.dumps({"id": req, **action}))
        while True:
            msg = await next_json(self.ws)
            if msg.get("id") == req:
                assert msg["type"] == "result", msg
                return msg

    async def knock(self, student_id: str) -> dict[str, Any]:
        assert self.ws is not None
        while True:
            msg = await next_json(self.ws, "knock")
            if msg["student_id"] == student_id:
                return msg

    async def state(self, cid: str) -> dict[str, Any]:
        r = await self.http.get(f"{self.c.url(self.site)}/api/v1/classes/{cid}/state",
                                headers=self.auth)
        assert r.status == 200, await r.text()
        data: dict[str, Any] = await r.json()
        return data


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def upstreams_in_log(c: Cluster, marker: str) -> set[str]:
    """Upstream addresses nginx used for requests whose logged URI starts with marker."""
    out = set()
    for line in c.nginx.access_log.read_text().splitlines():
        if f" {marker}" in line:
            out.add(line.split()[-2])
    return out


# --- tests ------------------------------------------------------------------------------


async def test_teacher_on_one_process_admits_student_on_the_other(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    teacher = Teacher(http, cluster, "b")
    cid, links = await teacher.make_class("strict")
    await teacher.control(cid)
    phone = Phone(http, cluster, "203.0.113.10")
    token = token_of(links[0])
    status, body = await phone.open("a", token)
    assert status == 200 and body["status"] == "waiting", body
    ws = await phone.wait_socket("a", body["ws"])
    assert (await next_json(ws))["type"] == "waiting"

    knock = await teacher.knock(links[0]["student_id"])
    assert knock["ticket"] == body["ticket"]
    await teacher.act(action="admit", ticket=knock["ticket"])
    msg = await next_json(ws, "admitted")
    r = await phone.go("a", msg["redirect"])
    assert r.status == 302 and r.headers["Location"] == "https://meet.example.org/abc"
    await ws.close()

    # nginx really sent the student to A and the teacher to B; no token in its log.
    a = f"127.0.0.1:{cluster.gateways['a'].port}"
    b = f"127.0.0.1:{cluster.gateways['b'].port}"
    for _ in range(50):  # nginx logs a WebSocket when it ends
        if upstreams_in_log(cluster, "/ws/wait/"):
            break
        await asyncio.sleep(0.1)
    assert upstreams_in_log(cluster, "/ws/wait/") == {a}
    assert upstreams_in_log(cluster, "/api/v1/classes") == {b}
    assert token not in cluster.nginx.access_log.read_text()


async def test_rate_limits_are_shared_by_both_processes(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    async def attempt(site: str, ip: str) -> int:
        r = await http.get(f"{cluster.url(site)}/j/not-a-token",
                           headers={"X-Forwarded-For": ip, "Accept": "application/json"})
        await r.read()
        return r.status

    ip = "198.51.100.7"
    statuses = {"a": [], "b": []}  # type: dict[str, list[int]]
    for i in range(40):
        site = "ab"[i % 2]
        statuses[site].append(await attempt(site, ip))
    allowed = sum(s != 429 for v in statuses.values() for s in v)
    # One bucket of 20 per address (plus what refills during the loop), shared through
    # Redis: two independent per-process limiters would have let 40 through.
    assert allowed <= 26, statuses
    assert 429 in statuses["a"] and 429 in statuses["b"], statuses
    # The limit is per client address (from X-Forwarded-For), not per nginx.
    assert await attempt("a", "198.51.100.8") == 403
    assert await attempt("b", "198.51.100.9") == 403


async def test_a_ban_made_on_one_process_holds_on_the_other(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    teacher = Teacher(http, cluster, "b")
    cid, links = await teacher.make_class("strict")
    await teacher.control(cid)
    intruder = Phone(http, cluster, "203.0.113.66")
    token = token_of(links[1])
    status, body = await intruder.open("a", token)
    assert body["status"] == "waiting"
    ws = await intruder.wait_socket("a", body["ws"])
    await next_json(ws, "waiting")
    knock = await teacher.knock(links[1]["student_id"])

    result = await teacher.act(action="ban", ticket=knock["ticket"], scope="both")
    assert result["ok"] is True and result.get("banned"), result
    removed = await next_json(ws)
    assert removed["type"] == "removed", removed
    await closed(ws)

    # Same device, either process: refused.
    for site in ("a", "b", "lb"):
        status, body = await intruder.open(site, token)
        assert status == 403 and body["status"] == "denied", (site, body)
        assert body["reason"] in ("banned_device", "banned_ip"), (site, body)
    # A fresh device from the banned address, through the other process: refused too.
    other = Phone(http, cluster, "203.0.113.66")
    status, body = await other.open("a", token_of(links[2]))
    assert status == 403 and body["reason"] == "banned_ip", body


async def test_killing_a_process_mid_class_keeps_places_and_admissions(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    teacher = Teacher(http, cluster, "b")
    cid, links = await teacher.make_class("strict")
    await teacher.control(cid)
    admitted = Phone(http, cluster, "203.0.113.21")
    waiting = Phone(http, cluster, "203.0.113.22")
    tok1, tok2 = token_of(links[0]), token_of(links[1])

    _, b1 = await admitted.open("a", tok1)
    ws1 = await admitted.wait_socket("a", b1["ws"])
    await next_json(ws1, "waiting")
    knock1 = await teacher.knock(links[0]["student_id"])
    await teacher.act(action="admit", ticket=knock1["ticket"])
    await next_json(ws1, "admitted")
    _, b2 = await waiting.open("a", tok2)
    ws2 = await waiting.wait_socket("a", b2["ws"])
    await next_json(ws2, "waiting")
    await teacher.knock(links[1]["student_id"])

    # kill -9: no shutdown code runs; nginx sees the upstream connections drop.
    cluster.gateways["a"].stop(kill=True)
    await closed(ws1)
    await closed(ws2)

    # The students' pages reconnect through the balanced site, which skips the dead
    # process. Place and admission are in Redis, so nothing is lost.
    status, again2 = await waiting.open("lb", tok2)
    assert status == 200 and again2["status"] == "waiting", again2
    assert again2["ticket"] == b2["ticket"]  # same ticket: same place in the queue
    ws2 = await waiting.wait_socket("lb", again2["ws"])
    assert (await next_json(ws2))["type"] == "waiting"

    status, again1 = await admitted.open("lb", tok1)
    assert status == 200 and again1["status"] == "admitted", again1
    r = await admitted.go("lb", again1["redirect"])
    assert r.status == 302

    state = await teacher.state(cid)
    waiting_ids = [w["student_id"] for w in state["waiting"]]
    admitted_ids = [a["student_id"] for a in state["admitted"]]
    assert links[1]["student_id"] in waiting_ids, state
    assert links[0]["student_id"] in admitted_ids, state

    # The teacher (on B) admits the waiting student, now also served by B.
    await teacher.act(action="admit", ticket=b2["ticket"])
    msg = await next_json(ws2, "admitted")
    r = await waiting.go("lb", msg["redirect"])
    assert r.status == 302
    await ws2.close()

    # A restarted process on the same data dir and Redis serves again at once.
    a = cluster.gateways["a"]
    cluster.gateways["a"] = start_gateway(cluster.envs["a"], a.port,
                                          cluster.tmp / "a-restarted.log", "gateway a")
    status, body = await Phone(http, cluster, "203.0.113.23").open("a", token_of(links[2]))
    assert status == 200 and body["status"] == "waiting", body
