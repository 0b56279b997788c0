"""The ``bigbluebutton`` platform: every join is signed with the server's shared secret.

Settings::

    {"kind": "bigbluebutton",
     "api_url": "https://bbb.example.org/bigbluebutton/api",
     "secret": "<shared secret, bbb-conf --secret>",
     "checksum_algorithm": "sha256",     # or sha1 (older servers), sha384, sha512
     "guest_policy": "ALWAYS_DENY",      # nobody enters as a guest around ClassGuard
     "lock_private_chat": true, "lock_public_chat": false, "hide_user_list": false,
     "webhooks": true}                   # register hooks/create for presence events

How entry is enforced: BigBlueButton accepts a ``join`` only with a checksum made with the
shared secret, which only ClassGuard holds, so the meeting ID alone lets nobody in. Each
student's join URL carries ``fullName`` = roster name, ``userID`` = student id,
``role=VIEWER`` and the meeting's ``createTime``, so it dies with that session.

What BigBlueButton cannot do through its API (so the capabilities do not claim it): kick
a participant, mute someone, refuse new joins of a running meeting, or expire a join URL
before the session ends. ``END`` and ``PRESENCE`` (``getMeetingInfo``) it can.

Events: bbb-webhooks posts to the class's webhook ``/hooks/bbb/{class_id}``, registered
per meeting with ``hooks/create`` (``register_hook``) and checked with the class's
shared secret (``callback_checksum_ok``); a viewer's ``user-joined`` is judged at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import xml.etree.ElementTree as ET  # noqa: S405 - parses our own server's answers, see _xml
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import parse_qsl, urlencode

from ._http import check_keys, fetch, json_bounded, mask, opt_bool, req_secret, req_url
from .base import (
    AdapterBase,
    AdapterError,
    Capability,
    Clock,
    Feature,
    FormField,
    HookEvent,
    HookEventKind,
    HookRefused,
    HookRequest,
    HookResult,
    InvalidSettings,
    Participant,
    Present,
    Room,
    RoomSpec,
    Unsupported,
    UpstreamUnavailable,
    Webhook,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "ALGORITHMS",
    "BigBlueButtonAdapter",
    "api_url",
    "callback_checksum_ok",
    "checksum",
    "parse_response",
]

KIND: Final = "bigbluebutton"
ALGORITHMS: Final = ("sha1", "sha256", "sha384", "sha512")
GUEST_POLICIES: Final = ("ALWAYS_DENY", "ASK_MODERATOR", "ALWAYS_ACCEPT")
META_TAG: Final = "meta_classguard-class"
_SECRETS: Final = ("secret",)
HOOK: Final = Webhook(name="bbb", path="/hooks/bbb/{class_id}")


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- pure: checksums, URLs, answers ---------------------------------------------------


def checksum(call: str, query: str, secret: str, algorithm: str = "sha256") -> str:
    """BigBlueButton's API checksum: hex digest of call name + query string + secret."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    return hashlib.new(algorithm, (call + query + secret).encode()).hexdigest()


def api_url(base: str, call: str, params: Mapping[str, str], secret: str,
            algorithm: str = "sha256") -> str:
    """The signed URL of one API call (``base`` ends with ``/api/``)."""
    query = urlencode(list(params.items()))
    sig = checksum(call, query, secret, algorithm)
    return f"{base}{call}?{query}&checksum={sig}" if query else f"{base}{call}?checksum={sig}"


def callback_checksum_ok(callback_url: str, form: Mapping[str, str], received: str,
                         secret: str, algorithm: str = "sha1") -> bool:
    """Check the checksum bbb-webhooks puts on a callback's URL.

    The documented form hashes the callback URL (without the checksum), the body
    parameters joined as ``name=value&...`` (values not encoded), and the shared secret.
    NOTE: bbb-webhooks releases also hash the body as a JSON object; both forms need the
    secret, so accepting either does not weaken the check. SHA-1 is the webhooks default;
    the class's configured algorithm is accepted too.
    """
    joined = "&".join(f"{k}={v}" for k, v in form.items())
    as_json = json.dumps(dict(form), separators=(",", ":"), ensure_ascii=False)
    received = received.strip().lower()
    for alg in dict.fromkeys(("sha1", algorithm)):
        for body in (joined, as_json):
            expected = hashlib.new(alg, (callback_url + body + secret).encode()).hexdigest()
            if hmac.compare_digest(expected, received):
                return True
    return False


def _xml(text: str) -> ET.Element:
    # NOTE: answers come from the configured BBB server over HTTPS; entity expansion is
    # still refused by refusing any DOCTYPE.
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise UpstreamUnavailable(KIND, "bigbluebutton: answer with a DOCTYPE refused")
    try:
        return ET.fromstring(text)  # noqa: S314 - no DOCTYPE, see above
    except ET.ParseError:
        raise UpstreamUnavailable(KIND, "bigbluebutton: answer is not XML") from None


