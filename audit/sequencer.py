"""The sequencer: one leader (by a Redis lease) turns appended events into the indexed log.

Every gateway process may run a :class:`Sequencer`; exactly one holds the lease
(``SET NX PX``, renewed by a compare-and-extend script) and works. It reads the stream past
the last consumed id, hashes the records, and commits each batch with one Lua script that
also checks it still holds the lease and that nobody else moved the log. A takeover
therefore continues exactly where the last committed batch ended: no gap, no duplicate.

Before each batch the leader drains the per-class outboxes (audit.outbox) into the
stream: records written in the same atomic step as the change they report.

Checkpoints are signed at most once per ``checkpoint_interval_ms`` while the log grows, and
once more after the last append, so a quiet log always has a checkpoint for its full size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from audit import merkle
from audit.checkpoint import Checkpoint
from audit.errors import AuditError, FormatError, NotLeaderError
from audit.lease import Lease
from audit.note import AuditSigningKey
from audit.outbox import stream_value, unpack_entry
from audit.records import decode_personal, decode_record
from audit.scripts import Call, CommandPipeline, Script, ScriptRunner
from audit.store import (
    TIME_BUCKET_SHIFT,
    AuditKeys,
    Clock,
    ensure_bytes_client,
    fetch_nodes,
    field_indexes,
    student_ids,
)

log = logging.getLogger(__name__)

# The scripts of audit/lua/: each checks the caller still holds the lease (audit/lease.py).
_COMMIT_BATCH = Script.load("audit", "commit_batch")
_STORE_CHECKPOINT = Script.load("audit", "store_checkpoint")
_DRAIN_OUTBOX = Script.load("audit", "drain_outbox")


@dataclass(frozen=True, slots=True)
class _State:
    size: int
    last_id: bytes
    frontier: tuple[bytes | None, ...]


def _range_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of an XRANGE reply: parsed by redis-py (``(id, {field: value})``) or
    unparsed (``[id, [field, value, ...]]``, gateway.redis_mux)."""
    return [(eid, fields if isinstance(fields, dict)
             else dict(zip(fields[::2], fields[1::2], strict=True)))
            for eid, fields in reply or ()]


def _stream_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Entries of a one-stream XREAD reply, for RESP2 (list) and RESP3 (map) clients."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {stream: [[entries...]]}
        (value,) = reply.values()
        return cast(list[tuple[bytes, dict[bytes, bytes]]], value[0])
    return cast(list[tuple[bytes, dict[bytes, bytes]]], reply[0][1])


