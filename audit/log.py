"""The audit log as gateways use it: append, read, search, erase, prove, follow."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import redis.asyncio as aioredis

from audit import merkle
from audit.checkpoint import Checkpoint
from audit.errors import (
    FormatError,
    NotDurableError,
    NotFoundError,
    ProofError,
    QueryError,
)
from audit.holds import LegalHold, LegalHoldError, holding
from audit.outbox import outbox_value
from audit.proofs import TlogProof
from audit.records import (
    SALT_SIZE,
    PreparedEvent,
    decode_personal,
    decode_record,
    prepare_event,
)
from audit.scripts import CommandPipeline
from audit.store import (
    INDEXED_VALUE,
    TIME_BUCKET_SHIFT,
    AuditKeys,
    Clock,
    ensure_bytes_client,
    fetch_nodes,
    meta_int,
    student_ids,
)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One sequenced record; ``personal`` only when disclosed (and not erased)."""

    index: int
    record: Mapping[str, Any]
    personal: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, **self.record}
        if self.personal is not None:
            out["personal"] = dict(self.personal)
        return out


@dataclass(frozen=True, slots=True)
class InclusionProof:
    index: int
    size: int
    leaf_hash: bytes
    hashes: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "size": self.size,
            "leaf_hash": base64.b64encode(self.leaf_hash).decode(),
            "hashes": [base64.b64encode(h).decode() for h in self.hashes],
        }


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    first: int
    second: int
    hashes: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "second": self.second,
            "hashes": [base64.b64encode(h).decode() for h in self.hashes],
        }


def parse_time(value: int | str | None) -> int | None:
    """Milliseconds since the epoch from an int, a decimal string or ISO 8601 with offset."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.lstrip("-").isdigit():
            return int(value)
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise FormatError(f"not a time: {value!r} (use ms or ISO 8601)") from exc
        if dt.tzinfo is None:
            raise FormatError(f"time {value!r} needs a UTC offset")
        return int(dt.timestamp() * 1000)
    raise FormatError(f"not a time: {value!r}")


@dataclass(frozen=True, slots=True)
class LogStatus:
    """What the operators' metrics show of the log."""

    size: int  # sequenced records
    checkpoint_size: int  # records covered by the latest signed checkpoint
    checkpoint_ms: int | None  # when the latest checkpoint was signed (None: none yet)
    pending: int  # appended, not yet sequenced


# Shapes of the search parameters. NOTE: a search is itself recorded (``audit.read``),
# so a parameter that does not have the shape of what it names is refused rather than
# stored: no free text (a name, a phone number) reaches an immutable record this way.
_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_TIME_CHARS = 40


def _shaped(field: str, value: str | None, shape: re.Pattern[str], what: str) -> str | None:
    if value is None:
        return None
    if not shape.fullmatch(value):
        raise QueryError(field, f"{field} must be {what}, got {len(value)} characters "
                                "of another shape")
    return value


