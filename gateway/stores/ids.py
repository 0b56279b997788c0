"""Identifiers of classes, students, tickets and devices."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def new_id(kind: str, n: int = 12) -> str:
    """A random identifier such as ``c7k2...``: no personal data, URL safe."""
    return kind + "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))


def new_secret(nbytes: int = 16) -> str:
    return secrets.token_urlsafe(nbytes)


def device_hash(device_cookie: str) -> str:
    """Redis stores only the hash of the device cookie."""
    return hashlib.sha256(device_cookie.encode()).hexdigest()


def valid_class_id(value: str) -> bool:
    return (
        len(value) == 13 and value[0] == "c" and all(ch in _ID_ALPHABET for ch in value[1:])
    )


def valid_student_id(value: str) -> bool:
    return (
        len(value) == 13 and value[0] == "s" and all(ch in _ID_ALPHABET for ch in value[1:])
    )


def split_ticket(value: str) -> tuple[str, str] | None:
    """``<class_id>.<random>`` → (class_id, random), or None when malformed (tickets and
    ``/go`` nonces)."""
    if len(value) > 80 or value.count(".") != 1:
        return None
    cid, rand = value.split(".", 1)
    if not valid_class_id(cid) or not (16 <= len(rand) <= 48):
        return None
    if not all(ch.isalnum() or ch in "-_" for ch in rand):
        return None
    return cid, rand


def pairs(flat: Sequence[Any]) -> dict[str, Any]:
    """A flat ``[field, value, ...]`` reply (HGETALL inside a script) as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
