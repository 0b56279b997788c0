"""Where class policies come from: the class's own overrides on top of the nearest
org's defaults on top of a preset, resolved and validated once when set."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from policies import PolicyError, load_policy, policy_to_dict

from .errors import ApiError
from .stores.keys import Keys


def org_policy_key(prefix: str, org: str) -> str:
    return Keys(prefix).org_policy(org)


async def org_defaults(r: aioredis.Redis, prefix: str,
                       chain: Sequence[str]) -> tuple[str | None, dict[str, Any] | None]:
    """The defaults of the nearest org in ``chain`` (the class's org first) that has any."""
    for org in chain:
        raw = await r.get(org_policy_key(prefix, org))
        if raw:
            return org, json.loads(raw)
    return None, None


def resolve(data: Any, defaults: dict[str, Any] | None, *, field: str = "policy") -> dict[str, Any]:
    """The full policy (every field explicit) or a 400 naming the bad field."""
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_policy", "policy must be an object", field=field)
    try:
        return policy_to_dict(load_policy(data, org_defaults=defaults))
    except PolicyError as exc:
        raise ApiError(400, "invalid_policy", exc.message,
                       field=f"{field}.{exc.field}" if exc.field else field) from exc


def check_defaults(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_policy", "defaults must be an object", field="defaults")
    try:
        load_policy({"preset": "standard"}, org_defaults=data)
    except PolicyError as exc:
        field = (exc.field or "").removeprefix("org_defaults.") or None
        raise ApiError(400, "invalid_policy", exc.message, field=field) from exc
    return dict(data)
