"""AuditLog against a real Redis: append, sequence, read, query, proofs, erasure, tail."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from audit import (
    AuditLog,
    AuditSigningKey,
    FormatError,
    InvalidEventError,
    NotDurableError,
    NotFoundError,
    Sequencer,
    TlogProof,
    merkle,
    verify_event_line,
    verify_log,
)
from audit.errors import AuditError
from audit.records import check_personal
from tests.audit.conftest import ORIGIN, FakeClock, join_event, personal_for
from tests.conftest import both_redis_servers

# Redis commands differ between 6.2 (the embedded default) and 7: run on both.
redis_url = both_redis_servers()


async def fill(log: AuditLog, seq: Sequencer, clock: FakeClock, n: int) -> list[str]:
    ids = []
    for i in range(n):
        clock.advance(1000)
        ids.append(await log.append(join_event(i), personal_for(i)))
    await seq.sync()
    return ids


async def test_append_sequence_read(log: AuditLog, seq: Sequencer, clock: FakeClock) -> None:
    ids = await fill(log, seq, clock, 10)
    assert await log.size() == 10 and await log.pending() == 0
    ev = await log.read(3)
    assert ev.record["id"] == ids[3] and ev.record["n"] == 3 and ev.record["node"] == "gw-test"
    p = await log.personal(3)
    assert p is not None and p[0]["ip"] == "198.51.100.3"
    assert check_personal(ev.record, *p)
    with pytest.raises(NotFoundError):
        await log.read(10)


async def test_redis_client_must_return_bytes(redis: aioredis.Redis, clock: FakeClock) -> None:
    with pytest.raises(AuditError, match="decode_responses"):
        AuditLog(redis, prefix="x:", node_id="n", clock=clock)


async def test_invalid_events_never_reach_redis(log: AuditLog) -> None:
    with pytest.raises(InvalidEventError):
        await log.append({"type": "join", "actor": "system", "ip": "1.2.3.4"})
    assert await log.pending() == 0


async def test_append_many_batches(log: AuditLog, seq: Sequencer) -> None:
    ids = await log.append_many([(join_event(i), personal_for(i)) for i in range(250)])
    assert len(set(ids)) == 250
    assert await seq.sync() == 250
    assert [(await log.read(i)).record["id"] for i in (0, 249)] == [ids[0], ids[249]]


async def test_wait_for_replicas_fails_closed(
    redis_bytes: aioredis.Redis, redis_prefix: str, clock: FakeClock
) -> None:
    log = AuditLog(
        redis_bytes,
        prefix=redis_prefix,
        node_id="n",
        clock=clock,
        durability_replicas=1,
        durability_timeout_ms=20,
    )
    with pytest.raises(NotDurableError, match="expected 1 replicas"):
        await log.append({"type": "x", "actor": "system"})


async def test_checkpoint_signs_full_size_and_proofs_verify(
    log: AuditLog, seq: Sequencer, clock: FakeClock, signer: AuditSigningKey
) -> None:
    await fill(log, seq, clock, 21)
    note = await log.latest_checkpoint()
    assert note is not None and note.startswith(f"{ORIGIN}\n21\n")
    root = await log.root_hash()
    for i in range(21):
        p = await log.inclusion_proof(i)
        merkle.verify_inclusion(i, 21, p.leaf_hash, p.hashes, root)
        assert p.leaf_hash == merkle.leaf_hash(await log.read_raw(i))
    for m in range(0, 22):
        c = await log.consistency_proof(m)
        merkle.verify_consistency(m, 21, await log.root_hash(m), root, c.hashes)
    # The evidence-bundle path: one events.jsonl line plus its tlog-proof.
    ev = await log.read(7)
    p7 = await log.personal(7)
    assert p7 is not None
    import base64

    line = {
        "index": 7,
        "record": dict(ev.record),
        "personal": p7[0],
        "salt": base64.b64encode(p7[1]).decode(),
    }
    proof = TlogProof.parse((await log.tlog_proof(7)).encode())
    assert verify_event_line(line, proof, signer.verifier(), origin=ORIGIN).size == 21
    line["personal"] = {**p7[0], "name": "someone else"}
    with pytest.raises(AuditError, match="step 2"):
        verify_event_line(line, proof, signer.verifier())


async def test_query_filters_and_cursor(log: AuditLog, seq: Sequencer, clock: FakeClock) -> None:
    start = clock.now
    await fill(log, seq, clock, 40)
    await log.append({"type": "lock", "actor": "user:alice", "class": "c2", "org": "org-1"})
    await seq.sync()
    # newest first, paged
    seen: list[int] = []
    cursor = None
    while True:
        events, cursor = await log.query({"class": "c1"}, limit=7, cursor=cursor)
        seen += [e.index for e in events]
        if cursor is None:
            break
    assert seen == list(range(39, -1, -1))
    events, _ = await log.query({"class": "c2"})
    assert [e.record["type"] for e in events] == ["lock"]
    events, _ = await log.query({"student": "s2"}, limit=100)
    assert [e.index for e in events] == [i for i in range(39, -1, -1) if i % 5 == 2]
    events, _ = await log.query({"ip": "198.51.100.3"}, limit=100, disclose_personal=True)
    assert [e.index for e in events] == [i for i in range(39, -1, -1) if i % 7 == 3]
    assert all(e.personal and e.personal["ip"] == "198.51.100.3" for e in events)
    events, _ = await log.query({"student": "s2", "ip": "198.51.100.3"}, limit=100)
    assert [e.index for e in events] == [i for i in range(39, -1, -1) if i % 35 == 17]
    events, _ = await log.query({"type": "join", "reason": "awaiting_host"}, limit=100)
    assert [e.index for e in events] == [i for i in range(39, -1, -1) if i % 3 == 0]
    # since/until in ms and ISO 8601
    events, _ = await log.query({"since": start + 10_500, "until": str(start + 20_000)}, limit=100)
    assert [e.index for e in events] == list(range(19, 9, -1))
    events, _ = await log.query({"since": "2025-11-22T08:26:50+00:00"}, limit=100)
    assert all(e.record["ts"] >= 1763800010000 for e in events)
    assert events[0].to_json()["index"] == events[0].index and "personal" not in events[0].to_json()
    with pytest.raises(FormatError):
        await log.query({"since": "2025-11-22T08:26:50"})
    with pytest.raises(FormatError):
        await log.query({}, cursor="abc")


async def test_query_scan_budget_returns_cursor(log: AuditLog, seq: Sequencer) -> None:
    await log.append_many([(join_event(i), None) for i in range(60)])
    await seq.sync()
    # A search by time alone scans records of every kind, a bounded number per call.
    events, cursor = await log.query({"until": 1}, max_scan=25)
    assert events == [] and cursor == "35"
    events, cursor = await log.query({"until": 1}, cursor=cursor, max_scan=100)
    assert events == [] and cursor is None
    # A type nobody recorded is answered from its (empty) index at once.
    events, cursor = await log.query({"type": "nothing"}, max_scan=25)
    assert events == [] and cursor is None


async def test_type_and_reason_searches_walk_their_index_past_noise(
        log: AuditLog, seq: Sequencer, redis_bytes: aioredis.Redis) -> None:
    """A match behind more noise than one call may scan is found through the type and
    reason indexes; records from before the indexes existed are still found by scan."""
    await log.append_many([(join_event(i), None) for i in range(3)])
    await seq.sync()
    # as a log written before the indexes: none for these three records
    for key in (log.keys.field_index("type", "join"),
                log.keys.field_index("reason", "awaiting_host"),
                log.keys.field_index("reason", "admitted_by_policy")):
        await redis_bytes.delete(key)
    await redis_bytes.hset(log.keys.meta, "ix_fields_from", 3)
    await log.append_many([({"type": "go.refused", "actor": "visitor", "reason": "unknown"},
                            None)])
    await log.append_many([({"type": "noise", "actor": "visitor", "reason": "token_invalid"},
                            None) for _ in range(300)])
    await log.append_many([(join_event(9), None)])
    await seq.sync()
    events, _ = await log.query({"type": "go.refused"}, limit=5, max_scan=50)
    assert [e.index for e in events] == [3]
    events, _ = await log.query({"reason": "unknown"}, limit=5, max_scan=50)
    assert [e.index for e in events] == [3]
    events, cursor = await log.query({"type": "join"}, limit=10, max_scan=50)
    assert [e.index for e in events] == [304, 2, 1, 0] and cursor is None
    # a value that is not a code is never a key
    with pytest.raises(FormatError):
        await log.query({"type": "join\nDEL *"})


async def test_erasure_keeps_proofs_and_removes_every_trace(
    log: AuditLog,
    seq: Sequencer,
    clock: FakeClock,
    signer: AuditSigningKey,
    redis_bytes: aioredis.Redis,
    redis_prefix: str,
) -> None:
    secret_name, secret_ip, secret_ua = "Trần Thị Bí Mật", "203.0.113.77", "SecretPhone/9"
    for i in range(12):
        await log.append(join_event(i), personal_for(i))
        await log.append(
            join_event(i, student="victim"),
            {"name": secret_name, "ip": secret_ip, "ua": secret_ua},
        )
    await seq.sync()
    before = await verify_log(redis_bytes, redis_prefix, signer.verifier())
    assert before.ok
    root = await log.root_hash()
    assert await log.erase_personal(subject="victim") == 12
    assert await log.personal(1) is None and await log.personal(0) is not None
    # proofs and verify still pass
    report = await verify_log(redis_bytes, redis_prefix, signer.verifier())
    assert report.ok, report
    for i in range(24):
        p = await log.inclusion_proof(i)
        merkle.verify_inclusion(i, 24, p.leaf_hash, p.hashes, root)
    # no key name or value under the prefix holds the erased values
    needles = [v.encode() for v in (secret_name, secret_ip, secret_ua)]
    needles += [n.encode("unicode_escape") for n in (secret_name,)]
    blobs: list[bytes] = []
    async for key in redis_bytes.scan_iter(match=f"{redis_prefix}*"):
        blobs.append(key)
        kind = await redis_bytes.type(key)
        if kind == b"string":
            blobs.append(await redis_bytes.get(key))
        elif kind == b"hash":
            for f, v in (await redis_bytes.hgetall(key)).items():
                blobs += [f, v]
        elif kind == b"list":
            blobs += await redis_bytes.lrange(key, 0, -1)
        elif kind == b"zset":
            blobs += await redis_bytes.zrange(key, 0, -1)
        elif kind == b"stream":
            for _, fields in await redis_bytes.xrange(key):
                for f, v in fields.items():
                    blobs += [f, v]
        else:
            raise AssertionError(f"unexpected key type {kind!r}")
    for blob in blobs:
        for needle in needles:
            assert needle not in blob, (needle, blob[:80])
    # the victim's events are still in the log, only without personal data
    events, _ = await log.query({"class": "c1"}, limit=100, disclose_personal=True)
    victim = [e for e in events if e.record["subject"] == "victim"]
    assert len(victim) == 12 and all(e.personal is None for e in victim)
    assert (await log.query({"ip": secret_ip}))[0] == []
    assert (await log.query({"student": "victim"}))[0] == []


async def test_tail_follows_new_records(log: AuditLog, seq: Sequencer) -> None:
    await log.append_many([(join_event(i), None) for i in range(3)])
    await seq.sync()
    got: list[int] = []

    async def follow() -> None:
        async for ev in log.tail(start=1, poll_interval=0.01):
            got.append(ev.index)
            if len(got) == 4:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    await log.append_many([(join_event(i), None) for i in range(2)])
    await seq.sync()
    await asyncio.wait_for(task, 5)
    assert got == [1, 2, 3, 4]


async def test_sequencer_run_checkpoints_after_last_append(
    log: AuditLog, redis_bytes: aioredis.Redis, redis_prefix: str, signer: AuditSigningKey
) -> None:
    import time

    wall = lambda: int(time.time() * 1000)  # noqa: E731 - real time for the pacing check
    seq = Sequencer(
        redis_bytes,
        prefix=redis_prefix,
        signer=signer,
        origin=ORIGIN,
        clock=wall,
        node_id="runner",
        lease_ms=400,
        checkpoint_interval_ms=200,
    )
    task = asyncio.create_task(seq.run())
    try:
        for _ in range(5):
            await log.append_many([(join_event(i), None) for i in range(30)])
            await asyncio.sleep(0.03)
        deadline = asyncio.get_running_loop().time() + 5
        while await log.size() < 150 or not (await log.latest_checkpoint() or "").startswith(
            f"{ORIGIN}\n150\n"
        ):
            assert asyncio.get_running_loop().time() < deadline, "no checkpoint for full size"
            await asyncio.sleep(0.02)
        # paced: far fewer checkpoints than commits
        assert len(await log.checkpoints()) <= 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await redis_bytes.get(f"{redis_prefix}audit:lease") is None


async def test_verify_while_the_log_grows(log: AuditLog, seq: Sequencer,
                                          redis_bytes: aioredis.Redis, redis_prefix: str,
                                          signer: AuditSigningKey, clock: FakeClock) -> None:
    """Batches are sequenced (and checkpoints signed) while the whole log is checked, as
    when IT staff verify a running gateway: every check passes, none reports extra
    records or a bad tree because a batch landed between two of its reads."""
    stop = asyncio.Event()

    async def grow() -> None:
        i = 0
        while not stop.is_set():
            await log.append_many([(join_event(i + k), personal_for(i + k)) for k in range(7)])
            i += 7
            clock.advance(5)
            await seq.sync(checkpoint=i % 21 == 0)
            await asyncio.sleep(0)

    for i in range(40):
        await log.append(join_event(i), personal_for(i))
    await seq.sync()
    grower = asyncio.create_task(grow())
    try:
        sizes = []
        for _ in range(60):
            report = await verify_log(redis_bytes, redis_prefix, signer.verifier())
            assert report.ok, report
            sizes.append(report.size)
        assert sizes[-1] > sizes[0]  # it did grow meanwhile
    finally:
        stop.set()
        await grower
