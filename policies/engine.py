"""The rule chain: ``evaluate`` decides, ``explain`` says why, with the same code.

The chain is ordered and the first rule that returns a ``Decision`` wins. It must be
non-empty and end with a terminal rule (``Admission``) so every attempt gets a decision;
"no rule decided" is never read as "allow".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from policies.model import Action, Attempt, ClassState, Decision, Policy, Reason
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
    Pass,
    PolicyError,
    RateLimit,
    Revocation,
    Roster,
    Rule,
    RuleResult,
    RulesAck,
    ScheduleRule,
    TokenSignature,
    TokenTime,
)

__all__ = [
    "DEFAULT_RULES",
    "REASON_TEXT",
    "Engine",
    "Explanation",
    "Step",
    "evaluate",
    "explain",
    "weakened_checks",
]

# The order is part of the contract (docs/architecture.md, "A policy rule"): identity of
# the credential first, then who the person is, then the class's standing orders, then what the host
# wants. Changing it changes which reason an audit record shows.
DEFAULT_RULES: tuple[Rule, ...] = (
    TokenSignature(),
    TokenTime(),
    ClassMatch(),
    Revocation(),
    RateLimit(),
    Bans(),
    Roster(),
    Ended(),
    HostVerdict(),
    DeviceBinding(),
    ConcurrentSession(),
    RulesAck(),
    Lock(),
    ScheduleRule(),
    Capacity(),
    Admission(),
)

# English text for each reason, used by ``explain`` (the UI translates the reason code
# itself; this text is for staff reading a CLI or audit view).
REASON_TEXT: dict[Reason, str] = {
    Reason.TOKEN_INVALID: "The join credential is not valid.",
    Reason.TOKEN_EXPIRED: "The join credential has expired.",
    Reason.TOKEN_REVOKED: "The join credential was revoked or replaced by a new link.",
    Reason.WRONG_CLASS: "The join credential belongs to a different class.",
    Reason.OUTSIDE_SCHEDULE: "The class is not open for entry at this time.",
    Reason.CLASS_LOCKED: "The class is locked.",
    Reason.CLASS_ENDED: "The class has ended.",
    Reason.DEVICE_MISMATCH: "The link is bound to a different device.",
    Reason.CONCURRENT_SESSION: "The student is already in the class on another device.",
    Reason.BANNED_DEVICE: "This device is banned.",
    Reason.BANNED_IP: "This IP address is banned.",
    Reason.RATE_LIMITED: "Too many attempts; the request was rate limited.",
    Reason.NOT_ON_ROSTER: "The student is not on the class roster.",
    Reason.LATE_JOIN_CLOSED: "The late-join cut-off has passed.",
    Reason.CAPACITY_REACHED: "The class is full.",
    Reason.AWAITING_HOST: "The student waits for the host to admit them.",
    Reason.ADMITTED_BY_POLICY: "The policy admits the student.",
    Reason.ADMITTED_BY_HOST: "The host admitted the student.",
    Reason.DENIED_BY_HOST: "The host refused this student.",
    Reason.REMOVED_BY_HOST: "The host removed this student from the class.",
    Reason.RULES_NOT_ACKNOWLEDGED: "The student has not yet acknowledged the class rules.",
}


@dataclass(frozen=True, slots=True)
class Step:
    """What one rule said about an attempt.

    ``outcome`` is "pass" or the rule's Decision; ``text`` is a short English sentence;
    ``facts`` are the machine-readable details (the Decision's facts, or those a passing
    rule handed on, e.g. ``{"rebind": True}``).
    """

    rule: str
    outcome: Literal["pass"] | Decision
    text: str
    facts: dict[str, object]


@dataclass(frozen=True, slots=True)
class Explanation:
    """Every rule that ran, in order, and the final decision (== ``evaluate``).
    ``not_reached`` names the rules after the deciding one, which did not run."""

    steps: tuple[Step, ...]
    decision: Decision
    not_reached: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-able form for the CLI and the control room."""
        return {
            "decision": _decision_dict(self.decision),
            "steps": [
                {
                    "rule": s.rule,
                    "outcome": _outcome_dict(s.outcome),
                    "text": s.text,
                    "facts": dict(s.facts),
                }
                for s in self.steps
            ],
            "not_reached": list(self.not_reached),
        }


def _outcome_dict(outcome: Literal["pass"] | Decision) -> str | dict[str, object]:
    return outcome if isinstance(outcome, str) else _decision_dict(outcome)


def _decision_dict(d: Decision) -> dict[str, object]:
    return {
        "action": str(d.action),
        "reason": str(d.reason),
        "rule": d.rule,
        "facts": dict(d.facts),
    }


