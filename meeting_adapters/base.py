"""The seam between ClassGuard and a meeting platform.

Every platform module has the same inner shape (STYLE.md habit 5): pure code that builds
requests and parses answers, a client doing the I/O through an injected HTTP session, a
capability set, and ``validate_settings`` / ``redact`` for the class's platform settings.

Capabilities are honest: a method the platform cannot do raises ``Unsupported``; the UI
shows the capability set so a teacher knows what ClassGuard can and cannot enforce there.
This package never imports ``gateway``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, Protocol, runtime_checkable

__all__ = [
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
]

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime (injected; never read directly)."""

ROOM_FORMAT_VERSION: Final = 1


class Capability(StrEnum):
    """What ClassGuard can make the platform do or guarantee."""

    # Only people ClassGuard admitted can enter (the upstream room refuses anyone else).
    ENFORCED_ENTRY = "enforced_entry"
    # The credential handed to a student is personal and works once (or for seconds).
    SINGLE_USE_CREDENTIAL = "single_use_credential"
    REMOVE = "remove"
    MUTE = "mute"
    LOCK = "lock"
    END = "end"
    # ClassGuard can list who is really in the upstream room.
    PRESENCE = "presence"


# --- errors ---------------------------------------------------------------------------


class AdapterError(Exception):
    """A platform problem with a stable ``code``, a human ``message`` and maybe a ``field``.

    ``field`` uses the path of the class API body, e.g. ``"platform.url"``.
    """

    def __init__(self, code: str, message: str, field: str | None = None, *,
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        # What the platform itself said: for the log only, never for the teacher (it is
        # text from a server a teacher may control).
        self.detail = detail

    def __str__(self) -> str:
        # For logs: with the platform's own words (``detail``), which ``message`` omits.
        text = f"{self.field}: {self.message}" if self.field else self.message
        return f"{text} [{self.detail}]" if self.detail else text


class InvalidSettings(AdapterError):
    """The class's platform settings are unusable (HTTP 400, code ``invalid_platform``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__("invalid_platform", message, field)


class Unsupported(AdapterError):
    """The platform cannot do this (HTTP 409, code ``unsupported_by_platform``)."""

    def __init__(self, kind: str, capability: Capability, message: str | None = None) -> None:
        super().__init__(
            "unsupported_by_platform",
            message or f"the {kind} platform does not support {capability.value}",
        )
        self.kind = kind
        self.capability = capability


class UpstreamUnavailable(AdapterError):
    """The platform did not answer or answered nonsense (HTTP 503, ``platform_unreachable``).

    NOTE: callers fail closed on this error: nobody is admitted into a room we cannot
    control.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__("platform_unreachable", message)
        self.kind = kind


# --- values ---------------------------------------------------------------------------


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class RoomSpec:
    """What a class asks of its platform: ``settings`` are the validated platform settings."""

    class_id: str
    title: str
    settings: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", _frozen_mapping(self.settings))


@dataclass(frozen=True, slots=True)
class Room:
    """A provisioned upstream room. ``data`` is the adapter's own JSON-able state.

    The gateway stores rooms with ``to_dict`` and reads them back with ``from_dict``.
    """

    class_id: str
    kind: str
    upstream_id: str
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _frozen_mapping(self.data))

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": ROOM_FORMAT_VERSION,
            "class_id": self.class_id,
            "kind": self.kind,
            "upstream_id": self.upstream_id,
            "data": dict(self.data),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Room:
        version = raw.get("v")
        if version != ROOM_FORMAT_VERSION:
            raise AdapterError(
                "invalid_room", f"unknown stored room format v={version!r}", "room.v"
            )
        try:
            class_id, kind, upstream_id = raw["class_id"], raw["kind"], raw["upstream_id"]
            data = raw["data"]
        except KeyError as exc:
            raise AdapterError("invalid_room", f"stored room lacks {exc.args[0]}") from None
        if not all(isinstance(v, str) for v in (class_id, kind, upstream_id)) or not (
            isinstance(data, Mapping)
        ):
            raise AdapterError("invalid_room", "stored room has fields of the wrong type")
        return cls(class_id=class_id, kind=kind, upstream_id=upstream_id, data=data)


@dataclass(frozen=True, slots=True)
class Participant:
    """Someone ClassGuard lets in. ``display_name`` is the roster name, never typed input."""

    student_id: str
    display_name: str
    role: Literal["student", "host"]
    ticket: str  # the waiting-room ticket: ties the upstream identity to our admission


@dataclass(frozen=True, slots=True)
class Present:
    """Someone the platform says is in the room right now."""

    upstream_id: str
    display_name: str
    student_id: str | None  # None: the platform cannot tell us who this is (intruder?)
    joined_at: datetime | None  # aware UTC when the platform reports it


# --- the protocol ---------------------------------------------------------------------


@runtime_checkable
class MeetingAdapter(Protocol):
    """One platform. Instances are cheap; HTTP session and clock are injected.

    Control methods raise ``Unsupported`` when ``capabilities`` lacks the matching
    capability, and ``UpstreamUnavailable`` when the platform cannot be reached.
    """

    kind: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]]

    async def provision(self, spec: RoomSpec) -> Room:
        """Create (or look up) and lock down the upstream room of a class."""
        ...

    async def join_url(self, room: Room, participant: Participant) -> str:
        """A personal, as short-lived as possible credential URL for ``participant``."""
        ...

    async def remove(self, room: Room, participant: Participant) -> None: ...

    async def mute(self, room: Room, participant: Participant | None = None) -> None:
        """Mute one participant, or everyone but the hosts when ``participant`` is None."""
        ...

    async def lock(self, room: Room, locked: bool = True) -> None:
        """Refuse (``locked=True``) or allow again new entries upstream."""
        ...

    async def end(self, room: Room) -> None: ...

    async def participants(self, room: Room) -> list[Present]:
        """Who is really in the upstream room (for the presence reconciler)."""
        ...

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Cleaned platform settings (``kind`` included) or ``InvalidSettings`` naming the
        field as ``platform.<name>``."""
        ...

    @classmethod
    def redact(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The settings with secrets masked, safe for logs and API answers."""
        ...
