"""Meeting platforms behind one async interface (see ``base.MeetingAdapter``)."""

from .base import (
    AdapterError,
    Capability,
    Clock,
    InvalidSettings,
    MeetingAdapter,
    Participant,
    Present,
    Room,
    RoomSpec,
    Unsupported,
    UpstreamUnavailable,
)
from .registry import (
    ADAPTERS,
    capability_matrix,
    create_adapter,
    redact_platform,
    validate_platform,
)

__all__ = [
    "ADAPTERS",
    "AdapterError",
    "Capability",
    "Clock",
    "InvalidSettings",
    "MeetingAdapter",
    "Participant",
    "Present",
    "Room",
    "RoomSpec",
    "Unsupported",
    "UpstreamUnavailable",
    "capability_matrix",
    "create_adapter",
    "redact_platform",
    "validate_platform",
]
