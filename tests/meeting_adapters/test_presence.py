"""The presence reconciler: pure comparison, backoff, and the Redis lease (one leader)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.presence import Reconciler, backoff_s, find_intruders
from meeting_adapters import Present
from tests.gateway.helpers import running_gateway


def present(uid: str, sid: str | None = None) -> Present:
    return Present(upstream_id=uid, display_name=uid, student_id=sid, joined_at=None)


def test_find_intruders() -> None:
    people = [present("1", "sA"), present("2"), present("3"), present("4", "sB")]
    # "2" is identified through the platform's ids, "3" is nobody we know, sB not admitted
    found = find_intruders(people, admitted=["sA", "sC"], identify={"2": "sC", "3": "sX"})
    assert [p.upstream_id for p in found] == ["3", "4"]
    assert find_intruders([], ["sA"], {}) == []


def test_backoff_grows_and_caps() -> None:
    assert [backoff_s(n, 5, 60) for n in (1, 2, 3, 4, 5, 9)] == [5, 10, 20, 40, 60, 60]


async def test_one_leader_at_a_time(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        own = gw.svc.reconciler
        for _ in range(50):  # the gateway's own reconciler takes the lease on start
            if own.leader:
                break
            await asyncio.sleep(0.02)
        assert own.leader
        other = Reconciler(gw.svc, lease_ms=200)
        assert await other.hold_lease() is False
        await own.release()
        assert await other.hold_lease() is True
        assert await own.hold_lease() is False  # renewal fails: no longer the holder
        assert await other.hold_lease() is True  # renewal by the holder
        await other.release()
