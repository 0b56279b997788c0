"""A running gateway on loopback for functional tests: real app, real Redis, real sockets.

``Gateway`` owns one aiohttp test server; every ``client()`` is a separate browser-like
session with its own cookie jar (a separate device).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.config import load_settings
from gateway.services import Services, services_of

TEACHER_PASSWORD = "correct horse battery staple"


class Gateway:
    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.sessions: list[aiohttp.ClientSession] = []

    @property
    def svc(self) -> Services:
        return services_of(self.server.app)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def client(self, *, user_agent: str = "Mozilla/5.0 (Linux; Android 13; Mobile) Chrome/120",
               headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
        h = {"User-Agent": user_agent}
        h.update(headers or {})
        s = aiohttp.ClientSession(base_url=self.server.make_url(""),
                                  cookie_jar=aiohttp.CookieJar(unsafe=True), headers=h)
        self.sessions.append(s)
        return s

    async def staff_user(self, username: str, role: str = "teacher", org: str = "school-a",
                         parent: str | None = None) -> str:
        """Creates a staff account; returns an API bearer token for it."""
        staff = self.svc.staff
        assert staff is not None
        await staff.ensure_org(org, parent=parent)
        await staff.create_user(username, role=role, org=org, password=TEACHER_PASSWORD)
        return str(await staff.create_api_token(username))

    def api(self, token: str) -> aiohttp.ClientSession:
        return self.client(headers={"Authorization": f"Bearer {token}"})

    async def close(self) -> None:
        for s in self.sessions:
            await s.close()


@asynccontextmanager
async def running_gateway(
    tmp_path: Path, redis_url: str, redis_prefix: str, *, port: int | None = None,
    **overrides: Any
) -> AsyncIterator[Gateway]:
    """The app on loopback. With ``port``, on that port, and ``public_url`` (so every
    link, QR code and token issuer) is that real address, for a browser to open."""
    flags: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
        "public_url": f"http://127.0.0.1:{port}" if port else "http://classguard.test",
        "cookie_secure": False,  # plain http on loopback; production keeps Secure
    }
    flags.update(overrides)
    clock = overrides.pop("clock", None)
    flags.pop("clock", None)
    settings = load_settings(flags, {}, None)
    app = create_app(settings, **({"clock": clock} if clock else {}))
    server = TestServer(app, host="127.0.0.1", **({"port": port} if port else {}))
    await server.start_server()
    gw = Gateway(server)
    try:
        yield gw
    finally:
        await gw.close()
        await server.close()


def class_body(preset: str = "strict", **policy: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "title": "Toán 10A1",
        "platform": {"kind": "generic", "url": "https://meet.example.org/abc"},
        "schedule": {
            "starts_at": (now - timedelta(minutes=5)).isoformat(),
            "ends_at": (now + timedelta(hours=2)).isoformat(),
            "term_ends_at": (now + timedelta(days=60)).isoformat(),
        },
        "policy": {"preset": preset, **policy},
    }


ROSTER = [
    {"name": "Nguyễn Văn An", "external_id": "HS001"},
    {"name": "Trần Thị Bình", "external_id": "HS002"},
    {"name": "Lê Hoàng Cường", "external_id": "HS003"},
]


async def make_class(gw: Gateway, api: aiohttp.ClientSession, preset: str = "strict",
                     roster: list[dict[str, Any]] | None = None,
                     **policy: Any) -> tuple[str, list[dict[str, Any]]]:
    """Creates a class with a roster and links; returns (class_id, links)."""
    r = await api.post("/api/v1/classes", json=class_body(preset, **policy))
    assert r.status == 201, await r.text()
    cid = (await r.json())["id"]
    r = await api.put(f"/api/v1/classes/{cid}/roster", json=roster or ROSTER)
    assert r.status == 200, await r.text()
    r = await api.post(f"/api/v1/classes/{cid}/links", json={})
    assert r.status == 200, await r.text()
    return cid, (await r.json())["links"]


def token_of(link: dict[str, Any]) -> str:
    return str(link["url"]).rsplit("/j/", 1)[1]


async def open_link(
    client: aiohttp.ClientSession, link: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    r = await client.get(f"/j/{token_of(link)}", headers={"Accept": "application/json"},
                         allow_redirects=False)
    return r.status, await r.json()


# Events read from a socket's frame and not yet returned by next_message: the control
# socket sends the events of one event-loop turn as one list (gateway/routes/control.py).
_unread: weakref.WeakKeyDictionary[aiohttp.ClientWebSocketResponse, list[dict[str, Any]]] = (
    weakref.WeakKeyDictionary())


async def next_event(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next event on the socket: a frame's object, or each of a frame's list in turn."""
    pending = _unread.setdefault(ws, [])
    if not pending:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket closed or errored: {msg.type} {msg.data!r}")
        data = json.loads(msg.data)
        if isinstance(data, list):
            assert data and all(isinstance(x, dict) for x in data), data
            pending.extend(data)
        else:
            pending.append(data)
    return pending.pop(0)


async def next_message(ws: aiohttp.ClientWebSocketResponse, *,
                       type_: str | None = None) -> dict[str, Any]:
    """The next JSON message (of ``type_`` if given), within 5 s; a caller that expects
    silence bounds it tighter with ``asyncio.timeout``."""
    async def _read() -> dict[str, Any]:
        while True:
            data = await next_event(ws)
            if type_ is None or data.get("type") == type_:
                return data

    return await asyncio.wait_for(_read(), 5.0)


async def host_control(api: aiohttp.ClientSession, cid: str) -> aiohttp.ClientWebSocketResponse:
    """The teacher's control socket for the class, its first ``state`` message read
    (the host is present from then on)."""
    ws = await api.ws_connect(f"/api/v1/classes/{cid}/control")
    await next_message(ws, type_="state")
    return ws


async def audit_events(reader: aiohttp.ClientSession, *, at_least: int = 1,
                       **params: str) -> list[dict[str, Any]]:
    """``GET /api/v1/audit/events`` until it lists ``at_least`` events (the sequencer
    numbers them asynchronously) or about five seconds have passed; the last page."""
    found: list[dict[str, Any]] = []
    for _ in range(100):
        r = await reader.get("/api/v1/audit/events", params=params)
        assert r.status == 200, await r.text()
        found = list((await r.json())["events"])
        if len(found) >= at_least:
            break
        await asyncio.sleep(0.05)
    return found
