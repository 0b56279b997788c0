"""The rules of the join decision, one small class each.

A rule looks at one concern and either decides (returns a ``Decision``), passes
(returns None), or passes while leaving facts for whoever decides later (returns a
``Pass``; only device binding does this, to tell the gateway to move the binding).
Rules hold no state: one instance of each serves every class. The order of the
chain lives in ``engine.DEFAULT_RULES``; each rule may rely on the rules before it
having passed (e.g. ``ConcurrentSession`` re-admits only after the token, ban and
device checks).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

from policies.model import Action, Attempt, ClassState, Decision, Policy, Reason
from policies.schedule import current_window_utc, next_start, to_local

__all__ = [
    "Admission",
    "Bans",
    "ClassMatch",
    "ConcurrentSession",
    "DeviceBinding",
    "Ended",
    "HostVerdict",
    "Lock",
    "Pass",
    "PolicyError",
    "RateLimit",
    "Revocation",
    "Roster",
    "Rule",
    "RulesAck",
    "RuleResult",
    "ScheduleRule",
    "Capacity",
    "TokenSignature",
    "TokenTime",
]

_ADMIT = Action.ADMIT
_WAIT = Action.WAIT
_DENY = Action.DENY


class PolicyError(Exception):
    """A policy (or rule chain, or schedule) that cannot be used.

    ``code`` is stable (``invalid_policy``, ``invalid_schedule``, ``invalid_chain``),
    ``message`` is for people, ``field`` is the dotted name of the offending field
    when there is one. The HTTP layer turns it into the error body of docs/api.md.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class Pass:
    """A rule passed but has facts for the final decision (e.g. ``rebind``)."""

    facts: dict[str, object]


RuleResult = Decision | Pass | None


class Rule(ABC):
    """One check of the chain.

    ``name`` is stable: it is written into every Decision and audit record.
    ``passed`` is the English sentence ``explain`` shows when the rule lets the
    attempt through. ``terminal`` rules must always decide; a chain must end with one.
    """

    __slots__ = ()
    name: ClassVar[str]
    passed: ClassVar[str]
    terminal: ClassVar[bool] = False

    @abstractmethod
    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        """Decide, pass (None) or pass with facts (``Pass``)."""

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


class TokenSignature(Rule):
    __slots__ = ()
    name = "token_signature"
    passed = "The join credential's signature and fixed claims verified."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        failure = attempt.token.failure
        if failure is not None:
            return Decision(_DENY, Reason.TOKEN_INVALID, self.name, {"failure": failure})
        return None


class TokenTime(Rule):
    __slots__ = ()
    name = "token_time"
    passed = "The join credential is within its validity period."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        token = attempt.token
        exp = token.exp
        nbf = token.nbf
        # NOTE: a NaN or infinite time compares False against everything and would
        # slip past both checks below, so anything non-finite is invalid, not "valid".
        if exp is None or not math.isfinite(exp):
            return Decision(_DENY, Reason.TOKEN_INVALID, self.name, {"missing": "exp"})
        if nbf is not None and not math.isfinite(nbf):
            return Decision(_DENY, Reason.TOKEN_INVALID, self.name, {"bad": "nbf"})
        # The leeway absorbs clock skew between gateway processes and the issuer only;
        # it is small and bounded by the loader (0..300 s).
        leeway = policy.token_leeway_seconds
        ts = now.timestamp()
        if exp + leeway < ts:
            return Decision(
                _DENY, Reason.TOKEN_EXPIRED, self.name, {"exp": exp, "leeway_seconds": leeway}
            )
        if nbf is not None and nbf - leeway > ts:
            return Decision(
                _DENY,
                Reason.TOKEN_INVALID,
                self.name,
                {"not_yet_valid": True, "nbf": nbf, "leeway_seconds": leeway},
            )
        return None


class ClassMatch(Rule):
    __slots__ = ()
    name = "class_match"
    passed = "The credential was issued for this class."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        if attempt.token.class_id != attempt.class_id:
            return Decision(
                _DENY,
                Reason.WRONG_CLASS,
                self.name,
                {"token_class_id": attempt.token.class_id, "class_id": attempt.class_id},
            )
        # A state snapshot of another class would make every later rule answer for the
        # wrong class; that is a gateway bug, and it must not open the door.
        if state.class_id != attempt.class_id:
            return Decision(
                _DENY,
                Reason.WRONG_CLASS,
                self.name,
                {"state_class_id": state.class_id, "class_id": attempt.class_id},
            )
        return None


