"""Turn policy data (JSON/TOML, API bodies) into a validated ``Policy``.

Validation happens here, once, at load: the engine trusts a ``Policy`` and never
re-checks it on the hot path. Every error names the field (STYLE habit 4), and
``PolicyHolder`` keeps the previous policy in force when an update is rejected.

Precedence: preset < organisation defaults < the class's own overrides.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policies.model import Admission, OnHostLeave, Policy, Schedule, SecondDevice
from policies.presets import PRESETS
from policies.rules import PolicyError
from policies.schedule import MAX_WEEKLY_SPAN

__all__ = [
    "FIELD_SPECS",
    "PolicyHolder",
    "load_policy",
    "load_policy_text",
    "policy_to_dict",
    "validate_schedule",
]

_CODE = "invalid_policy"
# Spelling of "no value" for the nullable fields in TOML, which has no null.
NONE_WORD = "none"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What one overridable ``Policy`` field accepts."""

    kind: Literal["bool", "int", "choice"]
    lo: int = 0
    hi: int = 0
    nullable: bool = False
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "bool":
            text = "true or false"
        elif self.kind == "int":
            text = f"an integer from {self.lo} to {self.hi}"
        else:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        return f"{text}, or null" if self.nullable else text


def _choice(literal: Any) -> FieldSpec:
    # The allowed words come from the model's Literal types: one source of truth.
    return FieldSpec("choice", choices=tuple(get_args(literal)))


_MINUTES_IN_DAY = 1440

FIELD_SPECS: Mapping[str, FieldSpec] = MappingProxyType(
    {
        "admission": _choice(Admission),
        "device_binding": FieldSpec("bool"),
        "max_rebinds": FieldSpec("int", 0, 10),
        "second_device": _choice(SecondDevice),
        "enforce_schedule": FieldSpec("bool"),
        "early_open_minutes": FieldSpec("int", 0, _MINUTES_IN_DAY),
        "late_join_cutoff_minutes": FieldSpec("int", 0, _MINUTES_IN_DAY, nullable=True),
        "capacity": FieldSpec("int", 1, 10000, nullable=True),
        "on_host_leave": _choice(OnHostLeave),
        "allow_concurrent": FieldSpec("bool"),
        "require_roster": FieldSpec("bool"),
        "auto_remove_intruders": FieldSpec("bool"),
        "token_leeway_seconds": FieldSpec("int", 0, 300),
        "require_rules_ack": FieldSpec("bool"),
    }
)

_POLICY_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {f.name: f.default for f in fields(Policy) if f.default is not MISSING}
)

_JSON_TYPES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number with a fraction",
    str: "a string",
    type(None): "null",
    list: "an array",
    dict: "an object",
}


def _found(value: object) -> str:
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{kind} ({shown})"


def _check_value(name: str, value: object, where: str) -> object:
    """The validated value of field ``name``; ``where`` prefixes the error's field."""
    spec = FIELD_SPECS.get(name)
    field = f"{where}{name}"
    if spec is None:
        known = ", ".join(sorted(FIELD_SPECS))
        raise PolicyError(_CODE, f"unknown field {name!r}; known fields: {known}", field)
    if spec.nullable and (value is None or value == NONE_WORD):
        return None
    # ``type(...) is`` on purpose: bool is a subclass of int, and True must not be
    # read as capacity 1 (nor 1 as "yes").
    if spec.kind == "bool":
        ok = type(value) is bool
    elif spec.kind == "int":
        ok = type(value) is int and spec.lo <= value <= spec.hi
    else:
        ok = type(value) is str and value in spec.choices
    if not ok:
        raise PolicyError(_CODE, f"expected {spec.describe()}, found {_found(value)}", field)
    return value


def _check_keys(data: Mapping[Any, Any], where: str) -> None:
    for key in data:
        if type(key) is not str:
            raise PolicyError(
                _CODE, f"field names must be strings, found {_found(key)}", where or None
            )


def load_policy(
    data: Mapping[str, Any], *, org_defaults: Mapping[str, Any] | None = None
) -> Policy:
    """Validate ``{"preset": name, ...overrides}`` into a ``Policy``.

    ``org_defaults`` (overrides an organisation applies to all its classes) sit between
    the preset and ``data``; they may not choose the preset. Raises ``PolicyError``
    (code ``invalid_policy``) naming the field: ``preset`` when it is missing or unknown,
    ``org_defaults.<name>`` for an organisation default, ``<name>`` otherwise.
    Nullable fields (``capacity``, ``late_join_cutoff_minutes``) take null or ``"none"``.
    """
    if not isinstance(data, Mapping):
        raise PolicyError(_CODE, f"a policy must be an object, found {_found(data)}")
    _check_keys(data, "")
    if "preset" not in data:
        raise PolicyError(_CODE, f"missing; choose one of {', '.join(PRESETS)}", "preset")
    preset_name = data["preset"]
    if type(preset_name) is not str or preset_name not in PRESETS:
        raise PolicyError(
            _CODE, f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}", "preset"
        )

    values: dict[str, Any] = dict(_POLICY_DEFAULTS)
    for name, value in PRESETS[preset_name].items():
        values[name] = _check_value(name, value, f"presets.{preset_name}.")
    if org_defaults is not None:
        if not isinstance(org_defaults, Mapping):
            raise PolicyError(
                _CODE, f"must be an object, found {_found(org_defaults)}", "org_defaults"
            )
        _check_keys(org_defaults, "org_defaults")
        for name, value in org_defaults.items():
            if name == "preset":
                raise PolicyError(
                    _CODE, "organisation defaults cannot choose the preset", "org_defaults.preset"
                )
            values[name] = _check_value(name, value, "org_defaults.")
    for name, value in data.items():
        if name != "preset":
            values[name] = _check_value(name, value, "")
    return Policy(preset=preset_name, **values)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys silently; a policy file that says two
    # different things about one field is refused instead.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PolicyError(_CODE, "the field appears twice", key)
        out[key] = value
    return out


