"""Loading and validating policies: precedence, strict types, errors that name the
field, round trips, and the holder that keeps the old policy on a bad update."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import (
    FIELD_SPECS,
    Policy,
    PolicyError,
    PolicyHolder,
    Schedule,
    load_policy,
    load_policy_text,
    policy_to_dict,
    validate_schedule,
)
from tests.policies.builders import ICT, ONE_OFF, WEEKLY


def test_field_specs_cover_every_policy_field() -> None:
    # A field added to Policy must get a validation rule here, or it could never be set.
    assert set(FIELD_SPECS) == {f.name for f in fields(Policy)} - {"preset"}


def test_precedence_preset_then_org_defaults_then_overrides() -> None:
    org = {"late_join_cutoff_minutes": 10, "capacity": 200, "early_open_minutes": 5}
    p = load_policy({"preset": "strict", "capacity": 40}, org_defaults=org)
    assert p.late_join_cutoff_minutes == 10  # org beats preset (15)
    assert p.capacity == 40  # class beats org
    assert p.early_open_minutes == 5  # org beats the Policy default (15)
    assert p.admission == "host"  # preset beats the Policy default
    assert p.token_leeway_seconds == 30  # Policy default


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({}, "preset", "missing"),
        ({"capacity": 3}, "preset", "missing"),
        ({"preset": "lenient"}, "preset", "unknown preset"),
        ({"preset": None}, "preset", "unknown preset"),
        ({"preset": 1}, "preset", "unknown preset"),
        ({"preset": "strict", "colour": "red"}, "colour", "unknown field"),
        ({"preset": "strict", "capacity": True}, "capacity", "found a boolean"),
        ({"preset": "strict", "max_rebinds": False}, "max_rebinds", "found a boolean"),
        ({"preset": "strict", "device_binding": 1}, "device_binding", "true or false"),
        ({"preset": "strict", "device_binding": "yes"}, "device_binding", "true or false"),
        ({"preset": "strict", "capacity": 0}, "capacity", "from 1 to 10000"),
        ({"preset": "strict", "capacity": 10001}, "capacity", "from 1 to 10000"),
        ({"preset": "strict", "capacity": 30.0}, "capacity", "fraction"),
        ({"preset": "strict", "capacity": "30"}, "capacity", "found a string"),
        ({"preset": "strict", "early_open_minutes": -1}, "early_open_minutes", "0 to 1440"),
        ({"preset": "strict", "early_open_minutes": 1441}, "early_open_minutes", "0 to 1440"),
        ({"preset": "strict", "early_open_minutes": None}, "early_open_minutes", "null"),
        ({"preset": "strict", "late_join_cutoff_minutes": 1441}, "late_join_cutoff_minutes",
         "0 to 1440"),
        ({"preset": "strict", "max_rebinds": 11}, "max_rebinds", "0 to 10"),
        ({"preset": "strict", "token_leeway_seconds": 301}, "token_leeway_seconds", "0 to 300"),
        ({"preset": "strict", "admission": "everyone"}, "admission", "one of 'host'"),
        ({"preset": "strict", "admission": "HOST"}, "admission", "one of"),
        ({"preset": "strict", "second_device": "allow"}, "second_device", "'deny', 'wait'"),
        ({"preset": "strict", "on_host_leave": "end"}, "on_host_leave", "'keep', 'lock'"),
        ({"preset": "strict", "require_roster": [True]}, "require_roster", "an array"),
        ({"preset": "strict", 5: True}, None, "field names must be strings"),
    ],
)  # fmt: skip
def test_invalid_policies_name_the_field(
    data: dict[str, Any], field: str | None, message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(data)
    err = info.value
    assert err.code == "invalid_policy"
    assert err.field == field
    assert message in err.message


@pytest.mark.parametrize(
    ("org", "field"),
    [
        ({"capacity": True}, "org_defaults.capacity"),
        ({"nonsense": 1}, "org_defaults.nonsense"),
        ({"preset": "open"}, "org_defaults.preset"),
        (["capacity"], "org_defaults"),
    ],
)
def test_invalid_org_defaults_are_named_as_such(org: Any, field: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy({"preset": "standard"}, org_defaults=org)
    assert info.value.field == field


def test_a_policy_must_be_an_object() -> None:
    with pytest.raises(PolicyError, match="must be an object"):
        load_policy(["strict"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value", "loaded"),
    [
        ("late_join_cutoff_minutes", None, None),
        ("late_join_cutoff_minutes", "none", None),  # TOML has no null
        ("late_join_cutoff_minutes", 0, 0),
        ("capacity", "none", None),
        ("capacity", 10000, 10000),
    ],
)
def test_nullable_fields_take_null_and_none_word(name: str, value: object, loaded: object) -> None:
    assert getattr(load_policy({"preset": "strict", name: value}), name) == loaded


def test_error_string_carries_field_and_message() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy({"preset": "open", "capacity": -5})
    assert str(info.value).startswith("capacity: expected an integer from 1 to 10000")


# ---------------------------------------------------------------- text formats

TOML_OK = """
preset = "strict"
capacity = 35
late_join_cutoff_minutes = "none"   # TOML has no null
on_host_leave = "pause"
"""


def test_toml_policy() -> None:
    p = load_policy_text(TOML_OK, "toml")
    assert (p.preset, p.capacity, p.late_join_cutoff_minutes, p.on_host_leave) == (
        "strict",
        35,
        None,
        "pause",
    )


def test_json_policy_with_org_defaults() -> None:
    p = load_policy_text('{"preset": "open"}', "json", org_defaults={"capacity": 500})
    assert p.capacity == 500


@pytest.mark.parametrize(
    ("text", "fmt", "field", "message"),
    [
        ('preset = "strict"\ncapacity = = 3\n', "toml", None, "line 2, column"),
        ('preset = "strict"\ncapacity = true\n', "toml", "capacity", "found a boolean"),
        ('preset = "strict"\n[capacity]\nmax = 3\n', "toml", "capacity", "an object"),
        ('capacity = 3\n', "toml", "preset", "missing"),
        ('{"preset": "strict",\n "capacity": }', "json", None, "line 2, column 14"),
        ('{"preset": "strict", "capacity": 3, "capacity": 4}', "json", "capacity", "twice"),
        ('{"preset": "strict", "capacity": NaN}', "json", None, "NaN is not a valid"),
        ('["strict"]', "json", None, "must be an object"),
        ('{"preset": "strict"}', "yaml", "format", "unknown policy format"),
    ],
)  # fmt: skip
def test_text_errors(text: str, fmt: Any, field: str | None, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, fmt)
    assert info.value.field == field
    assert message in info.value.message


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("preset", ["strict", "standard", "open"])
def test_policy_to_dict_round_trips_and_is_json(preset: str) -> None:
    p = load_policy({"preset": preset})
    d = policy_to_dict(p)
    assert json.loads(json.dumps(d)) == d
    assert load_policy(d) == p
    # Explicit fields win over any organisation default.
    assert load_policy(d, org_defaults={"capacity": 7, "device_binding": False}) == p
    assert load_policy_text(json.dumps(d), "json") == p


def _value(name: str) -> st.SearchStrategy[object]:
    spec = FIELD_SPECS[name]
    if spec.kind == "bool":
        base: st.SearchStrategy[object] = st.booleans()
    elif spec.kind == "int":
        base = st.integers(spec.lo, spec.hi)
    else:
        base = st.sampled_from(spec.choices)
    return st.one_of(st.none(), base) if spec.nullable else base


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_round_trip_of_random_valid_policies(data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(sorted(FIELD_SPECS)), unique=True))
    overrides = {n: data.draw(_value(n)) for n in names}
    preset = data.draw(st.sampled_from(["strict", "standard", "open"]))
    p = load_policy({"preset": preset, **overrides})
    for name, value in overrides.items():
        assert getattr(p, name) == value
    assert load_policy(policy_to_dict(p)) == p


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(FIELD_SPECS)), st.none() | st.booleans()
                       | st.integers(-5, 20_000) | st.text(max_size=5) | st.floats()))  # fmt: skip
def test_random_overrides_either_load_or_name_a_known_field(overrides: dict[str, Any]) -> None:
    try:
        load_policy({"preset": "standard", **overrides})
    except PolicyError as err:
        assert err.field in overrides


# ---------------------------------------------------------------- holder


def test_holder_keeps_the_old_policy_on_a_bad_update() -> None:
    holder = PolicyHolder({"preset": "strict"}, org_defaults={"capacity": 100})
    before = holder.policy
    assert before.capacity == 100
    with pytest.raises(PolicyError) as info:
        holder.update({"preset": "standard", "capacity": True})
    assert info.value.field == "capacity"
    assert holder.policy is before
    with pytest.raises(PolicyError):
        holder.update_text("preset = ", "toml")
    assert holder.policy is before

    new = holder.update({"preset": "standard"})
    assert holder.policy is new
    assert (new.preset, new.capacity) == ("standard", 100)
    assert holder.update_text('{"preset": "open"}', "json").preset == "open"
    assert "open" in repr(holder)


def test_holder_accepts_a_policy_and_copies_org_defaults() -> None:
    org = {"capacity": 9}
    holder = PolicyHolder(load_policy({"preset": "open"}), org_defaults=org)
    org["capacity"] = 10_001  # the caller's later change must not matter
    assert holder.update({"preset": "strict"}).capacity == 9


def test_holder_refuses_a_bad_initial_policy() -> None:
    with pytest.raises(PolicyError):
        PolicyHolder({"preset": "nope"})


# ---------------------------------------------------------------- schedules


def test_valid_schedules_pass() -> None:
    validate_schedule(ONE_OFF)
    validate_schedule(WEEKLY)


T0 = datetime(2026, 9, 7, 7, 30, tzinfo=ICT)


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        (Schedule(T0, T0), "schedule.ends_at"),
        (Schedule(T0, T0 - timedelta(hours=1)), "schedule.ends_at"),
        (Schedule(T0.replace(tzinfo=None), T0), "schedule.starts_at"),
        (Schedule(T0, T0 + timedelta(hours=1), timezone="Mars/Olympus"), "schedule.timezone"),
        (Schedule(T0, T0 + timedelta(hours=1), weekly=(0, 1)), "schedule.weekly"),
        (Schedule(T0, T0 + timedelta(hours=1), weekly=(True,)), "schedule.weekly"),
        (Schedule(T0, T0 + timedelta(days=7), weekly=(1,)), "schedule.ends_at"),
        (Schedule(T0, T0 + timedelta(hours=1), term_ends_at=T0 - timedelta(days=1)),
         "schedule.term_ends_at"),
    ],
)  # fmt: skip
def test_invalid_schedules_name_the_field(schedule: Schedule, field: str) -> None:
    with pytest.raises(PolicyError) as info:
        validate_schedule(schedule)
    assert (info.value.code, info.value.field) == ("invalid_schedule", field)