class Revocation(Rule):
    __slots__ = ()
    name = "revocation"
    passed = "The credential has not been revoked or reissued."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        if state.revoked:
            return Decision(_DENY, Reason.TOKEN_REVOKED, self.name, {"jti": attempt.token.jti})
        return None


class RateLimit(Rule):
    __slots__ = ()
    name = "rate_limit"
    passed = "The request is within the rate limit."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        if attempt.rate_limited:
            return Decision(_DENY, Reason.RATE_LIMITED, self.name, {"via": attempt.via})
        return None


class Bans(Rule):
    __slots__ = ()
    name = "bans"
    passed = "Neither the device nor the IP address is banned."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        if state.banned_device:
            return Decision(
                _DENY, Reason.BANNED_DEVICE, self.name, {"ban_reason": state.ban_reason}
            )
        if state.banned_ip:
            return Decision(_DENY, Reason.BANNED_IP, self.name, {"ban_reason": state.ban_reason})
        return None


class Roster(Rule):
    __slots__ = ()
    name = "roster"
    passed = "The student is on the roster, or the policy does not require it."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        if policy.require_roster and not state.on_roster:
            return Decision(_DENY, Reason.NOT_ON_ROSTER, self.name, {})
        return None


class RulesAck(Rule):
    """The class rules must have been acknowledged (their current version) when the
    policy requires it. The student is refused with the rules to read; acknowledging
    them and trying again passes (gateway/class_rules.py)."""

    __slots__ = ()
    name = "rules_ack"
    passed = "The student acknowledged the class rules, or the policy does not require it."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        if policy.require_rules_ack and not state.rules_acknowledged:
            return Decision(_DENY, Reason.RULES_NOT_ACKNOWLEDGED, self.name, {})
        return None


class Ended(Rule):
    __slots__ = ()
    name = "ended"
    passed = "The host has not ended the class."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        if state.ended:
            return Decision(_DENY, Reason.CLASS_ENDED, self.name, {})
        return None


class HostVerdict(Rule):
    __slots__ = ()
    name = "host_verdict"
    passed = "The host has not removed or refused this student."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        # The flags persist until the host admits the student again (the gateway
        # clears them then), so reloading the page cannot undo a removal.
        if state.removed:
            return Decision(_DENY, Reason.REMOVED_BY_HOST, self.name, {})
        if state.denied:
            return Decision(_DENY, Reason.DENIED_BY_HOST, self.name, {})
        return None


class DeviceBinding(Rule):
    __slots__ = ()
    name = "device_binding"
    passed = "The device is the one the link is bound to (or binding is not in force)."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        bound = state.bound_device
        # An attempt without a device cookie (device None) is a new device: it never
        # matches a binding.
        if not policy.device_binding or bound is None or attempt.device == bound:
            return None
        if state.rebinds_used < policy.max_rebinds:
            # Allowed to move: the gateway performs the rebind if the attempt is
            # admitted or held (never on a deny; see engine).
            return Pass(
                {
                    "rebind": True,
                    "rebinds_used": state.rebinds_used,
                    "max_rebinds": policy.max_rebinds,
                }
            )
        facts: dict[str, object] = {
            "second_device": policy.second_device,
            "rebinds_used": state.rebinds_used,
            "max_rebinds": policy.max_rebinds,
            "has_device_cookie": attempt.device is not None,
        }
        if policy.second_device == "wait":
            return Decision(_WAIT, Reason.DEVICE_MISMATCH, self.name, facts)
        return Decision(_DENY, Reason.DEVICE_MISMATCH, self.name, facts)


class ConcurrentSession(Rule):
    __slots__ = ()
    name = "concurrent_session"
    passed = "The student is not currently in the class on another device."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        if not state.student_admitted:
            return None
        admitted_device = state.admitted_device
        if admitted_device is None:
            return None
        if attempt.device == admitted_device:
            # A student who reloads the page keeps their place: they already entered,
            # so lock, schedule and capacity (rules for new entries) do not apply.
            return Decision(_ADMIT, Reason.ADMITTED_BY_POLICY, self.name, {"readmit": True})
        if not policy.allow_concurrent:
            return Decision(_DENY, Reason.CONCURRENT_SESSION, self.name, {})
        return None


