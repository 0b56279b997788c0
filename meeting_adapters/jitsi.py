"""The ``jitsi`` platform: a Jitsi Meet room behind token authentication (JWT).

Settings::

    {"kind": "jitsi",
     "base_url": "https://meet.example.org/",
     "app_id": "classguard",                   # iss (prosody: app_id)
     "audience": "classguard",                 # aud (prosody: asap_accepted_audiences)
     "sub": "meet.example.org",                # the Jitsi domain (or tenant)
     "algorithm": "HS256", "app_secret": "..." # prosody: app_secret
     # or "algorithm": "RS256", "private_key": "-----BEGIN PRIVATE KEY-----...", "kid": "..."
     "token_lifetime_s": 60,
     "kick_url": "https://meet.example.org/kick"}   # optional HTTP kick endpoint

How entry is enforced: the deployment runs with token authentication and no guest
access (prosody ``authentication = "token"``), so only a JWT signed with the app secret
(or key) for this room lets anyone in. Each student's token names them
(``context.user.name`` = roster name, ``context.user.id`` = student id), is not a
moderator, and expires after 60 seconds: a copied link is useless a minute later.

Honest limits: Jitsi has no REST call to end a meeting, mute, lock or list participants.
Removing a participant needs an HTTP kick endpoint on the deployment (``kick_url``); with
one configured the room's capabilities include REMOVE, without it they do not.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import quote, urlsplit

import jwt

from ._http import check_keys, fetch, mask, opt_int, req_secret, req_str, req_url
from .base import (
    AdapterBase,
    AdapterError,
    Capability,
    Clock,
    Feature,
    FormField,
    InvalidSettings,
    Participant,
    Present,
    Room,
    RoomSpec,
    Unsupported,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = ["JitsiAdapter", "room_token", "token_claims"]

KIND: Final = "jitsi"
ALGORITHMS: Final = ("HS256", "RS256")
_SECRETS: Final = ("app_secret", "private_key")


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- pure ------------------------------------------------------------------------------


def token_claims(d: Mapping[str, Any], room_name: str, participant: Participant,
                 now: datetime) -> dict[str, Any]:
    """The claim set of a Jitsi room token (jitsi-meet-tokens / prosody token auth)."""
    moderator = participant.role == "host"
    lifetime = int(d.get("token_lifetime_s", 60))
    return {
        "aud": d["audience"],
        "iss": d["app_id"],
        "sub": d["sub"],
        "room": room_name,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()) - 5,  # a little clock skew between us and prosody
        "exp": int((now + timedelta(seconds=lifetime)).timestamp()),
        "moderator": moderator,
        "context": {
            "user": {
                "id": participant.student_id,
                "name": participant.display_name,
                "moderator": moderator,
            },
        },
    }


def room_token(d: Mapping[str, Any], room_name: str, participant: Participant,
               now: datetime) -> str:
    claims = token_claims(d, room_name, participant, now)
    if d["algorithm"] == "RS256":
        return jwt.encode(claims, d["private_key"], algorithm="RS256",
                          headers={"kid": d["kid"]})
    return jwt.encode(claims, d["app_secret"], algorithm="HS256")


def _load_private_key(pem: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise InvalidSettings("platform.private_key",
                              "must be an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise InvalidSettings("platform.private_key", "must be an RSA key of 2048 bits or more")


# --- the adapter ----------------------------------------------------------------------------


class JitsiAdapter(AdapterBase):
    """Jitsi Meet with JWT: a personal, one-minute token per student."""

    kind: ClassVar[str] = KIND
    # REMOVE is added per room when a kick endpoint is configured (room_capabilities).
    # settings holding URLs the gateway itself calls (checked against the egress policy)
    egress_fields: ClassVar[tuple[str, ...]] = ("kick_url",)
    form_fields: ClassVar[tuple[FormField, ...]] = (
        FormField("base_url", "url", required=True, placeholder="https://meet.school.edu.vn/"),
        FormField("app_id", "text", required=True, placeholder="classguard"),
        FormField("app_secret", "password", required=True),
        FormField("kick_url", "url"),
    )
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.ENFORCED_ENTRY, Capability.SINGLE_USE_CREDENTIAL}
    )
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.ROOM_CAPABILITIES})

    def __init__(self, *, http_session: aiohttp.ClientSession | None = None,
                 clock: Clock = utc_now) -> None:
        self._http = http_session
        self._clock = clock

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(settings, KIND, ("base_url", "app_id", "audience", "sub", "algorithm",
                                    "app_secret", "private_key", "kid", "token_lifetime_s",
                                    "kick_url"))
        base = req_url(settings, "base_url")
        assert base is not None
        if not base.endswith("/"):
            base += "/"
        app_id = req_str(settings, "app_id", max_len=100)
        out: dict[str, Any] = {
            "kind": KIND,
            "base_url": base,
            "app_id": app_id,
            "audience": req_str(settings, "audience", max_len=100, default=app_id),
            "sub": req_str(settings, "sub", max_len=200,
                           default=urlsplit(base).hostname or ""),
            "token_lifetime_s": opt_int(settings, "token_lifetime_s", 60, 10, 300),
        }
        alg = settings.get("algorithm", "HS256")
        if alg not in ALGORITHMS:
            raise InvalidSettings("platform.algorithm", "must be HS256 or RS256")
        out["algorithm"] = alg
        if alg == "HS256":
            if settings.get("private_key") is not None:
                raise InvalidSettings("platform.private_key", "is for RS256 only")
            out["app_secret"] = req_secret(settings, "app_secret", min_len=32)
        else:
            if settings.get("app_secret") is not None:
                raise InvalidSettings("platform.app_secret", "is for HS256 only")
            pem = req_secret(settings, "private_key", min_len=64)
            assert pem is not None
            _load_private_key(pem)
            out["private_key"] = pem
            out["kid"] = req_str(settings, "kid", max_len=200)
        kick = req_url(settings, "kick_url", required=False)
        if kick is not None:
            out["kick_url"] = kick
        return out

    @classmethod
    def redact(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        return mask(settings, _SECRETS)

    @staticmethod
    def _data(room: Room) -> Mapping[str, Any]:
        if room.kind != KIND:
            raise AdapterError("invalid_room", f"room of kind {room.kind!r} given to {KIND}")
        if "room" not in room.data or "algorithm" not in room.data:
            raise AdapterError("invalid_room", "stored jitsi room is incomplete")
        return room.data

    def room_capabilities(self, room: Room) -> frozenset[Capability]:
        caps = set(self.capabilities)
        if room.data.get("kick_url"):
            caps.add(Capability.REMOVE)
        return frozenset(caps)

    async def provision(self, spec: RoomSpec) -> Room:
        s = self.validate_settings(spec.settings)
        # Lower case: Jitsi room names are case-insensitive. Random: not guessable.
        name = f"cg{spec.class_id.lower()}{secrets.token_hex(6)}"
        data = {k: v for k, v in s.items() if k != "kind"}
        data["room"] = name
        return Room(class_id=spec.class_id, kind=KIND, upstream_id=name, data=data)

    async def join_url(self, room: Room, participant: Participant) -> str:
        d = self._data(room)
        token = room_token(d, d["room"], participant, self._clock())
        return f"{d['base_url']}{quote(d['room'], safe='')}?jwt={token}"

    async def remove(self, room: Room, participant: Participant) -> None:
        d = self._data(room)
        if not d.get("kick_url"):
            raise Unsupported(KIND, Capability.REMOVE,
                              "this Jitsi deployment has no kick endpoint configured")
        # The endpoint checks a moderator token for the room, like the Jitsi client does.
        host = Participant(student_id="classguard", display_name="ClassGuard", role="host",
                           ticket="")
        token = room_token(d, d["room"], host, self._clock())
        answer = await fetch(self._http, KIND, "POST", d["kick_url"],
                             json={"room": d["room"], "participant": participant.student_id},
                             headers={"Authorization": f"Bearer {token}"})
        if answer.status not in (200, 204, 404):  # 404: not in the room
            raise AdapterError("jitsi_kick_failed", f"jitsi: kick answered {answer.status}")

    async def lock(self, room: Room, locked: bool = True) -> None:
        raise Unsupported(KIND, Capability.LOCK,
                          "Jitsi has no API to lock a room (ClassGuard stops issuing tokens)")

    async def end(self, room: Room) -> None:
        raise Unsupported(KIND, Capability.END,
                          "Jitsi has no API to end a meeting (tokens stop at once)")

    async def participants(self, room: Room) -> list[Present]:
        raise Unsupported(KIND, Capability.PRESENCE)
