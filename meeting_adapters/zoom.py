"""The ``zoom`` platform: one Zoom registrant per student, each with a personal join link.

Settings::

    {"kind": "zoom",
     "account_id": "...", "client_id": "...", "client_secret": "...",   # Server-to-Server OAuth app
     "host_user": "teacher@school.edu.vn",       # the Zoom user who hosts the meetings
     "webhook_secret_token": "...",              # the app's secret token (webhook signatures)
     "registrant_email_domain": "students.school.edu.vn",
     "api_url": "https://api.zoom.us/v2/", "oauth_url": "https://zoom.us/oauth/token"}

How entry is enforced: the meeting requires registration, registrations that do not come
from ClassGuard wait for manual approval (nobody approves them), the waiting room is on and
each registration works on one device at a time. ClassGuard registers each admitted
student (``first_name`` = roster name, e-mail ``<student id>@<registrant_email_domain>``,
approved at once) and hands out that registrant's own ``join_url``.

What Zoom's REST API cannot do (so the capabilities do not claim it): remove or mute
someone already in the meeting, lock a running meeting, or list live participants on
every plan. ``remove`` still cancels the student's registration so the link stops
working for the next entry, then reports ``Unsupported``. Presence comes from webhooks
(``participant_joined`` / ``participant_joined_waiting_room``) to the class's webhook
``/hooks/zoom/{class_id}``, signed with the app's secret token and checked by
``verify_webhook``; Zoom's ``endpoint.url_validation`` challenge is answered.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import quote, urlencode

from ._http import HttpAnswer, check_keys, fetch, mask, opt_int, req_secret, req_str, req_url
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

    from .egress import EgressPolicy

__all__ = [
    "ZoomAdapter",
    "ZoomTokens",
    "meeting_body",
    "registrant_email",
    "url_validation_answer",
    "webhook_signature",
]

KIND: Final = "zoom"
API_URL: Final = "https://api.zoom.us/v2/"
OAUTH_URL: Final = "https://zoom.us/oauth/token"
WEBHOOK_MAX_AGE_S: Final = 300  # Zoom's advice: refuse events older than five minutes
_SECRETS: Final = ("client_secret", "webhook_secret_token")
HOOK: Final = Webhook(name="zoom", path="/hooks/zoom/{class_id}")
JOINED_EVENTS: Final = ("meeting.participant_joined", "meeting.participant_joined_waiting_room")


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- pure --------------------------------------------------------------------------------


def registrant_email(student_id: str, domain: str) -> str:
    """The registrant address of a student: no personal data, unique per student."""
    return f"{student_id}@{domain}"


def meeting_body(topic: str, start: datetime, duration_min: int) -> dict[str, Any]:
    return {
        "topic": topic[:200],
        "type": 2,  # scheduled: registration needs a scheduled meeting
        "start_time": start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration": duration_min,
        "settings": {
            "waiting_room": True,
            "join_before_host": False,
            "approval_type": 1,  # manual: strangers who self-register wait forever
            "registration_type": 1,
            "registrants_restrict_number": 1,  # one device per registrant at a time
            "registrants_email_notification": False,
            "registrants_confirmation_email": False,
            "meeting_authentication": False,
            "mute_upon_entry": True,
        },
    }


def webhook_signature(secret_token: str, timestamp: str, body: bytes) -> str:
    """``x-zm-signature``: ``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{body}``."""
    message = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret_token.encode(), message, hashlib.sha256).hexdigest()


def verify_webhook(secret_token: str, timestamp: str | None, signature: str | None,
                   body: bytes, now: datetime, max_age_s: int = WEBHOOK_MAX_AGE_S) -> str | None:
    """``None`` when the event is authentic and fresh, else why not."""
    if not timestamp or not signature:
        return "missing signature headers"
    if not timestamp.isdigit():
        return "malformed timestamp"
    ts = int(timestamp)
    if ts > 10**11:  # milliseconds
        ts //= 1000
    if abs(now.timestamp() - ts) > max_age_s:
        return "stale timestamp"
    expected = webhook_signature(secret_token, timestamp, body)
    if not hmac.compare_digest(expected, signature.strip()):
        return "bad signature"
    return None


def url_validation_answer(secret_token: str, plain_token: str) -> dict[str, str]:
    """The answer to Zoom's ``endpoint.url_validation`` challenge."""
    digest = hmac.new(secret_token.encode(), plain_token.encode(), hashlib.sha256).hexdigest()
    return {"plainToken": plain_token, "encryptedToken": digest}