class Lock(Rule):
    __slots__ = ()
    name = "lock"
    passed = "The class is not locked."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        if state.locked:
            return Decision(_DENY, Reason.CLASS_LOCKED, self.name, {})
        if not state.host_present and state.host_left_at is not None:
            mode = policy.on_host_leave
            if mode == "lock":
                return Decision(
                    _DENY,
                    Reason.CLASS_LOCKED,
                    self.name,
                    {"host_left": True, "host_left_at": state.host_left_at.isoformat()},
                )
            if mode == "pause":
                return Decision(
                    _WAIT,
                    Reason.AWAITING_HOST,
                    self.name,
                    {"paused": True, "host_left_at": state.host_left_at.isoformat()},
                )
        return None


class ScheduleRule(Rule):
    __slots__ = ()
    name = "schedule"
    passed = "The class is open for entry now (or the schedule is not enforced)."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        if not policy.enforce_schedule:
            return None
        schedule = state.schedule
        # UTC instants: comparisons stay cheap; only the refusal facts are localised.
        window = current_window_utc(schedule, now)
        if window is None:
            return Decision(_DENY, Reason.OUTSIDE_SCHEDULE, self.name, {"no_window": True})
        start, end = window
        early = timedelta(minutes=policy.early_open_minutes)
        opens_at = start - early
        if now < opens_at:
            return Decision(
                _DENY,
                Reason.OUTSIDE_SCHEDULE,
                self.name,
                {
                    "opens_at": to_local(schedule, opens_at).isoformat(),
                    "starts_at": to_local(schedule, start).isoformat(),
                },
            )
        if now > end:
            facts: dict[str, object] = {"ended_at": to_local(schedule, end).isoformat()}
            upcoming = next_start(schedule, now)
            if upcoming is not None:
                facts["opens_at"] = to_local(schedule, upcoming - early).isoformat()
            return Decision(_DENY, Reason.OUTSIDE_SCHEDULE, self.name, facts)
        cutoff = policy.late_join_cutoff_minutes
        if cutoff is not None:
            closes_at = start + timedelta(minutes=cutoff)
            if now > closes_at:
                return Decision(
                    _DENY,
                    Reason.LATE_JOIN_CLOSED,
                    self.name,
                    {
                        "closed_at": to_local(schedule, closes_at).isoformat(),
                        "starts_at": to_local(schedule, start).isoformat(),
                    },
                )
        return None


class Capacity(Rule):
    __slots__ = ()
    name = "capacity"
    passed = "There is room in the class (or no capacity limit)."

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        capacity = policy.capacity
        if capacity is not None and state.admitted_count >= capacity:
            return Decision(
                _DENY,
                Reason.CAPACITY_REACHED,
                self.name,
                {"capacity": capacity, "admitted_count": state.admitted_count},
            )
        return None


class Admission(Rule):
    """The last rule: every attempt that got this far is admitted or waits."""

    __slots__ = ()
    name = "admission"
    passed = "(the admission rule always decides)"
    terminal = True

    def check(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> RuleResult:
        mode = policy.admission
        if policy.device_binding and state.device_released:
            # NOTE: a reissued link is not bound to anyone yet, and the device bound to the
            # old one is the likeliest intruder: whatever the mode, the host decides, and
            # the gateway does not let that device take the new binding.
            return Decision(
                _WAIT,
                Reason.AWAITING_HOST,
                self.name,
                {"admission": mode, "host_present": state.host_present,
                 "released_device": True},
            )
        if mode == "auto" or (mode == "auto_when_host_present" and state.host_present):
            return Decision(
                _ADMIT,
                Reason.ADMITTED_BY_POLICY,
                self.name,
                {"admission": mode, "host_present": state.host_present},
            )
        # "host", "auto_when_host_present" without the host, and (fail closed) any
        # value the loader would have rejected: hold the student for the host.
        return Decision(
            _WAIT,
            Reason.AWAITING_HOST,
            self.name,
            {"admission": mode, "host_present": state.host_present},
        )
