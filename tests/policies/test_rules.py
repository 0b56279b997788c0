"""Each rule on its own: it passes the valid baseline and decides on its trigger."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest

from policies import Action, Decision, Pass, Reason
from policies.engine import DEFAULT_RULES
from policies.rules import (
    Admission,
    Bans,
    Capacity,
    ClassMatch,
    ConcurrentSession,
    DeviceBinding,
    Ended,
    HostVerdict,
    Lock,
    RateLimit,
    Revocation,
    Roster,
    Rule,
    RulesAck,
    ScheduleRule,
    TokenSignature,
    TokenTime,
)
from tests.policies.builders import (
    NOW,
    OTHER_CLASS,
    OTHER_DEVICE,
    WEEKLY,
    attempt,
    policy,
    state,
    token,
)

NON_TERMINAL = [r for r in DEFAULT_RULES if not r.terminal]


@pytest.mark.parametrize("rule", NON_TERMINAL, ids=lambda r: r.name)
def test_every_non_terminal_rule_passes_the_valid_baseline(rule: Rule) -> None:
    for preset in ("strict", "standard", "open"):
        assert rule.check(attempt(), state(), policy(preset), NOW) is None


def test_rule_names_are_stable_and_unique() -> None:
    names = [r.name for r in DEFAULT_RULES]
    assert len(set(names)) == len(names)
    assert all(r.passed for r in DEFAULT_RULES)
    assert repr(Bans()) == "<rule bans>"


@dataclass(frozen=True)
class Case:
    """A rule, the one change to the baseline that should trigger it, and the verdict."""

    id: str
    rule: Rule
    action: Action
    reason: Reason
    facts: dict[str, Any] = field(default_factory=dict)  # expected subset of the facts
    a: dict[str, Any] = field(default_factory=dict)  # attempt changes
    s: dict[str, Any] = field(default_factory=dict)  # state changes
    p: dict[str, Any] = field(default_factory=dict)  # policy overrides (preset standard)
    shift: timedelta = timedelta()  # added to NOW


DENY, WAIT, ADMIT = Action.DENY, Action.WAIT, Action.ADMIT
TS = NOW.timestamp()
LEFT = {"host_present": False, "host_left_at": NOW}

CASES = [
    Case("signature", TokenSignature(), DENY, Reason.TOKEN_INVALID,
         {"failure": "bad_signature"}, a={"token": token(failure="bad_signature")}),
    Case("unknown_kid", TokenSignature(), DENY, Reason.TOKEN_INVALID,
         {"failure": "unknown_kid"}, a={"token": token(failure="unknown_kid")}),
    Case("expired", TokenTime(), DENY, Reason.TOKEN_EXPIRED,
         {"leeway_seconds": 30}, a={"token": token(exp=TS - 31)}),
    Case("expired_no_leeway", TokenTime(), DENY, Reason.TOKEN_EXPIRED,
         a={"token": token(exp=TS - 1)}, p={"token_leeway_seconds": 0}),
    Case("not_yet_valid", TokenTime(), DENY, Reason.TOKEN_INVALID,
         {"not_yet_valid": True}, a={"token": token(nbf=TS + 31)}),
    Case("missing_exp", TokenTime(), DENY, Reason.TOKEN_INVALID,
         {"missing": "exp"}, a={"token": token(exp=None)}),
    Case("nan_exp", TokenTime(), DENY, Reason.TOKEN_INVALID, a={"token": token(exp=math.nan)}),
    Case("inf_exp", TokenTime(), DENY, Reason.TOKEN_INVALID, a={"token": token(exp=math.inf)}),
    Case("nan_nbf", TokenTime(), DENY, Reason.TOKEN_INVALID,
         {"bad": "nbf"}, a={"token": token(nbf=math.nan)}),
    Case("token_other_class", ClassMatch(), DENY, Reason.WRONG_CLASS,
         {"token_class_id": OTHER_CLASS}, a={"token": token(class_id=OTHER_CLASS)}),
    Case("token_no_class", ClassMatch(), DENY, Reason.WRONG_CLASS,
         a={"token": token(class_id=None)}),
    Case("state_other_class", ClassMatch(), DENY, Reason.WRONG_CLASS,
         {"state_class_id": OTHER_CLASS}, s={"class_id": OTHER_CLASS}),
    Case("revoked", Revocation(), DENY, Reason.TOKEN_REVOKED, {"jti": "j-1"}, s={"revoked": True}),
    Case("rate_limited", RateLimit(), DENY, Reason.RATE_LIMITED,
         {"via": "code"}, a={"rate_limited": True, "via": "code"}),
    Case("banned_device", Bans(), DENY, Reason.BANNED_DEVICE,
         {"ban_reason": "zoombombing"}, s={"banned_device": True, "ban_reason": "zoombombing"}),
    Case("banned_ip", Bans(), DENY, Reason.BANNED_IP, {"ban_reason": None}, s={"banned_ip": True}),
    Case("both_bans_device_first", Bans(), DENY, Reason.BANNED_DEVICE,
         s={"banned_ip": True, "banned_device": True}),
    Case("not_on_roster", Roster(), DENY, Reason.NOT_ON_ROSTER, s={"on_roster": False}),
    Case("ended", Ended(), DENY, Reason.CLASS_ENDED, s={"ended": True}),
    Case("removed", HostVerdict(), DENY, Reason.REMOVED_BY_HOST,
         s={"removed": True, "denied": True}),
    Case("denied", HostVerdict(), DENY, Reason.DENIED_BY_HOST, s={"denied": True}),
    Case("second_device_deny", DeviceBinding(), DENY, Reason.DEVICE_MISMATCH,
         {"has_device_cookie": True}, a={"device": OTHER_DEVICE}),
    Case("no_cookie_is_a_new_device", DeviceBinding(), DENY, Reason.DEVICE_MISMATCH,
         {"has_device_cookie": False}, a={"device": None}),
    Case("second_device_wait", DeviceBinding(), WAIT, Reason.DEVICE_MISMATCH,
         a={"device": OTHER_DEVICE}, p={"second_device": "wait"}),
    Case("rebinds_used_up", DeviceBinding(), DENY, Reason.DEVICE_MISMATCH,
         {"rebinds_used": 2, "max_rebinds": 2},
         a={"device": OTHER_DEVICE}, s={"rebinds_used": 2}, p={"max_rebinds": 2}),
    Case("concurrent", ConcurrentSession(), DENY, Reason.CONCURRENT_SESSION,
         a={"device": OTHER_DEVICE}, s={"student_admitted": True, "admitted_device": "f" * 64}),
    Case("readmit_same_device", ConcurrentSession(), ADMIT, Reason.ADMITTED_BY_POLICY,
         {"readmit": True}, s={"student_admitted": True, "admitted_device": "d" * 64}),
    Case("rules_not_acknowledged", RulesAck(), DENY, Reason.RULES_NOT_ACKNOWLEDGED,
         s={"rules_acknowledged": False}, p={"require_rules_ack": True}),
    Case("locked", Lock(), DENY, Reason.CLASS_LOCKED, s={"locked": True}),
    Case("host_left_lock", Lock(), DENY, Reason.CLASS_LOCKED,
         {"host_left": True, "host_left_at": NOW.isoformat()}, s=LEFT,
         p={"on_host_leave": "lock"}),
    Case("host_left_pause", Lock(), WAIT, Reason.AWAITING_HOST,
         {"paused": True}, s=LEFT, p={"on_host_leave": "pause"}),
    Case("too_early", ScheduleRule(), DENY, Reason.OUTSIDE_SCHEDULE,
         {"opens_at": "2026-11-23T07:15:00+07:00", "starts_at": "2026-11-23T07:30:00+07:00"},
         shift=timedelta(hours=-1)),
    Case("too_late", ScheduleRule(), DENY, Reason.OUTSIDE_SCHEDULE,
         {"ended_at": "2026-11-23T09:00:00+07:00"}, shift=timedelta(hours=2)),
    Case("late_join", ScheduleRule(), DENY, Reason.LATE_JOIN_CLOSED,
         {"closed_at": "2026-11-23T07:35:00+07:00"}, p={"late_join_cutoff_minutes": 5}),
    Case("full", Capacity(), DENY, Reason.CAPACITY_REACHED,
         {"capacity": 30, "admitted_count": 30}, s={"admitted_count": 30}, p={"capacity": 30}),
    Case("host_admits", Admission(), WAIT, Reason.AWAITING_HOST,
         {"admission": "host"}, p={"admission": "host"}),
    Case("auto_needs_host", Admission(), WAIT, Reason.AWAITING_HOST,
         {"host_present": False}, s={"host_present": False}),
    Case("auto_with_host", Admission(), ADMIT, Reason.ADMITTED_BY_POLICY,
         {"admission": "auto_when_host_present"}),
    Case("auto", Admission(), ADMIT, Reason.ADMITTED_BY_POLICY,
         {"admission": "auto"}, s={"host_present": False}, p={"admission": "auto"}),
    # the device bound to a reissued link waits for the host, whatever the mode
    Case("released_device_auto", Admission(), WAIT, Reason.AWAITING_HOST,
         {"released_device": True}, s={"device_released": True}, p={"admission": "auto"}),
    Case("released_device_host", Admission(), WAIT, Reason.AWAITING_HOST,
         {"released_device": True}, s={"device_released": True}, p={"admission": "host"}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rule_decides_on_its_trigger(case: Case) -> None:
    result = case.rule.check(attempt(**case.a), state(**case.s), policy(**case.p), NOW + case.shift)
    assert isinstance(result, Decision)
    assert (result.action, result.reason, result.rule) == (case.action, case.reason, case.rule.name)
    assert case.facts.items() <= dict(result.facts).items()
    json.dumps(dict(result.facts))  # facts go into audit records as JSON


def test_token_time_leeway_is_inclusive() -> None:
    rule = TokenTime()
    ts = NOW.timestamp()
    assert rule.check(attempt(token=token(exp=ts - 30)), state(), policy(), NOW) is None
    assert rule.check(attempt(token=token(nbf=ts + 30)), state(), policy(), NOW) is None
    assert rule.check(attempt(token=token(nbf=None)), state(), policy(), NOW) is None


def test_device_binding_allows_a_rebind_while_rebinds_remain() -> None:
    result = DeviceBinding().check(
        attempt(device=OTHER_DEVICE), state(rebinds_used=1), policy(max_rebinds=2), NOW
    )
    assert result == Pass({"rebind": True, "rebinds_used": 1, "max_rebinds": 2})


@pytest.mark.parametrize(
    ("overrides", "state_changes"),
    [
        ({"device_binding": False}, {}),  # binding off
        ({}, {"bound_device": None}),  # first device: the gateway binds it
    ],
    ids=["binding_off", "not_bound_yet"],
)
def test_device_binding_passes_when_not_in_force(
    overrides: dict[str, Any], state_changes: dict[str, Any]
) -> None:
    result = DeviceBinding().check(
        attempt(device=OTHER_DEVICE), state(**state_changes), policy(**overrides), NOW
    )
    assert result is None


def test_concurrent_session_allowed_by_policy() -> None:
    s = state(student_admitted=True, admitted_device="f" * 64)
    rule = ConcurrentSession()
    assert rule.check(attempt(), s, policy(allow_concurrent=True), NOW) is None
    # Admitted but the device of that admission is unknown: nothing to compare.
    assert rule.check(attempt(), state(student_admitted=True), policy(), NOW) is None
    # No device cookie never counts as "the same device".
    no_cookie = state(student_admitted=True, admitted_device=None)
    assert rule.check(attempt(device=None), no_cookie, policy(), NOW) is None


def test_host_leave_keep_and_host_back() -> None:
    rule = Lock()
    left = state(host_present=False, host_left_at=NOW)
    assert rule.check(attempt(), left, policy(on_host_leave="keep"), NOW) is None
    back = state(host_present=True, host_left_at=NOW)
    assert rule.check(attempt(), back, policy(on_host_leave="lock"), NOW) is None
    # The host never came: nothing has been left.
    never = state(host_present=False, host_left_at=None)
    assert rule.check(attempt(), never, policy(on_host_leave="lock"), NOW) is None


@pytest.mark.parametrize(
    ("shift", "overrides", "decides"),
    [
        (timedelta(minutes=-25), {}, False),  # 07:15, early opening starts (inclusive)
        (timedelta(minutes=-26), {}, True),  # 07:14
        (timedelta(minutes=-11), {"early_open_minutes": 0}, True),  # 07:29
        (timedelta(minutes=-10), {"early_open_minutes": 0}, False),  # 07:30 exactly opens
        (timedelta(minutes=80), {}, False),  # 09:00 exactly, still inside
        (timedelta(minutes=81), {}, True),
        (timedelta(minutes=5), {"late_join_cutoff_minutes": 15}, False),  # 07:45 = cutoff
        (timedelta(minutes=6), {"late_join_cutoff_minutes": 15}, True),
        (timedelta(days=30), {"enforce_schedule": False}, False),
    ],
)
def test_schedule_boundaries(shift: timedelta, overrides: dict[str, Any], decides: bool) -> None:
    result = ScheduleRule().check(attempt(), state(), policy(**overrides), NOW + shift)
    assert (result is not None) is decides


def test_schedule_with_no_occurrence_is_outside() -> None:
    nowhere = replace(WEEKLY, weekly=(9,))  # no valid weekday
    result = ScheduleRule().check(attempt(), state(schedule=nowhere), policy(), NOW)
    assert isinstance(result, Decision)
    assert result.reason is Reason.OUTSIDE_SCHEDULE
    assert result.facts == {"no_window": True}


def test_schedule_after_a_weekly_class_points_to_the_next_one() -> None:
    # Monday 10:00 local: today's class is over, Wednesday's opens at 07:15.
    result = ScheduleRule().check(
        attempt(), state(schedule=WEEKLY), policy(), NOW + timedelta(hours=2, minutes=20)
    )
    assert isinstance(result, Decision)
    assert result.reason is Reason.OUTSIDE_SCHEDULE
    assert result.facts == {
        "opens_at": "2026-11-25T07:15:00+07:00",
        "starts_at": "2026-11-25T07:30:00+07:00",
    }
