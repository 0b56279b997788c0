"""The ``generic`` platform: a plain meeting link, handed out only after admission.

Settings: ``{"kind": "generic", "url": "https://meet.example.org/abc"}``.

Capabilities: none. ClassGuard still gates *who gets the link*, but the link itself is the
same for everyone: a student who forwards it, or anyone who finds it, enters the meeting
without ClassGuard. The UI says so; pick a platform with ``enforced_entry`` (Janus,
BigBlueButton, Jitsi with JWT) where that matters.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import string
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import quote, urlsplit, urlunsplit

from .base import (
    AdapterBase,
    AdapterError,
    Capability,
    Clock,
    FormField,
    InvalidSettings,
    Participant,
    Present,
    Room,
    RoomSpec,
    Unsupported,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = ["MAX_URL_LENGTH", "GenericAdapter", "parse_meeting_url", "redact_url"]

KIND: Final = "generic"
MAX_URL_LENGTH: Final = 2048
_URL_FIELD: Final = "platform.url"
# Everything printable in ASCII except space; what falls outside is percent-encoded.
_SAFE: Final = string.ascii_letters + string.digits + string.punctuation
_HOST_CHARS: Final = frozenset(string.ascii_lowercase + string.digits + ".-")


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- pure: settings ---------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Networks a meeting URL may reach over plain http besides loopback, when allowed:
# RFC 1918 private IPv4, link-local, IPv6 unique-local (a school or home LAN).
PRIVATE_LAN_NETWORKS: Final = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8",
    "fc00::/7", "fe80::/10", "::1/128"))
# Addresses whose meeting URLs may use plain http in this process. Empty unless
# `classguard demo` runs on a private network address (gateway/demo.py); `serve` never
# adds any.
_plain_http_addresses: set[str] = set()


def is_private_lan_address(host: str) -> bool:
    """Whether ``host`` is an IP address in ``PRIVATE_LAN_NETWORKS``."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(ip in n for n in PRIVATE_LAN_NETWORKS if n.version == ip.version)


def allow_plain_http(address: str) -> None:
    """Let meeting URLs naming ``address`` (a private network address) use plain http in
    this process; ``ValueError`` for any other address."""
    if not is_private_lan_address(address):
        raise ValueError(f"{address!r} is not a private network address")
    _plain_http_addresses.add(ipaddress.ip_address(address.strip("[]")).compressed)


def plain_http_allowed(host: str) -> bool:
    """http:// is allowed for loopback names and for addresses ``allow_plain_http`` named."""
    if _is_loopback(host):
        return True
    try:
        return ipaddress.ip_address(host).compressed in _plain_http_addresses
    except ValueError:
        return False


def _clean_host(host: str, field: str) -> str:
    if host.startswith("["):  # urlsplit keeps no brackets in .hostname; netloc does
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidSettings(field, f"has an invalid host name {host!r}") from None
    labels = ascii_host.rstrip(".").split(".")
    # NOTE: browsers read a numeric last label ("127.1", "0x7f.1") as an IPv4 address;
    # only the standard dotted form (handled above) is accepted.
    if re.fullmatch(r"\d+|0x[0-9a-f]*", labels[-1]):
        raise InvalidSettings(field, f"has an invalid IP address {host!r}")
    if not ascii_host or any(
        not label or len(label) > 63 or not set(label) <= _HOST_CHARS for label in labels
    ):
        raise InvalidSettings(field, f"has an invalid host name {host!r}")
    return ascii_host


