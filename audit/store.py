"""Redis layout of the audit log and the Lua scripts that change it atomically.

Every key starts with the caller's ``prefix`` (the same Redis may hold other data). On Redis
Cluster, put a hash tag in the prefix (e.g. ``"cg:{audit}:"``) so the multi-key scripts
below run on one slot.

=============================  ====================================================
key                            holds
=============================  ====================================================
``audit:stream``               appended, not yet sequenced events (field ``d``: record,
                               then a newline and the personal blob if any)
``audit:meta``                 hash: ``size``, ``last_id`` (last sequenced stream id),
                               ``origin``, ``ckpt_size``, ``archived_before``,
                               ``ix_fields_from`` (first record in the type/reason
                               indexes)
``audit:lease``                sequencer lease token (SET NX PX, renewed by Lua)
``audit:rec``                  hash: decimal index -> record bytes ``E`` (RFC 8785)
``audit:leaves``               leaf hashes, 32 bytes each, packed in index order
``audit:tree:<L>``             complete nodes of level L >= 1, 32 bytes each, packed
``audit:checkpoints``          list of every signed checkpoint, oldest first
``audit:pd``                   hash: index -> personal blob ``{"p": P, "s": salt}``
``audit:pix:<kind>:<digest>``  zset of indexes per student / IP (beside P; erasable)
``audit:ix:class:<class>``     zset of indexes per class
``audit:ix:type:<type>``       zset of indexes per event type (records sequenced from
                               ``ix_fields_from`` in meta on)
``audit:ix:reason:<reason>``   zset of indexes per reason code (likewise)
``audit:ix:tb``                hash: bucket (index // 1024) -> "min_ts,max_ts"
``audit:archives``             list of signed archive notes (ranges moved to segments)
``audit:outboxes``             set of outbox keys (per-class streams, see audit.outbox)
``audit:outbox:dirty``         set of outbox keys written since the last drain
``audit:outbox:cursor``        hash: outbox key -> last entry id drained into the stream
=============================  ====================================================
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from audit.errors import AuditError

TIME_BUCKET_SHIFT = 10  # 1024 indexes share one min/max timestamp entry

# Event fields with an index of their own, and the shape of an indexed value: types
# ("join.enter") and reason codes ("token_invalid") are short identifiers; a value of
# another shape (only a hand-written record could carry one) is not indexed.
INDEXED_FIELDS = ("type", "reason")
INDEXED_VALUE = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")

Clock = Callable[[], int]
"""Milliseconds since the Unix epoch (UTC). Injected everywhere time matters."""


@dataclass(frozen=True, slots=True)
class AuditKeys:
    prefix: str

    def _k(self, name: str) -> str:
        return f"{self.prefix}audit:{name}"

    @property
    def stream(self) -> str:
        return self._k("stream")

    @property
    def meta(self) -> str:
        return self._k("meta")

    @property
    def lease(self) -> str:
        return self._k("lease")

    @property
    def records(self) -> str:
        return self._k("rec")

    @property
    def leaves(self) -> str:
        return self._k("leaves")

    def level(self, level: int) -> str:
        return self.leaves if level == 0 else self._k(f"tree:{level}")

    @property
    def checkpoints(self) -> str:
        return self._k("checkpoints")

    @property
    def personal(self) -> str:
        return self._k("pd")

    def personal_index(self, kind: str, value: str) -> str:
        # NOTE: the key name carries a digest, not the value, so listing keys does not show
        # student ids or IPs. An unsalted digest of an IPv4 address can be brute-forced; the
        # point is that erasing the entries removes the key, not that the digest is secret.
        digest = hashlib.sha256(f"{kind}\x00{value}".encode()).hexdigest()[:32]
        return self._k(f"pix:{kind}:{digest}")

    def class_index(self, class_id: str) -> str:
        return self._k(f"ix:class:{class_id}")

    def field_index(self, field: str, value: str) -> str:
        """Indexes of the records whose ``field`` (see INDEXED_FIELDS) is ``value``."""
        return self._k(f"ix:{field}:{value}")

    @property
    def time_buckets(self) -> str:
        return self._k("ix:tb")

    @property
    def archives(self) -> str:
        return self._k("archives")

    @property
    def outboxes(self) -> str:
        """Set of every outbox key (audit.outbox), swept by the sequencer."""
        return self._k("outboxes")

    @property
    def outbox_dirty(self) -> str:
        """Set of outbox keys written since the sequencer last looked."""
        return self._k("outbox:dirty")

    @property
    def outbox_cursors(self) -> str:
        """Hash: outbox key -> id of its last entry moved into the stream."""
        return self._k("outbox:cursor")


def student_ids(record: Mapping[str, Any]) -> set[str]:
    """Student identifiers an event refers to (indexed for the ``student`` filter)."""
    out: set[str] = set()
    actor = record.get("actor")
    if isinstance(actor, str) and actor.startswith("student:"):
        out.add(actor[len("student:") :])
    for name in ("subject", "student"):
        value = record.get(name)
        if isinstance(value, str) and value:
            out.add(value)
    return out


def field_indexes(keys: AuditKeys, record: Mapping[str, Any]) -> list[str]:
    """The type/reason index keys a record belongs to."""
    out = []
    for name in INDEXED_FIELDS:
        value = record.get(name)
        if isinstance(value, str) and INDEXED_VALUE.fullmatch(value):
            out.append(keys.field_index(name, value))
    return out


def ensure_bytes_client(redis: aioredis.Redis) -> None:
    """The audit log stores binary hashes: a ``decode_responses=True`` client would mangle them."""
    kwargs = redis.connection_pool.connection_kwargs
    if kwargs.get("decode_responses"):
        raise AuditError(
            "the audit log needs a Redis client with decode_responses=False",
            code="audit_config",
        )


async def meta_int(redis: aioredis.Redis, keys: AuditKeys, field: str) -> int:
    raw = await cast(Awaitable[bytes | None], redis.hget(keys.meta, field))
    return int(raw) if raw else 0


async def fetch_nodes(
    redis: aioredis.Redis, keys: AuditKeys, nodes: list[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """Complete nodes by ``(level, idx)`` in one round trip."""
    if not nodes:
        return {}
    pipe = redis.pipeline(transaction=False)
    for level, idx in nodes:
        pipe.getrange(keys.level(level), 32 * idx, 32 * idx + 31)
    values = await pipe.execute()
    out: dict[tuple[int, int], bytes] = {}
    for node, value in zip(nodes, values, strict=True):
        if len(value) != 32:
            raise AuditError(f"stored tree node {node} is missing or short", code="audit_corrupt")
        out[node] = value
    return out


