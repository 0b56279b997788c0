"""Where the gateway may connect on a teacher's behalf: the egress guard of every platform call.

A platform URL is typed in by a teacher, so every outgoing call (HTTP through aiohttp,
Janus through a WebSocket) is checked against a deny list *on the address actually
connected to*: loopback, link-local (cloud metadata included), private, shared (CGNAT),
unspecified, multicast and reserved ranges, IPv4 hidden in IPv6 (mapped, 6to4, Teredo,
NAT64) included. An operator allows the private networks and host names of real
deployments (a Janus or BigBlueButton in the school network) with ``EgressPolicy``.

Checks happen twice: the resolver refuses a name when *any* of its addresses is denied
(fail closed on mixed answers), and the socket factory refuses a denied address at
connect time (IP literals never reach the resolver; a second resolution by a rebinding
DNS server never reaches the socket). Redirects are never followed (``_http.fetch``).

``EgressPolicy`` is pure; ``guarded_session`` and ``open_checked_socket`` do the I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from .errors import InvalidSettings

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "EgressPolicy",
    "EgressRefused",
    "guarded_session",
    "open_checked_socket",
    "session_policy",
]

log = logging.getLogger("classguard.egress")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Besides everything Python does not call global: ranges that are "global" by the IANA
# registry yet reach something local or embed another address.
_ALWAYS_DENIED: Final[tuple[IPNetwork, ...]] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "192.0.0.0/24", "224.0.0.0/4",
    "240.0.0.0/4", "::/128", "::1/128", "fe80::/10", "fc00::/7", "ff00::/8",
))
# Instance metadata services: denied even on an allowed host name (only an explicitly
# allowed network lets them through, which no sane deployment does).
_METADATA: Final[frozenset[IPAddress]] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254",
))
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


class EgressRefused(OSError):
    """A connection to a denied address was refused (an ``OSError``, so HTTP clients treat
    it as a failed connect and try nothing around it)."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"egress to {host!r} ({address}) refused: address not allowed")
        self.host = host
        self.address = address


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """The address and every IPv4 address it carries (mapped, 6to4, Teredo, NAT64)."""
    out: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            out.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            out.append(ip.sixtofour)
        if ip.teredo is not None:
            out.extend(ip.teredo)
        if ip in _NAT64:
            out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None