def parse_response(text: str) -> tuple[ET.Element, str | None]:
    """(root, messageKey) of a SUCCESS answer; ``AdapterError`` for FAILED ones."""
    root = _xml(text)
    code = root.findtext("returncode")
    key = root.findtext("messageKey")
    if code == "SUCCESS":
        return root, key
    if code == "FAILED":
        # NOTE: the server's <message> goes to ``detail`` (logs) only: the API URL is the
        # teacher's to choose, so its text may be anything.
        safe_key = key if key and key.isalnum() and len(key) <= 40 else "failed"
        raise AdapterError(f"bbb_{safe_key}", "bigbluebutton: the server refused the call",
                           detail=f"{key!r}: {(root.findtext('message') or '')[:200]!r}")
    raise UpstreamUnavailable(KIND, "bigbluebutton: answer without returncode")


def parse_attendees(root: ET.Element) -> list[Present]:
    """Viewers in a ``getMeetingInfo`` answer (moderators enter only with a moderator
    join, which only the gateway can sign)."""
    out = []
    for a in root.iter("attendee"):
        if (a.findtext("role") or "").upper() == "MODERATOR":
            continue
        uid = a.findtext("userID") or ""
        out.append(Present(upstream_id=uid or f"internal:{a.findtext('internalUserID') or ''}",
                           display_name=a.findtext("fullName") or "",
                           student_id=uid if uid.startswith("s") and len(uid) == 13 else None,
                           joined_at=None))
    return out


def _base(url: str) -> str:
    base = url.rstrip("/")
    if not base.endswith("/api"):
        base += "/api"
    return base + "/"


# --- the adapter ------------------------------------------------------------------------


