"""Named starting points for a class policy (README.md "Policies").

A preset lists only the fields it sets; every other field takes the ``Policy``
default. The mappings are read-only so no caller can change a preset for everyone.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["PRESETS"]

_STRICT: Mapping[str, Any] = MappingProxyType(
    {
        # Everyone waits for the host; late-comers are cut off 15 minutes in; entry
        # stops when the host leaves (nobody slips in while the teacher is away).
        "admission": "host",
        "device_binding": True,
        "max_rebinds": 0,
        "second_device": "deny",
        "late_join_cutoff_minutes": 15,
        "enforce_schedule": True,
        "on_host_leave": "lock",
    }
)

_STANDARD: Mapping[str, Any] = MappingProxyType(
    {
        # Roster students walk in once the teacher is there.
        "admission": "auto_when_host_present",
        "device_binding": True,
        "max_rebinds": 0,
        "second_device": "deny",
        "late_join_cutoff_minutes": None,
        "on_host_leave": "keep",
    }
)

_OPEN: Mapping[str, Any] = MappingProxyType(
    {
        # Event mode: anyone with the class link waits and the host names them, so
        # device binding and the roster are off (weakened_checks reports both) and a
        # second device is held for the host rather than refused.
        "admission": "host",
        "require_roster": False,
        "device_binding": False,
        "second_device": "wait",
        "on_host_leave": "pause",
    }
)

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {"strict": _STRICT, "standard": _STANDARD, "open": _OPEN}
)
