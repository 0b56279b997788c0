"""Attacks on the listening socket of ``classguard serve`` run without a proxy (phones on
the school's LAN): slow-loris heads and bodies, one address opening connection after
connection, and reading ``/metrics`` from outside.

The gateway here runs with short timeouts and a small per-address cap (SERVE_ENV) so
the defences show within seconds; the defaults are in docs/operations.md.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway.config import ConfigError, Settings, load_settings

from .kit import Deployment

HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
PER_ADDRESS = 20
METRICS_TOKEN = "metrics-token-for-the-attack-suite-0123456789"  # noqa: S105 - a test value

SERVE_ENV = {
    "CLASSGUARD_HEADER_READ_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "CLASSGUARD_BODY_READ_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "CLASSGUARD_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
    # Prometheus scrapes from 127.0.0.1 only; anyone else needs the token.
    "CLASSGUARD_METRICS_NETWORKS": "127.0.0.1/32",
    "CLASSGUARD_METRICS_TOKEN": METRICS_TOKEN,
}


def _addr(dep: Deployment) -> tuple[str, int]:
    u = urlsplit(dep.base)
    assert u.hostname is not None and u.port is not None
    return u.hostname, u.port


@contextlib.contextmanager
def raw(dep: Deployment, ip: str) -> Iterator[socket.socket]:
    s = socket.create_connection(_addr(dep), timeout=5, source_address=(ip, 0))
    try:
        yield s
    finally:
        s.close()


def closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``s`` (reading EOF or a reset), None if it is
    still open after ``seconds``. Anything the server sends first is read and dropped."""
    start = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - start < seconds:
        try:
            if s.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    return None


def _ok(dep: Deployment, ip: str) -> bytes:
    with raw(dep, ip) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return s.recv(200)


def test_slow_header_connection_is_closed(deployment: Deployment) -> None:
    """A request head sent a few bytes at a time, never finished (slow-loris): the
    connection is closed once the head timeout passes, while a well-formed request
    from the same address is served meanwhile."""
    ip = deployment.new_ip()
    with raw(deployment, ip) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.5)
        slow.sendall(b"X-a: b\r\n")  # more bytes do not extend the deadline
        assert _ok(deployment, ip).startswith(b"HTTP/1.1 200")
        took = closed_within(slow, HEADER_TIMEOUT_S + 8)
        assert took is not None, "a partial request head was held open"
        assert took < HEADER_TIMEOUT_S + 5, took
    with raw(deployment, ip) as silent:  # a connection that never sends a byte
        took = closed_within(silent, HEADER_TIMEOUT_S + 8)
        assert took is not None, "a silent connection was held open"


def test_stalled_body_connection_is_closed(deployment: Deployment) -> None:
    """A complete head announcing a body that never comes: closed once the body has
    paused longer than the body timeout; a body that keeps coming is read in full."""
    ip = deployment.new_ip()
    with raw(deployment, ip) as s:
        s.sendall(b"POST /api/v1/session HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nContent-Length: 1000\r\n\r\n{\"user")
        took = closed_within(s, BODY_TIMEOUT_S + 8)
        assert took is not None, "a stalled request body was held open"
    with raw(deployment, ip) as s:  # slow but steady: 4 s in all, never 2 s silent
        body = b'{"username": "nobody", "password": "not this one"}'
        s.sendall(b"POST /api/v1/session HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nConnection: close\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n")
        for i in range(0, len(body), len(body) // 5 + 1):
            time.sleep(0.8)
            s.sendall(body[i:i + len(body) // 5 + 1])
        s.settimeout(10)
        answer = s.recv(4000)
        assert answer.startswith(b"HTTP/1.1 401"), answer


def test_connections_per_address_are_capped(deployment: Deployment) -> None:
    """One address opening connection after connection gets a 503 past the cap (its
    own connections keep working when some close); other addresses are unaffected."""
    ip, other = deployment.new_ip(), deployment.new_ip()
    held = [socket.create_connection(_addr(deployment), timeout=5, source_address=(ip, 0))
            for _ in range(PER_ADDRESS)]
    try:
        time.sleep(0.3)
        with raw(deployment, ip) as extra:
            extra.settimeout(5)
            answer = extra.recv(300)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"Retry-After" in answer
        assert _ok(deployment, other).startswith(b"HTTP/1.1 200")
        held.pop().close()
        time.sleep(0.3)
        assert _ok(deployment, ip).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()


def test_default_cap_fits_a_school_behind_nat() -> None:
    """The shipped figure (docs/operations.md): 1,000 students behind one address, each
    with a waiting-room socket and two keep-alive connections, stay under the cap."""
    assert Settings().max_connections_per_address >= 1000 * 3
    assert Settings().header_read_timeout_s <= 30


async def _get_metrics(dep: Deployment, ip: str, headers: dict[str, str] | None = None
                       ) -> tuple[int, str]:
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(ip, 0))) as http:
        async with http.get(f"{dep.base}/metrics", headers=headers or {}) as r:
            return r.status, await r.text()


async def test_metrics_only_from_configured_networks_or_with_the_token(
        deployment: Deployment) -> None:
    """``/metrics`` from an address outside ``metrics_networks`` is refused (403), a
    forged X-Forwarded-For does not help, a wrong token does not either; the right
    bearer token or a configured network reads it."""
    outsider = deployment.new_ip()
    status, _ = await _get_metrics(deployment, outsider)
    assert status == 403
    status, _ = await _get_metrics(deployment, outsider, {"X-Forwarded-For": "127.0.0.1"})
    assert status == 403
    status, _ = await _get_metrics(deployment, outsider,
                                   {"Authorization": "Bearer " + METRICS_TOKEN[:-1] + "x"})
    assert status == 403
    status, text = await _get_metrics(deployment, outsider,
                                      {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200 and "classguard_join_attempts" in text
    status, text = await _get_metrics(deployment, "127.0.0.1")
    assert status == 200 and "classguard_connections_closed_total" in text


def test_metrics_settings_are_validated() -> None:
    assert load_settings({}, {"CLASSGUARD_METRICS_NETWORKS": "10.0.0.0/8, ::1"}, None
                         ).metrics_networks == ("10.0.0.0/8", "::1/128")
    with pytest.raises(ConfigError, match="metrics_networks"):
        load_settings({}, {"CLASSGUARD_METRICS_NETWORKS": "10.0.0.1/8"}, None)
    with pytest.raises(ConfigError, match="metrics_token"):
        load_settings({}, {"CLASSGUARD_METRICS_TOKEN": "short"}, None)
