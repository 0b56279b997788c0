"""Small builders for policy-engine inputs: a valid, admitted-by-default baseline that
each test changes in one place."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from policies import (
    Attempt,
    ClassId,
    ClassState,
    Jti,
    Policy,
    Schedule,
    StudentId,
    TokenFacts,
    load_policy,
)

CLASS = ClassId("c-10a1")
OTHER_CLASS = ClassId("c-11b2")
DEVICE = "d" * 64
OTHER_DEVICE = "e" * 64
ICT = timezone(timedelta(hours=7))  # Vietnam: UTC+7, no DST

# Monday 23 November 2026, 07:40 in Hà Nội: ten minutes into a 07:30-09:00 class.
NOW = datetime(2026, 11, 23, 0, 40, tzinfo=UTC)
ONE_OFF = Schedule(
    starts_at=datetime(2026, 11, 23, 7, 30, tzinfo=ICT),
    ends_at=datetime(2026, 11, 23, 9, 0, tzinfo=ICT),
)
# Mondays and Wednesdays 07:30-09:00 local, from Monday 7 September 2026 to 15 January 2027.
WEEKLY = Schedule(
    starts_at=datetime(2026, 9, 7, 7, 30, tzinfo=ICT),
    ends_at=datetime(2026, 9, 7, 9, 0, tzinfo=ICT),
    weekly=(1, 3),
    term_ends_at=datetime(2027, 1, 15, tzinfo=ICT),
)


def token(**changes: Any) -> TokenFacts:
    base = TokenFacts(
        failure=None,
        student_id=StudentId("s-1"),
        class_id=CLASS,
        jti=Jti("j-1"),
        exp=NOW.timestamp() + 30 * 86400,
        nbf=NOW.timestamp() - 30 * 86400,
        kid="k1",
    )
    return replace(base, **changes)


def attempt(**changes: Any) -> Attempt:
    base = Attempt(class_id=CLASS, token=token(), ip="203.0.113.7", device=DEVICE)
    return replace(base, **changes)


def state(**changes: Any) -> ClassState:
    base = ClassState(class_id=CLASS, schedule=ONE_OFF, host_present=True, bound_device=DEVICE)
    return replace(base, **changes)


def policy(preset: str = "standard", **overrides: Any) -> Policy:
    return load_policy({"preset": preset, **overrides})
