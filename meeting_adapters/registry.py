"""Which platforms exist. Adding a platform = one module + one line in ``ADAPTERS``.

The gateway learns everything platform-specific from here: the adapter of a class
(``create_adapter``), the webhook routes to mount (``webhooks``), the connection pools
to open and close with the process (``open_pools``), the settings the class form asks
for (``form_fields``) and what the class page warns about (``settings_warnings``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol

from .base import (
    AdapterBase,
    AdapterPool,
    Capability,
    Clock,
    Feature,
    FormField,
    InvalidSettings,
    MeetingAdapter,
    Webhook,
)
from .bigbluebutton import BigBlueButtonAdapter
from .egress import EgressPolicy
from .generic import GenericAdapter, utc_now
from .janus import JanusAdapter
from .jitsi import JitsiAdapter
from .meet import MeetAdapter
from .teams import TeamsAdapter
from .zoom import ZoomAdapter

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "ADAPTERS",
    "AdapterClass",
    "capability_matrix",
    "capability_table",
    "check_declarations",
    "create_adapter",
    "FEATURE_METHODS",
    "feature_table",
    "form_fields",
    "open_pools",
    "redact_platform",
    "register",
    "settings_warnings",
    "unregister",
    "validate_platform",
    "webhooks",
]


class AdapterClass(Protocol):
    """What the registry needs from an adapter *class* (not an instance)."""

    @property
    def kind(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    @property
    def features(self) -> frozenset[Feature]: ...

    @property
    def webhooks(self) -> tuple[Webhook, ...]: ...

    @property
    def egress_fields(self) -> tuple[str, ...]: ...

    @property
    def form_fields(self) -> tuple[FormField, ...]: ...

    def open_pool(self, egress: EgressPolicy) -> AdapterPool: ...

    def __call__(
        self, *, http_session: aiohttp.ClientSession | None = ..., clock: Clock = ...
    ) -> MeetingAdapter: ...

    def validate_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]: ...

    def redact(self, settings: Mapping[str, Any]) -> dict[str, Any]: ...

    def settings_warnings(self, settings: Mapping[str, Any]) -> list[str]: ...


_ADAPTERS: dict[str, AdapterClass] = {
    GenericAdapter.kind: GenericAdapter,
    JanusAdapter.kind: JanusAdapter,
    BigBlueButtonAdapter.kind: BigBlueButtonAdapter,
    JitsiAdapter.kind: JitsiAdapter,
    ZoomAdapter.kind: ZoomAdapter,
    MeetAdapter.kind: MeetAdapter,
    TeamsAdapter.kind: TeamsAdapter,
}
ADAPTERS: Final[Mapping[str, AdapterClass]] = MappingProxyType(_ADAPTERS)


# The method behind each optional part (``AdapterBase`` has a neutral default of each).
FEATURE_METHODS: Final[Mapping[Feature, str]] = MappingProxyType({
    Feature.ROOM_CAPABILITIES: "room_capabilities",
    Feature.IDENTIFY: "identify",
    Feature.CONSUME: "consume",
    Feature.EVICT: "evict",
    Feature.WEBHOOKS: "read_webhook",
    Feature.REGISTER_HOOK: "register_hook",
    Feature.ROOM_INDEX: "room_key",
    Feature.POOL: "open_pool",
    Feature.ATTENDANCE: "attendance",
})


def check_declarations(cls: AdapterClass, others: Mapping[str, AdapterClass]) -> None:
    """Refuse (``ValueError``) an adapter whose declarations contradict each other or
    clash with the ``others``: a declared feature left to ``AdapterBase``'s default,
    webhooks without the flag (or the reverse), a hook registered upstream without a
    per-class webhook, a webhook name or path taken."""
    if isinstance(cls, type) and issubclass(cls, AdapterBase):
        for feature in cls.features:
            name = FEATURE_METHODS[feature]
            if inspect.getattr_static(cls, name) is inspect.getattr_static(AdapterBase, name):
                raise ValueError(f"{cls.kind}: declares {feature.value} but has no {name}")
    has_hooks = Feature.WEBHOOKS in cls.features
    if has_hooks != bool(cls.webhooks):
        raise ValueError(f"{cls.kind}: Feature.WEBHOOKS and webhooks disagree")
    if Feature.REGISTER_HOOK in cls.features and not any(h.per_class for h in cls.webhooks):
        raise ValueError(f"{cls.kind}: register_hook needs a per-class webhook")
    taken = {(h.name, h.path) for other in others.values() if other.kind != cls.kind
             for h in other.webhooks}
    names = {n for n, _ in taken}
    paths = {p for _, p in taken}
    for h in cls.webhooks:
        if h.name in names or h.path in paths:
            raise ValueError(f"{cls.kind}: webhook {h.name} ({h.path}) is taken")
        if not h.path.startswith("/hooks/"):
            raise ValueError(f"{cls.kind}: webhook paths live under /hooks/")


for _cls in _ADAPTERS.values():
    check_declarations(_cls, _ADAPTERS)


def register(cls: AdapterClass) -> None:
    """Add a platform at run time (before the app is created: routes and pools are
    built from the registry then). Platforms shipped with ClassGuard are in ``ADAPTERS``."""
    if cls.kind in _ADAPTERS:
        raise ValueError(f"platform {cls.kind!r} exists")
    check_declarations(cls, _ADAPTERS)
    _ADAPTERS[cls.kind] = cls


def unregister(kind: str) -> None:
    """Remove a platform added with ``register``."""
    _ADAPTERS.pop(kind, None)


def webhooks() -> list[tuple[str, Webhook]]:
    """``(kind, webhook)`` for every webhook of every platform, for the gateway to mount."""
    return [(kind, h) for kind, cls in ADAPTERS.items()
            if Feature.WEBHOOKS in cls.features for h in cls.webhooks]


def open_pools(egress: EgressPolicy) -> dict[str, AdapterPool]:
    """A fresh pool for each platform that declares one, by kind (the process closes
    them with ``aclose`` when it stops)."""
    return {kind: cls.open_pool(egress) for kind, cls in ADAPTERS.items()
            if Feature.POOL in cls.features}


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

    ``pools`` maps a kind to the long-lived connection pool of that platform
    (``open_pools``); an adapter that declares ``Feature.POOL`` gets its pool as ``pool=``.
    """
    cls = _adapter_class(kind)
    if pools is not None and kind in pools and Feature.POOL in cls.features:
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
    for name in cls.egress_fields:
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