def webhook_present(event: Mapping[str, Any], domain: str) -> Present | None:
    """Who a ``participant_joined*`` event says entered (student id from the registrant
    e-mail when it is one of ours)."""
    obj = (event.get("payload") or {}).get("object") or {}
    p = obj.get("participant") or {}
    if not isinstance(p, dict):
        return None
    email = str(p.get("email") or "")
    sid = None
    if email.endswith("@" + domain):
        local = email[: -len(domain) - 1]
        if local.startswith("s") and len(local) == 13:
            sid = local
    upstream = str(p.get("participant_user_id") or p.get("user_id") or p.get("id") or "")
    joined = None
    if isinstance(p.get("join_time"), str):
        try:
            joined = datetime.fromisoformat(p["join_time"].replace("Z", "+00:00"))
        except ValueError:
            joined = None
    return Present(upstream_id=upstream, display_name=str(p.get("user_name") or ""),
                   student_id=sid, joined_at=joined)


def _ok(answer: HttpAnswer, what: str, *, expected: tuple[int, ...] = (200, 201, 204)) -> Any:
    if answer.status in expected:
        return answer.json() if answer.text else None
    body = answer.json() if answer.text else None
    message = body.get("message") if isinstance(body, dict) else None
    code = body.get("code") if isinstance(body, dict) else None
    # NOTE: Zoom's own text stays in ``detail`` (logs): the URL is the teacher's to choose,
    # so what answers there may be anything.
    detail = f"status {answer.status}, code {code!r}, message {str(message)[:200]!r}"
    if answer.status in (401, 403):
        raise AdapterError("zoom_unauthorized", f"zoom: {what} not allowed", detail=detail)
    raise AdapterError("zoom_failed", f"zoom: {what} failed", detail=detail)


# --- I/O -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float
    api_url: str  # the only API a token minted for this key is ever sent to


class ZoomTokens:
    """Server-to-Server OAuth access tokens of one process, reused until shortly before
    they expire (Zoom issues them for an hour). Pass as the ``zoom`` pool.

    NOTE: a cached token is a credential of one school's Zoom account. It is keyed by
    everything that proves the right to it (OAuth URL, account id, client id *and* a
    keyed digest of the client secret, so the secret is not kept as a key) and by the
    API URL it is sent to: ids are not secrets, and a class of another school that names
    the same ids with another secret or its own ``api_url`` gets its own token, or none.
    """

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._lock = asyncio.Lock()
        self._key = secrets.token_bytes(32)  # per process: digests mean nothing elsewhere

    def _cache_key(self, d: Mapping[str, Any]) -> tuple[str, ...]:
        proof = hmac.new(self._key, str(d["client_secret"]).encode(), hashlib.sha256)
        return (str(d["oauth_url"]), str(d["account_id"]), str(d["client_id"]),
                proof.hexdigest(), str(d["api_url"]))

    async def get(self, adapter: ZoomAdapter, d: Mapping[str, Any]) -> str:
        key = self._cache_key(d)
        now = adapter._clock().timestamp()
        async with self._lock:
            tok = self._tokens.get(key)
            if tok is None or tok.expires_at - 60 < now:
                value, lifetime = await adapter._fetch_token(d)
                tok = _Token(value, now + lifetime, str(d["api_url"]))
                self._tokens[key] = tok
            if tok.api_url != d["api_url"]:  # cannot happen with the key above; fail closed
                raise AdapterError("zoom_unauthorized", "zoom: token bound to another API")
            return tok.value

    def forget(self, d: Mapping[str, Any]) -> None:
        self._tokens.pop(self._cache_key(d), None)

    async def aclose(self) -> None:
        self._tokens.clear()


