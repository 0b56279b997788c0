"""Fixtures of the audit tests: a signing key, a controllable clock, a log and sequencer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from audit import AuditLog, AuditSigningKey, Sequencer

ORIGIN = "school.example/audit"


@dataclass
class FakeClock:
    """Milliseconds since the epoch, moved only by the test."""

    now: int = 1_763_800_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def signer() -> AuditSigningKey:
    return AuditSigningKey.from_seed(ORIGIN, b"\x07" * 32)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log(redis_bytes: aioredis.Redis, redis_prefix: str, clock: FakeClock) -> AuditLog:
    return AuditLog(redis_bytes, prefix=redis_prefix, node_id="gw-test", clock=clock)


@pytest.fixture
def seq(
    redis_bytes: aioredis.Redis, redis_prefix: str, clock: FakeClock, signer: AuditSigningKey
) -> Sequencer:
    return Sequencer(
        redis_bytes,
        prefix=redis_prefix,
        signer=signer,
        origin=ORIGIN,
        clock=clock,
        node_id="seq-test",
    )


def join_event(i: int, *, student: str | None = None, cls: str = "c1") -> dict[str, Any]:
    sid = student or f"s{i % 5}"
    return {
        "type": "join",
        "reason": "admitted_by_policy" if i % 3 else "awaiting_host",
        "actor": f"student:{sid}",
        "org": "org-1",
        "class": cls,
        "subject": sid,
        "n": i,
    }


def personal_for(i: int, student: str | None = None) -> dict[str, Any]:
    sid = student or f"s{i % 5}"
    return {"name": f"Học sinh {sid}", "ip": f"198.51.100.{i % 7}", "ua": f"Phone/{sid}"}
