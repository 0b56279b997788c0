"""Audit outboxes: records written in the same atomic step as the change they report.

A change to a class (an admission, a knock, a host admitting a waiting ticket) is made by
one Lua script in the class's hash slot (``{c:<id>}``). On Redis Cluster that script
cannot touch the audit log's keys, which live in another slot, so it appends the record to
the class's *outbox*, a stream in the class's own slot: the change and its record become
visible together or not at all, whatever process dies when.

The sequencer's leader drains every outbox into the audit stream (``audit:stream``) with
audit/lua/drain_outbox.lua, a script in the audit log's slot that checks the leader's lease and
compare-and-sets a per-outbox cursor (the last drained entry id) in the same step as it
appends. The drained entries are then deleted from the outbox (``XDEL``, which keeps the
stream's last id, so new entries always sort after the cursor). A drain interrupted
between the two steps is re-read from the cursor and skipped: each entry reaches the log
exactly once.

Outboxes are found through two sets in the audit slot: ``audit:outboxes`` (every outbox,
added before a process first writes to it, so a crash right after a write still leaves it
listed) swept every ``sweep_ms``, and ``audit:outbox:dirty`` (added in the same round trip
as each write) read at every poll, so a record is sequenced within one poll in practice.

Entry format (field ``d``, version 1): canonical JSON ``{"v": 1, "e": event, "p":
personal or null, "ts": ms, "id": event id, "node": node}``; an optional field ``t`` is a
ticket id the script chose, written into ``facts.ticket`` when the record is built.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from audit.errors import FormatError, UnsupportedVersionError
from audit.records import (
    MAX_RECORD_BYTES,
    SALT_SIZE,
    PreparedEvent,
    check_members,
    is_plain,
    prepare_event,
)

OUTBOX_FORMAT = 1
# What a record may hold beyond its outbox value: the personal data's commitment
# (``"pd"``, 44 characters) and the ticket id the writing script chose (``facts.ticket``).
_RECORD_EXTRA = 512



def pack_entry(
    event: Mapping[str, Any],
    personal: Mapping[str, Any] | None,
    *,
    ts_ms: int,
    node: str,
    event_id: str | None = None,
) -> str:
    """The outbox value of one event (validated now: a bad event fails the request,
    never the drain).

    NOTE: the record itself is built once, when the sequencer drains the entry. Here an
    event of plain values (strings, safe integers, booleans, null: what the gateway
    writes) is checked by its members and by encoding its outbox value, which is larger
    than its record but for the few fixed members a record adds (``_RECORD_EXTRA``); any
    other event, or one near the size limit, is built in full to be checked."""
    eid = event_id or secrets.token_hex(8)
    check_members(event)
    if is_plain(event) and (not personal or is_plain(personal)):
        try:
            value = outbox_value(event, personal, ts_ms=ts_ms, node=node, event_id=eid)
        except orjson.JSONEncodeError:  # a lone surrogate: refused below with its reason
            pass
        else:
            if len(value.encode()) + _RECORD_EXTRA <= MAX_RECORD_BYTES:
                return value
    prepare_event(event, personal, ts_ms=ts_ms, node=node, event_id=eid,
                  salt=b"\0" * SALT_SIZE if personal else None)
    return outbox_value(event, personal, ts_ms=ts_ms, node=node, event_id=eid)


def outbox_value(event: Mapping[str, Any], personal: Mapping[str, Any] | None, *,
                 ts_ms: int, node: str, event_id: str) -> str:
    """The outbox value of an event already validated (prepare_event)."""
    # NOTE: the event was validated (prepare_event, or plain values: is_plain), so orjson
    # meets nothing it would spell differently from json (NaN, big integers).
    return orjson.dumps({"v": OUTBOX_FORMAT, "e": dict(event),
                         "p": dict(personal) if personal else None,
                         "ts": ts_ms, "id": event_id, "node": node},
                        option=orjson.OPT_SORT_KEYS).decode()


def unpack_entry(fields: Mapping[bytes, bytes]) -> PreparedEvent:
    """The record of one outbox entry, with a fresh salt for its personal data."""
    raw = fields.get(b"d")
    if raw is None:
        raise FormatError("outbox entry has no value")
    try:
        obj = orjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError("outbox entry is not JSON") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("e"), dict):
        raise FormatError("outbox entry has no event")
    v = obj.get("v")
    if v != OUTBOX_FORMAT:
        raise UnsupportedVersionError(f"outbox entry format v{v} is not known here")
    event: dict[str, Any] = obj["e"]
    ticket = fields.get(b"t")
    if ticket:
        facts = dict(event.get("facts") or {})
        facts["ticket"] = ticket.decode()
        event["facts"] = facts
    personal = obj.get("p") or None
    return prepare_event(event, personal, ts_ms=int(obj["ts"]), node=str(obj["node"]),
                         event_id=str(obj["id"]),
                         salt=secrets.token_bytes(SALT_SIZE) if personal else None)


def stream_value(item: PreparedEvent) -> bytes:
    """What the audit stream holds for one record (as AuditLog.append_many writes it)."""
    data = item.record
    if item.personal_blob is not None:
        data += b"\n" + item.personal_blob
    return data
