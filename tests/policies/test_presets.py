"""The three presets: their settings and how they treat the same student."""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from typing import Any

import pytest

from policies import PRESETS, Action, Policy, Reason, evaluate, load_policy
from tests.policies.builders import NOW, OTHER_DEVICE, attempt, state

EXPECTED: dict[str, dict[str, Any]] = {
    "strict": {
        "admission": "host",
        "device_binding": True,
        "max_rebinds": 0,
        "second_device": "deny",
        "late_join_cutoff_minutes": 15,
        "enforce_schedule": True,
        "on_host_leave": "lock",
    },
    "standard": {
        "admission": "auto_when_host_present",
        "device_binding": True,
        "max_rebinds": 0,
        "second_device": "deny",
        "late_join_cutoff_minutes": None,
        "on_host_leave": "keep",
    },
    "open": {
        "admission": "host",
        "require_roster": False,
        "device_binding": False,
        "second_device": "wait",
        "on_host_leave": "pause",
    },
}


def test_preset_names() -> None:
    assert set(PRESETS) == {"strict", "standard", "open"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_settings_and_defaults(name: str) -> None:
    p = load_policy({"preset": name})
    assert p.preset == name
    for field in fields(Policy):
        if field.name == "preset":
            continue
        expected = EXPECTED[name].get(field.name, field.default)
        assert getattr(p, field.name) == expected, field.name


def test_presets_are_read_only() -> None:
    with pytest.raises(TypeError):
        PRESETS["strict"]["admission"] = "auto"  # type: ignore[index]
    with pytest.raises(TypeError):
        PRESETS["lenient"] = {}  # type: ignore[index]


# The same situations under each preset: (state changes, attempt changes, minutes after
# NOW) -> expected (action, reason) per preset.
Verdicts = dict[str, tuple[Action, Reason]]
SITUATIONS: list[tuple[str, dict[str, Any], dict[str, Any], int, Verdicts]] = [
    ("roster_student_host_present", {}, {}, 0, {
        "strict": (Action.WAIT, Reason.AWAITING_HOST),
        "standard": (Action.ADMIT, Reason.ADMITTED_BY_POLICY),
        "open": (Action.WAIT, Reason.AWAITING_HOST),
    }),
    ("host_not_there_yet", {"host_present": False}, {}, 0, {
        "strict": (Action.WAIT, Reason.AWAITING_HOST),
        "standard": (Action.WAIT, Reason.AWAITING_HOST),
        "open": (Action.WAIT, Reason.AWAITING_HOST),
    }),
    ("twenty_minutes_after_the_start", {}, {}, 10, {
        "strict": (Action.DENY, Reason.LATE_JOIN_CLOSED),
        "standard": (Action.ADMIT, Reason.ADMITTED_BY_POLICY),
        "open": (Action.WAIT, Reason.AWAITING_HOST),
    }),
    ("link_on_a_second_device", {}, {"device": OTHER_DEVICE}, 0, {
        "strict": (Action.DENY, Reason.DEVICE_MISMATCH),
        "standard": (Action.DENY, Reason.DEVICE_MISMATCH),
        "open": (Action.WAIT, Reason.AWAITING_HOST),
    }),
    ("not_on_roster", {"on_roster": False}, {}, 0, {
        "strict": (Action.DENY, Reason.NOT_ON_ROSTER),
        "standard": (Action.DENY, Reason.NOT_ON_ROSTER),
        "open": (Action.WAIT, Reason.AWAITING_HOST),
    }),
    ("host_left", {"host_present": False, "host_left_at": NOW}, {}, 0, {
        "strict": (Action.DENY, Reason.CLASS_LOCKED),
        "standard": (Action.WAIT, Reason.AWAITING_HOST),
        "open": (Action.WAIT, Reason.AWAITING_HOST),
    }),
]  # fmt: skip


@pytest.mark.parametrize("preset", ["strict", "standard", "open"])
@pytest.mark.parametrize(
    ("state_changes", "attempt_changes", "minutes", "expected"),
    [s[1:] for s in SITUATIONS],
    ids=[s[0] for s in SITUATIONS],
)
def test_presets_in_the_same_situation(
    preset: str,
    state_changes: dict[str, Any],
    attempt_changes: dict[str, Any],
    minutes: int,
    expected: Verdicts,
) -> None:
    decision = evaluate(
        attempt(**attempt_changes),
        state(**state_changes),
        load_policy({"preset": preset}),
        NOW + timedelta(minutes=minutes),
    )
    assert (decision.action, decision.reason) == expected[preset]