class ZoomAdapter(AdapterBase):
    """Zoom: registrant-only meetings with a personal join link per student."""

    kind: ClassVar[str] = KIND
    # settings holding URLs the gateway itself calls (checked against the egress policy)
    egress_fields: ClassVar[tuple[str, ...]] = ("api_url", "oauth_url")
    form_fields: ClassVar[tuple[FormField, ...]] = (
        FormField("account_id", "text", required=True),
        FormField("client_id", "text", required=True),
        FormField("client_secret", "password", required=True),
        FormField("host_user", "email", required=True, placeholder="teacher@school.edu.vn"),
        FormField("registrant_email_domain", "text", required=True,
                  placeholder="students.school.edu.vn"),
        FormField("webhook_secret_token", "password"),
    )
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.ENFORCED_ENTRY, Capability.END}
    )
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.WEBHOOKS, Feature.POOL})
    webhooks: ClassVar[tuple[Webhook, ...]] = (HOOK,)

    def __init__(self, *, http_session: aiohttp.ClientSession | None = None,
                 clock: Clock = utc_now, pool: ZoomTokens | None = None) -> None:
        self._http = http_session
        self._clock = clock
        self._tokens = pool

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(settings, KIND, ("account_id", "client_id", "client_secret", "host_user",
                                    "webhook_secret_token", "registrant_email_domain",
                                    "duration_minutes", "api_url", "oauth_url"))
        domain = req_str(settings, "registrant_email_domain", max_len=200)
        if "@" in domain or "." not in domain or " " in domain:
            raise InvalidSettings("platform.registrant_email_domain",
                                  "must be a mail domain such as students.school.edu.vn")
        out: dict[str, Any] = {
            "kind": KIND,
            "account_id": req_str(settings, "account_id", max_len=100),
            "client_id": req_str(settings, "client_id", max_len=100),
            "client_secret": req_secret(settings, "client_secret", min_len=8),
            "host_user": req_str(settings, "host_user", max_len=200),
            "registrant_email_domain": domain.lower(),
            "duration_minutes": opt_int(settings, "duration_minutes", 90, 1, 1440),
            "api_url": req_url({"api_url": settings.get("api_url", API_URL)}, "api_url"),
            "oauth_url": req_url({"oauth_url": settings.get("oauth_url", OAUTH_URL)},
                                 "oauth_url"),
        }
        if not str(out["api_url"]).endswith("/"):
            out["api_url"] += "/"
        secret = req_secret(settings, "webhook_secret_token", min_len=8, required=False)
        if secret is not None:
            out["webhook_secret_token"] = secret
        return out

    @classmethod
    def redact(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        return mask(settings, _SECRETS)

    @classmethod
    def open_pool(cls, egress: EgressPolicy) -> ZoomTokens:
        return ZoomTokens()  # tokens only: every call goes through the guarded session

    # --- I/O -------------------------------------------------------------------------

    async def _fetch_token(self, d: Mapping[str, Any]) -> tuple[str, float]:
        basic = base64.b64encode(f"{d['client_id']}:{d['client_secret']}".encode()).decode()
        url = d["oauth_url"] + "?" + urlencode({"grant_type": "account_credentials",
                                                "account_id": d["account_id"]})
        answer = await fetch(self._http, KIND, "POST", url,
                             headers={"Authorization": f"Basic {basic}"})
        body = _ok(answer, "OAuth token", expected=(200,))
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise UpstreamUnavailable(KIND, "zoom: OAuth answer without access_token")
        return body["access_token"], float(body.get("expires_in", 3600))

    async def _token(self, d: Mapping[str, Any]) -> str:
        if self._tokens is not None:
            return await self._tokens.get(self, d)
        return (await self._fetch_token(d))[0]

    async def _api(self, d: Mapping[str, Any], method: str, path: str,
                   body: Mapping[str, Any] | None = None) -> HttpAnswer:
        for attempt in (1, 2):
            token = await self._token(d)
            extra: dict[str, Any] = {"json": dict(body)} if body is not None else {}
            answer = await fetch(self._http, KIND, method, d["api_url"] + path,
                                 headers={"Authorization": f"Bearer {token}"}, **extra)
            if answer.status == 401 and attempt == 1 and self._tokens is not None:
                self._tokens.forget(d)  # revoked or expired early: one fresh token
                continue
            if answer.status == 429:
                raise UpstreamUnavailable(KIND, "zoom: rate limited")
            return answer
        raise AssertionError("unreachable")

    @staticmethod
    def _data(room: Room) -> Mapping[str, Any]:
        if room.kind != KIND:
            raise AdapterError("invalid_room", f"room of kind {room.kind!r} given to {KIND}")
        if "meeting_id" not in room.data or "client_secret" not in room.data:
            raise AdapterError("invalid_room", "stored zoom room is incomplete")
        return room.data

    async def provision(self, spec: RoomSpec) -> Room:
        s = self.validate_settings(spec.settings)
        body = meeting_body(spec.title, self._clock(), s["duration_minutes"])
        answer = await self._api(s, "POST", f"users/{quote(s['host_user'], safe='@.')}/meetings",
                                 body)
        created = _ok(answer, "create meeting", expected=(201, 200))
        if not isinstance(created, dict) or "id" not in created:
            raise UpstreamUnavailable(KIND, "zoom: create meeting answered no id")
        data = {k: v for k, v in s.items() if k != "kind"}
        data["meeting_id"] = str(created["id"])
        # NOTE: the host's start_url is a credential; it is not kept (the teacher starts
        # the meeting from Zoom itself).
        return Room(class_id=spec.class_id, kind=KIND, upstream_id=data["meeting_id"], data=data)

    def _email(self, d: Mapping[str, Any], p: Participant) -> str:
        return registrant_email(p.student_id, d["registrant_email_domain"])

    async def join_url(self, room: Room, participant: Participant) -> str:
        d = self._data(room)
        mid = d["meeting_id"]
        if participant.role == "host":
            raise Unsupported(KIND, Capability.ENFORCED_ENTRY,
                              "the teacher starts the Zoom meeting from the Zoom app")
        first, _, last = participant.display_name.partition(" ")
        reg = {"email": self._email(d, participant), "first_name": first[:64] or "-",
               "last_name": last[:64], "auto_approve": True}
        answer = await self._api(d, "POST", f"meetings/{mid}/registrants", reg)
        body = _ok(answer, "add registrant", expected=(201, 200))
        if not isinstance(body, dict) or not isinstance(body.get("join_url"), str):
            raise UpstreamUnavailable(KIND, "zoom: registrant without join_url")
        # Re-admission after a removal: the registration exists but was cancelled.
        answer = await self._api(d, "PUT", f"meetings/{mid}/registrants/status", {
            "action": "approve", "registrants": [{"id": body.get("registrant_id") or
                                                  body.get("id"), "email": reg["email"]}]})
        _ok(answer, "approve registrant", expected=(204, 200))
        return str(body["join_url"])

    async def remove(self, room: Room, participant: Participant) -> None:
        d = self._data(room)
        answer = await self._api(d, "PUT", f"meetings/{d['meeting_id']}/registrants/status", {
            "action": "cancel", "registrants": [{"email": self._email(d, participant)}]})
        if answer.status != 404:  # never registered: nothing to cancel
            _ok(answer, "cancel registrant", expected=(204, 200))
        raise Unsupported(KIND, Capability.REMOVE,
                          "registration cancelled; Zoom's API cannot remove someone who is "
                          "already in the meeting (remove them in Zoom)")

    async def lock(self, room: Room, locked: bool = True) -> None:
        raise Unsupported(KIND, Capability.LOCK,
                          "Zoom's API cannot lock a running meeting (ClassGuard stops "
                          "registering students)")

    async def end(self, room: Room) -> None:
        d = self._data(room)
        answer = await self._api(d, "PUT", f"meetings/{d['meeting_id']}/status",
                                 {"action": "end"})
        if answer.status == 404:
            return
        _ok(answer, "end meeting", expected=(204, 200))

    async def participants(self, room: Room) -> list[Present]:
        raise Unsupported(KIND, Capability.PRESENCE,
                          "Zoom reports participants through webhooks, not a live list")

    # --- webhooks (pure, given the room) ------------------------------------------------

    def verify_webhook(self, room: Room, headers: Mapping[str, str], body: bytes) -> str | None:
        secret = room.data.get("webhook_secret_token")
        if not secret:
            return "no webhook secret token configured for this class"
        return verify_webhook(str(secret), headers.get("x-zm-request-timestamp"),
                              headers.get("x-zm-signature"), body, self._clock())

    def url_validation(self, room: Room, event: Mapping[str, Any]) -> dict[str, str]:
        plain = str((event.get("payload") or {}).get("plainToken") or "")
        return url_validation_answer(str(room.data["webhook_secret_token"]), plain)

    def webhook_present(self, room: Room, event: Mapping[str, Any]) -> Present | None:
        obj = (event.get("payload") or {}).get("object") or {}
        if str(obj.get("id")) != str(room.data.get("meeting_id")):
            return None  # another meeting of the same app
        return webhook_present(event, str(room.data["registrant_email_domain"]))

    def read_webhook(self, hook: Webhook, request: HookRequest,
                     room: Room | None) -> HookResult:
        if room is None:
            raise HookRefused("zoom webhooks are per class")
        why = self.verify_webhook(room, request.headers, request.body)
        if why is not None:
            raise HookRefused(why)
        event = event_json(request.body)
        kind = event.get("event")
        if kind == "endpoint.url_validation":
            return HookResult(reply=self.url_validation(room, event))
        if kind in JOINED_EVENTS:
            p = self.webhook_present(room, event)
            if p is not None:
                return HookResult(events=(HookEvent(HookEventKind.JOINED, p),))
        return HookResult()


def event_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}
