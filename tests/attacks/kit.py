"""The attacker's and the school's side of the attack suite, over HTTP and WebSocket only.

* ``Device`` is one browser on one machine: its own cookie jar and its own source
  address (a ``127.x.y.z`` loopback address bound with ``TCPConnector(local_addr=...)``),
  so per-address limits, bans and audit filters see distinct machines. It remembers
  whether it was ever handed a way into the meeting (a ``/go`` redirect, an
  ``admitted`` WebSocket message, a 302 to the platform): ``Device.entered``.
* ``Staff`` is a staff account calling the API with its bearer token.
* ``Scene`` is one attack: the four accounts, the devices, the audit trail; it closes
  every connection at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import aiohttp

from tests.gateway.helpers import next_event

MEETING_URL = "https://meet.example.org/abc"
PHONE_UA = "Mozilla/5.0 (Linux; Android 13; Mobile) Chrome/120"
LAPTOP_UA = "Mozilla/5.0 (Windows NT 10.0; Win64) Chrome/120"
JSON = {"Accept": "application/json"}

ROSTER = [
    {"name": "Nguyễn Văn An", "external_id": "HS001"},
    {"name": "Trần Thị Bình", "external_id": "HS002"},
    {"name": "Lê Hoàng Cường", "external_id": "HS003"},
    {"name": "Phạm Minh Duy", "external_id": "HS004"},
]


@dataclass(frozen=True, slots=True)
class StaffAccount:
    username: str
    role: str
    org: str
    token: str
    password: str


class Deployment:
    """A running ``classguard serve`` (see conftest) and the addresses to attack it from."""

    def __init__(self, *, base: str, data_dir: Path, accounts: dict[str, StaffAccount],
                 log: Path, redis_url: str = "", redis_prefix: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.base = base
        self.data_dir = data_dir
        self.accounts = accounts
        self.log = log
        # Where its state lives (for attacks that fill Redis directly, as a long flood
        # would have)
        self.redis_url = redis_url
        self.redis_prefix = redis_prefix
        self.env = dict(env or {})  # what the `classguard` command needs to reach it
        self._nets = count()

    def new_ip(self) -> str:
        """A loopback address in a /24 of its own (the per-network limits count /24s)."""
        n = next(self._nets)
        return f"127.{10 + n // 250}.{n % 250}.1"

    def ips_in_one_net(self, n: int) -> list[str]:
        """``n`` addresses that share one /24."""
        first = self.new_ip().rsplit(".", 1)[0]
        return [f"{first}.{i}" for i in range(1, n + 1)]

    def join_key_pem(self, kid: str) -> bytes:
        """The gateway's own join-token key (from its data directory) by kid."""
        return (self.data_dir / "keys" / "join" / f"{kid}.pem").read_bytes()


@dataclass(slots=True)
class Resp:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def reason(self) -> str | None:
        return self.body.get("reason") if isinstance(self.body, dict) else None