class Sequencer:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        signer: AuditSigningKey,
        origin: str,
        clock: Clock,
        node_id: str,
        lease_ms: int = 5000,
        batch_size: int = 1000,
        checkpoint_interval_ms: int = 1000,
        release_on_stop: bool = True,
        poll_ms: int = 20,
        fast: CommandPipeline | None = None,
        outbox_sweep_ms: int = 1000,
    ) -> None:
        ensure_bytes_client(redis)
        if lease_ms < 30:
            raise AuditError("lease_ms must be at least 30", code="audit_config")
        self._redis = redis
        self.keys = AuditKeys(prefix)
        self._signer = signer
        self._origin = origin
        self._clock = clock
        self.node_id = node_id
        self._lease_ms = lease_ms
        self._batch = batch_size
        self._ckpt_interval = checkpoint_interval_ms
        self._release_on_stop = release_on_stop
        self._poll_ms = poll_ms
        # Reading the stream, draining the outboxes and committing batches go through
        # ``fast`` when given (the gateway's multiplexed bytes connection,
        # gateway.redis_mux): the leader does them for every record of every process.
        # The lease scripts stay on ``redis``.
        self._fast = fast
        self._token = f"{node_id}:{secrets.token_hex(8)}".encode()
        self._state: _State | None = None  # set while we believe we lead
        self._renewed_at = 0.0
        self._last_ckpt_ms: int | None = None
        self._ckpt_size = 0
        self._scripts = ScriptRunner(redis, fast)
        self._lease = Lease(redis, self.keys.lease, token=self._token, ttl_ms=lease_ms)
        # Storing checkpoints stays on ``redis`` too (once a second at most).
        self._plain = ScriptRunner(redis)
        self._sweep_ms = outbox_sweep_ms
        self._swept_at: float | None = None  # loop time of the last full outbox sweep

    @property
    def is_leader(self) -> bool:
        return self._state is not None

    # --- lease ---

    async def _hold_lease(self) -> bool:
        """Take or renew the lease; (re)load the log state on taking it."""
        # Lease timing is real elapsed time (the server expires the key in real time), so it
        # uses the loop's monotonic clock rather than the injected wall clock.
        now = asyncio.get_running_loop().time() * 1000
        if self._state is not None:
            if now - self._renewed_at < self._lease_ms / 4:
                return True
            if await self._lease.renew():
                self._renewed_at = now
                return True
            log.warning("audit sequencer %s lost its lease", self.node_id)
            self._state = None
            return False
        if not await self._lease.acquire():
            return False
        self._renewed_at = now
        try:
            self._state = await self._load_state()
        except BaseException:
            await self._lease.release()
            raise
        log.info("audit sequencer %s leads from size %d", self.node_id, self._state.size)
        return True

    async def _load_state(self) -> _State:
        size_b, last_b, ck_b = await cast(
            Awaitable[list[bytes | None]],
            self._redis.hmget(self.keys.meta, ["size", "last_id", "ckpt_size"]),
        )
        size = int(size_b or 0)
        stored = await self._redis.strlen(self.keys.leaves)
        if stored != 32 * size:
            # NOTE: fail closed: sequencing on top of damaged storage would sign it.
            raise AuditError(
                f"leaf hashes hold {stored // 32} entries but the log size is {size}; "
                "run `classguard audit verify`",
                code="audit_corrupt",
            )
        positions = merkle.frontier_positions(size)
        nodes = await fetch_nodes(self._redis, self.keys, positions)
        frontier: list[bytes | None] = [None] * (size.bit_length() + 2)
        for level, idx in positions:
            frontier[level] = nodes[(level, idx)]
        self._ckpt_size = int(ck_b or 0)
        self._last_ckpt_ms = None
        self._swept_at = None  # a new leader sweeps every outbox first
        return _State(size, last_b or b"0-0", tuple(frontier))

    async def release(self) -> None:
        """Give up the lease now (on shutdown) so another process takes over at once."""
        self._state = None
        await self._lease.release()

    # --- work ---

    async def run(self) -> None:
        """Lead when possible and sequence until cancelled. Never returns otherwise."""
        backoff = 0.05
        task = asyncio.current_task()
        try:
            while True:
                if task is not None and task.cancelling():
                    # The Redis client can swallow a cancellation that lands mid-command
                    # (turning it into an error we retry); stopping must still stop.
                    raise asyncio.CancelledError
                try:
                    if await self._hold_lease():
                        await self._step(block=True)
                        backoff = 0.05
                    else:
                        await asyncio.sleep(self._lease_ms / 4000)
                except (NotLeaderError, ResponseError) as exc:
                    log.warning("audit sequencer %s: %s", self.node_id, exc)
                    self._state = None
                except (RedisError, OSError) as exc:
                    log.warning("audit sequencer %s: Redis unavailable: %s", self.node_id, exc)
                    self._state = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                except AuditError as exc:
                    log.error("audit sequencer %s: %s", self.node_id, exc)
                    self._state = None
                    await asyncio.sleep(self._lease_ms / 1000)
        finally:
            if self._release_on_stop and self._state is not None:
                self._state = None
                with contextlib.suppress(RedisError, OSError):
                    await asyncio.shield(self._lease.release())

    async def sync(self, *, checkpoint: bool = True) -> int:
        """Sequence everything appended so far and sign a checkpoint; returns the size.

        Takes the lease if it is free; raises :class:`NotLeaderError` when another
        process leads (that process will do the work).
        """
        if not await self._hold_lease():
            raise NotLeaderError("another sequencer holds the audit lease")
        self._swept_at = None
        while await self._step(block=False, checkpoint=False):
            await self._hold_lease()
        if checkpoint:
            await self._checkpoint(force=True)
        assert self._state is not None
        return self._state.size

    async def _step(self, *, block: bool, checkpoint: bool = True) -> int:
        """Read and commit one batch; returns how many records were committed."""
        state = self._state
        if state is None:
            raise NotLeaderError("not leading")
        entries = await self._read_with_outboxes(state.last_id)
        if not entries and block:
            # NOTE: polling instead of XREAD BLOCK: a blocked read that is cancelled (the
            # task stopping) can leave the client waiting on a reply that never comes, and
            # a short poll costs one cheap command per interval on the leader only.
            wait_ms = self._lease_ms / 4
            if state.size > self._ckpt_size and self._last_ckpt_ms is not None:
                wait_ms = min(wait_ms, self._last_ckpt_ms + self._ckpt_interval - self._clock())
            await asyncio.sleep(max(0.001, min(wait_ms, self._poll_ms) / 1000))
            entries = await self._read_with_outboxes(state.last_id)
        committed = 0
        if entries:
            committed = await self._commit_batch(state, entries)
        if checkpoint:
            await self._checkpoint(force=False)
        return committed

    # --- outboxes ---

    async def _read_with_outboxes(self, last_id: bytes
                                  ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The next batch: the stream as it is, then whatever the outboxes held.

        The stream is read before the outboxes are drained, so an outbox entry written
        before a stream entry of this batch is in the batch too (it was written before
        our read, hence before the drain); the batch is then committed in time order
        (_commit_batch), which keeps cause before effect across the two paths."""
        entries = await self._read(last_id)
        if await self._drain_outboxes():
            entries = await self._read(last_id)
        return entries

    async def _drain_outboxes(self) -> int:
        """Move outbox entries into the stream; returns how many were moved.

        Every outbox is swept once per ``outbox_sweep_ms`` (and when leadership is
        taken); in between only those marked dirty. The dirty mark is cleared before
        the outbox is read, so an entry written meanwhile marks it again."""
        now = asyncio.get_running_loop().time() * 1000
        fresh = self._swept_at is None
        if fresh or now - self._swept_at >= self._sweep_ms:  # type: ignore[operator]
            self._swept_at = now
            await self._redis.delete(self.keys.outbox_dirty)
            names = await cast(Awaitable[set[bytes]], self._redis.smembers(self.keys.outboxes))
            if fresh:
                # A leader that died between moving entries and deleting them left them
                # behind (already in the log, at or before the cursor): delete them now.
                await self._trim_drained(names)
        else:
            names = await self._take_dirty()
        return await self._drain(sorted(names))

    async def _take_dirty(self) -> set[bytes]:
        names, _ = await self._commands([
            ("SMEMBERS", self.keys.outbox_dirty), ("DEL", self.keys.outbox_dirty)])
        return set(names)

    async def _trim_drained(self, names: set[bytes]) -> None:
        if not names:
            return
        ordered = sorted(names)
        cursors = await cast(Awaitable[list[bytes | None]],
                             self._redis.hmget(self.keys.outbox_cursors, ordered))
        for name, cursor in zip(ordered, cursors, strict=True):
            if cursor:
                # entries below the cursor, then the cursor's own entry
                await self._redis.xtrim(name, minid=cursor.decode(), approximate=False)
                await self._redis.xdel(name, cursor)

    async def _drain(self, names: list[bytes]) -> int:
        """The entries of the named outboxes moved into the stream, at most a batch per
        outbox per round, every outbox of a round together: one round trip reads the
        cursors, one the entries past them, one runs the fenced appends and one deletes
        what was moved (a morning bell marks most classes dirty at every poll)."""
        moved = 0
        pending = names
        while pending:
            cursors: list[bytes | None] = (await self._commands(
                [("HMGET", self.keys.outbox_cursors, *pending)]))[0]
            ranges = await self._commands(
                [("XRANGE", name, b"(" + cursor if cursor else b"-", b"+", "COUNT", self._batch)
                 for name, cursor in zip(pending, cursors, strict=True)])
            calls: list[Call] = []
            read: list[tuple[bytes, list[bytes]]] = []
            for name, cursor, reply in zip(pending, cursors, ranges, strict=True):
                entries = _range_entries(reply)
                if not entries:
                    continue
                values: list[bytes] = []
                for entry_id, fields in entries:
                    try:
                        values.append(stream_value(unpack_entry(fields)))
                    except AuditError as exc:
                        # NOTE: entries are validated when written; one that is not
                        # readable here was written by hand and must not block the
                        # class's records.
                        log.error("audit: dropping malformed outbox entry %r %r: %s",
                                  name, entry_id, exc)
                calls.append((_DRAIN_OUTBOX,
                              [self.keys.lease, self.keys.outbox_cursors, self.keys.stream],
                              [self._token, name, cursor or b"", entries[-1][0], *values]))
                read.append((name, [eid for eid, _ in entries]))
            if not calls:
                return moved
            oks = await self._scripts.pipeline(calls)
            deletes: list[tuple[Any, ...]] = []
            pending = []
            for (name, ids), ok in zip(read, oks, strict=True):
                if not int(ok):
                    pending.append(name)  # the cursor moved meanwhile: read from it again
                    continue
                deletes.append(("XDEL", name, *ids))
                moved += len(ids)
                if len(ids) >= self._batch:
                    pending.append(name)
            if deletes:
                await self._commands(deletes)
        return moved

    async def _commands(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Plain commands in one round trip, on ``fast`` when there is one; an error
        reply is raised."""
        if self._fast is not None:
            replies = await self._fast.pipeline(commands)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies
        async with self._redis.pipeline(transaction=False) as p:
            for command in commands:
                p.execute_command(*command)
            return await p.execute()

    async def _read(self, last_id: bytes) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The next stream entries past ``last_id``, at most one batch."""
        if self._fast is None:
            return _stream_entries(
                await self._redis.xread({self.keys.stream: last_id}, count=self._batch))
        reply = await self._fast_one(
            "XREAD", "COUNT", self._batch, "STREAMS", self.keys.stream, last_id)
        if not reply:
            return []
        # RESP2, unparsed: [[stream, [[id, [field, value, ...]], ...]]]
        return [(eid, dict(zip(flat[::2], flat[1::2], strict=True)))
                for eid, flat in reply[0][1]]

    async def _fast_one(self, *command: Any) -> Any:
        """One command on ``fast``; an error reply is raised."""
        assert self._fast is not None
        (reply,) = await self._fast.pipeline([command])
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _commit_batch(
        self, state: _State, entries: list[tuple[bytes, dict[bytes, bytes]]]
    ) -> int:
        frontier = list(state.frontier)
        new_nodes: list[list[bytes]] = []
        records: list[bytes] = []
        pd_args: list[tuple[int, bytes]] = []
        zadds: list[tuple[str, int]] = []
        buckets: dict[int, tuple[int, int]] = {}
        size = state.size
        decoded: list[tuple[bytes, bytes | None, dict[str, Any], dict[str, Any] | None]] = []
        for stream_id, fields in entries:
            packed = fields.get(b"d")
            try:
                if packed is None:
                    raise FormatError("stream entry has no record")
                data, _, rest = packed.partition(b"\n")
                blob = rest or None
                rec = decode_record(data)
                personal = decode_personal(blob)[0] if blob is not None else None
            except AuditError as exc:
                # NOTE: a malformed entry can only come from someone writing the stream by
                # hand; it is dropped (and logged) rather than blocking the log forever.
                log.error("audit: dropping malformed stream entry %r: %s", stream_id, exc)
                continue
            decoded.append((data, blob, rec, personal))
        # In time order within the batch: a class's records drained from its outbox
        # join the stream behind later events of other paths (_read_with_outboxes).
        decoded.sort(key=lambda d: d[2]["ts"] if isinstance(d[2].get("ts"), int) else 0)
        for data, blob, rec, personal in decoded:
            index = size + len(records)
            merkle.append_leaf(frontier, index, merkle.leaf_hash(data), new_nodes)
            records.append(data)
            if blob is not None:
                pd_args.append((index, blob))
            cls = rec.get("class")
            if isinstance(cls, str) and cls:
                zadds.append((self.keys.class_index(cls), index))
            for sid in student_ids(rec):
                zadds.append((self.keys.personal_index("student", sid), index))
            # NOTE: searches by type and reason read these instead of scanning, so no
            # amount of other records between two matches hides them.
            zadds.extend((key, index) for key in field_indexes(self.keys, rec))
            if personal is not None and isinstance(personal.get("ip"), str):
                zadds.append((self.keys.personal_index("ip", personal["ip"]), index))
            ts = rec.get("ts")
            if isinstance(ts, int):
                b = index >> TIME_BUCKET_SHIFT
                lo, hi = buckets.get(b, (ts, ts))
                buckets[b] = (min(lo, ts), max(hi, ts))
        keys: list[str] = [
            self.keys.meta,
            self.keys.lease,
            self.keys.records,
            self.keys.leaves,
            self.keys.stream,
            self.keys.personal,
            self.keys.time_buckets,
        ]
        key_pos: dict[str, int] = {}

        def pos(key: str) -> int:
            if key not in key_pos:
                keys.append(key)
                key_pos[key] = len(keys)
            return key_pos[key]

        levels = [(lv, nodes) for lv, nodes in enumerate(new_nodes) if lv > 0 and nodes]
        args: list[Any] = [
            self._token,
            state.size,
            state.last_id,
            entries[-1][0],
            self._origin,
            b"".join(new_nodes[0]) if new_nodes else b"",
            ",".join(str(pos(self.keys.level(lv))) for lv, _ in levels),
            b"".join(b"".join(nodes) for _, nodes in levels),
            ",".join(str(len(nodes)) for _, nodes in levels),
            b"".join(records),
            ",".join(str(len(r)) for r in records),
            b"".join(blob for _, blob in pd_args),
            ",".join(f"{index}:{len(blob)}" for index, blob in pd_args),
            ",".join(f"{pos(key)}:{index}" for key, index in zadds),
            ",".join(f"{b}:{lo}:{hi}" for b, (lo, hi) in buckets.items()),
            b",".join(sid for sid, _ in entries),
        ]
        try:
            new_size = int(await self._scripts.run(_COMMIT_BATCH, keys, args))
        except ResponseError as exc:
            self._state = None
            if str(exc).startswith("NOTLEADER"):
                raise NotLeaderError("lease lost before commit") from exc
            raise
        self._state = _State(new_size, entries[-1][0], tuple(frontier))
        return len(entries)

    async def _checkpoint(self, *, force: bool) -> None:
        state = self._state
        if state is None or state.size <= self._ckpt_size or state.size == 0:
            return
        now = self._clock()
        if (
            not force
            and self._last_ckpt_ms is not None
            and now - self._last_ckpt_ms < self._ckpt_interval
        ):
            return
        root = merkle.frontier_root(state.frontier)
        note = Checkpoint(self._origin, state.size, root).sign(self._signer)
        try:
            await self._plain.run(
                _STORE_CHECKPOINT, [self.keys.meta, self.keys.lease, self.keys.checkpoints],
                [self._token, state.size, note, now])
        except ResponseError as exc:
            self._state = None
            if str(exc).startswith("NOTLEADER"):
                raise NotLeaderError("lease lost before checkpoint") from exc
            raise
        self._ckpt_size = state.size
        self._last_ckpt_ms = now
