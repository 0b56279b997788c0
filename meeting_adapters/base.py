"""The seam between ClassGuard and a meeting platform.

Every platform module has the same inner shape (docs/adapters.md, "Adding a platform"):
pure code that builds requests and parses answers, a client doing the I/O through an
injected HTTP session, a capability set, and ``validate_settings`` / ``redact`` for the
class's platform settings.

Capabilities are honest: a method the platform cannot do raises ``Unsupported``; the UI
shows the capability set so a teacher knows what ClassGuard can and cannot enforce there.
Optional parts of the interface (per-room capabilities, identifying participants,
retiring used credentials, removing intruders, webhooks, connection pools) are declared
with ``Feature`` flags; the gateway uses a part only when its flag is declared, and
``AdapterBase`` gives every undeclared part a neutral default.
This package never imports ``gateway``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, Protocol, runtime_checkable

from .errors import AdapterError, InvalidSettings

if TYPE_CHECKING:
    from .egress import EgressPolicy

__all__ = [
    "AdapterBase",
    "AdapterError",
    "AdapterPool",
    "AttendanceReport",
    "Capability",
    "Clock",
    "Feature",
    "FormField",
    "HookEvent",
    "HookEventKind",
    "HookMalformed",
    "HookRefused",
    "HookRequest",
    "HookResult",
    "InvalidSettings",
    "MeetingAdapter",
    "Participant",
    "Present",
    "Room",
    "RoomSpec",
    "RosterName",
    "Unsupported",
    "UpstreamUnavailable",
    "Webhook",
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


class Feature(StrEnum):
    """Optional parts of ``MeetingAdapter`` an adapter implements (its ``features``).

    Unlike ``Capability`` (what a teacher can rely on), these say which methods the
    gateway may call; the gateway never calls an undeclared one.
    """

    # ``room_capabilities(room)`` may differ from the class's ``capabilities`` (Jitsi
    # adds ``remove`` when the room's deployment has a kick endpoint).
    ROOM_CAPABILITIES = "room_capabilities"
    # ``identify(room, student_ids)``: upstream ids the platform cannot name itself.
    IDENTIFY = "identify"
    # ``consume(room, upstream_ids)``: retire the credentials of people seen inside.
    CONSUME = "consume"
    # ``evict(room, present)``: remove someone found in the room by upstream id.
    EVICT = "evict"
    # ``webhooks`` and ``read_webhook``: the platform posts events to the gateway.
    WEBHOOKS = "webhooks"
    # ``register_hook(room, url)``: the room's webhook is registered upstream, again now
    # and then (the URL is the adapter's per-class webhook).
    REGISTER_HOOK = "register_hook"
    # ``room_key(room)``: events of a gateway-wide webhook name the room, not the class;
    # the gateway keeps a room key -> class index.
    ROOM_INDEX = "room_index"
    # ``open_pool(egress)``: long-lived connections shared by a process.
    POOL = "pool"
    # ``attendance(room, roster, known)``: who attended sessions that are over, from the
    # platform's after-the-fact reports (not live presence: nobody can be removed from a
    # session that has ended); the reconciler flags whoever matches no roster student.
    ATTENDANCE = "attendance"


# --- errors ---------------------------------------------------------------------------


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
    # The school account (e-mail, lower case) the platform says this person is signed in
    # with, when it says so: the gateway matches it against the roster's school accounts.
    account: str | None = None


@dataclass(frozen=True, slots=True)
class RosterName:
    """A roster student as an attendance report may name them (``external_id``: the
    school's own id, often the school account e-mail)."""

    student_id: str
    name: str
    external_id: str | None = None


@dataclass(frozen=True, slots=True)
class AttendanceReport:
    """One finished session of a room, as the platform reported it afterwards.
    ``present``: everyone but the organizer; ``student_id`` set when matched to the roster."""

    report_id: str
    ended_at: datetime | None
    present: tuple[Present, ...]


# --- the class form: the settings a teacher types -----------------------------------------


@dataclass(frozen=True, slots=True)
class FormField:
    """One platform setting on the class form (``MeetingAdapter.form_fields``).

    The label is the catalogue key ``pfield.<name>``, and a checkbox's hint
    ``pfield.<name>.hint`` (gateway/locale/*.json). ``type`` is the HTML input type, or
    ``textarea``; ``integer`` sends the typed value as a number. The form only helps: the
    adapter's ``validate_settings`` decides what is accepted.
    """

    name: str
    type: Literal["text", "url", "email", "password", "textarea", "checkbox"] = "text"
    required: bool = False
    placeholder: str = ""
    integer: bool = False


# --- webhooks: a raw request in, neutral events out --------------------------------------


@dataclass(frozen=True, slots=True)
class Webhook:
    """A URL the platform posts events to; the gateway mounts one route per webhook.

    ``path`` with ``{class_id}``: a per-class hook, authenticated with the class's own
    platform settings (the gateway passes the class's room). Without: a gateway-wide hook
    (one URL for every class of the platform), authenticated with a secret the gateway
    keeps for it (``<data dir>/keys/<name>_hook.secret``); its events name rooms by
    ``room_key``. ``name`` is unique among all adapters.
    """

    name: str
    path: str

    @property
    def per_class(self) -> bool:
        return "{class_id}" in self.path

    def url(self, public_url: str, class_id: str = "") -> str:
        """The absolute URL the platform calls (for a class, when per class)."""
        path = self.path.replace("{class_id}", class_id) if self.per_class else self.path
        return public_url.rstrip("/") + path


@dataclass(frozen=True, slots=True)
class HookRequest:
    """One webhook request as received. ``headers`` are case-insensitive; ``url`` is the
    public URL of the hook (without query), as the platform was told to call it;
    ``secret`` is the gateway-wide hook's secret ("" for a per-class hook)."""

    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    url: str
    secret: str = ""


class HookEventKind(StrEnum):
    # Someone entered the room: judged against the admitted students.
    JOINED = "joined"
    # Someone entered with a credential minted for somebody else: an intruder at once.
    IMPOSTOR = "impostor"


@dataclass(frozen=True, slots=True)
class HookEvent:
    """What a platform callback said, in ClassGuard's terms. ``room_key``: the room a
    gateway-wide hook's event is about (``MeetingAdapter.room_key``); None per class."""

    kind: HookEventKind
    present: Present
    room_key: str | None = None


@dataclass(frozen=True, slots=True)
class HookResult:
    """The events of one authentic request and the answer to give (JSON; None: the
    gateway's plain acknowledgement). Events are handled after the answer."""

    events: tuple[HookEvent, ...] = ()
    reply: Mapping[str, Any] | None = None


class HookRefused(Exception):  # noqa: N818 - a refusal, not a bug
    """The request is not authentic (HTTP 401, no detail); ``why`` goes to the log."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class HookMalformed(Exception):  # noqa: N818 - a refusal, not a bug
    """The authentic request's body cannot be read (HTTP 400 ``invalid_body``)."""


class AdapterPool(Protocol):
    """Long-lived connections (or tokens) of one process, closed when it stops."""

    async def aclose(self) -> None: ...


# --- the protocol ---------------------------------------------------------------------


@runtime_checkable
class MeetingAdapter(Protocol):
    """One platform. Instances are cheap; HTTP session and clock are injected.

    Control methods raise ``Unsupported`` when ``capabilities`` lacks the matching
    capability, and ``UpstreamUnavailable`` when the platform cannot be reached.
    """

    kind: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]]
    features: ClassVar[frozenset[Feature]]
    webhooks: ClassVar[tuple[Webhook, ...]]
    # settings holding URLs the gateway itself calls (checked against the egress policy)
    egress_fields: ClassVar[tuple[str, ...]]
    # the settings a teacher types on the class form, in order
    form_fields: ClassVar[tuple[FormField, ...]]

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

    @classmethod
    def settings_warnings(cls, settings: Mapping[str, Any]) -> list[str]:
        """What the class page warns about these (validated) settings: catalogue keys
        (gateway/locale/*.json); none by default."""
        ...

    # --- optional parts, used only when ``features`` declares them ----------------------

    def room_capabilities(self, room: Room) -> frozenset[Capability]:
        """``Feature.ROOM_CAPABILITIES``: the capabilities of this room."""
        ...

    def identify(self, room: Room, student_ids: Sequence[str]) -> dict[str, str]:
        """``Feature.IDENTIFY``: upstream participant id -> student id, for these students."""
        ...

    async def consume(self, room: Room, upstream_ids: Sequence[str]) -> int:
        """``Feature.CONSUME``: retire the credentials of admitted people seen inside."""
        ...

    async def evict(self, room: Room, present: Present) -> None:
        """``Feature.EVICT``: remove someone found in the room (an intruder)."""
        ...

    async def register_hook(self, room: Room, callback_url: str) -> str | None:
        """``Feature.REGISTER_HOOK``: register the room's webhook upstream (idempotent)."""
        ...

    def room_key(self, room: Room) -> str | None:
        """``Feature.ROOM_INDEX``: how a gateway-wide webhook's events name this room."""
        ...

    def read_webhook(self, hook: Webhook, request: HookRequest,
                     room: Room | None) -> HookResult:
        """``Feature.WEBHOOKS``: verify one request to ``hook`` and read its events.

        ``room`` is the class's room for a per-class hook, None for a gateway-wide one.
        Raises ``HookRefused`` when it is not authentic, ``HookMalformed`` when an
        authentic body cannot be read. Pure: no I/O.
        """
        ...

    @classmethod
    def open_pool(cls, egress: EgressPolicy) -> AdapterPool:
        """``Feature.POOL``: the process's pool, passed to instances as ``pool=``."""
        ...

    async def attendance(self, room: Room, roster: Sequence[RosterName],
                         known: Collection[str]) -> list[AttendanceReport]:
        """``Feature.ATTENDANCE``: the reports of finished sessions not in ``known``
        (report ids already read)."""
        ...


