"""Bans of devices, addresses and networks, per class or for a whole org subtree.

A ban names what it blocks by key: ``d:<device hash>``, ``i:<ip>`` or ``n:<cidr>``.
Class bans live with the class (``{c:<id>}:bans``); org bans apply to every class in
the org's subtree. Expired bans are ignored at once and pruned when listed.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ApiError


@dataclass(frozen=True, slots=True)
class Ban:
    key: str
    reason: str
    by: str
    at: float
    until: float | None
    scope: str  # class | org
    where: str  # class id or org slug
    student_id: str | None = None  # the student whose device or address it was

    def live(self, now: float) -> bool:
        return self.until is None or self.until > now

    def to_json(self) -> dict[str, Any]:
        kind, _, value = self.key.partition(":")
        kind_name = {"d": "device", "i": "ip", "n": "cidr"}[kind]
        out: dict[str, Any] = {"key": self.key, "kind": kind_name,
                               "reason": self.reason, "by": self.by, "at": self.at,
                               "until": self.until, "scope": self.scope, "where": self.where}
        if kind != "d":
            out["value"] = value  # device hashes are not shown: they identify nobody to staff
        if self.student_id:
            out["student_id"] = self.student_id
        return out


def make_key(*, device: str | None = None, ip: str | None = None, cidr: str | None = None) -> str:
    """The ban key for exactly one of device hash, IP or CIDR (validated)."""
    given = [x for x in (device, ip, cidr) if x]
    if len(given) != 1:
        raise ApiError(400, "invalid_ban", "give exactly one of device, ip or cidr", field="ip")
    if device:
        if len(device) != 64 or any(c not in "0123456789abcdef" for c in device):
            raise ApiError(400, "invalid_ban", "device must be a device hash", field="device")
        return f"d:{device}"
    if ip:
        try:
            return f"i:{ipaddress.ip_address(ip)}"
        except ValueError as exc:
            raise ApiError(400, "invalid_ban", "not an IP address", field="ip") from exc
    try:
        net = ipaddress.ip_network(str(cidr), strict=False)
    except ValueError as exc:
        raise ApiError(400, "invalid_ban", "not a CIDR network", field="cidr") from exc
    # NOTE: refuse networks so wide they would lock out a whole province by mistake.
    if (net.version == 4 and net.prefixlen < 16) or (net.version == 6 and net.prefixlen < 32):
        raise ApiError(400, "invalid_ban", "network too wide (at least /16 or /32 for IPv6)",
                       field="cidr")
    return f"n:{net}"


def parse_bans(raw: Mapping[str, str], scope: str, where: str) -> list[Ban]:
    out = []
    for key, value in raw.items():
        try:
            d = json.loads(value)
            out.append(Ban(key=key, reason=str(d.get("reason", "")), by=str(d.get("by", "")),
                           at=float(d.get("at", 0)),
                           until=float(d["until"]) if d.get("until") is not None else None,
                           scope=scope, where=where,
                           student_id=str(d["student"]) if d.get("student") else None))
        except (ValueError, TypeError, KeyError):
            continue  # a corrupt entry must not break every join of the class
    return out


def encode_ban(reason: str, by: str, at: float, until: float | None,
               student_id: str | None = None) -> str:
    d: dict[str, Any] = {"reason": reason, "by": by, "at": at, "until": until}
    if student_id:
        d["student"] = student_id
    return json.dumps(d)


def match(bans: Iterable[Ban], *, device: str | None, ip: str,
          now: float) -> tuple[Ban | None, Ban | None]:
    """(device ban, address ban) that apply to this visitor right now."""
    dev_ban = ip_ban = None
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    parsed = False  # (the address is parsed only when a network ban needs it)
    for b in bans:
        if not b.live(now):
            continue
        kind, _, value = b.key.partition(":")
        if kind == "d" and device is not None and value == device:
            dev_ban = dev_ban or b
        elif kind == "i" and value == ip:
            ip_ban = ip_ban or b
        elif kind == "n":
            if not parsed:
                parsed = True
                try:
                    addr = ipaddress.ip_address(ip)
                except ValueError:
                    addr = None
            if addr is None:
                continue
            try:
                if addr in ipaddress.ip_network(value):
                    ip_ban = ip_ban or b
            except (ValueError, TypeError):
                continue
    return dev_ban, ip_ban
