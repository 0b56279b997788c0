"""The ``google_meet`` platform: a Meet space per class, created with the Meet REST API v2.

Settings::

    {"kind": "google_meet",
     "service_account_key": "{...the service account's JSON key...}",
     "organizer": "teacher@school.edu.vn",   # the Workspace account that owns the spaces
     "uses_meet_sdk": false,                 # the school joins through its own Meet SDK app
     "api_url": "https://meet.googleapis.com/v2/",
     "token_url": "https://oauth2.googleapis.com/token",
     "directory_url": "https://admin.googleapis.com/admin/directory/v1/"}

Auth: the service account has domain-wide delegation and acts as ``organizer``: a JWT
(RS256, signed with the key's private key) is exchanged at ``token_url`` for an access
token (``urn:ietf:params:oauth:grant-type:jwt-bearer``). Meet calls use the scopes
``meetings.space.created`` and ``meetings.space.readonly``; the directory look-ups a
token of their own with ``admin.directory.user.readonly`` (so a school that did not
grant it still creates and ends meetings; its participants are then all "unknown").

What ClassGuard enforces on Meet:

* the space has ``accessType = RESTRICTED``: only people invited to it (the organizer)
  join without knocking; Meet asks the organizer to let everyone else in. With
  ``uses_meet_sdk`` it also has ``entryPointAccess = CREATOR_APP_ONLY``: only the
  school's own app (built with the Meet SDKs in the Cloud project that created the
  space) can join, not meet.google.com nor the Meet apps. Otherwise ``ALL``.
* the ``meetingUri`` is handed out only through the gateway's ``/go`` step; each
  hand-out first reads the space back and restores its configuration if someone
  loosened it in Meet.
* presence: the participants still in the space's active conference; a signed-in
  participant's ``users/{id}`` is looked up in the Workspace directory (Admin SDK
  ``users.get``, ``viewType=domain_public``) and its primary e-mail matched against the
  roster's school accounts by the reconciler. Anonymous and phone participants, accounts
  outside the school's directory and accounts on no roster line are intruders.
* ``end`` = ``spaces.endActiveConference``.

What Meet's API cannot do (not claimed): admit or refuse someone who knocks (the
organizer does it in Meet), issue a link per person (everyone gets the same
``meetingUri``), remove or mute someone, lock the space while a conference runs.

Errors follow Google's documented shape ``{"error": {"code", "message", "status",
"details"}}``: 429 ``RESOURCE_EXHAUSTED``, 5xx and transport failures are retried with
bounded exponential back-off (``Retry-After`` honoured when present), 401 fetches a new
token once, 403 ``PERMISSION_DENIED`` and 404 ``NOT_FOUND`` are clear errors. Everything
ends closed: ``UpstreamUnavailable`` or ``AdapterError``, never a link.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import quote, urlencode

from ._http import HttpAnswer, check_keys, fetch, mask, opt_bool, req_str, req_url
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
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    import aiohttp

    from .egress import EgressPolicy

__all__ = [
    "MeetAdapter",
    "MeetPool",
    "jwt_assertion",
    "parse_participant",
    "retry_delay",
    "space_body",
]

KIND: Final = "google_meet"
API_URL: Final = "https://meet.googleapis.com/v2/"
TOKEN_URL: Final = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL
DIRECTORY_URL: Final = "https://admin.googleapis.com/admin/directory/v1/"
JWT_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MEET_SCOPES: Final = ("https://www.googleapis.com/auth/meetings.space.created",
                      "https://www.googleapis.com/auth/meetings.space.readonly")
DIRECTORY_SCOPES: Final = ("https://www.googleapis.com/auth/admin.directory.user.readonly",)
ASSERTION_LIFETIME_S: Final = 3600  # Google accepts assertions of at most one hour
CLOCK_SKEW_S: Final = 30  # ``iat`` is backdated so a gateway clock a little fast passes
REFRESH_MARGIN_S: Final = 120  # a token is replaced this long before it expires
RETRIES: Final = 3  # after the first attempt: 429, 5xx and transport failures
RETRY_BASE_S: Final = 0.5
RETRY_CAP_S: Final = 8.0  # a longer Retry-After is not waited for: the call fails closed
MAX_PAGES: Final = 40
PAGE_SIZE: Final = 100
DIRECTORY_TTL_S: Final = 3600.0
_SECRETS: Final = ("service_account_key",)
_MAX_KEY_CHARS: Final = 8192

Sleep = Callable[[float], Awaitable[None]]

log = logging.getLogger("classguard.platforms")


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- pure --------------------------------------------------------------------------------


def space_body(uses_meet_sdk: bool) -> dict[str, Any]:
    """``spaces.create`` body: knock for everyone not invited; entry only through the
    school's own app when it has one."""
    return {"config": {"accessType": "RESTRICTED",
                       "entryPointAccess": "CREATOR_APP_ONLY" if uses_meet_sdk else "ALL"}}


