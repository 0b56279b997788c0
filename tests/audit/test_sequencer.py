"""Sequencer leadership: failover without gap or duplicate, fencing of a deposed leader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from audit import AuditLog, AuditSigningKey, NotLeaderError, Sequencer, merkle, verify_log
from tests.audit.conftest import ORIGIN, FakeClock, join_event, personal_for
from tests.conftest import both_redis_servers

# Redis commands differ between 6.2 (the embedded default) and 7: run on both.
redis_url = both_redis_servers()


def wall() -> int:
    return int(time.time() * 1000)


def make_seq(r: aioredis.Redis, prefix: str, signer: AuditSigningKey, name: str, **kw) -> Sequencer:
    return Sequencer(
        r,
        prefix=prefix,
        signer=signer,
        origin=ORIGIN,
        clock=wall,
        node_id=name,
        lease_ms=kw.pop("lease_ms", 200),
        batch_size=kw.pop("batch_size", 25),
        checkpoint_interval_ms=50,
        **kw,
    )


@pytest.fixture(params=["redis-py", "multiplexed"])
async def fast(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[object]:
    """None (every command through redis-py) or the gateway's multiplexed bytes
    connection, which the gateway gives its sequencer for reading and committing."""
    if request.param == "redis-py":
        yield None
        return
    from gateway.redis_mux import Multiplexed

    mux = Multiplexed.from_url(redis_url, decode=False)
    assert mux is not None
    yield mux
    with contextlib.suppress(Exception):
        await mux.aclose()


async def wait_for(cond, limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("graceful", [True, False], ids=["cancel", "crash"])
async def test_failover_mid_stream(
    redis_bytes: aioredis.Redis,
    redis_prefix: str,
    signer: AuditSigningKey,
    graceful: bool,
    fast: object,
) -> None:
    seqs = {
        name: make_seq(redis_bytes, redis_prefix, signer, name, release_on_stop=graceful,
                       fast=fast)
        for name in ("a", "b")
    }
    tasks = {name: asyncio.create_task(s.run()) for name, s in seqs.items()}
    logs = [
        AuditLog(redis_bytes, prefix=redis_prefix, node_id=f"gw{k}", clock=wall) for k in range(3)
    ]
    appended: list[str] = []

    async def appender(log: AuditLog, k: int) -> None:
        for i in range(60):
            appended.extend(
                await log.append_many([(join_event(i), personal_for(i)) for _ in range(3)])
            )
            await asyncio.sleep(0.004)

    writers = [asyncio.create_task(appender(log, k)) for k, log in enumerate(logs)]
    try:
        await wait_for(lambda: _size_at_least(logs[0], 100))
        leader = next(n for n, s in seqs.items() if s.is_leader)
        other = "b" if leader == "a" else "a"
        tasks[leader].cancel()  # the leader dies mid-stream
        with pytest.raises(asyncio.CancelledError):
            await tasks[leader]
        await asyncio.gather(*writers)
        await wait_for(lambda: _size_at_least(logs[0], len(appended)))
        assert seqs[other].is_leader
        await wait_for(lambda: _checkpointed(logs[0], len(appended)))
    finally:
        for t in [*tasks.values(), *writers]:
            t.cancel()
        await asyncio.gather(*tasks.values(), *writers, return_exceptions=True)

    n = len(appended)
    assert n == 540 and await logs[0].size() == n
    raws = await logs[0].records_between(0, n)
    ids = [json.loads(r)["id"] for r in raws if r is not None]
    assert len(ids) == n, "gap in the indexed log"
    assert len(set(ids)) == n, "duplicate index"
    assert set(ids) == set(appended)
    assert await redis_bytes.hlen(f"{redis_prefix}audit:rec") == n
    assert await logs[0].pending() == 0
    report = await verify_log(redis_bytes, redis_prefix, signer.verifier())
    assert report.ok and report.signed_size == n, report
    root = await logs[0].root_hash()
    for i in (0, 1, n // 2, n - 1):
        p = await logs[0].inclusion_proof(i)
        merkle.verify_inclusion(i, n, p.leaf_hash, p.hashes, root)


async def _size_at_least(log: AuditLog, n: int) -> bool:
    return await log.size() >= n


async def _checkpointed(log: AuditLog, n: int) -> bool:
    note = await log.latest_checkpoint()
    return note is not None and note.split("\n")[1] == str(n)


async def test_deposed_leader_cannot_commit(
    redis_bytes: aioredis.Redis,
    redis_prefix: str,
    signer: AuditSigningKey,
    log: AuditLog,
    clock: FakeClock,
    fast: object,
) -> None:
    a = make_seq(redis_bytes, redis_prefix, signer, "a", lease_ms=100, fast=fast)
    b = make_seq(redis_bytes, redis_prefix, signer, "b", lease_ms=100, fast=fast)
    await log.append(join_event(1))
    assert await a.sync() == 1
    with pytest.raises(NotLeaderError):
        await b.sync()
    # a stalls past its lease; b takes over and moves on
    await redis_bytes.delete(f"{redis_prefix}audit:lease")
    await log.append(join_event(2))
    assert await b.sync() == 2
    await log.append(join_event(3))
    # a still believes it leads, but its commit is fenced by the lease check
    a._renewed_at = asyncio.get_running_loop().time() * 1000  # skip its own renewal
    with pytest.raises(NotLeaderError):
        await a.sync()
    assert await b.sync() == 3
    assert (await verify_log(redis_bytes, redis_prefix, signer.verifier())).ok


async def test_multiplexed_commits_survive_a_forgotten_script(
    embedded_redis_url: str, redis_prefix: str, signer: AuditSigningKey
) -> None:
    """The server forgot the commit script (restarted, SCRIPT FLUSH): it is loaded again
    and the batch committed once, through the multiplexed connection. (On the test
    session's own server of the embedded binary: SCRIPT FLUSH would disturb anything
    else using the machine's.)"""
    from gateway.redis_mux import Multiplexed

    r = aioredis.Redis.from_url(embedded_redis_url)
    mux = Multiplexed.from_url(embedded_redis_url, decode=False)
    assert mux is not None
    try:
        log = AuditLog(r, prefix=redis_prefix, node_id="gw", clock=wall)
        a = make_seq(r, redis_prefix, signer, "a", fast=mux)
        await log.append_many([(join_event(i), personal_for(i)) for i in range(30)])
        assert await a.sync() == 30
        await r.script_flush()
        await log.append_many([(join_event(i), personal_for(i)) for i in range(7)])
        assert await a.sync() == 37
        assert await log.pending() == 0
        report = await verify_log(r, redis_prefix, signer.verifier())
        assert report.ok and report.signed_size == 37, report
    finally:
        await mux.aclose()
        async for key in r.scan_iter(match=f"{redis_prefix}*"):
            await r.delete(key)
        await r.aclose()


async def test_refuses_to_sequence_on_damaged_storage(
    redis_bytes: aioredis.Redis, redis_prefix: str, signer: AuditSigningKey, log: AuditLog
) -> None:
    a = make_seq(redis_bytes, redis_prefix, signer, "a")
    await log.append(join_event(1))
    await a.sync()
    await a.release()
    await redis_bytes.append(f"{redis_prefix}audit:leaves", b"x")
    with pytest.raises(Exception, match="leaf hashes hold"):
        await a.sync()


async def test_resp3_client(redis_url: str, redis_prefix: str, signer: AuditSigningKey) -> None:
    r = aioredis.Redis.from_url(redis_url, protocol=3)
    try:
        log = AuditLog(r, prefix=redis_prefix, node_id="gw", clock=wall)
        await log.append_many([(join_event(i), personal_for(i)) for i in range(5)])
        assert await make_seq(r, redis_prefix, signer, "r3").sync() == 5
        assert (await verify_log(r, redis_prefix, signer.verifier())).ok
    finally:
        async for key in r.scan_iter(match=f"{redis_prefix}*"):
            await r.delete(key)
        await r.aclose()


def test_audit_does_not_import_the_gateway() -> None:
    import subprocess
    import sys

    code = (
        "import sys, audit, audit.verify, audit.retention;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('gateway', 'aiohttp')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
