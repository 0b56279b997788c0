"""The chain as a whole: order, every reason code through ``evaluate``, ``explain``,
and the safety properties that must hold whatever the state and policy."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policies import (
    DEFAULT_RULES,
    Action,
    Attempt,
    ClassState,
    Decision,
    Engine,
    Policy,
    PolicyError,
    Reason,
    Rule,
    RuleResult,
    TokenFacts,
    evaluate,
    explain,
    load_policy,
    weakened_checks,
)
from policies.loader import FIELD_SPECS
from policies.rules import Admission, Bans, TokenSignature
from tests.policies.builders import (
    CLASS,
    DEVICE,
    NOW,
    ONE_OFF,
    OTHER_CLASS,
    OTHER_DEVICE,
    WEEKLY,
    attempt,
    policy,
    state,
    token,
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CHAIN_ORDER = [
    "token_signature",
    "token_time",
    "class_match",
    "revocation",
    "rate_limit",
    "bans",
    "roster",
    "ended",
    "host_verdict",
    "device_binding",
    "concurrent_session",
    "rules_ack",
    "lock",
    "schedule",
    "capacity",
    "admission",
]


def test_chain_order_is_the_documented_one() -> None:
    assert [r.name for r in DEFAULT_RULES] == CHAIN_ORDER
    assert DEFAULT_RULES[-1].terminal


# ---------------------------------------------------------------- every reason code


@dataclass(frozen=True)
class Scenario:
    id: str
    action: Action
    reason: Reason
    rule: str
    preset: str = "standard"
    a: dict[str, Any] = field(default_factory=dict)
    s: dict[str, Any] = field(default_factory=dict)
    p: dict[str, Any] = field(default_factory=dict)
    shift: timedelta = timedelta()
    facts: dict[str, Any] = field(default_factory=dict)


DENY, WAIT, ADMIT = Action.DENY, Action.WAIT, Action.ADMIT
TS = NOW.timestamp()
READMIT = {"student_admitted": True, "admitted_device": DEVICE}

SCENARIOS = [
    Scenario("baseline_admit", ADMIT, Reason.ADMITTED_BY_POLICY, "admission"),
    Scenario("bad_signature", DENY, Reason.TOKEN_INVALID, "token_signature",
             a={"token": token(failure="bad_signature")}),
    Scenario("malformed_beats_everything", DENY, Reason.TOKEN_INVALID, "token_signature",
             a={"token": token(failure="malformed"), "rate_limited": True},
             s={"revoked": True, "banned_ip": True, "locked": True}),
    Scenario("expired", DENY, Reason.TOKEN_EXPIRED, "token_time", a={"token": token(exp=TS - 60)}),
    Scenario("not_yet_valid", DENY, Reason.TOKEN_INVALID, "token_time",
             a={"token": token(nbf=TS + 60)}, facts={"not_yet_valid": True}),
    Scenario("wrong_class", DENY, Reason.WRONG_CLASS, "class_match",
             a={"token": token(class_id=OTHER_CLASS)}),
    Scenario("revoked", DENY, Reason.TOKEN_REVOKED, "revocation", s={"revoked": True}),
    Scenario("revoked_even_when_admitted", DENY, Reason.TOKEN_REVOKED, "revocation",
             s={"revoked": True, **READMIT}),
    Scenario("rate_limited", DENY, Reason.RATE_LIMITED, "rate_limit", a={"rate_limited": True}),
    Scenario("banned_device", DENY, Reason.BANNED_DEVICE, "bans", s={"banned_device": True}),
    Scenario("banned_ip_beats_readmit", DENY, Reason.BANNED_IP, "bans",
             s={"banned_ip": True, **READMIT}),
    Scenario("not_on_roster", DENY, Reason.NOT_ON_ROSTER, "roster", s={"on_roster": False}),
    Scenario("roster_not_required_in_open", WAIT, Reason.AWAITING_HOST, "admission",
             preset="open", s={"on_roster": False}),
    Scenario("class_ended", DENY, Reason.CLASS_ENDED, "ended", s={"ended": True, **READMIT}),
    Scenario("removed_by_host", DENY, Reason.REMOVED_BY_HOST, "host_verdict",
             s={"removed": True}),
    Scenario("denied_by_host", DENY, Reason.DENIED_BY_HOST, "host_verdict", s={"denied": True}),
    Scenario("device_mismatch", DENY, Reason.DEVICE_MISMATCH, "device_binding",
             a={"device": OTHER_DEVICE}),
    Scenario("device_mismatch_held", WAIT, Reason.DEVICE_MISMATCH, "device_binding",
             a={"device": OTHER_DEVICE}, p={"second_device": "wait"}),
    Scenario("rebind_then_admit", ADMIT, Reason.ADMITTED_BY_POLICY, "admission",
             a={"device": OTHER_DEVICE}, p={"max_rebinds": 1}, facts={"rebind": True}),
    Scenario("rebind_then_wait", WAIT, Reason.AWAITING_HOST, "admission", preset="strict",
             a={"device": OTHER_DEVICE}, p={"max_rebinds": 1}, facts={"rebind": True}),
    Scenario("no_binding_in_open", WAIT, Reason.AWAITING_HOST, "admission", preset="open",
             a={"device": OTHER_DEVICE}),
    Scenario("concurrent_session", DENY, Reason.CONCURRENT_SESSION, "concurrent_session",
             a={"device": OTHER_DEVICE}, s={"bound_device": None, **READMIT}),
    Scenario("readmit_while_locked", ADMIT, Reason.ADMITTED_BY_POLICY, "concurrent_session",
             s={"locked": True, "admitted_count": 99, **READMIT}, p={"capacity": 30},
             facts={"readmit": True}),
    Scenario("readmit_after_late_cutoff", ADMIT, Reason.ADMITTED_BY_POLICY,
             "concurrent_session", preset="strict", s=READMIT, shift=timedelta(minutes=60),
             facts={"readmit": True}),
    Scenario("rules_not_acknowledged", DENY, Reason.RULES_NOT_ACKNOWLEDGED, "rules_ack",
             s={"rules_acknowledged": False}, p={"require_rules_ack": True}),
    Scenario("rules_ack_not_required", ADMIT, Reason.ADMITTED_BY_POLICY, "admission",
             s={"rules_acknowledged": False}),
    Scenario("rules_acknowledged_then_admit", ADMIT, Reason.ADMITTED_BY_POLICY, "admission",
             p={"require_rules_ack": True}),
    Scenario("readmit_needs_no_new_ack", ADMIT, Reason.ADMITTED_BY_POLICY,
             "concurrent_session", s={"rules_acknowledged": False, **READMIT},
             p={"require_rules_ack": True}, facts={"readmit": True}),
    Scenario("ban_beats_rules", DENY, Reason.BANNED_IP, "bans",
             s={"banned_ip": True, "rules_acknowledged": False},
             p={"require_rules_ack": True}),
    Scenario("class_locked", DENY, Reason.CLASS_LOCKED, "lock", s={"locked": True}),
    Scenario("host_left_strict_locks", DENY, Reason.CLASS_LOCKED, "lock", preset="strict",
             s={"host_present": False, "host_left_at": NOW - timedelta(minutes=2)},
             facts={"host_left": True}),
    Scenario("host_left_open_pauses", WAIT, Reason.AWAITING_HOST, "lock", preset="open",
             s={"host_present": False, "host_left_at": NOW}, facts={"paused": True}),
    Scenario("host_left_standard_keeps_but_waits", WAIT, Reason.AWAITING_HOST, "admission",
             s={"host_present": False, "host_left_at": NOW}),
    Scenario("outside_schedule_early", DENY, Reason.OUTSIDE_SCHEDULE, "schedule",
             shift=timedelta(hours=-3)),
    Scenario("outside_schedule_weekly_tuesday", DENY, Reason.OUTSIDE_SCHEDULE, "schedule",
             s={"schedule": WEEKLY}, shift=timedelta(days=1),
             facts={"opens_at": "2026-11-25T07:15:00+07:00"}),
    Scenario("weekly_monday_admit", ADMIT, Reason.ADMITTED_BY_POLICY, "admission",
             s={"schedule": WEEKLY}, shift=timedelta(days=7)),
    Scenario("schedule_off", ADMIT, Reason.ADMITTED_BY_POLICY, "admission",
             p={"enforce_schedule": False}, shift=timedelta(days=3)),
    Scenario("late_join_closed", DENY, Reason.LATE_JOIN_CLOSED, "schedule", preset="strict",
             shift=timedelta(minutes=6)),
    Scenario("late_join_at_cutoff_waits", WAIT, Reason.AWAITING_HOST, "admission",
             preset="strict", shift=timedelta(minutes=5)),
    Scenario("capacity_reached", DENY, Reason.CAPACITY_REACHED, "capacity",
             s={"admitted_count": 30}, p={"capacity": 30}),
    Scenario("below_capacity", ADMIT, Reason.ADMITTED_BY_POLICY, "admission",
             s={"admitted_count": 29}, p={"capacity": 30}),
    Scenario("awaiting_host_strict", WAIT, Reason.AWAITING_HOST, "admission", preset="strict"),
    Scenario("awaiting_host_absent", WAIT, Reason.AWAITING_HOST, "admission",
             s={"host_present": False}),
    Scenario("auto_without_host", ADMIT, Reason.ADMITTED_BY_POLICY, "admission",
             s={"host_present": False}, p={"admission": "auto"}),
]  # fmt: skip


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda sc: sc.id)
def test_evaluate_scenarios(sc: Scenario) -> None:
    decision = evaluate(attempt(**sc.a), state(**sc.s), policy(sc.preset, **sc.p), NOW + sc.shift)
    assert (decision.action, decision.reason, decision.rule) == (sc.action, sc.reason, sc.rule)
    assert sc.facts.items() <= dict(decision.facts).items()
    json.dumps(dict(decision.facts))


def test_every_reason_but_host_admission_is_reachable_through_evaluate() -> None:
    # admitted_by_host is the gateway's record of a host's click, not a policy outcome.
    reached = {sc.reason for sc in SCENARIOS}
    assert reached == set(Reason) - {Reason.ADMITTED_BY_HOST}


def test_rebind_is_never_carried_onto_a_deny() -> None:
    d = evaluate(attempt(device=OTHER_DEVICE), state(locked=True), policy(max_rebinds=1), NOW)
    assert (d.action, d.reason) == (Action.DENY, Reason.CLASS_LOCKED)
    assert "rebind" not in d.facts


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        evaluate(attempt(), state(), policy(), datetime(2026, 11, 23, 7, 40))  # noqa: DTZ001
    with pytest.raises(ValueError, match="aware"):
        explain(attempt(), state(), policy(), datetime(2026, 11, 23, 7, 40))  # noqa: DTZ001


# ---------------------------------------------------------------- chain validation


class _Broken(Rule):
    """A terminal rule that fails to decide: the engine must not read it as allow."""

    __slots__ = ()
    name = "broken"
    passed = "never"
    terminal = True

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        return None


def test_empty_chain_is_a_configuration_error() -> None:
    with pytest.raises(PolicyError) as info:
        Engine([])
    assert info.value.code == "invalid_chain"


def test_chain_must_end_with_an_admission_rule() -> None:
    with pytest.raises(PolicyError, match="admission rule"):
        Engine([TokenSignature(), Bans()])


def test_chain_rejects_duplicate_rules() -> None:
    with pytest.raises(PolicyError, match="duplicate"):
        Engine([Bans(), Bans(), Admission()])


def test_a_terminal_rule_that_does_not_decide_fails_closed() -> None:
    engine = Engine([TokenSignature(), _Broken()])
    with pytest.raises(PolicyError, match="no rule decided"):
        engine.evaluate(attempt(), state(), policy(), NOW)
    with pytest.raises(PolicyError, match="no rule decided"):
        engine.explain(attempt(), state(), policy(), NOW)


def test_a_shorter_custom_chain_works() -> None:
    engine = Engine([Bans(), Admission()])
    assert engine.rules[0].name == "bans"
    d = engine.evaluate(attempt(token=token(failure="malformed")), state(), policy(), NOW)
    assert d.action is Action.ADMIT  # this chain does not check tokens: it is the caller's


# ---------------------------------------------------------------- explain


def test_explain_lists_rules_up_to_the_deciding_one() -> None:
    ex = explain(attempt(), state(banned_ip=True, ban_reason="raid"), policy(), NOW)
    assert [s.rule for s in ex.steps] == CHAIN_ORDER[: CHAIN_ORDER.index("bans") + 1]
    assert all(s.outcome == "pass" for s in ex.steps[:-1])
    last = ex.steps[-1]
    assert isinstance(last.outcome, Decision)
    assert last.outcome.reason is Reason.BANNED_IP
    assert last.text == "This IP address is banned."
    assert last.facts == {"ban_reason": "raid"}
    assert ex.not_reached == tuple(CHAIN_ORDER[CHAIN_ORDER.index("bans") + 1 :])
    assert ex.decision == evaluate(
        attempt(), state(banned_ip=True, ban_reason="raid"), policy(), NOW
    )


def test_explain_names_the_rules_acknowledgment() -> None:
    ex = explain(attempt(), state(rules_acknowledged=False), policy(require_rules_ack=True),
                 NOW)
    assert ex.decision.reason is Reason.RULES_NOT_ACKNOWLEDGED
    assert ex.decision.rule == "rules_ack"
    assert [st.rule for st in ex.steps][-2:] == ["concurrent_session", "rules_ack"]
    out: Any = ex.to_dict()
    assert out["decision"]["reason"] == "rules_not_acknowledged"
    assert out["steps"][-1]["rule"] == "rules_ack"
    assert "acknowledged the class rules" in str(out["steps"][-1])
    passing: Any = explain(attempt(), state(), policy(require_rules_ack=True), NOW).to_dict()
    ack_step = next(st for st in passing["steps"] if st["rule"] == "rules_ack")
    assert "acknowledged the class rules, or the policy does not require it" in str(ack_step)


def test_explain_shows_facts_of_a_passing_rule_and_is_json() -> None:
    a = attempt(device=OTHER_DEVICE)
    ex = explain(a, state(), policy(max_rebinds=1), NOW)
    binding = next(s for s in ex.steps if s.rule == "device_binding")
    assert binding.outcome == "pass"
    assert binding.facts["rebind"] is True
    assert ex.decision.facts["rebind"] is True
    assert [s.rule for s in ex.steps] == CHAIN_ORDER
    assert ex.not_reached == ()
    doc = json.loads(json.dumps(ex.to_dict()))
    assert doc["decision"] == {
        "action": "admit",
        "reason": "admitted_by_policy",
        "rule": "admission",
        "facts": {
            "admission": "auto_when_host_present",
            "host_present": True,
            "rebind": True,
            "rebinds_used": 0,
            "max_rebinds": 1,
        },
    }
    assert doc["steps"][0] == {
        "rule": "token_signature",
        "outcome": "pass",
        "text": "The join credential's signature and fixed claims verified.",
        "facts": {},
    }


# ---------------------------------------------------------------- weakened checks


@pytest.mark.parametrize(
    ("data", "weakened"),
    [
        ({"preset": "strict"}, []),
        ({"preset": "standard"}, []),
        ({"preset": "open"}, ["device_binding", "require_roster"]),
        ({"preset": "strict", "enforce_schedule": False}, ["enforce_schedule"]),
        (
            {"preset": "standard", "allow_concurrent": True, "max_rebinds": 2, "admission": "auto"},
            ["allow_concurrent", "max_rebinds", "admission"],
        ),
    ],
)
def test_weakened_checks(data: dict[str, Any], weakened: list[str]) -> None:
    assert weakened_checks(load_policy(data)) == weakened


# ---------------------------------------------------------------- properties

devices = st.sampled_from([None, DEVICE, OTHER_DEVICE, "f" * 64])
class_ids = st.sampled_from([CLASS, OTHER_CLASS])
instants = st.datetimes(
    min_value=datetime(2026, 8, 1), max_value=datetime(2027, 3, 1), timezones=st.just(UTC)
)
unix_times = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=NOW.timestamp() - 10 * 86400, max_value=NOW.timestamp() + 10 * 86400),
)


@st.composite
def tokens(draw: st.DrawFn) -> TokenFacts:
    return TokenFacts(
        failure=draw(st.sampled_from([None, None, None, "malformed", "bad_signature",
                                      "unknown_kid", "bad_claims"])),
        class_id=draw(class_ids),
        exp=draw(unix_times),
        nbf=draw(unix_times),
    )  # fmt: skip


@st.composite
def attempts(draw: st.DrawFn) -> Attempt:
    return Attempt(
        class_id=draw(st.sampled_from([CLASS, CLASS, OTHER_CLASS])),
        token=draw(tokens()),
        ip="198.51.100.1",
        device=draw(devices),
        via=draw(st.sampled_from(["link", "code"])),
        rate_limited=draw(st.booleans()),
    )


@st.composite
def states(draw: st.DrawFn) -> ClassState:
    return ClassState(
        class_id=draw(st.sampled_from([CLASS, CLASS, OTHER_CLASS])),
        schedule=draw(st.sampled_from([ONE_OFF, WEEKLY])),
        locked=draw(st.booleans()),
        ended=draw(st.booleans()),
        host_present=draw(st.booleans()),
        host_left_at=draw(st.one_of(st.none(), instants)),
        revoked=draw(st.booleans()),
        on_roster=draw(st.booleans()),
        bound_device=draw(devices),
        rebinds_used=draw(st.integers(0, 12)),
        device_released=draw(st.booleans()),
        student_admitted=draw(st.booleans()),
        admitted_device=draw(devices),
        removed=draw(st.booleans()),
        denied=draw(st.booleans()),
        banned_device=draw(st.booleans()),
        banned_ip=draw(st.booleans()),
        ban_reason=draw(st.sampled_from([None, "raid"])),
        admitted_count=draw(st.integers(0, 10_001)),
    )


def _value(name: str) -> st.SearchStrategy[object]:
    spec = FIELD_SPECS[name]
    if spec.kind == "bool":
        base: st.SearchStrategy[object] = st.booleans()
    elif spec.kind == "int":
        base = st.integers(spec.lo, spec.hi)
    else:
        base = st.sampled_from(spec.choices)
    return st.one_of(st.none(), base) if spec.nullable else base


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    names = draw(st.lists(st.sampled_from(sorted(FIELD_SPECS)), unique=True, max_size=8))
    overrides = {n: draw(_value(n)) for n in names}
    preset = draw(st.sampled_from(["strict", "standard", "open"]))
    return load_policy({"preset": preset, **overrides})


@st.composite
def nows(draw: st.DrawFn) -> datetime:
    # Mostly near class time (where decisions are interesting), sometimes anywhere.
    near = NOW + timedelta(minutes=draw(st.integers(-120, 120)))
    return draw(st.one_of(st.just(near), instants))


def _bad_token_kind(a: Attempt, p: Policy, now: datetime, s: ClassState) -> str | None:
    t = a.token
    ts = now.timestamp()
    if t.failure is not None:
        return "invalid_signature"
    if t.exp is None or not math.isfinite(t.exp) or t.exp + p.token_leeway_seconds < ts:
        return "expired_or_no_exp"
    if t.class_id != a.class_id:
        return "wrong_class"
    if s.revoked:
        return "revoked"
    return None


@PROPERTY
@given(attempts(), states(), policies(), nows())
@example(  # a NaN expiry compares False with everything: it must not read as "valid"
    attempt(token=token(exp=math.nan)), state(), policy("strict", admission="auto"), NOW
)
@example(  # a re-admission of the same device must not bypass revocation
    attempt(), state(revoked=True, student_admitted=True, admitted_device=DEVICE), policy(), NOW
)
def test_bad_credentials_are_never_admitted(
    a: Attempt, s: ClassState, p: Policy, now: datetime
) -> None:
    decision = evaluate(a, s, p, now)
    if _bad_token_kind(a, p, now, s) is not None:
        assert decision.action is Action.DENY


@PROPERTY
@given(st.data(), states(), policies(), nows())
def test_forced_bad_tokens_are_denied_whatever_the_state(
    data: st.DataObject, s: ClassState, p: Policy, now: datetime
) -> None:
    ts = now.timestamp()
    good = token(exp=ts + 3600, nbf=ts - 3600)
    kind = data.draw(st.sampled_from(["revoked", "expired", "wrong_class", "signature"]))
    a = attempt(token=good)
    s = replace(s, class_id=CLASS)
    if kind == "revoked":
        s = replace(s, revoked=True)
    elif kind == "expired":
        a = attempt(token=replace(good, exp=ts - p.token_leeway_seconds - 1))
    elif kind == "wrong_class":
        a = attempt(token=replace(good, class_id=OTHER_CLASS))
    else:
        a = attempt(token=replace(good, failure="bad_signature"))
    decision = evaluate(a, s, p, now)
    assert decision.action is Action.DENY
    expected = {
        "revoked": Reason.TOKEN_REVOKED,
        "expired": Reason.TOKEN_EXPIRED,
        "wrong_class": Reason.WRONG_CLASS,
        "signature": Reason.TOKEN_INVALID,
    }[kind]
    assert decision.reason is expected


@PROPERTY
@given(attempts(), states(), policies(), nows())
def test_evaluate_is_deterministic(a: Attempt, s: ClassState, p: Policy, now: datetime) -> None:
    first = evaluate(a, s, p, now)
    # Equal (not identical) inputs give an equal decision.
    assert evaluate(replace(a), replace(s), replace(p), now + timedelta(0)) == first
    assert evaluate(a, s, p, now) == first


@PROPERTY
@given(attempts(), states(), policies(), nows(), st.sampled_from(["device", "ip", "both"]))
def test_a_ban_never_admits_and_never_turns_a_deny_into_an_admit(
    a: Attempt, s: ClassState, p: Policy, now: datetime, which: str
) -> None:
    before = evaluate(a, s, p, now)
    banned = replace(
        s,
        banned_device=s.banned_device or which in ("device", "both"),
        banned_ip=s.banned_ip or which in ("ip", "both"),
    )
    after = evaluate(a, banned, p, now)
    assert after.action is Action.DENY
    if before.action is Action.DENY:
        assert after.action is Action.DENY


@PROPERTY
@given(attempts(), states(), policies(), nows())
def test_explain_agrees_with_evaluate(a: Attempt, s: ClassState, p: Policy, now: datetime) -> None:
    ex = explain(a, s, p, now)
    assert ex.decision == evaluate(a, s, p, now)
    assert [st.rule for st in ex.steps] + list(ex.not_reached) == CHAIN_ORDER
    assert ex.steps[-1].outcome != "pass"
    json.dumps(ex.to_dict())


@PROPERTY
@given(attempts(), states(), policies(), nows())
def test_admission_only_from_the_readmit_or_admission_rules(
    a: Attempt, s: ClassState, p: Policy, now: datetime
) -> None:
    decision = evaluate(a, s, p, now)
    if decision.action is Action.ADMIT:
        assert decision.reason is Reason.ADMITTED_BY_POLICY
        assert decision.rule in ("concurrent_session", "admission")
        assert not (s.revoked or s.banned_device or s.banned_ip or s.ended or s.removed)
        assert not s.denied and not a.rate_limited
        if decision.rule == "admission":
            assert not s.locked
            assert p.capacity is None or s.admitted_count < p.capacity
            assert p.admission == "auto" or s.host_present


@PROPERTY
@given(attempts(), states(), policies(), nows())
def test_a_released_device_is_never_admitted_by_the_policy(
    a: Attempt, s: ClassState, p: Policy, now: datetime
) -> None:
    """The device bound to a reissued link only re-enters what the host let it into."""
    decision = evaluate(a, replace(s, device_released=True), p, now)
    if p.device_binding and decision.action is Action.ADMIT:
        assert decision.rule == "concurrent_session"
    if decision.rule == "admission" and p.device_binding:
        assert decision.action is Action.WAIT and decision.facts["released_device"] is True
