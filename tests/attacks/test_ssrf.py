"""Server-side request forgery through platform URLs: a teacher types the address the
gateway then calls (BigBlueButton's API, Zoom's, a Janus WebSocket). Internal services
must stay out of reach unless the operator allows them, redirects must not lead there,
and errors must not turn the gateway into a port scanner or an echo of internal answers.

The "internal services" are listeners on loopback that count every TCP connection they
get (a connection is already a reach, whatever is said on it). A gateway in process, on
real Redis; where a platform must be reachable the operator allows exactly 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway import i18n
from tests.gateway.helpers import Gateway, running_gateway
from tests.meeting_adapters.gateway_flow import class_with

BBB_SECRET = "8cd8ef52e8e101574e400365b55e11a6"
CLIENT_URL = "https://meet.example.org/room?r={room}&id={id}&t={token}&n={display}"


class Listener:
    """A TCP service on ``host`` that counts connections and closes them at once."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def __aenter__(self) -> Listener:
        self.server = await asyncio.start_server(self._conn, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


class Upstream:
    """A "platform" on 127.0.0.1 answering every request with one fixed response."""

    def __init__(self, respond: Any) -> None:
        self.hits = 0
        self._respond = respond
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._any)
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def _any(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        response: web.StreamResponse = self._respond(request)
        return response

    async def __aenter__(self) -> Upstream:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def bbb(api_url: str) -> dict[str, Any]:
    return {"kind": "bigbluebutton", "api_url": api_url, "secret": BBB_SECRET}


async def create(gw: Gateway, platform: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    api = gw.api(await gw.staff_user(f"t{len(gw.sessions)}", org="truong-a"))
    r = await api.post("/api/v1/classes", json=class_with(platform),
                       headers={"Accept-Language": "vi"})
    return r.status, await r.json()


@pytest.fixture
async def closed_gateway(tmp_path: Path, redis_url: str,
                         redis_prefix: str) -> AsyncIterator[Gateway]:
    """The default: no private platform allowed."""
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        yield gw


@pytest.fixture
async def school_gateway(tmp_path: Path, redis_url: str,
                         redis_prefix: str) -> AsyncIterator[Gateway]:
    """The operator allows platforms on 127.0.0.1 (the school's network, here)."""
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=["127.0.0.1/32"]) as gw:
        yield gw


async def test_internal_addresses_are_out_of_reach_by_default(closed_gateway: Gateway) -> None:
    gw = closed_gateway
    async with Listener() as internal:
        for platform in (
            bbb(f"http://127.0.0.1:{internal.port}/bigbluebutton/"),  # plain http, loopback
            bbb(f"http://localhost:{internal.port}/"),
            bbb(f"https://[::ffff:127.0.0.1]:{internal.port}/"),  # IPv4-mapped
            bbb("https://169.254.169.254/latest/meta-data/"),  # cloud metadata
            bbb("https://10.0.0.7/"),
            bbb("https://100.64.0.1/"),  # CGNAT
            bbb("https://[fd00::1]/"),
            {"kind": "janus", "ws_url": f"ws://127.0.0.1:{internal.port}",
             "client_url": CLIENT_URL},
            {"kind": "zoom", "account_id": "a", "client_id": "c", "client_secret": "s" * 12,
             "host_user": "t@x.example", "registrant_email_domain": "s.example",
             "api_url": "https://api.zoom.us/v2/",
             "oauth_url": f"http://127.0.0.1:{internal.port}/oauth/token"},
        ):
            status, body = await create(gw, platform)
            assert status == 400 and body["error"]["code"] == "invalid_platform", body
        # A host *name* that resolves to loopback passes the form, then is refused on
        # connect (every resolved address is checked, so DNS cannot point inside).
        status, body = await create(gw, bbb(f"https://localhost:{internal.port}/"))
        assert status == 503 and body["error"] == {
            "code": "platform_unreachable", "message": i18n.t("vi", "error.platform_unreachable")}
        status, _ = await create(gw, {"kind": "janus", "client_url": CLIENT_URL,
                                      "ws_url": f"wss://localhost:{internal.port}/ws"})
        assert status == 503
        assert internal.connections == 0


async def test_redirects_are_not_followed(school_gateway: Gateway) -> None:
    async with Listener("127.0.0.2") as internal:
        target = f"http://127.0.0.2:{internal.port}/api/create"

        def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(target)

        async with Upstream(redirect) as platform:
            status, body = await create(school_gateway, bbb(platform.base + "/bigbluebutton/"))
            assert platform.hits == 1
            assert status == 503 and body["error"]["code"] == "platform_unreachable", body
            assert "127.0.0.2" not in json.dumps(body)
        assert internal.connections == 0


async def test_upstream_text_is_not_echoed(school_gateway: Gateway) -> None:
    leak = "jdbc:postgresql://db.internal:5432 password=hunter2"

    def failed(request: web.Request) -> web.Response:
        return web.Response(text=f"<response><returncode>FAILED</returncode><messageKey>"
                                 f"checksumError</messageKey><message>{leak}</message>"
                                 "</response>", content_type="text/xml")

    async with Upstream(failed) as platform:
        status, body = await create(school_gateway, bbb(platform.base + "/bigbluebutton/"))
    assert status == 502 and body["error"] == {
        "code": "platform_refused", "message": i18n.t("vi", "error.platform_refused")}
    assert "hunter2" not in json.dumps(body) and "checksum" not in json.dumps(body)

    def zoom_says(request: web.Request) -> web.Response:
        return web.json_response({"code": 124, "message": leak}, status=400)

    async with Upstream(zoom_says) as platform:
        status, body = await create(school_gateway, {
            "kind": "zoom", "account_id": "a", "client_id": "c", "client_secret": "s" * 12,
            "host_user": "t@x.example", "registrant_email_domain": "s.example",
            "api_url": platform.base + "/v2/", "oauth_url": platform.base + "/oauth/token"})
    assert status == 502 and "hunter2" not in json.dumps(body), body


async def test_open_and_closed_ports_look_alike(school_gateway: Gateway) -> None:
    async with Listener() as open_port:
        closed_port = Listener()
        async with closed_port:
            pass  # bound once, now closed: nothing listens there
        answers = []
        for port in (open_port.port, closed_port.port):
            status, body = await create(school_gateway, bbb(f"http://127.0.0.1:{port}/"))
            answers.append((status, body))
            status, body = await create(school_gateway, {
                "kind": "janus", "ws_url": f"ws://127.0.0.1:{port}", "client_url": CLIENT_URL})
            answers.append((status, body))
    assert open_port.connections >= 2  # reached (aiohttp may retry an idempotent GET)
    assert len({json.dumps(a, sort_keys=True) for a in answers}) == 1, answers
    assert answers[0][0] == 503