def _no_constant(word: str) -> Any:
    raise PolicyError(_CODE, f"{word} is not a valid JSON value")


def load_policy_text(
    text: str,
    fmt: Literal["json", "toml"],
    *,
    org_defaults: Mapping[str, Any] | None = None,
) -> Policy:
    """Parse a policy file (JSON object or TOML table) and validate it like
    ``load_policy``. A syntax error raises ``PolicyError`` whose message gives the line
    and column."""
    data: Any
    if fmt == "json":
        try:
            data = json.loads(
                text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant
            )
        except json.JSONDecodeError as exc:
            raise PolicyError(
                _CODE, f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from exc
    elif fmt == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message already ends with "(at line L, column C)".
            raise PolicyError(_CODE, f"TOML syntax error: {exc}") from exc
    else:
        raise PolicyError(_CODE, f"unknown policy format {fmt!r}; use json or toml", "format")
    return load_policy(data, org_defaults=org_defaults)


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """Every field of ``policy`` as JSON-able values; ``load_policy`` of the result
    gives back an equal policy (all fields are explicit, so no default can leak in)."""
    return {f.name: getattr(policy, f.name) for f in fields(Policy)}


class PolicyHolder:
    """The policy in force for one class (or organisation), replaced atomically.

    ``update`` validates first and swaps only on success: a bad update raises and the
    previous policy stays in force (mitmproxy's option rollback).
    """

    __slots__ = ("_org_defaults", "_policy")

    def __init__(
        self, policy: Policy | Mapping[str, Any], *, org_defaults: Mapping[str, Any] | None = None
    ) -> None:
        # Copied so a caller mutating its dict later cannot change future loads.
        self._org_defaults: Mapping[str, Any] | None = (
            None if org_defaults is None else MappingProxyType(dict(org_defaults))
        )
        if isinstance(policy, Policy):
            self._policy = policy
        else:
            self._policy = load_policy(policy, org_defaults=self._org_defaults)

    @property
    def policy(self) -> Policy:
        return self._policy

    def update(self, data: Mapping[str, Any]) -> Policy:
        """Validate ``data`` and make it the policy in force; on ``PolicyError`` the old
        policy is kept and the error re-raised."""
        new = load_policy(data, org_defaults=self._org_defaults)
        self._policy = new
        return new

    def update_text(self, text: str, fmt: Literal["json", "toml"]) -> Policy:
        """Like ``update`` for the text of a policy file."""
        new = load_policy_text(text, fmt, org_defaults=self._org_defaults)
        self._policy = new
        return new

    def __repr__(self) -> str:
        return f"PolicyHolder({self._policy!r})"


def validate_schedule(schedule: Schedule) -> None:
    """Raise ``PolicyError`` (code ``invalid_schedule``) naming the field when
    ``schedule`` is unusable. The gateway calls this when a class is created or edited,
    so a bad schedule is refused up front instead of keeping everyone out later."""
    code = "invalid_schedule"
    for name in ("starts_at", "ends_at", "term_ends_at"):
        value = getattr(schedule, name)
        if value is None and name == "term_ends_at":
            continue
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise PolicyError(code, "must be a date and time with a UTC offset", f"schedule.{name}")
    if schedule.ends_at <= schedule.starts_at:
        raise PolicyError(code, "must be after starts_at", "schedule.ends_at")
    try:
        ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise PolicyError(
            code, f"unknown time zone {schedule.timezone!r}", "schedule.timezone"
        ) from exc
    if schedule.weekly:
        bad = [d for d in schedule.weekly if type(d) is not int or not 1 <= d <= 7]
        if bad:
            raise PolicyError(
                code, f"weekly days must be ISO weekdays 1..7, found {bad!r}", "schedule.weekly"
            )
        if schedule.ends_at - schedule.starts_at >= MAX_WEEKLY_SPAN:
            raise PolicyError(
                code, "a weekly class must end less than 7 days after it starts", "schedule.ends_at"
            )
    if schedule.term_ends_at is not None and schedule.term_ends_at < schedule.starts_at:
        raise PolicyError(code, "must not be before starts_at", "schedule.term_ends_at")