class Device:
    """One browser on one machine (own cookies, own source address)."""

    def __init__(self, scene: Scene, ip: str, user_agent: str) -> None:
        self.scene = scene
        self.ip = ip
        self.jar = aiohttp.CookieJar(unsafe=True)
        self.session = aiohttp.ClientSession(
            base_url=scene.dep.base, cookie_jar=self.jar, headers={"User-Agent": user_agent},
            connector=aiohttp.TCPConnector(local_addr=(ip, 0), force_close=False),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self.redirects: list[str] = []  # /go paths this device was handed
        self.locations: list[str] = []  # where /go sent it (meeting credentials)
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []

    @property
    def entered(self) -> bool:
        """Whether this device was ever given a way into the meeting."""
        return bool(self.redirects or self.locations)

    @property
    def cookie(self) -> str | None:
        for c in self.jar:
            if c.key == "cg_dev":
                return c.value
        return None

    def forget_cookies(self) -> None:
        """What a private window or "clear site data" does."""
        self.jar.clear()

    def _note(self, body: Any) -> None:
        if isinstance(body, dict) and isinstance(body.get("redirect"), str):
            self.redirects.append(body["redirect"])

    async def _resp(self, r: aiohttp.ClientResponse) -> Resp:
        text = await r.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        self._note(body)
        if r.status in (301, 302, 303, 307, 308):
            loc = r.headers.get("Location", "")
            if loc.startswith("/go/"):
                self.redirects.append(loc)
            else:
                self.locations.append(loc)
        return Resp(r.status, body, dict(r.headers))

    async def get(self, path: str, **kw: Any) -> Resp:
        kw.setdefault("allow_redirects", False)
        async with self.session.get(path, **kw) as r:
            return await self._resp(r)

    async def post(self, path: str, **kw: Any) -> Resp:
        kw.setdefault("allow_redirects", False)
        async with self.session.post(path, **kw) as r:
            return await self._resp(r)

    async def open(self, token: str, *, headers: dict[str, str] | None = None) -> Resp:
        """Open a join link the way the waiting-room page's script does (JSON)."""
        return await self.get(f"/j/{token}", headers={**JSON, **(headers or {})})

    async def open_patiently(self, token: str, *, tries: int = 20) -> Resp:
        """Open a link as the waiting-room page does: after a 429, wait ``Retry-After``
        (capped at a second here) and try again."""
        for _ in range(tries):
            r = await self.open(token)
            if r.status != 429:
                return r
            await asyncio.sleep(min(float(r.headers.get("Retry-After", "1")), 1.0))
        return r

    async def open_html(self, token: str) -> Resp:
        return await self.get(f"/j/{token}", headers={"Accept": "text/html"})

    async def enter_code(self, code: str, *, headers: dict[str, str] | None = None) -> Resp:
        return await self.post("/join", json={"code": code}, headers={**JSON, **(headers or {})})

    async def go(self, path: str) -> Resp:
        r = await self.get(path, headers=JSON)
        return r

    async def ws(self, path: str, **kw: Any) -> aiohttp.ClientWebSocketResponse:
        ws = await self.session.ws_connect(path, **kw)
        self.sockets.append(ws)
        return ws

    async def next_message(self, ws: aiohttp.ClientWebSocketResponse, *,
                           type_: str | None = None, wait_s: float = 5.0) -> dict[str, Any]:
        msg = await next_message(ws, type_=type_, wait_s=wait_s)
        self._note(msg)
        return msg

    async def close(self) -> None:
        for ws in self.sockets:
            if not ws.closed:
                await ws.close()
        await self.session.close()


async def next_message(ws: aiohttp.ClientWebSocketResponse, *, type_: str | None = None,
                       wait_s: float = 5.0) -> dict[str, Any]:
    """The next JSON message (of ``type_`` if given)."""
    async def _read() -> dict[str, Any]:
        while True:
            data = await next_event(ws)  # (a control socket's list: one event at a time)
            if type_ is None or data.get("type") == type_:
                return data

    return await asyncio.wait_for(_read(), wait_s)


class Staff:
    """A staff account on the API (bearer token), from its own address."""

    def __init__(self, scene: Scene, account: StaffAccount, ip: str) -> None:
        self.account = account
        self.ip = ip
        self.session = aiohttp.ClientSession(
            base_url=scene.dep.base, headers={"Authorization": f"Bearer {account.token}"},
            connector=aiohttp.TCPConnector(local_addr=(ip, 0)),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def call(self, method: str, path: str, **kw: Any) -> Resp:
        async with self.session.request(method, path, allow_redirects=False, **kw) as r:
            text = await r.text()
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            return Resp(r.status, body, dict(r.headers))

    async def action(self, cid: str, **body: Any) -> Resp:
        return await self.call("POST", f"/api/v1/classes/{cid}/actions", json=body)

    async def state(self, cid: str) -> dict[str, Any]:
        r = await self.call("GET", f"/api/v1/classes/{cid}/state")
        assert r.status == 200, r
        return dict(r.body)

    async def control(self, cid: str, **kw: Any) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(f"/api/v1/classes/{cid}/control", **kw)

    async def close(self) -> None:
        await self.session.close()


@dataclass(slots=True)
class Klass:
    id: str
    links: list[dict[str, Any]]

    def token(self, i: int) -> str:
        return token_of(self.links[i])

    def sid(self, i: int) -> str:
        return str(self.links[i]["student_id"])


def token_of(link: dict[str, Any]) -> str:
    return str(link["url"]).rsplit("/j/", 1)[1]


def class_body(preset: str = "strict", title: str = "Toán 10A1", **policy: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "title": title,
        "platform": {"kind": "generic", "url": MEETING_URL},
        "schedule": {
            "starts_at": (now - timedelta(minutes=5)).isoformat(),
            "ends_at": (now + timedelta(hours=2)).isoformat(),
            "term_ends_at": (now + timedelta(days=60)).isoformat(),
        },
        "policy": {"preset": preset, **policy},
    }


@dataclass(slots=True)
class Scene:
    dep: Deployment
    devices: list[Device] = field(default_factory=list)
    staff: dict[str, Staff] = field(default_factory=dict)

    # --- people -----------------------------------------------------------------------

    def device(self, ip: str | None = None, *, user_agent: str = PHONE_UA) -> Device:
        d = Device(self, ip or self.dep.new_ip(), user_agent)
        self.devices.append(d)
        return d

    def account(self, username: str) -> Staff:
        if username not in self.staff:
            self.staff[username] = Staff(self, self.dep.accounts[username], self.dep.new_ip())
        return self.staff[username]

    @property
    def teacher(self) -> Staff:
        return self.account("co.lan")

    @property
    def other_teacher(self) -> Staff:
        return self.account("thay.minh")

    @property
    def it(self) -> Staff:
        return self.account("it.hung")

    @property
    def admin(self) -> Staff:
        return self.account("qt.hoa")

    # --- classes ----------------------------------------------------------------------

    async def new_class(self, preset: str = "strict", *, roster: list[dict[str, Any]] | None = None,
                        owner: Staff | None = None, title: str = "Toán 10A1",
                        **policy: Any) -> Klass:
        api = owner or self.teacher
        r = await api.call("POST", "/api/v1/classes", json=class_body(preset, title, **policy))
        assert r.status == 201, r
        cid = r.body["id"]
        r = await api.call("PUT", f"/api/v1/classes/{cid}/roster", json=roster or ROSTER)
        assert r.status == 200, r
        r = await api.call("POST", f"/api/v1/classes/{cid}/links", json={})
        assert r.status == 200, r
        return Klass(cid, r.body["links"])

    async def admit_legit(self, k: Klass, i: int, device: Device | None = None) -> Device:
        """A real student opens their own link on their own phone, the teacher lets them
        in if they wait, and ``/go`` sends them to the meeting. Returns the phone."""
        phone = device or self.device()
        r = await phone.open_patiently(k.token(i))
        if r.body.get("status") == "waiting":
            a = await self.teacher.action(k.id, action="admit", ticket=r.body["ticket"])
            assert a.status == 200, a
            r = await phone.open_patiently(k.token(i))
        assert r.status == 200 and r.body["status"] == "admitted", r
        g = await phone.go(r.body["redirect"])
        assert g.status == 302 and g.headers["Location"] == MEETING_URL, g
        return phone

    # --- audit trail --------------------------------------------------------------------

    async def audit(self, *, reader: str = "it.hung", **filters: str) -> list[dict[str, Any]]:
        params = {("class" if k == "class_" else k): v for k, v in filters.items()}
        params.setdefault("limit", "500")
        r = await self.account(reader).call("GET", "/api/v1/audit/events", params=params)
        assert r.status == 200, r
        return list(r.body["events"])

    async def await_audit(self, check: Callable[[list[dict[str, Any]]], bool], *,
                          reader: str = "it.hung", within_s: float = 10.0,
                          **filters: str) -> list[dict[str, Any]]:
        """Events matching ``filters`` once ``check`` holds (the sequencer assigns
        indexes asynchronously, so recent events appear after a moment)."""
        deadline = time.monotonic() + within_s
        while True:
            events = await self.audit(reader=reader, **filters)
            if check(events):
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"audit trail never matched for {filters}: "
                                     f"{len(events)} events, newest {events[:3]!r}")
            await asyncio.sleep(0.1)

    async def attempts_from(self, ip: str, n: int, *, reader: str = "qt.hoa",
                            type_: str | None = None) -> list[dict[str, Any]]:
        """At least ``n`` join-related events from ``ip`` (an administrator of the root
        org also sees events that name no class, such as refused forgeries)."""
        filters = {"ip": ip}
        if type_:
            filters["type"] = type_
        return await self.await_audit(lambda ev: len(_attempts(ev)) >= n, reader=reader,
                                      **filters)

    async def close(self) -> None:
        for d in self.devices:
            await d.close()
        for s in self.staff.values():
            await s.close()


def _attempts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] in ("join", "join.code_failed", "go.refused",
                                               "join.enter")]


def reasons(events: list[dict[str, Any]]) -> list[str | None]:
    return [e.get("reason") for e in _attempts(events)]


@asynccontextmanager
async def scene(dep: Deployment) -> AsyncIterator[Scene]:
    s = Scene(dep)
    try:
        yield s
    finally:
        await s.close()


def assert_kept_out(*devices: Device) -> None:
    """Requirement (1): no attacker device was ever given a way into the meeting."""
    for d in devices:
        assert not d.entered, f"attacker at {d.ip} got in: {d.redirects} {d.locations}"


def no_entry_in(events: list[dict[str, Any]]) -> bool:
    return not any(e["type"] == "join.enter" for e in events)