def jwt_assertion(key: Mapping[str, str], subject: str, scopes: tuple[str, ...],
                  audience: str, now: float) -> str:
    """The signed JWT a service account exchanges for a token acting as ``subject``.

    NOTE: RS256 here is Google's requirement for this grant only; ClassGuard's own
    tokens stay EdDSA (gateway/tokens.py)."""
    import jwt

    iat = int(now) - CLOCK_SKEW_S
    claims = {"iss": key["client_email"], "sub": subject, "scope": " ".join(scopes),
              "aud": audience, "iat": iat, "exp": iat + ASSERTION_LIFETIME_S}
    headers = {"kid": key["private_key_id"]} if key.get("private_key_id") else None
    return jwt.encode(claims, key["private_key"], algorithm="RS256", headers=headers)


def retry_delay(attempt: int, retry_after: str | None, *, base: float = RETRY_BASE_S,
                cap: float = RETRY_CAP_S, jitter: float = 0.0) -> float | None:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): the server's ``Retry-After``
    (seconds) when given, else ``base * 2**(attempt-1)`` plus ``jitter``. None when the
    wait would exceed ``cap`` (the caller gives up)."""
    if retry_after is not None and retry_after.strip().isdigit():
        wanted = float(retry_after.strip())
    else:
        wanted = base * (2 ** (attempt - 1)) + jitter
    return None if wanted > cap else wanted


def google_error(answer: HttpAnswer) -> tuple[str, str]:
    """``(status, message)`` of Google's error body (empty strings when absent)."""
    body = answer.json() if answer.text else None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("status") or ""), str(err.get("message") or "")[:200]
    if isinstance(err, str):  # the OAuth endpoint: {"error": "...", "error_description"}
        desc = body.get("error_description") if isinstance(body, dict) else ""
        return err, str(desc or "")[:200]
    return "", ""


def _ok(answer: HttpAnswer, what: str, expected: tuple[int, ...] = (200,)) -> Any:
    if answer.status in expected:
        return answer.json() if answer.text else {}
    status, message = google_error(answer)
    # NOTE: what the server said stays in ``detail`` (logs only), as for every platform.
    detail = f"status {answer.status}, {status or '-'}: {message!r}"
    if answer.status in (401, 403):
        raise AdapterError("google_meet_forbidden", f"google meet: {what} not allowed "
                           "(check the domain-wide delegation and its scopes)", detail=detail)
    if answer.status == 404:
        raise AdapterError("google_meet_not_found", f"google meet: {what}: not found",
                           detail=detail)
    raise AdapterError("google_meet_failed", f"google meet: {what} failed", detail=detail)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class MeetParticipant:
    """One row of ``participants.list``: ``user`` is ``users/{id}`` for a signed-in
    participant, "" for anonymous and phone ones."""

    name: str
    display_name: str
    user: str
    kind: str  # "signedin", "anonymous", "phone"
    joined_at: datetime | None


def parse_participant(raw: Mapping[str, Any]) -> MeetParticipant | None:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        return None
    for field, kind in (("signedinUser", "signedin"), ("anonymousUser", "anonymous"),
                        ("phoneUser", "phone")):
        who = raw.get(field)
        if isinstance(who, dict):
            user = str(who.get("user") or "") if kind == "signedin" else ""
            return MeetParticipant(name, str(who.get("displayName") or "")[:200], user, kind,
                                   _time(raw.get("earliestStartTime")))
    return MeetParticipant(name, "", "", "anonymous", _time(raw.get("earliestStartTime")))