def parse_meeting_url(value: object, field: str = _URL_FIELD) -> str:
    """Validate a meeting URL and return its canonical form, or raise ``InvalidSettings``.

    https only (http just for localhost/loopback, for local test meetings); no user name
    or password in the URL; at most ``MAX_URL_LENGTH`` characters; non-ASCII host names
    are IDNA-encoded and other non-ASCII characters percent-encoded.
    """
    if not isinstance(value, str):
        raise InvalidSettings(field, "must be a URL string")
    text = value.strip()
    if not text:
        raise InvalidSettings(field, "is required")
    if len(text) > MAX_URL_LENGTH:
        raise InvalidSettings(field, f"must be at most {MAX_URL_LENGTH} characters")
    # NOTE: browsers read "\" as "/" and drop control characters, so such URLs can point
    # somewhere else than they appear to; refuse them outright.
    if any(c.isspace() or not c.isprintable() or c == "\\" for c in text):
        raise InvalidSettings(field, "must not contain spaces, control characters or '\\'")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise InvalidSettings(field, "is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidSettings(field, "must start with https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidSettings(
            field, "must not contain a user name or password (they would reach every student)"
        )
    if not parts.hostname:
        raise InvalidSettings(field, "must name a host")
    host = _clean_host(parts.hostname, field)
    if scheme == "http" and not plain_http_allowed(host.strip("[]")):
        raise InvalidSettings(field, "must use https:// (http is allowed only for localhost)")
    netloc = host if port is None else f"{host}:{port}"
    url = urlunsplit(
        (
            scheme,
            netloc,
            quote(parts.path, safe=_SAFE) or "/",
            quote(parts.query, safe=_SAFE),
            quote(parts.fragment, safe=_SAFE),
        )
    )
    if len(url) > MAX_URL_LENGTH:
        raise InvalidSettings(field, f"must be at most {MAX_URL_LENGTH} characters")
    return url


def redact_url(url: str) -> str:
    """Scheme and host only: the full link is what a plain-link class has to keep secret."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    host = parts.netloc.rpartition("@")[2]
    rest = "/***" if (parts.path.strip("/") or parts.query or parts.fragment) else ""
    return f"{parts.scheme}://{host}{rest}"


def _upstream_id(url: str) -> str:
    # Stable and non-secret: shows whether the link changed without disclosing it.
    return "url-sha256:" + hashlib.sha256(url.encode()).hexdigest()[:16]


# --- the adapter ------------------------------------------------------------------------


class GenericAdapter(AdapterBase):
    """Redirects admitted students to the stored URL; can enforce nothing upstream."""

    kind: ClassVar[str] = KIND
    # NOTE: honest and empty: a plain link cannot enforce entry, expire, remove or mute.
    # settings holding URLs the gateway itself calls (checked against the egress policy)
    egress_fields: ClassVar[tuple[str, ...]] = ()
    form_fields: ClassVar[tuple[FormField, ...]] = (
        FormField("url", "url", required=True, placeholder="https://meet.example.org/abc"),
    )
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(
        self,
        *,
        http_session: aiohttp.ClientSession | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._http = http_session  # unused: no upstream API to call
        self._clock = clock

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(settings, Mapping):
            raise InvalidSettings("platform", "must be an object")
        for key in settings:
            if key not in ("kind", "url"):
                raise InvalidSettings(f"platform.{key}", "is not a setting of the generic platform")
        if settings.get("kind", KIND) != KIND:
            raise InvalidSettings("platform.kind", f"must be {KIND!r}")
        if "url" not in settings:
            raise InvalidSettings(_URL_FIELD, "is required")
        return {"kind": KIND, "url": parse_meeting_url(settings["url"])}

    @classmethod
    def redact(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(settings)
        url = out.get("url")
        if isinstance(url, str):
            out["url"] = redact_url(url)
        return out

    async def provision(self, spec: RoomSpec) -> Room:
        url = self.validate_settings(spec.settings)["url"]
        return Room(
            class_id=spec.class_id, kind=KIND, upstream_id=_upstream_id(url), data={"url": url}
        )

    async def join_url(self, room: Room, participant: Participant) -> str:
        if room.kind != KIND:
            raise AdapterError("invalid_room", f"room of kind {room.kind!r} given to {KIND}")
        # Fail closed on a corrupted or hand-edited stored room.
        return parse_meeting_url(room.data.get("url"), "room.data.url")

    async def remove(self, room: Room, participant: Participant) -> None:
        raise Unsupported(KIND, Capability.REMOVE)

    async def lock(self, room: Room, locked: bool = True) -> None:
        raise Unsupported(KIND, Capability.LOCK)

    async def end(self, room: Room) -> None:
        raise Unsupported(KIND, Capability.END)

    async def participants(self, room: Room) -> list[Present]:
        raise Unsupported(KIND, Capability.PRESENCE)
