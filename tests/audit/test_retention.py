"""Archiving expired records to segment files that verify offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from audit import (
    AuditError,
    AuditLog,
    AuditSigningKey,
    Fault,
    Sequencer,
    archive_before,
    merkle,
    verify_log,
    verify_segment,
)
from tests.audit.conftest import FakeClock, join_event, personal_for


async def fill(log: AuditLog, seq: Sequencer, clock: FakeClock, n: int) -> None:
    for i in range(n):
        clock.advance(60_000)
        await log.append(join_event(i), personal_for(i))
    await seq.sync()


async def test_archive_then_verify_offline_and_online(
    log: AuditLog,
    seq: Sequencer,
    clock: FakeClock,
    signer: AuditSigningKey,
    redis_bytes: aioredis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    await fill(log, seq, clock, 30)
    cutoff = (await log.read(12)).record["ts"]  # records 0..11 are older
    root = await log.root_hash()
    res = await archive_before(redis_bytes, redis_prefix, cutoff, tmp_path, signer)
    assert res is not None and (res.start, res.end, res.checkpoint_size) == (0, 12, 30)
    info = verify_segment(res.path, signer.verifier().encode())
    assert (info.start, info.end, len(info.records)) == (0, 12, 12)
    # gone from Redis, personal data included; proofs and verify still work
    assert await redis_bytes.hlen(f"{redis_prefix}audit:rec") == 18
    assert await log.personal(3) is None
    for i in (0, 11, 12, 29):
        p = await log.inclusion_proof(i)
        merkle.verify_inclusion(i, 30, p.leaf_hash, p.hashes, root)
    report = await verify_log(redis_bytes, redis_prefix, signer.verifier())
    assert report.ok and report.archived_before == 12, report
    events, cursor = await log.query({"class": "c1"}, limit=100)
    assert [e.index for e in events] == list(range(29, 11, -1)) and cursor is None
    # a second run continues where the first stopped; nothing due returns None
    await fill(log, seq, clock, 5)
    res2 = await archive_before(redis_bytes, redis_prefix, cutoff + 60_000 * 3, tmp_path, signer)
    assert res2 is not None and (res2.start, res2.end) == (12, 15)
    verify_segment(res2.path, signer.verifier())
    assert await archive_before(redis_bytes, redis_prefix, cutoff, tmp_path, signer) is None
    assert (await verify_log(redis_bytes, redis_prefix, signer.verifier())).ok


async def test_tampered_segment_is_rejected(
    log: AuditLog,
    seq: Sequencer,
    clock: FakeClock,
    signer: AuditSigningKey,
    redis_bytes: aioredis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    await fill(log, seq, clock, 10)
    res = await archive_before(redis_bytes, redis_prefix, clock.now + 1, tmp_path, signer)
    assert res is not None and res.end == 10
    text = res.path.read_text()
    lines = text.split("\n")
    # swap two record lines: the segment no longer matches the checkpoint
    lines[3], lines[4] = lines[4], lines[3]
    bad = tmp_path / "swapped.segment"
    bad.write_text("\n".join(lines))
    with pytest.raises(AuditError, match="step 2"):
        verify_segment(bad, signer.verifier())
    other = AuditSigningKey.generate(signer.name)
    with pytest.raises(AuditError, match="expected a signature"):
        verify_segment(res.path, other.verifier())


async def test_hidden_deletion_posing_as_archive_is_caught(
    log: AuditLog,
    seq: Sequencer,
    clock: FakeClock,
    signer: AuditSigningKey,
    redis_bytes: aioredis.Redis,
    redis_prefix: str,
) -> None:
    """Deleting records and raising the archive marker without a signed note fails."""
    await fill(log, seq, clock, 10)
    await redis_bytes.hdel(f"{redis_prefix}audit:rec", *[str(i) for i in range(4)])
    await redis_bytes.hset(f"{redis_prefix}audit:meta", "archived_before", 4)
    report = await verify_log(redis_bytes, redis_prefix, signer.verifier())
    assert (report.ok, report.fault, report.first_bad_index) == (False, Fault.MISSING, 0)
