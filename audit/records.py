"""Event records: canonical bytes, the personal-data commitment, format versions. Pure.

An event record ``E`` is what enters the tree (leaf data = RFC 8785 bytes of ``E``). The
personal fields ``P`` never do: ``E["pd"] = base64(SHA-256(salt || RFC8785(P)))`` commits to
them, and ``P`` with its 16-byte salt is stored beside the log where it can be erased.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import rfc8785

from audit.errors import FormatError, InvalidEventError, UnsupportedVersionError

FORMAT_VERSION = 1
SALT_SIZE = 16
MAX_RECORD_BYTES = 16 * 1024

#: Members the log itself sets; callers may not supply them.
RESERVED_FIELDS = frozenset({"v", "ts", "node", "pd", "id", "index", "personal"})

#: Member names that carry personal data and therefore belong in ``personal``, not ``E``.
#: NOTE: a deny-list cannot catch everything; it stops the common slips (an IP or a name
#: written straight into the immutable tree, where it could never be erased).
PERSONAL_FIELD_NAMES = frozenset(
    {
        "ip",
        "name",
        "display_name",
        "full_name",
        "email",
        "phone",
        "user_agent",
        "ua",
        "device",
        "device_id",
        "external_id",
    }
)


_MAX_SAFE_INT = 2**53 - 1


def _plain(value: Any) -> bool:
    """True when ``json.dumps`` (sorted, compact, no ASCII escaping) equals RFC 8785 output.

    That holds for strings, safe integers, booleans and null in objects with ASCII keys:
    the two differ only in number formatting (floats) and in key order for non-ASCII keys
    (JCS sorts by UTF-16 code units).
    """
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
    if isinstance(value, dict):
        return all(isinstance(k, str) and k.isascii() and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return False


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes; raises :class:`InvalidEventError` for non-JSON values."""
    if _plain(value):
        # Fast path (orjson, compact and sorted: identical bytes for plain values, about
        # 10x faster); tests check it against the rfc8785 package.
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # lone surrogates: let rfc8785 reject them
            pass
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidEventError(f"value cannot be canonicalised as JSON: {exc}") from exc


def personal_commitment(personal: Mapping[str, Any], salt: bytes) -> str:
    """``base64(SHA-256(salt || RFC8785(P)))`` — the ``pd`` member of the record."""
    if len(salt) != SALT_SIZE:
        raise InvalidEventError(f"salt must be {SALT_SIZE} bytes, found {len(salt)}")
    return base64.b64encode(hashlib.sha256(salt + canonical(dict(personal))).digest()).decode()


def check_members(event: Mapping[str, Any]) -> None:
    """The checks of an event's members that need no encoding: a type and an actor, string
    member names, none reserved for the log, none naming personal data."""
    if not isinstance(event.get("type"), str) or not event["type"]:
        raise InvalidEventError("event needs a non-empty string 'type'")
    if not isinstance(event.get("actor"), str) or not event["actor"]:
        raise InvalidEventError("event needs a non-empty string 'actor' (e.g. 'system')")
    for key in event:
        if not isinstance(key, str):
            raise InvalidEventError(f"event member names must be strings, found {key!r}")
        if key in RESERVED_FIELDS:
            raise InvalidEventError(f"event member {key!r} is set by the audit log itself")
        if key.lower() in PERSONAL_FIELD_NAMES:
            raise InvalidEventError(
                f"event member {key!r} is personal data: pass it in 'personal' instead"
            )


is_plain = _plain  # True when a value canonicalises by ``json.dumps`` alone


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """An event ready to append: its record bytes and, if any, the personal blob."""

    event_id: str
    record: bytes
    personal_blob: bytes | None


def prepare_event(
    event: Mapping[str, Any],
    personal: Mapping[str, Any] | None,
    *,
    ts_ms: int,
    node: str,
    event_id: str,
    salt: bytes | None,
) -> PreparedEvent:
    """Validate ``event`` and build ``E`` (and the personal blob when ``personal`` is given)."""
    check_members(event)
    record: dict[str, Any] = dict(event)
    record.update(v=FORMAT_VERSION, ts=ts_ms, node=node, id=event_id)
    blob: bytes | None = None
    if personal:
        if salt is None:
            raise InvalidEventError("personal data needs a salt")
        record["pd"] = personal_commitment(personal, salt)
        blob = canonical({"p": dict(personal), "s": base64.b64encode(salt).decode()})
    data = canonical(record)
    if len(data) > MAX_RECORD_BYTES:
        raise InvalidEventError(
            f"event record is {len(data)} bytes, the limit is {MAX_RECORD_BYTES}"
        )
    return PreparedEvent(event_id, data, blob)


def decode_record(data: bytes) -> dict[str, Any]:
    """Parse stored record bytes, rejecting unknown future format versions."""
    try:
        obj = orjson.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FormatError("stored audit record is not JSON") from exc
    if not isinstance(obj, dict):
        raise FormatError("stored audit record is not a JSON object")
    v = obj.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise FormatError("stored audit record has no integer format version 'v'")
    if v > FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"audit record format v{v} is newer than this software (knows v{FORMAT_VERSION}); "
            "upgrade ClassGuard to read it"
        )
    if v < 1:
        raise UnsupportedVersionError(f"audit record format v{v} does not exist")
    # v1 is the only version so far; older versions would be upgraded here.
    return obj


def decode_personal(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """``(P, salt)`` from a stored personal blob."""
    try:
        obj = orjson.loads(blob)
        personal, salt = obj["p"], base64.b64decode(obj["s"], validate=True)
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error) as exc:
        raise FormatError("stored personal data is malformed") from exc
    if not isinstance(personal, dict) or len(salt) != SALT_SIZE:
        raise FormatError("stored personal data is malformed")
    return personal, salt


def check_personal(record: Mapping[str, Any], personal: Mapping[str, Any], salt: bytes) -> bool:
    """True when ``(P, salt)`` is what the record's ``pd`` commits to."""
    return record.get("pd") == personal_commitment(personal, salt)