class BigBlueButtonAdapter(AdapterBase):
    """BigBlueButton: signed joins, presence from ``getMeetingInfo``, ``end``."""

    kind: ClassVar[str] = KIND
    # settings holding URLs the gateway itself calls (checked against the egress policy)
    egress_fields: ClassVar[tuple[str, ...]] = ("api_url",)
    form_fields: ClassVar[tuple[FormField, ...]] = (
        FormField("api_url", "url", required=True,
                  placeholder="https://bbb.school.edu.vn/bigbluebutton/api"),
        FormField("secret", "password", required=True),
    )
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.ENFORCED_ENTRY, Capability.END, Capability.PRESENCE}
    )
    features: ClassVar[frozenset[Feature]] = frozenset(
        {Feature.WEBHOOKS, Feature.REGISTER_HOOK})
    webhooks: ClassVar[tuple[Webhook, ...]] = (HOOK,)

    def __init__(self, *, http_session: aiohttp.ClientSession | None = None,
                 clock: Clock = utc_now) -> None:
        self._http = http_session
        self._clock = clock

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(settings, KIND, ("api_url", "secret", "checksum_algorithm", "guest_policy",
                                    "lock_private_chat", "lock_public_chat", "hide_user_list",
                                    "webhooks"))
        url = req_url(settings, "api_url")
        assert url is not None
        alg = settings.get("checksum_algorithm", "sha256")
        if alg not in ALGORITHMS:
            raise InvalidSettings("platform.checksum_algorithm",
                                  f"must be one of {', '.join(ALGORITHMS)}")
        policy = settings.get("guest_policy", "ALWAYS_DENY")
        if policy not in GUEST_POLICIES:
            raise InvalidSettings("platform.guest_policy",
                                  f"must be one of {', '.join(GUEST_POLICIES)}")
        return {
            "kind": KIND,
            "api_url": _base(url),
            "secret": req_secret(settings, "secret", min_len=16),
            "checksum_algorithm": alg,
            "guest_policy": policy,
            "lock_private_chat": opt_bool(settings, "lock_private_chat", True),
            "lock_public_chat": opt_bool(settings, "lock_public_chat", False),
            "hide_user_list": opt_bool(settings, "hide_user_list", False),
            "webhooks": opt_bool(settings, "webhooks", True),
        }

    @classmethod
    def redact(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        return mask(settings, _SECRETS)

    # --- I/O -------------------------------------------------------------------------

    async def _call(self, d: Mapping[str, Any], call: str,
                    params: Mapping[str, str]) -> tuple[ET.Element, str | None]:
        url = api_url(d["api_url"], call, params, d["secret"], d["checksum_algorithm"])
        answer = await fetch(self._http, KIND, "GET", url)
        return parse_response(answer.text)

    @staticmethod
    def _data(room: Room) -> Mapping[str, Any]:
        if room.kind != KIND:
            raise AdapterError("invalid_room", f"room of kind {room.kind!r} given to {KIND}")
        if not all(k in room.data for k in ("api_url", "secret", "meeting_id", "create")):
            raise AdapterError("invalid_room", "stored bigbluebutton room is incomplete")
        return room.data

    async def provision(self, spec: RoomSpec) -> Room:
        s = self.validate_settings(spec.settings)
        meeting_id = f"cg-{spec.class_id}-{secrets.token_hex(4)}"
        create = {
            "name": spec.title,
            "meetingID": meeting_id,
            # Passwords are deprecated since 2.6 (roles replace them) but older servers
            # need them; random values that never leave the gateway.
            "attendeePW": secrets.token_urlsafe(12),
            "moderatorPW": secrets.token_urlsafe(12),
            "guestPolicy": s["guest_policy"],
            "meetingKeepEvents": "true",
            "lockSettingsDisablePrivateChat": str(s["lock_private_chat"]).lower(),
            "lockSettingsDisablePublicChat": str(s["lock_public_chat"]).lower(),
            "lockSettingsHideUserList": str(s["hide_user_list"]).lower(),
            "lockSettingsLockOnJoin": "true",
            META_TAG: spec.class_id,
        }
        data = {"api_url": s["api_url"], "secret": s["secret"],
                "checksum_algorithm": s["checksum_algorithm"], "meeting_id": meeting_id,
                "create": create, "webhooks": s["webhooks"]}
        await self._ensure_running(data)  # proves the URL and secret work, now
        return Room(class_id=spec.class_id, kind=KIND, upstream_id=meeting_id, data=data)

    async def _ensure_running(self, d: Mapping[str, Any]) -> str:
        """``create`` is idempotent for a running meeting and recreates an expired one
        (BBB drops meetings nobody joined after a few minutes). Returns createTime."""
        root, _ = await self._call(d, "create", d["create"])
        create_time = root.findtext("createTime")
        if not create_time or not create_time.isdigit():
            raise UpstreamUnavailable(KIND, "bigbluebutton: create answered no createTime")
        return create_time

    def _join_params(self, d: Mapping[str, Any], p: Participant, create_time: str,
                     moderator: bool) -> dict[str, str]:
        return {
            "fullName": p.display_name,
            "meetingID": d["meeting_id"],
            "password": d["create"]["moderatorPW" if moderator else "attendeePW"],
            "role": "MODERATOR" if moderator else "VIEWER",
            "userID": p.student_id,
            "createTime": create_time,
            "guest": "false",
            "redirect": "true",
        }

    async def join_url(self, room: Room, participant: Participant) -> str:
        d = self._data(room)
        create_time = await self._ensure_running(d)
        params = self._join_params(d, participant, create_time, participant.role == "host")
        return api_url(d["api_url"], "join", params, d["secret"], d["checksum_algorithm"])

    async def remove(self, room: Room, participant: Participant) -> None:
        raise Unsupported(KIND, Capability.REMOVE,
                          "BigBlueButton's API cannot remove a participant")

    async def lock(self, room: Room, locked: bool = True) -> None:
        raise Unsupported(KIND, Capability.LOCK,
                          "BigBlueButton's API cannot refuse new joins of a running meeting "
                          "(ClassGuard still stops signing joins)")

    async def end(self, room: Room) -> None:
        d = self._data(room)
        try:
            await self._call(d, "end", {"meetingID": d["meeting_id"],
                                        "password": d["create"]["moderatorPW"]})
        except AdapterError as exc:
            if exc.code != "bbb_notFound":  # already over: fine
                raise

    async def participants(self, room: Room) -> list[Present]:
        d = self._data(room)
        try:
            root, _ = await self._call(d, "getMeetingInfo", {"meetingID": d["meeting_id"]})
        except AdapterError as exc:
            if exc.code == "bbb_notFound":
                return []
            raise
        return parse_attendees(root)

    async def register_hook(self, room: Room, callback_url: str) -> str | None:
        """``hooks/create`` for this meeting (idempotent; call it again now and then, as
        bbb-webhooks drops hooks whose callbacks fail). Returns the hook id."""
        d = self._data(room)
        if not d.get("webhooks", True):
            return None
        root, _ = await self._call(d, "hooks/create", {"callbackURL": callback_url,
                                                       "meetingID": d["meeting_id"]})
        return root.findtext("hookID")

    @staticmethod
    def verify_callback(room: Room, callback_url: str, form: Mapping[str, str],
                        received: str) -> bool:
        d = room.data
        return callback_checksum_ok(callback_url, form, received, str(d["secret"]),
                                    str(d.get("checksum_algorithm", "sha1")))

    def read_webhook(self, hook: Webhook, request: HookRequest,
                     room: Room | None) -> HookResult:
        if room is None:
            raise HookRefused("bigbluebutton webhooks are per class")
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        if not self.verify_callback(room, request.url, form, request.query.get("checksum", "")):
            raise HookRefused("bad checksum")
        return HookResult(events=tuple(hook_events(form)))


def hook_events(form: Mapping[str, str]) -> list[HookEvent]:
    """The viewers a verified bbb-webhooks callback says joined (moderators are the
    class's hosts)."""
    try:
        events = json_bounded(form.get("event") or "[]", max_depth=64)
    except ValueError:
        events = []
    out = []
    for ev in events if isinstance(events, list) else [events]:
        d = (ev.get("data") if isinstance(ev, dict) else None) or {}
        if not isinstance(d, dict) or d.get("id") != "user-joined":
            continue
        user = (d.get("attributes") or {}).get("user") or {}
        if not isinstance(user, dict) or str(user.get("role", "")).upper() == "MODERATOR":
            continue
        uid = str(user.get("external-user-id") or "")
        out.append(HookEvent(HookEventKind.JOINED, Present(
            upstream_id=uid, display_name=str(user.get("name") or ""),
            student_id=uid or None, joined_at=None)))
    return out
