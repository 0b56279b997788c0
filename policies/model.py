"""Values the policy engine works on.

Everything here is pure data: the gateway reads Redis and the request, builds an
``Attempt`` and a ``ClassState`` snapshot, and asks ``evaluate`` for a ``Decision``.
Nothing in ``policies`` performs I/O or reads the clock: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal, NewType

ClassId = NewType("ClassId", str)
StudentId = NewType("StudentId", str)
Jti = NewType("Jti", str)

#: The time zone of a class whose schedule names none, and of the gateway's pages and
#: reports unless its ``timezone`` setting says otherwise (gateway/config.py).
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"


class Action(StrEnum):
    ADMIT = "admit"
    WAIT = "wait"
    DENY = "deny"


class Reason(StrEnum):
    """Stable reason codes (a contract shared by audit, metrics, API and UI)."""

    # Reason codes, not secrets (S105 reads "TOKEN" in the names as a password).
    TOKEN_INVALID = "token_invalid"  # noqa: S105
    TOKEN_EXPIRED = "token_expired"  # noqa: S105
    TOKEN_REVOKED = "token_revoked"  # noqa: S105
    WRONG_CLASS = "wrong_class"
    OUTSIDE_SCHEDULE = "outside_schedule"
    CLASS_LOCKED = "class_locked"
    CLASS_ENDED = "class_ended"
    DEVICE_MISMATCH = "device_mismatch"
    CONCURRENT_SESSION = "concurrent_session"
    BANNED_DEVICE = "banned_device"
    BANNED_IP = "banned_ip"
    RATE_LIMITED = "rate_limited"
    NOT_ON_ROSTER = "not_on_roster"
    LATE_JOIN_CLOSED = "late_join_closed"
    CAPACITY_REACHED = "capacity_reached"
    AWAITING_HOST = "awaiting_host"
    ADMITTED_BY_POLICY = "admitted_by_policy"
    ADMITTED_BY_HOST = "admitted_by_host"
    DENIED_BY_HOST = "denied_by_host"
    REMOVED_BY_HOST = "removed_by_host"
    RULES_NOT_ACKNOWLEDGED = "rules_not_acknowledged"


# Why a token failed the checks the gateway does before the policy runs
# (signature, alg, kid, aud, iss, structure). Time checks (exp/nbf) and the class
# match are left to the policy so they use the injected ``now``.
TokenFailure = Literal["malformed", "bad_signature", "unknown_kid", "bad_claims"]


@dataclass(frozen=True, slots=True)
class TokenFacts:
    """What the gateway learned from the join credential (link token or short code).

    ``failure`` is None when the signature and static claims verified. ``exp``/``nbf``
    are unix seconds from the verified claims (for a short code: from the stored link).
    """

    failure: TokenFailure | None
    student_id: StudentId | None = None
    class_id: ClassId | None = None
    jti: Jti | None = None
    exp: float | None = None
    nbf: float | None = None
    kid: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request to enter a class.

    ``device`` is the SHA-256 hex of the visitor's device cookie (None: the visitor has
    no device cookie yet; the gateway will mint one and it counts as a new device).
    ``rate_limited`` is set by the gateway's GCRA limiter, which runs before evaluate.
    """

    class_id: ClassId  # the class the request is for (from the URL/code mapping)
    token: TokenFacts
    ip: str
    device: str | None
    via: Literal["link", "code"] = "link"
    rate_limited: bool = False


@dataclass(frozen=True, slots=True)
class Schedule:
    """When the class runs. Times are aware datetimes; ``weekly`` repeats the
    ``starts_at``..``ends_at`` window every week on the given ISO weekdays (1=Mon)
    in ``timezone`` until ``term_ends_at``."""

    starts_at: datetime
    ends_at: datetime
    timezone: str = DEFAULT_TIMEZONE
    term_ends_at: datetime | None = None
    weekly: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ClassState:
    """A snapshot of everything the decision depends on, read by the gateway."""

    class_id: ClassId
    schedule: Schedule
    locked: bool = False
    ended: bool = False
    host_present: bool = False
    # host presence changes: the gateway records when the host last left
    host_left_at: datetime | None = None
    # the credential
    revoked: bool = False  # jti revoked or superseded by a reissue
    on_roster: bool = True  # the token's student is on the class roster
    # device binding of this student's link
    bound_device: str | None = None  # hash of the device the link is bound to
    rebinds_used: int = 0
    # the device held the binding of one of this student's links that was since revoked
    # or reissued (a leaked link's intruder, most often): it never takes the new binding
    device_released: bool = False
    # this student's standing in the class
    student_admitted: bool = False  # currently admitted (on any device)
    admitted_device: str | None = None  # device of the current admission
    removed: bool = False  # removed/denied by the host and not re-admitted since
    denied: bool = False
    # bans that match this attempt (already matched by the gateway against device/IP/CIDR)
    banned_device: bool = False
    banned_ip: bool = False
    ban_reason: str | None = None
    # counts
    admitted_count: int = 0
    # the student acknowledged the class's current rules (their version); the gateway
    # reads it only when the policy requires the acknowledgment
    rules_acknowledged: bool = True


OnHostLeave = Literal["keep", "lock", "pause"]
Admission = Literal["host", "auto_when_host_present", "auto"]
SecondDevice = Literal["deny", "wait"]


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated class policy. Build it with ``policies.load_policy`` (never by hand
    from untrusted data): that is where every field is checked."""

    preset: str
    admission: Admission
    device_binding: bool = True
    max_rebinds: int = 0  # 0: only the teacher can rebind (reset_device)
    second_device: SecondDevice = "deny"
    enforce_schedule: bool = True
    early_open_minutes: int = 15
    late_join_cutoff_minutes: int | None = None  # None: late join allowed until the end
    capacity: int | None = None
    on_host_leave: OnHostLeave = "keep"
    allow_concurrent: bool = False
    require_roster: bool = True
    auto_remove_intruders: bool = False
    token_leeway_seconds: int = 30
    # the student must acknowledge the class rules (once per rules version) before entry
    require_rules_ack: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: Reason
    rule: str  # name of the rule that decided
    facts: Mapping[str, object] = field(default_factory=dict)