_Check = Callable[[Attempt, ClassState, Policy, datetime], RuleResult]


def _with_carried(decision: Decision, carried: dict[str, object] | None) -> Decision:
    """Attach facts a passing rule handed on. NOTE: never on a DENY: a rebind must not
    move a link's binding to a device that was refused entry."""
    if carried is None or decision.action is Action.DENY:
        return decision
    return Decision(decision.action, decision.reason, decision.rule, {**decision.facts, **carried})


class Engine:
    """An ordered, validated rule chain. Immutable once built."""

    __slots__ = ("_checks", "_rules")

    def __init__(self, rules: Iterable[Rule]) -> None:
        chain = tuple(rules)
        if not chain:
            raise PolicyError("invalid_chain", "the rule chain is empty")
        if not chain[-1].terminal:
            raise PolicyError(
                "invalid_chain",
                f"the rule chain must end with an admission rule, not {chain[-1].name!r}",
            )
        names = [r.name for r in chain]
        if len(set(names)) != len(names):
            raise PolicyError("invalid_chain", f"duplicate rule names in {names!r}")
        self._rules = chain
        # Bound methods fetched once: the hot loop then does one call per rule.
        self._checks: tuple[_Check, ...] = tuple(r.check for r in chain)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def evaluate(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> Decision:
        """Run the chain; the first Decision wins."""
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        carried: dict[str, object] | None = None
        for check in self._checks:
            result = check(attempt, state, policy, now)
            if result is None:
                continue
            if isinstance(result, Decision):
                return result if carried is None else _with_carried(result, carried)
            carried = result.facts if carried is None else {**carried, **result.facts}
        # Unreachable with a terminal last rule, unless that rule is broken: fail closed.
        raise PolicyError("invalid_chain", "no rule decided (the admission rule returned None)")

    def explain(
        self, attempt: Attempt, state: ClassState, policy: Policy, now: datetime
    ) -> Explanation:
        """Run the same chain, recording each rule's outcome."""
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        steps: list[Step] = []
        carried: dict[str, object] | None = None
        for index, rule in enumerate(self._rules):
            result = self._checks[index](attempt, state, policy, now)
            if result is None:
                steps.append(Step(rule.name, "pass", rule.passed, {}))
                continue
            if isinstance(result, Pass):
                steps.append(Step(rule.name, "pass", rule.passed, dict(result.facts)))
                carried = result.facts if carried is None else {**carried, **result.facts}
                continue
            decision = _with_carried(result, carried)
            steps.append(Step(rule.name, result, REASON_TEXT[result.reason], dict(result.facts)))
            rest = tuple(r.name for r in self._rules[index + 1 :])
            return Explanation(tuple(steps), decision, rest)
        raise PolicyError("invalid_chain", "no rule decided (the admission rule returned None)")


# Built once at import from immutable, stateless rules; not mutable module state.
_DEFAULT_ENGINE = Engine(DEFAULT_RULES)


def evaluate(attempt: Attempt, state: ClassState, policy: Policy, now: datetime) -> Decision:
    """Decide a join attempt: ADMIT, WAIT or DENY with a stable reason.

    Pure: no I/O, no clock. ``now`` must be aware. Raises ``PolicyError`` only for a
    broken chain (never returns an "allow" by default).
    """
    return _DEFAULT_ENGINE.evaluate(attempt, state, policy, now)


def explain(attempt: Attempt, state: ClassState, policy: Policy, now: datetime) -> Explanation:
    """Why ``evaluate`` decides as it does: every rule that ran, in order.
    ``explain(...).decision == evaluate(...)`` for the same inputs."""
    return _DEFAULT_ENGINE.explain(attempt, state, policy, now)


# Weakening settings, with the value that weakens and why; the gateway logs
# ``weakened_checks(policy)`` when a class is created or its policy changes.
_WEAKENERS: tuple[tuple[str, Callable[[Policy], bool]], ...] = (
    ("device_binding", lambda p: not p.device_binding),  # a shared link works anywhere
    ("enforce_schedule", lambda p: not p.enforce_schedule),  # entry at any hour
    ("require_roster", lambda p: not p.require_roster),  # not only roster students
    ("allow_concurrent", lambda p: p.allow_concurrent),  # one link, several people
    ("max_rebinds", lambda p: p.max_rebinds > 0),  # a link may move without the teacher
    ("admission", lambda p: p.admission == "auto"),  # entry without any host present
)


def weakened_checks(policy: Policy) -> list[str]:
    """Names of the policy fields whose values switch off or loosen a safety check
    (empty for a fully strict policy). Meant to be logged loudly, not to block."""
    return [name for name, weakens in _WEAKENERS if weakens(policy)]