class AdapterBase:
    """Neutral defaults for the optional parts of ``MeetingAdapter``, and ``mute`` refused
    (``Unsupported``): an adapter subclasses this and overrides what its ``features`` and
    ``capabilities`` declare."""

    kind: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]]
    features: ClassVar[frozenset[Feature]] = frozenset()
    webhooks: ClassVar[tuple[Webhook, ...]] = ()
    egress_fields: ClassVar[tuple[str, ...]] = ()
    form_fields: ClassVar[tuple[FormField, ...]] = ()

    @classmethod
    def settings_warnings(cls, settings: Mapping[str, Any]) -> list[str]:
        return []

    def room_capabilities(self, room: Room) -> frozenset[Capability]:
        return self.capabilities

    def identify(self, room: Room, student_ids: Sequence[str]) -> dict[str, str]:
        return {}

    async def consume(self, room: Room, upstream_ids: Sequence[str]) -> int:
        return 0

    async def evict(self, room: Room, present: Present) -> None:
        raise Unsupported(self.kind, Capability.REMOVE)

    async def mute(self, room: Room, participant: Participant | None = None) -> None:
        # (no platform's API mutes yet except Janus's, which overrides this)
        raise Unsupported(self.kind, Capability.MUTE)

    async def register_hook(self, room: Room, callback_url: str) -> str | None:
        return None

    def room_key(self, room: Room) -> str | None:
        return None

    def read_webhook(self, hook: Webhook, request: HookRequest,
                     room: Room | None) -> HookResult:
        raise HookRefused(f"the {self.kind} platform has no webhooks")

    @classmethod
    def open_pool(cls, egress: EgressPolicy) -> AdapterPool:
        raise TypeError(f"the {cls.kind} platform has no connection pool")

    async def attendance(self, room: Room, roster: Sequence[RosterName],
                         known: Collection[str]) -> list[AttendanceReport]:
        return []
