"""Request helpers shared by the routes: client IP, JSON bodies, auth."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from meeting_adapters import JsonTooDeep, json_bounded

from .errors import ApiError

MAX_JSON_DEPTH = 20


def client_ip(request: web.Request, trusted_proxies: Iterable[str]) -> str:
    """The peer address, or the X-Forwarded-For client when the peer is a trusted proxy.

    NOTE: X-Forwarded-For is attacker-controlled unless the peer is our own proxy; we
    walk it from the right and stop at the first address that is not a trusted proxy.
    """
    peer = request.remote or "0.0.0.0"  # noqa: S104 - a placeholder address, never bound
    trusted = tuple(trusted_proxies)
    if not trusted or not _trusted_peer(peer, trusted):
        return _norm(peer)
    nets = _networks(trusted)
    chain = []
    for h in request.headers.getall("X-Forwarded-For", []):
        chain += [p.strip() for p in h.split(",") if p.strip()]
    # NOTE: each address is parsed once (a carrier's pool of addresses defeats a cache).
    for addr in reversed(chain):
        ip = _parse(addr)
        if ip is None:
            return _norm(peer)
        if not any(ip in n for n in nets):
            return _text(ip)
    first = _parse(chain[0]) if chain else None
    return _text(first) if first is not None else _norm(peer)


def _parse(a: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(a)
    except ValueError:
        return None


def _text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


@lru_cache(maxsize=256)
def _trusted_peer(peer: str, cidrs: tuple[str, ...]) -> bool:
    """(cached: the peers of a deployment are its few proxies)"""
    ip = _parse(peer)
    return ip is not None and any(ip in n for n in _networks(cidrs))


@lru_cache(maxsize=64)
def _networks(cidrs: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in cidrs]


@lru_cache(maxsize=8192)
def _norm(a: str) -> str:
    # (cached: the ipaddress module costs more than the rest of a refusal)
    ip = _parse(a)
    return a if ip is None else _text(ip)


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 once it passes ``limit`` bytes.

    NOTE: one ``content.read(n)`` returns what has arrived so far, which is part of
    the body when it comes in several TCP segments (a phone on a slow network); read
    until the end."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"request body larger than {limit} bytes")


async def read_json(request: web.Request, *, max_bytes: int | None = None) -> Any:
    """The JSON body, or a precise 4xx: 413 too large, 400 malformed/too deep/wrong type."""
    ctype = request.content_type
    if ctype not in ("application/json", "text/json"):
        raise ApiError(415, "unsupported_media_type", "expected application/json")
    limit = max_bytes or request.app._client_max_size  # noqa: SLF001 - the app's own cap
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"request body larger than {limit} bytes")
    body = await read_limited(request, limit)
    try:
        return loads_bounded(body)
    except JsonTooDeep as exc:
        raise ApiError(400, "too_deep", str(exc)) from exc
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from exc


def loads_bounded(data: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for untrusted text (request bodies, WebSocket frames): a nesting
    bomb is a ``JsonTooDeep``, never a ``RecursionError``; every failure is a
    ``ValueError`` (meeting_adapters/_http.py, shared with the platforms' webhooks)."""
    return json_bounded(data, max_depth=max_depth)


async def read_form(
    request: web.Request,
) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    """The form body (urlencoded or multipart), or 400 ``invalid_body`` when it cannot be
    parsed: a multipart type without a boundary, or a body that is not what its type
    says. aiohttp's parsers raise ``ValueError`` for those, which is the visitor's
    mistake, not ours."""
    try:
        return await request.post()
    except web.HTTPException:
        raise  # 413 from the body cap keeps its own status
    except (ValueError, LookupError, AssertionError) as exc:
        # LookupError: an unknown charset parameter; AssertionError: aiohttp asserts
        # on some malformed part headers.
        raise ApiError(400, "invalid_body", "the form data cannot be parsed") from exc


def require_fields(
    data: Any, *, required: Iterable[str], optional: Iterable[str] = (), where: str = ""
) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "expected a JSON object", field=where or None)
    allowed = set(required) | set(optional)
    for k in data:
        if k not in allowed:
            f = f"{where}.{k}" if where else k
            raise ApiError(400, "unknown_field", f"unknown field {f!r}", field=f)
    for k in required:
        if k not in data:
            f = f"{where}.{k}" if where else k
            raise ApiError(400, "missing_field", f"missing field {f!r}", field=f)
    return data
