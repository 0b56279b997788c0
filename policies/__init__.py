"""ClassGuard's pure policy engine: (attempt, class state, policy, now) -> Decision.

No I/O and no clock: the gateway builds the inputs and passes ``now``. See
``engine.evaluate`` for the decision, ``engine.explain`` for the reasons, and
``loader.load_policy`` for turning policy data into a validated ``Policy``.
"""

from policies.engine import (
    DEFAULT_RULES,
    REASON_TEXT,
    Engine,
    Explanation,
    Step,
    evaluate,
    explain,
    weakened_checks,
)
from policies.loader import (
    FIELD_SPECS,
    PolicyHolder,
    load_policy,
    load_policy_text,
    policy_to_dict,
    validate_schedule,
)
from policies.model import (
    DEFAULT_TIMEZONE,
    Action,
    Admission,
    Attempt,
    ClassId,
    ClassState,
    Decision,
    Jti,
    OnHostLeave,
    Policy,
    Reason,
    Schedule,
    SecondDevice,
    StudentId,
    TokenFacts,
    TokenFailure,
)
from policies.presets import PRESETS
from policies.rules import Pass, PolicyError, Rule, RuleResult
from policies.schedule import current_window, next_start

__all__ = [
    "DEFAULT_RULES",
    "DEFAULT_TIMEZONE",
    "FIELD_SPECS",
    "PRESETS",
    "REASON_TEXT",
    "Action",
    "Admission",
    "Attempt",
    "ClassId",
    "ClassState",
    "Decision",
    "Engine",
    "Explanation",
    "Jti",
    "OnHostLeave",
    "Pass",
    "Policy",
    "PolicyError",
    "PolicyHolder",
    "Reason",
    "Rule",
    "RuleResult",
    "Schedule",
    "SecondDevice",
    "Step",
    "StudentId",
    "TokenFacts",
    "TokenFailure",
    "current_window",
    "evaluate",
    "explain",
    "load_policy",
    "load_policy_text",
    "next_start",
    "policy_to_dict",
    "validate_schedule",
    "weakened_checks",
]