def _ip_param(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise QueryError("ip", "ip must be an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _time_param(field: str, value: Any) -> int | None:
    if isinstance(value, str) and len(value) > _MAX_TIME_CHARS:
        raise QueryError(field, f"{field} must be a time (ms or ISO 8601 with offset)")
    try:
        return parse_time(value)
    except FormatError as exc:
        raise QueryError(field, f"{field} must be a time (ms or ISO 8601 with offset)") \
            from exc


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of ``GET /api/v1/audit/events``; all given filters must match."""

    class_id: str | None = None
    type: str | None = None
    reason: str | None = None
    student: str | None = None
    ip: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AuditQuery:
        """Parse and check every parameter's shape; :class:`QueryError` names the first
        bad one (a class or student id, an event type or reason code, an IP address,
        a time)."""
        def s(name: str) -> str | None:
            v = params.get(name)
            return str(v) if v not in (None, "") else None

        ident = "an identifier (1-64 of A-Z a-z 0-9 _ -)"
        code = "a code (1-64 of a-z 0-9 _ . : -)"
        class_field = "class" if s("class") is not None else "class_id"
        return cls(
            class_id=_shaped(class_field, s("class") or s("class_id"), _ID_SHAPE, ident),
            type=_shaped("type", s("type"), INDEXED_VALUE, code),
            reason=_shaped("reason", s("reason"), INDEXED_VALUE, code),
            student=_shaped("student", s("student"), _ID_SHAPE, ident),
            ip=_ip_param(s("ip")),
            since_ms=_time_param("since", params.get("since")),
            until_ms=_time_param("until", params.get("until")),
        )

    def read_record(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What an ``audit.read`` record keeps of this search: (facts for the immutable
        record, personal data for its erasable part). Event types, reason codes, a
        class id and times are facts; the student searched for and the address are
        personal."""
        facts: dict[str, Any] = {}
        for name, value in (("class", self.class_id), ("type", self.type),
                            ("reason", self.reason), ("since", self.since_ms),
                            ("until", self.until_ms)):
            if value is not None:
                facts[name] = value
        personal: dict[str, Any] = {}
        if self.student is not None:
            personal["query_student"] = self.student
        if self.ip is not None:
            personal["query_ip"] = self.ip
        return facts, personal


@dataclass(slots=True)
class _Scan:
    """Working state of one query page (not a value: filled while scanning)."""

    found: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    next_upper: int | None = None


class AuditLog:
    """Appends events durably and reads the sequenced log.

    ``redis`` must be a bytes client (``decode_responses=False``). An append returns once
    Redis has acknowledged the write: on a server with ``appendonly yes`` and
    ``appendfsync always`` that reply is sent only after the AOF was fsynced. With
    ``durability_replicas`` > 0 the append additionally waits (``WAIT``) for that many
    replicas and raises :class:`NotDurableError` if they do not confirm in time.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        node_id: str,
        clock: Clock,
        durability_replicas: int = 0,
        durability_timeout_ms: int = 1000,
        fast: CommandPipeline | None = None,
        outbox_of: Callable[[str], str] | None = None,
    ) -> None:
        ensure_bytes_client(redis)
        # ``outbox_of(class_id)``: the class's outbox (audit.outbox). Events of a class
        # go there rather than to the stream, behind the records its scripts wrote, so
        # the log keeps each class's records in the order they happened.
        self._outbox_of = outbox_of
        self._redis = redis
        # Appends go through ``fast`` when given (the gateway's multiplexed connection,
        # replies as bytes): a redis-py pipeline per batch cost more than the batch.
        self._fast = fast
        self.keys = AuditKeys(prefix)
        self._node = node_id
        self._clock = clock
        self._replicas = durability_replicas
        self._wait_ms = durability_timeout_ms

    # --- appending ---

    def _prepare(
        self, event: Mapping[str, Any], personal: Mapping[str, Any] | None, ts_ms: int
    ) -> PreparedEvent:
        return prepare_event(
            event,
            personal,
            ts_ms=ts_ms,
            node=self._node,
            event_id=secrets.token_hex(8),
            salt=secrets.token_bytes(SALT_SIZE) if personal else None,
        )

    async def append(
        self, event: Mapping[str, Any], personal: Mapping[str, Any] | None = None
    ) -> str:
        """Append one event; returns its event id (the record's ``id``) once durable."""
        (event_id,) = await self.append_many([(event, personal)])
        return event_id

    async def append_many(
        self, items: Iterable[tuple[Mapping[str, Any], Mapping[str, Any] | None]]
    ) -> list[str]:
        """Append several events in one round trip; returns their ids once all are durable."""
        given = list(items)
        stamps = [self._clock() for _ in given]
        prepared = [self._prepare(e, p, ts) for (e, p), ts in zip(given, stamps, strict=True)]
        if not prepared:
            return []
        commands: list[tuple[Any, ...]] = []
        boxes: set[str] = set()
        for (event, personal), ts, item in zip(given, stamps, prepared, strict=True):
            cls = event.get("class")
            if self._outbox_of is not None and isinstance(cls, str) and cls:
                box = self._outbox_of(cls)
                boxes.add(box)
                commands.append(("XADD", box, "*", "d", outbox_value(
                    event, personal, ts_ms=ts, node=self._node, event_id=item.event_id)))
                continue
            # One field per entry keeps the sequencer's reads cheap. Canonical JSON never
            # holds a raw newline, so it separates the record from the personal blob.
            data = item.record
            if item.personal_blob is not None:
                data += b"\n" + item.personal_blob
            commands.append(("XADD", self.keys.stream, "*", "d", data))
        for box in sorted(boxes):
            commands.append(("SADD", self.keys.outboxes, box))
            commands.append(("SADD", self.keys.outbox_dirty, box))
        if self._replicas > 0:
            # WAIT runs on the connection of these writes, so it covers them (on the
            # shared connection, every write sent before them too).
            commands.append(("WAIT", self._replicas, self._wait_ms))
        if self._fast is not None:
            replies = await self._fast.pipeline(commands)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        else:
            pipe = self._redis.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies = await pipe.execute()
        if self._replicas > 0 and int(replies[-1]) < self._replicas:
            raise NotDurableError(
                f"expected {self._replicas} replicas to confirm the append within "
                f"{self._wait_ms} ms, found {int(replies[-1])}"
            )
        return [item.event_id for item in prepared]

    async def durability(self) -> dict[str, str]:
        """The server's persistence settings, for ``/readyz`` and start-up warnings."""
        try:
            raw = await self._redis.config_get("append*")
        except aioredis.ResponseError:  # CONFIG disabled on managed servers
            return {}
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }

    # --- reading ---

    async def size(self) -> int:
        """Number of sequenced records (the tree size)."""
        return await meta_int(self._redis, self.keys, "size")

    async def pending(self) -> int:
        """Events appended but not yet sequenced."""
        return int(await self._redis.xlen(self.keys.stream))

    async def status(self) -> LogStatus:
        """Sizes and the latest checkpoint's signing time, in one round trip (metrics)."""
        async with self._redis.pipeline(transaction=False) as p:
            p.hmget(self.keys.meta, ["size", "ckpt_size", "ckpt_ms"])
            p.xlen(self.keys.stream)
            (size_b, ckpt_b, ckpt_ms_b), pending = await p.execute()
        return LogStatus(size=int(size_b or 0), checkpoint_size=int(ckpt_b or 0),
                         checkpoint_ms=int(ckpt_ms_b) if ckpt_ms_b else None,
                         pending=int(pending))

    async def read(self, index: int) -> AuditEvent:
        raw = await cast(Awaitable[bytes | None], self._redis.hget(self.keys.records, str(index)))
        if raw is None:
            raise NotFoundError(f"no audit record at index {index}")
        return AuditEvent(index, decode_record(raw))

    async def read_raw(self, index: int) -> bytes:
        """The exact stored bytes of record ``index`` (the leaf data)."""
        raw = await cast(Awaitable[bytes | None], self._redis.hget(self.keys.records, str(index)))
        if raw is None:
            raise NotFoundError(f"no audit record at index {index}")
        return raw

    async def personal(self, index: int) -> tuple[dict[str, Any], bytes] | None:
        """``(P, salt)`` of record ``index``, or None when it had none or was erased."""
        raw = await cast(Awaitable[bytes | None], self._redis.hget(self.keys.personal, str(index)))
        return None if raw is None else decode_personal(raw)

    async def indexes_of_student(self, student: str) -> list[int]:
        members = await self._redis.zrange(self.keys.personal_index("student", student), 0, -1)
        return [int(cast(bytes, m)) for m in members]

    async def erase_personal(
        self, indexes: Iterable[int] = (), *, subject: str | None = None,
        holds: Sequence[LegalHold] = (),
    ) -> int:
        """Delete ``P`` and its salt (and their index entries) for the given records.

        ``subject`` adds every record indexed under that student. Records, leaves and
        checkpoints are untouched, so every proof stays valid. Returns how many records
        had personal data removed.

        Raises :class:`LegalHoldError` naming the holds (open incidents) that cover any of
        the records, before anything is erased: an order reaching held evidence is refused
        as a whole, never carried out in part.

        NOTE: the holds are checked, then the data erased, in separate round trips: an
        incident opened in between is not seen. Callers pass the holds read just before.

        NOTE: Redis keeps the old bytes in its append-only file until the next rewrite;
        operators erasing on an order should run ``BGREWRITEAOF`` afterwards (see
        docs/audit.md).
        """
        wanted = set(indexes)
        if subject is not None:
            wanted.update(await self.indexes_of_student(subject))
        ordered = sorted(wanted)
        if holds:
            held: dict[str, int] = {}
            for i in range(0, len(ordered), 500):
                chunk = [str(x) for x in ordered[i : i + 500]]
                records = await cast(
                    Awaitable[list[bytes | None]], self._redis.hmget(self.keys.records, chunk)
                )
                blobs = await cast(
                    Awaitable[list[bytes | None]], self._redis.hmget(self.keys.personal, chunk)
                )
                for idx, rec, blob in zip(chunk, records, blobs, strict=True):
                    if rec is None or blob is None:
                        continue  # archived or nothing personal left: nothing to hold
                    h = holding(holds, int(idx), decode_record(rec), decode_personal(blob)[0])
                    if h is not None:
                        held[h.name] = held.get(h.name, 0) + 1
            if held:
                raise LegalHoldError(held)
        erased = 0
        for i in range(0, len(ordered), 500):
            chunk = [str(x) for x in ordered[i : i + 500]]
            records = await cast(
                Awaitable[list[bytes | None]], self._redis.hmget(self.keys.records, chunk)
            )
            blobs = await cast(
                Awaitable[list[bytes | None]], self._redis.hmget(self.keys.personal, chunk)
            )
            pipe = self._redis.pipeline(transaction=True)
            for idx, rec, blob in zip(chunk, records, blobs, strict=True):
                if rec is not None:
                    for sid in student_ids(decode_record(rec)):
                        pipe.zrem(self.keys.personal_index("student", sid), idx)
                if blob is not None:
                    erased += 1
                    p, _ = decode_personal(blob)
                    ip = p.get("ip")
                    if isinstance(ip, str):
                        pipe.zrem(self.keys.personal_index("ip", ip), idx)
            pipe.hdel(self.keys.personal, *chunk)
            await pipe.execute()
        return erased

    async def query(
        self,
        filters: AuditQuery | Mapping[str, Any] | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        disclose_personal: bool = False,
        max_scan: int = 20_000,
    ) -> tuple[list[AuditEvent], str | None]:
        """Matching events, newest first, and a cursor for the next page (None at the end).

        A page may hold fewer than ``limit`` events yet still return a cursor: each call
        examines at most ``max_scan`` records so one request never walks the whole log.
        Records are walked through the smallest index the filters name (student,
        address, class, event type, reason), so only a search with none of these
        filters (by time alone) scans records of every kind.
        """
        q = filters if isinstance(filters, AuditQuery) else AuditQuery.from_params(filters or {})
        limit = max(1, min(limit, 1000))
        size = await self.size()
        floor = await meta_int(self._redis, self.keys, "archived_before")
        if cursor:
            if not cursor.isdigit() or int(cursor) > size:
                raise FormatError(f"bad cursor {cursor!r}")
            upper = int(cursor)
        else:
            upper = size
        scan = _Scan()
        # Exact indexes (the whole history): student, address, class. Field indexes
        # (type, reason) hold records from ``ix_fields_from`` on (older records, from
        # before they existed, are scanned). The smallest set drives the walk, so noise
        # of other kinds between two matches is never examined.
        exact = [k for k in (
            self.keys.personal_index("student", q.student) if q.student else None,
            self.keys.personal_index("ip", q.ip) if q.ip else None,
            self.keys.class_index(q.class_id) if q.class_id else None,
        ) if k is not None]
        by_field = [self.keys.field_index(name, value) for name, value in
                    (("type", q.type), ("reason", q.reason)) if value is not None]
        sizes: dict[str, int] = {}
        ix_from = size
        if exact or by_field:
            pipe = self._redis.pipeline(transaction=False)
            for key in (*exact, *by_field):
                pipe.zcard(key)
            pipe.hget(self.keys.meta, "ix_fields_from")
            replies = await pipe.execute()
            sizes = {k: int(n) for k, n in zip((*exact, *by_field), replies, strict=False)}
            if replies[-1] is not None:
                ix_from = int(replies[-1])
        source: str | None = min(exact, key=lambda k: sizes[k]) if exact else None
        source_floor = floor
        if by_field:
            best = min(by_field, key=lambda k: sizes[k])
            if source is None or sizes[best] < sizes[source]:
                source, source_floor = best, max(floor, ix_from)
        buckets = await self._time_buckets(q)
        examined = 0
        full = False
        while upper > floor and not full and examined < max_scan:
            extra_sets = [k for k in exact if k != source]
            chunk_n = min(500, max_scan - examined)
            if source is not None:
                members: list[Any] = []
                if upper > source_floor:
                    members = await self._redis.zrevrangebyscore(
                        source, upper - 1, source_floor, start=0, num=chunk_n
                    )
                candidates = [int(cast(bytes, m)) for m in members]
                if not candidates:
                    if source_floor > floor:
                        # A field index ends where it began: older records are walked
                        # by an exact index, or scanned.
                        upper = min(upper, source_floor)
                        source = min(exact, key=lambda k: sizes[k]) if exact else None
                        source_floor = floor
                        continue
                    upper = floor
                    break
                chunk_low = candidates[-1]
            else:
                chunk_low = max(floor, upper - chunk_n)
                candidates = list(range(upper - 1, chunk_low - 1, -1))
            examined += len(candidates)
            candidates = [c for c in candidates if self._bucket_ok(buckets, c, q)]
            for key in extra_sets:
                if not candidates:
                    break
                scores = await self._redis.zmscore(key, [str(c) for c in candidates])
                candidates = [c for c, s in zip(candidates, scores, strict=True) if s is not None]
            raws: list[bytes | None] = []
            if candidates:
                raws = await cast(
                    Awaitable[list[bytes | None]],
                    self._redis.hmget(self.keys.records, [str(c) for c in candidates]),
                )
            for c, raw in zip(candidates, raws, strict=True):
                if raw is None:
                    continue
                rec = decode_record(raw)
                if self._matches(rec, q):
                    scan.found.append((c, rec))
                    if len(scan.found) >= limit:
                        full = True
                        upper = c
                        break
            if not full:
                upper = chunk_low
        next_cursor = str(upper) if upper > floor else None
        personal: list[bytes | None] = []
        if disclose_personal and scan.found:
            personal = await cast(
                Awaitable[list[bytes | None]],
                self._redis.hmget(self.keys.personal, [str(i) for i, _ in scan.found]),
            )
        events = []
        for n, (idx, rec) in enumerate(scan.found):
            p = None
            if disclose_personal and personal[n] is not None:
                p, _ = decode_personal(cast(bytes, personal[n]))
            events.append(AuditEvent(idx, rec, p))
        return events, next_cursor

    async def _time_buckets(self, q: AuditQuery) -> dict[int, tuple[int, int]] | None:
        if q.since_ms is None and q.until_ms is None:
            return None
        raw = await cast(Awaitable[dict[bytes, bytes]], self._redis.hgetall(self.keys.time_buckets))
        out: dict[int, tuple[int, int]] = {}
        for b, v in raw.items():
            lo, hi = v.split(b",")
            out[int(b)] = (int(lo), int(hi))
        return out

    @staticmethod
    def _bucket_ok(buckets: dict[int, tuple[int, int]] | None, idx: int, q: AuditQuery) -> bool:
        if buckets is None:
            return True
        span = buckets.get(idx >> TIME_BUCKET_SHIFT)
        if span is None:
            return True
        lo, hi = span
        if q.since_ms is not None and hi < q.since_ms:
            return False
        return not (q.until_ms is not None and lo > q.until_ms)

    @staticmethod
    def _matches(rec: Mapping[str, Any], q: AuditQuery) -> bool:
        if q.type is not None and rec.get("type") != q.type:
            return False
        if q.reason is not None and rec.get("reason") != q.reason:
            return False
        if q.class_id is not None and rec.get("class") != q.class_id:
            return False
        ts = rec.get("ts")
        if q.since_ms is not None and (not isinstance(ts, int) or ts < q.since_ms):
            return False
        return not (q.until_ms is not None and (not isinstance(ts, int) or ts > q.until_ms))

    async def tail(
        self, start: int | None = None, *, poll_interval: float = 0.25
    ) -> AsyncIterator[AuditEvent]:
        """Yield sequenced records from ``start`` (default: the current end) as they arrive."""
        nxt = await self.size() if start is None else start
        while True:
            size = await self.size()
            while nxt < size:
                upto = min(size, nxt + 500)
                raws = await cast(
                    Awaitable[list[bytes | None]],
                    self._redis.hmget(self.keys.records, [str(i) for i in range(nxt, upto)]),
                )
                for i, raw in zip(range(nxt, upto), raws, strict=True):
                    if raw is not None:  # archived records are skipped
                        yield AuditEvent(i, decode_record(raw))
                nxt = upto
            await asyncio.sleep(poll_interval)

    # --- checkpoints and proofs ---

    async def checkpoints(self, start: int = 0, end: int = -1) -> list[str]:
        """Stored signed checkpoints (LRANGE semantics), oldest first."""
        raw = await cast(
            Awaitable[list[bytes]], self._redis.lrange(self.keys.checkpoints, start, end)
        )
        return [r.decode() for r in raw]

    async def latest_checkpoint(self) -> str | None:
        raw = await cast(Awaitable[bytes | None], self._redis.lindex(self.keys.checkpoints, -1))
        return None if raw is None else raw.decode()

    async def leaf_hash(self, index: int) -> bytes:
        raw = await self._redis.getrange(self.keys.leaves, 32 * index, 32 * index + 31)
        if len(raw) != 32:
            raise NotFoundError(f"no leaf hash at index {index}")
        return cast(bytes, raw)

    async def _with_nodes(self, build: Any) -> Any:
        nodes = await fetch_nodes(self._redis, self.keys, merkle.plan(build))
        return build(lambda level, idx: nodes[(level, idx)])

    async def root_hash(self, size: int | None = None) -> bytes:
        n = await self.size() if size is None else size
        return cast(bytes, await self._with_nodes(lambda get: merkle.root_hash(n, get)))

    async def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        """RFC 9162 inclusion proof of ``index`` in the tree of ``size`` (default: current)."""
        current = await self.size()
        n = current if size is None else size
        if n > current:
            raise ProofError(f"size {n} is beyond the log (size {current})")
        nodes = merkle.plan(lambda get: merkle.inclusion_proof(index, n, get))
        fetched = await fetch_nodes(self._redis, self.keys, [*nodes, (0, index)])
        hashes = merkle.inclusion_proof(index, n, lambda lv, i: fetched[(lv, i)])
        return InclusionProof(index, n, fetched[(0, index)], tuple(hashes))

    async def consistency_proof(self, first: int, second: int | None = None) -> ConsistencyProof:
        current = await self.size()
        n = current if second is None else second
        if n > current:
            raise ProofError(f"size {n} is beyond the log (size {current})")
        hashes = await self._with_nodes(lambda get: merkle.consistency_proof(first, n, get))
        return ConsistencyProof(first, n, tuple(hashes))

    async def tlog_proof(self, index: int, checkpoint: str | None = None) -> TlogProof:
        """A C2SP tlog-proof of ``index`` against ``checkpoint`` (default: the latest)."""
        note = checkpoint if checkpoint is not None else await self.latest_checkpoint()
        if note is None:
            raise NotFoundError("no checkpoint yet: the sequencer has not signed the log")
        text = note[: note.rfind("\n\n") + 1]
        cp = Checkpoint.parse_body(text)
        if index >= cp.size:
            raise ProofError(f"record {index} is newer than the checkpoint (size {cp.size})")
        proof = await self.inclusion_proof(index, cp.size)
        return TlogProof(index, proof.hashes, note)

    async def records_between(self, start: int, end: int) -> Sequence[bytes | None]:
        """Stored record bytes for ``[start, end)`` (None where missing or archived)."""
        return await cast(
            Awaitable[list[bytes | None]],
            self._redis.hmget(self.keys.records, [str(i) for i in range(start, end)]),
        )