def parse_service_account(value: object) -> dict[str, str]:
    """The parts of a service account JSON key ClassGuard keeps (``InvalidSettings`` on
    ``platform.service_account_key`` otherwise). The private key must load as RSA."""
    field = "platform.service_account_key"
    if isinstance(value, str):
        if len(value) > _MAX_KEY_CHARS:
            raise InvalidSettings(field, "is too long for a service account key")
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidSettings(field, "must be the service account's JSON key") from None
    if not isinstance(value, dict):
        raise InvalidSettings(field, "must be the service account's JSON key")
    if value.get("type") != "service_account":
        raise InvalidSettings(field, "is not a service account key (type must be "
                                     "service_account)")
    out: dict[str, str] = {"type": "service_account"}
    for name in ("client_email", "private_key", "private_key_id", "client_id"):
        item = value.get(name)
        if item is None:
            continue
        if not isinstance(item, str) or len(item) > 4096:
            raise InvalidSettings(field, f"has an invalid {name}")
        out[name] = item
    email = out.get("client_email", "")
    if "@" not in email or any(c.isspace() for c in email):
        raise InvalidSettings(field, "lacks the service account's client_email")
    try:
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        loaded = load_pem_private_key(out.get("private_key", "").encode(), password=None)
    except (ValueError, TypeError):
        raise InvalidSettings(field, "has no readable private_key") from None
    if not isinstance(loaded, RSAPrivateKey):
        raise InvalidSettings(field, "private_key must be an RSA key")
    return out


# --- I/O -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float


class MeetPool:
    """Access tokens and directory answers of one process (the ``google_meet`` pool).

    NOTE: a token acts as a school's organizer account. It is keyed by everything that
    proves the right to it (token URL, service account, a keyed digest of its private
    key, the organizer, the scopes) and by the API it is sent to, so a class of another
    school naming the same service account without its key gets no token.
    """

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._directory: dict[tuple[str, ...], tuple[str | None, float]] = {}
        self._lock = asyncio.Lock()
        self._key = secrets.token_bytes(32)

    def cache_key(self, d: Mapping[str, Any], scopes: tuple[str, ...]) -> tuple[str, ...]:
        key = d["_key"]
        proof = hmac.new(self._key, key["private_key"].encode(), hashlib.sha256).hexdigest()
        target = d["directory_url"] if scopes == DIRECTORY_SCOPES else d["api_url"]
        return (d["token_url"], key["client_email"], proof, d["organizer"], " ".join(scopes),
                target)

    async def get(self, adapter: MeetAdapter, d: Mapping[str, Any],
                  scopes: tuple[str, ...]) -> str:
        key = self.cache_key(d, scopes)
        async with self._lock:
            now = adapter._clock().timestamp()
            tok = self._tokens.get(key)
            if tok is None or tok.expires_at - REFRESH_MARGIN_S < now:
                value, lifetime = await adapter._fetch_token(d, scopes)
                tok = _Token(value, now + lifetime)
                self._tokens[key] = tok
            return tok.value

    def forget(self, d: Mapping[str, Any], scopes: tuple[str, ...]) -> None:
        self._tokens.pop(self.cache_key(d, scopes), None)

    def directory_get(self, d: Mapping[str, Any], user: str,
                      now: float) -> tuple[bool, str | None]:
        hit = self._directory.get((*self.cache_key(d, DIRECTORY_SCOPES), user))
        if hit is None or hit[1] < now:
            return False, None
        return True, hit[0]

    def directory_put(self, d: Mapping[str, Any], user: str, email: str | None,
                      now: float) -> None:
        if len(self._directory) > 50_000:
            self._directory.clear()
        self._directory[(*self.cache_key(d, DIRECTORY_SCOPES), user)] = (
            email, now + DIRECTORY_TTL_S)

    async def aclose(self) -> None:
        self._tokens.clear()
        self._directory.clear()