def _denied(ip: IPAddress) -> bool:
    return (not ip.is_global) or any(ip in n for n in _ALWAYS_DENIED if n.version == ip.version)


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Which addresses platform calls may reach.

    ``networks``: allowed networks, even private ones (``10.20.0.0/16``); ``hosts``: host
    names whose addresses may be private (``janus.school.lan``). Everything else must be a
    public address. ``EgressPolicy()`` allows no private address at all.
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, networks: Iterable[str], hosts: Iterable[str] = ()) -> EgressPolicy:
        """From operator settings (CIDRs or single addresses, host names); ``ValueError``
        naming the bad entry."""
        nets = []
        for entry in networks:
            try:
                nets.append(ipaddress.ip_network(entry.strip(), strict=True))
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network: {exc}"
                                 ) from None
        names = set()
        for entry in hosts:
            name = entry.strip().lower().rstrip(".")
            if not name or _parse_ip(name) is not None or any(
                    c not in "abcdefghijklmnopqrstuvwxyz0123456789.-" for c in name):
                raise ValueError(f"{entry!r} is not a host name (give addresses as networks)")
            names.add(name)
        return cls(networks=tuple(nets), hosts=frozenset(names))

    def _network_allowed(self, ip: IPAddress) -> bool:
        return any(ip in n for n in self.networks if n.version == ip.version)

    def allows_address(self, address: str, host: str | None = None) -> bool:
        """Whether a connection to ``address`` (reached through the name ``host``) may go."""
        ip = _parse_ip(address)
        if ip is None:
            return False
        if self._network_allowed(ip):
            return True
        if any(a in _METADATA for a in _embedded(ip)):
            return False
        if host is not None and host.lower().rstrip(".") in self.hosts:
            return True
        return not any(_denied(a) for a in _embedded(ip))

    def allows_plain(self, host: str) -> bool:
        """Whether unencrypted ``http://``/``ws://`` may be used to ``host``: only to an
        allowed host name or an address inside an allowed network."""
        host = host.lower().strip("[]").rstrip(".")
        ip = _parse_ip(host)
        if ip is not None:
            return self._network_allowed(ip)
        return host in self.hosts

    def check_url(self, url: str, field_name: str) -> None:
        """What can be told without the network: a plain scheme only to allowed hosts, an
        IP literal only when allowed. ``InvalidSettings`` on ``field_name`` otherwise."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme in ("http", "ws") and not self.allows_plain(host):
            raise InvalidSettings(field_name, "must use https:// or wss:// (plain http is "
                                  "allowed only to hosts the operator allows)")
        if _parse_ip(host) is not None and not self.allows_address(host, None):
            raise InvalidSettings(field_name, "points to a private or reserved address")

    def check_resolved(self, host: str, addresses: Iterable[str]) -> None:
        """``EgressRefused`` unless every address ``host`` resolved to is allowed."""
        seen = False
        for address in addresses:
            seen = True
            if not self.allows_address(address, host):
                raise EgressRefused(host, address)
        if not seen:
            raise EgressRefused(host, "no address")


# --- I/O -----------------------------------------------------------------------------------


def _connector_class() -> Any:
    import aiohttp
    from aiohttp.abc import AbstractResolver
    from aiohttp.resolver import ThreadedResolver

    class GuardedResolver(AbstractResolver):
        """getaddrinfo, refusing names with any denied address. Addresses let through
        only because their host name is allowed are remembered for the socket factory
        (which sees addresses, not names).

        NOTE: such an address is then reachable as a literal too, at connect time; the
        literal itself is refused when a class is saved (``check_url``), and it is the
        very server the operator allowed by name."""

        def __init__(self, policy: EgressPolicy, by_name: set[str]) -> None:
            self._policy = policy
            # getaddrinfo in a thread: holds no resource the connector would have to close
            # (it does not close a resolver it was given).
            self._inner = ThreadedResolver()
            self._by_name = by_name

        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET) -> Any:
            found = await self._inner.resolve(host, port, family)
            addresses = [str(r["host"]) for r in found]
            self._policy.check_resolved(host, addresses)
            self._by_name.update(a for a in addresses
                                 if not self._policy.allows_address(a, None))
            return found

        async def close(self) -> None:
            await self._inner.close()

    class GuardedConnector(aiohttp.TCPConnector):
        """A connector whose resolver and socket factory apply an ``EgressPolicy``: the
        socket factory sees every address actually connected to, IP literals included."""

        def __init__(self, policy: EgressPolicy, **kwargs: Any) -> None:
            by_name: set[str] = set()

            def make_socket(addr_info: Any) -> socket.socket:
                family, kind, proto, _, sockaddr = addr_info
                address = str(sockaddr[0])
                if not policy.allows_address(address, None) and address not in by_name:
                    raise EgressRefused(address, address)
                return socket.socket(family, kind, proto)

            super().__init__(resolver=GuardedResolver(policy, by_name),
                             socket_factory=make_socket, **kwargs)
            self.policy = policy

    return GuardedConnector


def guarded_session(policy: EgressPolicy, *, timeout_s: float = 10.0) -> aiohttp.ClientSession:
    """The HTTP session for platform calls: egress-checked connects, no cookie jar (a
    cookie one tenant's server sets must never reach another tenant's call), no proxy
    from the environment."""
    import aiohttp

    connector = _connector_class()(policy)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 trust_env=False)


def session_policy(session: aiohttp.ClientSession) -> EgressPolicy | None:
    """The policy of a session made by ``guarded_session`` (``None`` for any other)."""
    policy = getattr(session.connector, "policy", None)
    return policy if isinstance(policy, EgressPolicy) else None


async def open_checked_socket(policy: EgressPolicy, host: str, port: int,
                              timeout_s: float) -> socket.socket:
    """A connected, non-blocking TCP socket to ``host``: every address it resolves to is
    checked first, then the first that answers is used (the same addresses: no second
    resolution a rebinding DNS server could answer differently)."""
    loop = asyncio.get_running_loop()
    literal = _parse_ip(host)
    infos: list[tuple[Any, Any, int, str, Any]]
    if literal is not None:
        infos = [(socket.AF_INET6 if literal.version == 6 else socket.AF_INET,
                  socket.SOCK_STREAM, 0, "", (str(literal), port))]
        if not policy.allows_address(str(literal), None):
            raise EgressRefused(host, str(literal))
    else:
        async with asyncio.timeout(timeout_s):
            infos = list(await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        policy.check_resolved(host, [str(i[4][0]) for i in infos])
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, sockaddr), timeout_s)
        except (OSError, TimeoutError) as exc:
            sock.close()
            last = exc if isinstance(exc, OSError) else OSError(str(exc))
            continue
        return sock
    raise last or OSError(f"cannot connect to {host}")