def form_fields() -> dict[str, tuple[FormField, ...]]:
    """``{kind: fields}``: what the class form asks for each platform, in registry order."""
    return {kind: cls.form_fields for kind, cls in ADAPTERS.items()}


def settings_warnings(kind: str, settings: Mapping[str, Any]) -> list[str]:
    """Catalogue keys of what the class page warns about a class's platform settings
    (none for an unknown kind)."""
    cls = ADAPTERS.get(kind)
    return [] if cls is None else list(cls.settings_warnings(settings))


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


def feature_table() -> str:
    """The platform x optional-part (``Feature``) matrix as a Markdown table, with each
    platform's webhooks (docs/adapters.md carries it; a test keeps the two equal)."""
    feats = list(Feature)
    head = "| platform | " + " | ".join(f.value for f in feats) + " | routes |"
    rule = "|---|" + "---|" * (len(feats) + 1)
    rows = [
        f"| `{kind}` | " + " | ".join("✓" if f in cls.features else "—" for f in feats)
        + " | " + (", ".join(f"`{h.path}`" for h in cls.webhooks) or "—") + " |"
        for kind, cls in ADAPTERS.items()
    ]
    return "\n".join([head, rule, *rows])


def capability_matrix() -> dict[str, list[str]]:
    """``{kind: [capability, ...]}`` for every platform, capabilities sorted."""
    return {kind: sorted(c.value for c in cls.capabilities) for kind, cls in ADAPTERS.items()}