class MeetAdapter(AdapterBase):
    """Google Meet: a restricted space per class, its link only through ``/go``."""

    kind: ClassVar[str] = KIND
    egress_fields: ClassVar[tuple[str, ...]] = ("api_url", "token_url", "directory_url")
    form_fields: ClassVar[tuple[FormField, ...]] = (
        FormField("service_account_key", "textarea", required=True,
                  placeholder='{"type": "service_account", ...}'),
        FormField("organizer", "email", required=True, placeholder="teacher@school.edu.vn"),
        FormField("uses_meet_sdk", "checkbox"),
    )
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.END, Capability.PRESENCE})
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.POOL})

    def __init__(self, *, http_session: aiohttp.ClientSession | None = None,
                 clock: Clock = utc_now, pool: MeetPool | None = None,
                 sleep: Sleep = asyncio.sleep) -> None:
        self._http = http_session
        self._clock = clock
        self._pool = pool
        self._sleep = sleep

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(settings, KIND, ("service_account_key", "organizer", "uses_meet_sdk",
                                    "api_url", "token_url", "directory_url"))
        raw_key = settings.get("service_account_key")
        if raw_key is None or raw_key == "":
            raise InvalidSettings("platform.service_account_key", "is required")
        key = parse_service_account(raw_key)
        organizer = req_str(settings, "organizer", max_len=254).lower()
        local, _, domain = organizer.partition("@")
        if not local or "." not in domain or any(c.isspace() for c in organizer):
            raise InvalidSettings("platform.organizer",
                                  "must be the organizer's school e-mail address")
        out: dict[str, Any] = {
            "kind": KIND,
            "service_account_key": json.dumps(key, sort_keys=True),
            "organizer": organizer,
            "uses_meet_sdk": opt_bool(settings, "uses_meet_sdk", False),
        }
        for name, default in (("api_url", API_URL), ("token_url", TOKEN_URL),
                              ("directory_url", DIRECTORY_URL)):
            url = req_url({name: settings.get(name, default)}, name)
            assert url is not None
            out[name] = url if name == "token_url" or url.endswith("/") else url + "/"
        return out

    @classmethod
    def redact(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        return mask(settings, _SECRETS)

    @classmethod
    def settings_warnings(cls, settings: Mapping[str, Any]) -> list[str]:
        # Without the school's Meet SDK app the space takes knocks from every entry point
        # (``space_body``), and only the organizer can refuse them.
        if settings.get("uses_meet_sdk"):
            return []
        return ["platform.google_meet.warn_all_entry_points"]

    @classmethod
    def open_pool(cls, egress: EgressPolicy) -> MeetPool:
        return MeetPool()  # tokens and look-ups only: calls go through the guarded session

    # --- I/O: tokens and calls -------------------------------------------------------

    @staticmethod
    def _settings(d: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(d)
        out["_key"] = json.loads(str(d["service_account_key"]))
        return out

    async def _send(self, method: str, url: str, **kwargs: Any) -> HttpAnswer:
        """One call with Google's retry rules: 429, 5xx and transport failures again
        after a growing pause (``Retry-After`` first), a bounded number of times."""
        attempt = 0
        while True:
            try:
                answer: HttpAnswer | None = await fetch(self._http, KIND, method, url,
                                                        server_errors=True, **kwargs)
            except UpstreamUnavailable:
                answer = None  # no connection (or a redirect): retried the same way
            if answer is not None and answer.status != 429 and answer.status < 500:
                return answer
            attempt += 1
            after = answer.retry_after if answer is not None else None
            delay = retry_delay(attempt, after, jitter=random.uniform(0, 0.1))  # noqa: S311
            if attempt > RETRIES or delay is None:
                what = "rate limited" if answer is not None and answer.status == 429 \
                    else "platform unreachable"
                raise UpstreamUnavailable(KIND, f"google meet: {what}")
            await self._sleep(delay)

    async def _fetch_token(self, d: Mapping[str, Any],
                           scopes: tuple[str, ...]) -> tuple[str, float]:
        assertion = jwt_assertion(d["_key"], d["organizer"], scopes, d["token_url"],
                                  self._clock().timestamp())
        answer = await self._send(
            "POST", d["token_url"], data=urlencode({"grant_type": JWT_GRANT,
                                                    "assertion": assertion}),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        body = _ok(answer, "OAuth token")
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise UpstreamUnavailable(KIND, "google meet: OAuth answer without access_token")
        lifetime = body.get("expires_in", 3600)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
            lifetime = 3600
        return body["access_token"], float(max(0, min(lifetime, 3600)))

    async def _token(self, d: Mapping[str, Any], scopes: tuple[str, ...]) -> str:
        if self._pool is not None:
            return await self._pool.get(self, d, scopes)
        return (await self._fetch_token(d, scopes))[0]

    async def _call(self, d: Mapping[str, Any], method: str, url: str, *,
                    scopes: tuple[str, ...] = MEET_SCOPES,
                    body: Mapping[str, Any] | None = None) -> HttpAnswer:
        extra: dict[str, Any] = {"json": dict(body)} if body is not None else {}
        token = await self._token(d, scopes)
        answer = await self._send(method, url, headers={"Authorization": f"Bearer {token}"},
                                  **extra)
        if answer.status == 401:
            # expired early or revoked: one fresh token, then the answer stands
            if self._pool is not None:
                self._pool.forget(d, scopes)
            token = await self._token(d, scopes)
            answer = await self._send(method, url,
                                      headers={"Authorization": f"Bearer {token}"}, **extra)
        return answer

    @staticmethod
    def _data(room: Room) -> Mapping[str, Any]:
        if room.kind != KIND:
            raise AdapterError("invalid_room", f"room of kind {room.kind!r} given to {KIND}")
        for name in ("space", "meeting_uri", "service_account_key", "organizer"):
            if not isinstance(room.data.get(name), str):
                raise AdapterError("invalid_room", "stored google meet room is incomplete")
        return MeetAdapter._settings(room.data)

    @staticmethod
    def _space_url(d: Mapping[str, Any], suffix: str = "") -> str:
        # ``spaces/{id}``: the id is Google's; quoted all the same
        return str(d["api_url"]) + quote(str(d["space"]), safe="/") + suffix

    # --- the adapter -----------------------------------------------------------------

    async def provision(self, spec: RoomSpec) -> Room:
        s = self.validate_settings(spec.settings)
        d = self._settings(s)
        answer = await self._call(d, "POST", d["api_url"] + "spaces",
                                  body=space_body(s["uses_meet_sdk"]))
        created = _ok(answer, "create space")
        if not isinstance(created, dict) or not isinstance(created.get("name"), str) or \
                not str(created.get("meetingUri", "")).startswith("https://"):
            raise UpstreamUnavailable(KIND, "google meet: space without name or meetingUri")
        data = {k: v for k, v in s.items() if k != "kind"}
        data["space"] = created["name"]
        data["meeting_uri"] = created["meetingUri"]
        return Room(class_id=spec.class_id, kind=KIND, upstream_id=created["name"], data=data)

    async def _checked_space(self, d: Mapping[str, Any]) -> str:
        """The space's link, after making sure its configuration is still ours."""
        space = _ok(await self._call(d, "GET", self._space_url(d)), "read space")
        wanted = space_body(bool(d["uses_meet_sdk"]))["config"]
        config = space.get("config") if isinstance(space, dict) else None
        config = config if isinstance(config, dict) else {}
        if any(config.get(k) != v for k, v in wanted.items()):
            # loosened in Meet since it was created: tightened again before anyone goes
            mask_ = ",".join(f"config.{k}" for k in wanted)
            answer = await self._call(d, "PATCH", self._space_url(d, "?" + urlencode(
                {"updateMask": mask_})), body={"config": wanted})
            space = _ok(answer, "restore space configuration")
        uri = space.get("meetingUri") if isinstance(space, dict) else None
        if not isinstance(uri, str) or not uri.startswith("https://"):
            raise UpstreamUnavailable(KIND, "google meet: space without meetingUri")
        return uri

    async def join_url(self, room: Room, participant: Participant) -> str:
        d = self._data(room)
        # NOTE: the same link for everyone (Meet has no personal links); it is given
        # only to people the gateway admitted, and only while the space is as created.
        return await self._checked_space(d)

    async def remove(self, room: Room, participant: Participant) -> None:
        raise Unsupported(KIND, Capability.REMOVE,
                          "Meet's API cannot remove someone from a meeting (remove them "
                          "in Meet)")

    async def lock(self, room: Room, locked: bool = True) -> None:
        raise Unsupported(KIND, Capability.LOCK,
                          "Meet's API cannot lock a running meeting (ClassGuard stops "
                          "handing out its link)")

    async def end(self, room: Room) -> None:
        d = self._data(room)
        answer = await self._call(d, "POST", self._space_url(d, ":endActiveConference"),
                                  body={})
        if answer.status in (400, 404) and google_error(answer)[0] in (
                "FAILED_PRECONDITION", "NOT_FOUND"):
            return  # no conference running: nothing to end
        _ok(answer, "end conference")

    async def _pages(self, d: Mapping[str, Any], url: str, params: Mapping[str, str],
                     field: str, what: str) -> list[Any]:
        items: list[Any] = []
        token = ""
        for _ in range(MAX_PAGES):
            query = {**params, "pageSize": str(PAGE_SIZE)}
            if token:
                query["pageToken"] = token
            body = _ok(await self._call(d, "GET", url + "?" + urlencode(query)), what)
            page = body.get(field) if isinstance(body, dict) else None
            if isinstance(page, list):
                items.extend(page)
            token = str(body.get("nextPageToken") or "") if isinstance(body, dict) else ""
            if not token:
                return items
        raise UpstreamUnavailable(KIND, f"google meet: {what}: too many pages")

    async def _active_conference(self, d: Mapping[str, Any]) -> str | None:
        space = str(d["space"]).replace('"', "")
        records = await self._pages(
            d, d["api_url"] + "conferenceRecords",
            {"filter": f'space.name = "{space}" AND end_time IS NULL'},
            "conferenceRecords", "list conferences")
        for rec in records:
            if isinstance(rec, dict) and isinstance(rec.get("name"), str) and \
                    not rec.get("endTime"):
                return str(rec["name"])
        return None

    async def _account(self, d: Mapping[str, Any], user: str) -> str | None:
        """The school e-mail of ``users/{id}`` from the Workspace directory; None for
        an account outside it or when the look-up is not allowed."""
        uid = user.removeprefix("users/")
        if not uid or not all(c.isalnum() for c in uid):
            return None
        now = time.monotonic()
        if self._pool is not None:
            known, cached = self._pool.directory_get(d, uid, now)
            if known:
                return cached
        url = d["directory_url"] + "users/" + uid + "?" + urlencode(
            {"viewType": "domain_public", "projection": "basic"})
        email: str | None = None
        try:
            answer = await self._call(d, "GET", url, scopes=DIRECTORY_SCOPES)
            if answer.status == 200:
                body = answer.json()
                value = body.get("primaryEmail") if isinstance(body, dict) else None
                email = value.lower() if isinstance(value, str) and "@" in value else None
            elif answer.status != 404:  # 404: an account outside the school's directory
                _ok(answer, "directory look-up")
        except AdapterError as exc:
            if exc.code != "google_meet_forbidden":
                raise
            # NOTE: the directory scope is not granted (or the organizer may not see the
            # directory): the participant stays unknown and is reported as an intruder;
            # Meet itself still works. Remembered like an answer, so it is not asked
            # again at every sweep.
            _log_once(f"directory look-ups refused ({exc.detail}): signed-in "
                      "participants stay unknown")
        if self._pool is not None:
            self._pool.directory_put(d, uid, email, now)
        return email

    async def participants(self, room: Room) -> list[Present]:
        d = self._data(room)
        record = await self._active_conference(d)
        if record is None:
            return []
        rows = await self._pages(d, d["api_url"] + quote(record, safe="/") + "/participants",
                                 {"filter": "latest_end_time IS NULL"}, "participants",
                                 "list participants")
        out: list[Present] = []
        for raw in rows:
            p = parse_participant(raw) if isinstance(raw, dict) else None
            if p is None:
                continue
            account = await self._account(d, p.user) if p.kind == "signedin" else None
            if account is not None and account == d["organizer"]:
                continue  # the organizer runs the meeting
            out.append(Present(upstream_id=p.name, display_name=p.display_name,
                               student_id=None, joined_at=p.joined_at, account=account))
        return out


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged and len(_logged) < 100:
        _logged.add(message)
        log.warning("google_meet: %s", message)
