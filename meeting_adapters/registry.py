"""Which platforms exist. Adding a platform = one module + one line in ``ADAPTERS``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol

from .base import Capability, Clock, InvalidSettings, MeetingAdapter
from .bigbluebutton import BigBlueButtonAdapter
from .egress import EgressPolicy
from .generic import GenericAdapter, utc_now
from .janus import JanusAdapter
from .jitsi import JitsiAdapter
from .zoom import ZoomAdapter

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "ADAPTERS",
    "AdapterClass",
    "capability_matrix",
    "capability_table",
    "create_adapter",
    "redact_platform",
    "validate_platform",
]


class AdapterClass(Protocol):
    """What the registry needs from an adapter *class* (not an instance)."""

    @property
    def kind(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    def __call__(
        self, *, http_session: aiohttp.ClientSession | None = ..., clock: Clock = ...
    ) -> MeetingAdapter: ...

    def validate_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]: ...

    def redact(self, settings: Mapping[str, Any]) -> dict[str, Any]: ...


ADAPTERS: Final[Mapping[str, AdapterClass]] = MappingProxyType(
    {
        GenericAdapter.kind: GenericAdapter,
        JanusAdapter.kind: JanusAdapter,
        BigBlueButtonAdapter.kind: BigBlueButtonAdapter,
        JitsiAdapter.kind: JitsiAdapter,
        ZoomAdapter.kind: ZoomAdapter,
    }
)


def _adapter_class(kind: object) -> AdapterClass:
    if not isinstance(kind, str) or kind not in ADAPTERS:
        raise InvalidSettings(
            "platform.kind",
            f"unknown platform {kind!r}; available: {', '.join(sorted(ADAPTERS))}",
        )
    return ADAPTERS[kind]


def create_adapter(
    kind: str,
    *,
    http_session: aiohttp.ClientSession | None = None,
    clock: Clock = utc_now,
    pools: Mapping[str, object] | None = None,
) -> MeetingAdapter:
    """An adapter instance for ``kind`` (``InvalidSettings`` on ``platform.kind`` if unknown).

    ``pools`` maps a kind to the long-lived connection pool of that platform (e.g. the
    Janus WebSocket sessions); an adapter whose kind has a pool gets it as ``pool=``.
    """
    cls = _adapter_class(kind)
    if pools is not None and kind in pools:
        return cls(http_session=http_session, clock=clock, pool=pools[kind])  # type: ignore[call-arg]
    return cls(http_session=http_session, clock=clock)


def validate_platform(data: Mapping[str, Any], *,
                      egress: EgressPolicy | None = None) -> dict[str, Any]:
    """Validate the ``platform`` object of a class; errors name ``platform.<field>``.

    The URLs the gateway itself will call are checked against ``egress`` (the operator's
    policy; ``None``: no private address and no plain http at all): ``http://`` and
    ``ws://`` only to allowed hosts, IP literals only when allowed. Names are checked
    again on every connect (``egress.guarded_session``).
    """
    if not isinstance(data, Mapping):
        raise InvalidSettings("platform", "must be an object with a 'kind'")
    cls = _adapter_class(data.get("kind"))
    cleaned = cls.validate_settings(data)
    policy = egress if egress is not None else EgressPolicy()
    for name in getattr(cls, "egress_fields", ()):
        value = cleaned.get(name)
        if isinstance(value, str):
            policy.check_url(value, f"platform.{name}")
    return cleaned


def redact_platform(data: Mapping[str, Any]) -> dict[str, Any]:
    """Platform settings safe for logs and API answers (unknown kinds: kind only)."""
    kind = data.get("kind")
    if isinstance(kind, str) and kind in ADAPTERS:
        return ADAPTERS[kind].redact(data)
    return {"kind": kind}


def capability_table() -> str:
    """The platform x capability matrix as a Markdown table, from the adapters' own
    declarations (README.md carries it; a test keeps the two equal)."""
    caps = list(Capability)
    head = "| platform | " + " | ".join(c.value for c in caps) + " |"
    rule = "|---|" + "---|" * len(caps)
    rows = [
        f"| `{kind}` | " + " | ".join("✓" if c in cls.capabilities else "—" for c in caps) + " |"
        for kind, cls in ADAPTERS.items()
    ]
    return "\n".join([head, rule, *rows])


def capability_matrix() -> dict[str, list[str]]:
    """``{kind: [capability, ...]}`` for every platform, capabilities sorted."""
    return {kind: sorted(c.value for c in cls.capabilities) for kind, cls in ADAPTERS.items()}
