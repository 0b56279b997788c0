"""client_ip: the peer, or the X-Forwarded-For client behind our own proxies only."""

from __future__ import annotations

from unittest.mock import Mock

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.web_util import client_ip

PROXIES = ("127.0.0.1/32", "10.0.0.0/8")


def _request(peer: str, *xff: str) -> object:
    headers = [("X-Forwarded-For", v) for v in xff]
    transport = Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 443) if name == "peername" else default)
    return make_mocked_request("GET", "/", headers=headers, transport=transport)


@pytest.mark.parametrize("peer,xff,trusted,expect", [
    ("203.0.113.7", ["198.51.100.1"], PROXIES, "203.0.113.7"),  # not our proxy: ignored
    ("127.0.0.1", ["198.51.100.1"], PROXIES, "198.51.100.1"),
    ("127.0.0.1", ["198.51.100.1, 10.1.2.3"], PROXIES, "198.51.100.1"),  # walks past ours
    ("127.0.0.1", ["6.6.6.6, 198.51.100.1"], PROXIES, "198.51.100.1"),  # rightmost foreign
    ("127.0.0.1", ["198.51.100.1", "10.1.2.3"], PROXIES, "198.51.100.1"),  # two headers
    ("127.0.0.1", ["garbage, 198.51.100.1"], PROXIES, "198.51.100.1"),
    ("127.0.0.1", ["198.51.100.1, garbage"], PROXIES, "127.0.0.1"),  # broken: the peer
    ("127.0.0.1", ["::ffff:198.51.100.1"], PROXIES, "198.51.100.1"),  # v4-mapped
    ("127.0.0.1", ["2001:DB8::1"], PROXIES, "2001:db8::1"),  # one spelling
    ("127.0.0.1", ["10.9.9.9"], PROXIES, "10.9.9.9"),  # only proxies: the first
    ("127.0.0.1", [], PROXIES, "127.0.0.1"),
    ("127.0.0.1", ["198.51.100.1"], (), "127.0.0.1"),  # no trusted proxies at all
])
def test_client_ip(peer: str, xff: list[str], trusted: tuple[str, ...], expect: str) -> None:
    assert client_ip(_request(peer, *xff), trusted) == expect  # type: ignore[arg-type]
