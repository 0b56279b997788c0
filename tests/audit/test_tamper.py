"""Attacks on the stored log, made directly in Redis; verify must name each one.

Each test is named after the attack it stages.
"""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis
import rfc8785

from audit import AuditLog, AuditSigningKey, Checkpoint, Fault, Sequencer, merkle, verify_log
from tests.audit.conftest import ORIGIN, join_event, personal_for

N = 40


@pytest.fixture
async def filled(log: AuditLog, seq: Sequencer, signer: AuditSigningKey) -> AuditLog:
    # two signed heads so the consistency step has something to do
    await log.append_many([(join_event(i), personal_for(i)) for i in range(N // 2)])
    await seq.sync()
    await log.append_many([(join_event(i), personal_for(i)) for i in range(N // 2, N)])
    await seq.sync()
    assert len(await log.checkpoints()) == 2
    return log


async def check(
    r: aioredis.Redis, prefix: str, signer: AuditSigningKey, fault: Fault, index: int | None
) -> str:
    report = await verify_log(r, prefix, signer.verifier())
    assert not report.ok
    assert (report.fault, report.first_bad_index) == (fault, index), report
    assert report.message
    return report.message


async def test_untouched_log_verifies(filled: AuditLog, redis_bytes, redis_prefix, signer) -> None:
    report = await verify_log(redis_bytes, redis_prefix, signer.verifier().encode())
    assert report.ok and report.size == N and report.signed_size == N
    assert report.checkpoints_checked == 2


async def test_edited_record(filled: AuditLog, redis_bytes, redis_prefix, signer) -> None:
    key = f"{redis_prefix}audit:rec"
    rec = json.loads(await redis_bytes.hget(key, "17"))
    rec["reason"] = "denied_by_host"
    await redis_bytes.hset(key, "17", rfc8785.dumps(rec))
    msg = await check(redis_bytes, redis_prefix, signer, Fault.EDITED, 17)
    assert "record 17: expected leaf hash" in msg


async def test_edited_record_and_leaf_and_tree(filled, redis_bytes, redis_prefix, signer) -> None:
    """The attacker rewrites the record, its leaf and every stored node above it."""
    key = f"{redis_prefix}audit:rec"
    rec = json.loads(await redis_bytes.hget(key, "17"))
    rec["actor"] = "user:mallory"
    data = rfc8785.dumps(rec)
    await redis_bytes.hset(key, "17", data)
    await redis_bytes.setrange(f"{redis_prefix}audit:leaves", 17 * 32, merkle.leaf_hash(data))
    leaves = await redis_bytes.get(f"{redis_prefix}audit:leaves")
    for level, nodes in enumerate(merkle.build_levels(leaves)[1:], start=1):
        await redis_bytes.set(f"{redis_prefix}audit:tree:{level}", nodes)
    msg = await check(redis_bytes, redis_prefix, signer, Fault.FORKED_CHECKPOINT, 0)
    assert "checkpoint 0 (size 20)" in msg


async def test_deleted_record(filled, redis_bytes, redis_prefix, signer) -> None:
    await redis_bytes.hdel(f"{redis_prefix}audit:rec", "5")
    msg = await check(redis_bytes, redis_prefix, signer, Fault.MISSING, 5)
    assert "found none" in msg


async def test_reordered_log(filled, redis_bytes, redis_prefix, signer) -> None:
    key = f"{redis_prefix}audit:rec"
    a, b = await redis_bytes.hmget(key, ["8", "23"])
    await redis_bytes.hset(key, mapping={"8": b, "23": a})
    msg = await check(redis_bytes, redis_prefix, signer, Fault.REORDERED, 8)
    assert "record of index 23" in msg


async def test_truncated_log(filled, redis_bytes, redis_prefix, signer) -> None:
    """Drop the last five records with their leaves, nodes and the size itself."""
    keep = N - 5
    await redis_bytes.hdel(f"{redis_prefix}audit:rec", *[str(i) for i in range(keep, N)])
    leaves = await redis_bytes.get(f"{redis_prefix}audit:leaves")
    await redis_bytes.set(f"{redis_prefix}audit:leaves", leaves[: 32 * keep])
    for level, nodes in enumerate(merkle.build_levels(leaves[: 32 * keep])[1:], start=1):
        await redis_bytes.set(f"{redis_prefix}audit:tree:{level}", nodes)
    for level in range(len(merkle.build_levels(leaves[: 32 * keep])), 8):
        await redis_bytes.delete(f"{redis_prefix}audit:tree:{level}")
    await redis_bytes.hset(f"{redis_prefix}audit:meta", "size", keep)
    msg = await check(redis_bytes, redis_prefix, signer, Fault.TRUNCATED, keep)
    assert f"signs {N} records, the log holds {keep}" in msg


async def test_truncated_records_only(filled, redis_bytes, redis_prefix, signer) -> None:
    await redis_bytes.hdel(f"{redis_prefix}audit:rec", "38", "39")
    await check(redis_bytes, redis_prefix, signer, Fault.MISSING, 38)


async def test_extra_record(filled, redis_bytes, redis_prefix, signer) -> None:
    await redis_bytes.hset(f"{redis_prefix}audit:rec", str(N), b'{"v":1,"type":"x"}')
    msg = await check(redis_bytes, redis_prefix, signer, Fault.EXTRA, N)
    assert f"expected {N} stored records, found {N + 1}" in msg


async def test_extra_leaf(filled, redis_bytes, redis_prefix, signer) -> None:
    await redis_bytes.append(f"{redis_prefix}audit:leaves", bytes(32))
    await check(redis_bytes, redis_prefix, signer, Fault.EXTRA, N)


async def test_tampered_tree_node(filled, redis_bytes, redis_prefix, signer) -> None:
    await redis_bytes.setrange(f"{redis_prefix}audit:tree:2", 32 * 3, b"\xff" * 32)
    msg = await check(redis_bytes, redis_prefix, signer, Fault.BAD_TREE, 12)
    assert "node 3 at level 2" in msg


async def test_forged_checkpoint(filled, redis_bytes, redis_prefix, signer) -> None:
    """A checkpoint with a different root, signed by a key that is not the log's."""
    forger = AuditSigningKey.generate(ORIGIN)
    note = Checkpoint(ORIGIN, N, b"\x01" * 32).sign(forger)
    await redis_bytes.lset(f"{redis_prefix}audit:checkpoints", 1, note)
    report = await verify_log(redis_bytes, redis_prefix, signer.verifier())
    assert (report.ok, report.fault, report.checkpoint) == (False, Fault.BAD_SIGNATURE, 1)
    assert "expected a signature by" in report.message


async def test_edited_checkpoint_text(filled, redis_bytes, redis_prefix, signer) -> None:
    key = f"{redis_prefix}audit:checkpoints"
    note = (await redis_bytes.lindex(key, 0)).decode()
    await redis_bytes.lset(key, 0, note.replace("\n20\n", "\n19\n"))
    report = await verify_log(redis_bytes, redis_prefix, signer.verifier())
    assert (report.fault, report.checkpoint) == (Fault.BAD_SIGNATURE, 0)


async def test_replaced_checkpoint_from_a_fork(filled, redis_bytes, redis_prefix, signer) -> None:
    """A genuinely signed head of a different history (the key signed a fork)."""
    note = Checkpoint(ORIGIN, 30, b"\x02" * 32).sign(signer)
    await redis_bytes.rpush(f"{redis_prefix}audit:checkpoints", note)
    msg = await check(redis_bytes, redis_prefix, signer, Fault.FORKED_CHECKPOINT, N)
    assert "checkpoint 2 (size 30)" in msg


async def test_replayed_older_checkpoint(filled, redis_bytes, redis_prefix, signer) -> None:
    key = f"{redis_prefix}audit:checkpoints"
    first = await redis_bytes.lindex(key, 0)
    await redis_bytes.rpush(key, first)
    report = await verify_log(redis_bytes, redis_prefix, signer.verifier())
    assert (report.fault, report.checkpoint) == (Fault.FORKED_CHECKPOINT, 2)
    assert "expected size >= 40, found 20" in report.message


async def test_deleted_checkpoints_leave_tail_unsigned(
    filled, redis_bytes, redis_prefix, signer
) -> None:
    await redis_bytes.rpop(f"{redis_prefix}audit:checkpoints")
    report = await verify_log(redis_bytes, redis_prefix, signer.verifier())
    assert report.ok and report.signed_size == 20
    assert "from 20 on are not signed" in report.message


async def test_future_record_version(filled, redis_bytes, redis_prefix, signer) -> None:
    """Leaf, nodes and checkpoints rewritten consistently for a v2 record: version named."""
    key = f"{redis_prefix}audit:rec"
    rec = json.loads(await redis_bytes.hget(key, "39"))
    rec["v"] = 2
    data = rfc8785.dumps(rec)
    await redis_bytes.hset(key, "39", data)
    await redis_bytes.setrange(f"{redis_prefix}audit:leaves", 39 * 32, merkle.leaf_hash(data))
    await check(redis_bytes, redis_prefix, signer, Fault.UNSUPPORTED_VERSION, 39)
