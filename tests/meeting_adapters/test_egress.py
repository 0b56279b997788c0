"""The egress policy (pure) and the guarded session against listeners on loopback."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meeting_adapters.base import InvalidSettings, UpstreamUnavailable
from meeting_adapters.egress import EgressPolicy, EgressRefused, guarded_session

DEFAULT = EgressPolicy()
SCHOOL = EgressPolicy.from_settings(["10.20.0.0/16", "127.0.0.1/32"], ["janus.truong.lan"])


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "169.254.1.1", "0.0.0.0", "::", "fe80::1", "fd00:ec2::254",
    "fc00::1", "224.0.0.1", "255.255.255.255", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "not an address",
])
def test_default_denies(address: str) -> None:
    assert not DEFAULT.allows_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "52.84.1.1"])
def test_default_allows_public(address: str) -> None:
    assert DEFAULT.allows_address(address)


def test_operator_allowances() -> None:
    assert SCHOOL.allows_address("10.20.3.4") and not SCHOOL.allows_address("10.21.0.1")
    assert SCHOOL.allows_address("127.0.0.1") and not SCHOOL.allows_address("127.0.0.2")
    assert SCHOOL.allows_address("192.168.1.9", "janus.truong.lan")
    assert SCHOOL.allows_address("192.168.1.9", "JANUS.truong.lan.")
    assert not SCHOOL.allows_address("192.168.1.9", "other.lan")
    # an allowed name never reaches the metadata service
    assert not SCHOOL.allows_address("169.254.169.254", "janus.truong.lan")
    assert SCHOOL.allows_plain("janus.truong.lan") and SCHOOL.allows_plain("127.0.0.1")
    assert not SCHOOL.allows_plain("localhost") and not DEFAULT.allows_plain("127.0.0.1")


@pytest.mark.parametrize("networks,hosts", [
    (["10.0.0.1/8"], []), (["nonsense"], []), ([], ["1.2.3.4"]), ([], ["a b"]), ([], [""]),
])
def test_bad_settings_are_refused(networks: list[str], hosts: list[str]) -> None:
    with pytest.raises(ValueError):
        EgressPolicy.from_settings(networks, hosts)


@pytest.mark.parametrize("url,ok", [
    ("https://bbb.example.org/bigbluebutton/", True),
    ("http://bbb.example.org/", False),
    ("http://127.0.0.1:8080/", False),
    ("ws://localhost:8188/", False),
    ("https://10.0.0.5/", False),
    ("https://[::ffff:7f00:1]/", False),
])
def test_check_url_default(url: str, ok: bool) -> None:
    if ok:
        DEFAULT.check_url(url, "platform.api_url")
    else:
        with pytest.raises(InvalidSettings) as info:
            DEFAULT.check_url(url, "platform.api_url")
        assert info.value.field == "platform.api_url"


def test_check_url_allowed() -> None:
    SCHOOL.check_url("http://127.0.0.1:8080/", "f")
    SCHOOL.check_url("ws://janus.truong.lan:8188/", "f")
    SCHOOL.check_url("https://10.20.1.1/", "f")


def test_resolved_names_fail_closed_on_any_denied_address() -> None:
    DEFAULT.check_resolved("meet.example.org", ["8.8.8.8"])
    for addresses in (["8.8.8.8", "10.0.0.1"], [], ["127.0.0.1"]):
        with pytest.raises(EgressRefused):
            DEFAULT.check_resolved("meet.example.org", addresses)


@given(st.ip_addresses(v=4))
def test_ipv4_inside_ipv6_is_never_more_allowed(ip: IPv4Address) -> None:
    for wrapped in (IPv6Address(f"::ffff:{ip}"), IPv6Address((0x2002 << 112) | (int(ip) << 80)),
                    IPv6Address((0x64FF9B << 96) | int(ip))):
        assert DEFAULT.allows_address(str(wrapped)) <= DEFAULT.allows_address(str(ip)), wrapped


async def test_guarded_session_refuses_on_connect() -> None:
    from meeting_adapters._http import fetch

    hits = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        hits += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with guarded_session(DEFAULT) as http:
            for url in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/"):
                with pytest.raises(UpstreamUnavailable) as info:
                    await fetch(http, "bigbluebutton", "GET", url)
                assert info.value.message == "bigbluebutton: platform unreachable"
        import aiohttp

        async with aiohttp.ClientSession() as plain:  # not egress-checked: never used
            with pytest.raises(UpstreamUnavailable):
                await fetch(plain, "bigbluebutton", "GET", f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert hits == 0


async def test_platform_session_keeps_no_cookies() -> None:
    from aiohttp import web

    from meeting_adapters._http import fetch

    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        resp = web.Response(text="ok")
        resp.set_cookie("JSESSIONID", "school-a-session")
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        # a host name, so that a cookie jar would keep the cookie (jars skip bare IPs)
        policy = EgressPolicy.from_settings([], ["localhost"])
        async with guarded_session(policy) as http:
            await fetch(http, "bigbluebutton", "GET", f"http://localhost:{port}/school-a")
            await fetch(http, "bigbluebutton", "GET", f"http://localhost:{port}/school-b")
    finally:
        await runner.cleanup()
    assert seen == [None, None]
