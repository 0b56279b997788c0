"""The ``teams`` platform: a Microsoft Teams meeting whose lobby holds everyone but the
organizer, its link handed only to students the gate admitted.

Settings::

    {"kind": "teams",
     "tenant_id": "<directory (tenant) id>", "client_id": "<application (client) id>",
     "client_secret": "...",                  # the app registration's client secret
     "organizer_id": "<object id of the teacher's Entra user>",
     "duration_minutes": 90,
     "graph_url": "https://graph.microsoft.com/v1.0/",
     "login_url": "https://login.microsoftonline.com/"}

Microsoft Graph, app-only: a client-credentials token for ``https://graph.microsoft.com/
.default`` from ``{login_url}{tenant_id}/oauth2/v2.0/token``; the app has the application
permission ``OnlineMeetings.ReadWrite.All`` and an application access policy granted to the
organizer (docs/adapters.md has the set-up steps).

What ClassGuard makes Teams do: the class's ``onlineMeeting`` (``POST
users/{organizer}/onlineMeetings``) lets only the organizer bypass the lobby, dial-in
callers included; only the organizer presents; attendees' chat is ``limited``; nobody may
rename themselves (when the tenant has the setting); nothing is recorded automatically.
Before a link is handed out the meeting is read again and any of these settings changed in
Teams is set back (``PATCH``); a meeting that cannot be locked down is never handed out.

What Teams cannot do through Graph (so the capabilities do not claim it): admit someone
from its lobby (the organizer does that in Teams), issue a link per person, remove, mute,
lock or end a meeting for everyone. Attendance reports (``Feature.ATTENDANCE``, with
``OnlineMeetingArtifact.Read.All``) arrive only after a session is over: they flag
unknown attendees after the fact, not live.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import re
import secrets
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import quote, urlencode

from ._http import HttpAnswer, check_keys, fetch, mask, opt_int, req_secret, req_str, req_url
from .base import (
    AdapterBase,
    AdapterError,
    AttendanceReport,
    Capability,
    Clock,
    Feature,
    FormField,
    InvalidSettings,
    Participant,
    Present,
    Room,
    RoomSpec,
    RosterName,
    Unsupported,
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    import aiohttp

    from .egress import EgressPolicy

__all__ = [
    "LOCKED",
    "TeamsAdapter",
    "TeamsPool",
    "drift",
    "meeting_body",
    "retry_after_s",
]

KIND: Final = "teams"
# What the class form shows in the Entra id fields: a GUID's shape
_GUID_SHAPE: Final = "00000000-0000-0000-0000-000000000000"
GRAPH_URL: Final = "https://graph.microsoft.com/v1.0/"
LOGIN_URL: Final = "https://login.microsoftonline.com/"
SCOPE: Final = "https://graph.microsoft.com/.default"
_SECRETS: Final = ("client_secret",)
# A token is renewed this long before Entra says it expires (clock skew, slow calls).
TOKEN_SKEW_S: Final = 300
# Temporary refusals (throttling, service unavailable, gateway timeout) are retried.
RETRY_STATUSES: Final = (429, 503, 504)
MAX_ATTEMPTS: Final = 3
# The longest ClassGuard waits in all for one call: a student is on the /go page meanwhile.
MAX_WAIT_S: Final = 10.0
MAX_PAGES: Final = 20
# How long a meeting read back with the locked settings is trusted by a process.
VERIFY_EVERY_S: Final = 60.0
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,200}\.[A-Za-z]{2,}$")
RENAME: Final = "allowParticipantsToChangeName"

# The meeting settings ClassGuard keeps (and sets back when changed in Teams).
LOCKED: Final[Mapping[str, Any]] = {
    "lobbyBypassSettings": {"scope": "organizer", "isDialInBypassEnabled": False},
    "allowedPresenters": "organizer",
    "allowMeetingChat": "limited",
    RENAME: False,
    "recordAutomatically": False,
}


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- pure --------------------------------------------------------------------------------


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def meeting_body(subject: str, start: datetime, duration_min: int, *,
                 rename_setting: bool = True) -> dict[str, Any]:
    """The ``onlineMeeting`` of a class. ``rename_setting=False``: for a tenant whose
    Graph refuses ``allowParticipantsToChangeName``."""
    body: dict[str, Any] = {
        "subject": subject[:250],
        "startDateTime": _iso(start),
        "endDateTime": _iso(start + timedelta(minutes=duration_min)),
        **{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in LOCKED.items()},
    }
    if not rename_setting:
        del body[RENAME]
    return body


def drift(meeting: Mapping[str, Any], *, rename_setting: bool = True) -> dict[str, Any]:
    """The locked settings the meeting no longer has, as a ``PATCH`` body ({}: none)."""
    out: dict[str, Any] = {}
    lobby = meeting.get("lobbyBypassSettings")
    want_lobby = LOCKED["lobbyBypassSettings"]
    if not isinstance(lobby, Mapping) or any(lobby.get(k) != v for k, v in want_lobby.items()):
        out["lobbyBypassSettings"] = dict(want_lobby)
    for name in ("allowedPresenters", "allowMeetingChat", "recordAutomatically"):
        if meeting.get(name) != LOCKED[name]:
            out[name] = LOCKED[name]
    if rename_setting and meeting.get(RENAME) is not False:
        out[RENAME] = False
    return out


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def graph_error(answer: HttpAnswer) -> tuple[str, str]:
    """``error.code`` and ``error.message`` of a Graph error body (or "", "")."""
    body = answer.json() if answer.text else None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("code") or ""), str(err.get("message") or "")
    if isinstance(err, str):  # the token endpoint: {"error": "invalid_client", ...}
        return err, str((body or {}).get("error_description") or "")
    return "", ""


def _detail(answer: HttpAnswer) -> str:
    code, message = graph_error(answer)
    return f"status {answer.status}, code {code!r}, message {message[:200]!r}"


def _ok(answer: HttpAnswer, what: str, *, expected: tuple[int, ...] = (200, 201, 204)) -> Any:
    if answer.status in expected:
        return answer.json() if answer.text else None
    # NOTE: what Graph said stays in ``detail`` (logs only), as for the other platforms.
    detail = _detail(answer)
    if answer.status in (401, 403):
        raise AdapterError("teams_unauthorized",
                           f"teams: {what} not allowed (check the app's permission and the "
                           "application access policy of the organizer)", detail=detail)
    if answer.status == 404:
        raise AdapterError("teams_not_found", f"teams: {what}: not found", detail=detail)
    raise AdapterError("teams_failed", f"teams: {what} failed", detail=detail)


def _fold(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def match_student(record: Mapping[str, Any], roster: Sequence[RosterName]) -> str | None:
    """The roster student an attendance record names: by school e-mail (the roster's
    external id) first, else by the exact roster name (case and spacing aside)."""
    email_addr = _fold(str(record.get("emailAddress") or ""))
    ident = record.get("identity") if isinstance(record.get("identity"), Mapping) else {}
    name = _fold(str((ident or {}).get("displayName") or ""))
    if email_addr:
        for s in roster:
            if s.external_id and _fold(s.external_id) == email_addr:
                return s.student_id
    if name:
        for s in roster:
            if _fold(s.name) == name:
                return s.student_id
    return None


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def record_present(record: Mapping[str, Any], roster: Sequence[RosterName]) -> Present | None:
    """Who an attendance record is (None for the organizer)."""
    if str(record.get("role") or "").lower() == "organizer":
        return None
    ident = record.get("identity") if isinstance(record.get("identity"), Mapping) else {}
    upstream = str((ident or {}).get("id") or record.get("id") or "")
    intervals = record.get("attendanceIntervals")
    joined = None
    if isinstance(intervals, list) and intervals and isinstance(intervals[0], Mapping):
        joined = _when(intervals[0].get("joinDateTime"))
    return Present(upstream_id=upstream, display_name=str((ident or {}).get("displayName") or ""),
                   student_id=match_student(record, roster), joined_at=joined)


# --- I/O -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float
    graph_url: str  # the only API a token minted for this key is ever sent to


@dataclass(slots=True)
class TeamsPool:
    """Graph access tokens of one process, reused until ``TOKEN_SKEW_S`` before they
    expire, and when each meeting was last read back locked down. Pass as the ``teams``
    pool.

    NOTE: a cached token is a credential of one school's tenant. It is keyed by everything
    that proves the right to it (login URL, tenant, client id *and* a keyed digest of the
    client secret) and by the Graph URL it is sent to, as ``zoom.ZoomTokens``.
    """

    _tokens: dict[tuple[str, ...], _Token] = field(default_factory=dict)
    _verified: dict[tuple[str, ...], float] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def cache_key(self, d: Mapping[str, Any]) -> tuple[str, ...]:
        proof = hmac.new(self._key, str(d["client_secret"]).encode(), hashlib.sha256)
        return (str(d["login_url"]), str(d["tenant_id"]), str(d["client_id"]),
                proof.hexdigest(), str(d["graph_url"]))

    async def token(self, adapter: TeamsAdapter, d: Mapping[str, Any]) -> str:
        key = self.cache_key(d)
        now = adapter._clock().timestamp()
        async with self._lock:
            tok = self._tokens.get(key)
            if tok is None or tok.expires_at - TOKEN_SKEW_S < now:
                value, lifetime = await adapter._fetch_token(d)
                tok = _Token(value, now + lifetime, str(d["graph_url"]))
                self._tokens[key] = tok
            if tok.graph_url != d["graph_url"]:  # cannot happen with the key above
                raise AdapterError("teams_unauthorized", "teams: token bound to another API")
            return tok.value

    def forget(self, d: Mapping[str, Any]) -> None:
        self._tokens.pop(self.cache_key(d), None)

    def verified_at(self, d: Mapping[str, Any], meeting_id: str) -> float | None:
        return self._verified.get((*self.cache_key(d), meeting_id))

    def mark_verified(self, d: Mapping[str, Any], meeting_id: str, at: float) -> None:
        self._verified[(*self.cache_key(d), meeting_id)] = at

    async def aclose(self) -> None:
        self._tokens.clear()
        self._verified.clear()


class TeamsAdapter(AdapterBase):
    """Microsoft Teams: a lobby only the organizer bypasses; the link only after the gate."""

    kind: ClassVar[str] = KIND
    egress_fields: ClassVar[tuple[str, ...]] = ("graph_url", "login_url")
    form_fields: ClassVar[tuple[FormField, ...]] = (
        FormField("tenant_id", "text", required=True, placeholder=_GUID_SHAPE),
        FormField("client_id", "text", required=True, placeholder=_GUID_SHAPE),
        FormField("client_secret", "password", required=True),
        FormField("organizer_id", "text", required=True, placeholder=_GUID_SHAPE),
    )
    # NOTE: ``enforced_entry`` is not claimed: the link works for anyone who has it; what
    # keeps strangers out is Teams' lobby, and only the organizer admits from it.
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.POOL, Feature.ATTENDANCE})

    def __init__(self, *, http_session: aiohttp.ClientSession | None = None,
                 clock: Clock = utc_now, pool: TeamsPool | None = None,
                 max_wait_s: float = MAX_WAIT_S) -> None:
        self._http = http_session
        self._clock = clock
        self._pool = pool
        self._max_wait_s = max_wait_s

    # --- settings ----------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(settings, KIND, ("tenant_id", "client_id", "client_secret", "organizer_id",
                                    "duration_minutes", "graph_url", "login_url"))
        tenant = req_str(settings, "tenant_id", max_len=200)
        if not (_GUID.match(tenant) or _TENANT_NAME.match(tenant)):
            raise InvalidSettings("platform.tenant_id",
                                  "must be the directory (tenant) id or its .onmicrosoft.com "
                                  "name")
        client_id = req_str(settings, "client_id", max_len=100)
        if not _GUID.match(client_id):
            raise InvalidSettings("platform.client_id",
                                  "must be the application (client) id, a GUID")
        organizer = req_str(settings, "organizer_id", max_len=100)
        if not _GUID.match(organizer):
            raise InvalidSettings("platform.organizer_id",
                                  "must be the organizer's object id (a GUID), not an e-mail")
        graph = req_url({"graph_url": settings.get("graph_url", GRAPH_URL)}, "graph_url")
        login = req_url({"login_url": settings.get("login_url", LOGIN_URL)}, "login_url")
        assert graph is not None and login is not None
        return {
            "kind": KIND,
            "tenant_id": tenant.lower(),
            "client_id": client_id.lower(),
            "client_secret": req_secret(settings, "client_secret", min_len=8),
            "organizer_id": organizer.lower(),
            "duration_minutes": opt_int(settings, "duration_minutes", 90, 1, 1440),
            "graph_url": graph if graph.endswith("/") else graph + "/",
            "login_url": login if login.endswith("/") else login + "/",
        }

    @classmethod
    def redact(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        return mask(settings, _SECRETS)

    @classmethod
    def open_pool(cls, egress: EgressPolicy) -> TeamsPool:
        return TeamsPool()  # tokens only: every call goes through the guarded session

    # --- HTTP ----------------------------------------------------------------------------

    async def _send(self, method: str, url: str, **kwargs: Any) -> HttpAnswer:
        """One call, retried on 429/503/504 as Graph's throttling guidance says: after
        ``Retry-After`` when given, else with exponential backoff; waiting more than
        ``max_wait_s`` in all, or a refusal after ``MAX_ATTEMPTS``, fails closed."""
        delay = 1.0
        waited = 0.0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            answer = await fetch(self._http, KIND, method, url, server_errors=True, **kwargs)
            if answer.status not in RETRY_STATUSES:
                if answer.status >= 500:
                    raise UpstreamUnavailable(KIND, "teams: platform unreachable")
                return answer
            asked = retry_after_s(answer.headers.get("retry-after"), self._clock())
            wait = asked if asked is not None else delay
            delay *= 2
            if attempt == MAX_ATTEMPTS or waited + wait > self._max_wait_s:
                what = "rate limited" if answer.status == 429 else "platform unreachable"
                raise UpstreamUnavailable(KIND, f"teams: {what}")
            waited += wait
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _fetch_token(self, d: Mapping[str, Any]) -> tuple[str, float]:
        url = f"{d['login_url']}{quote(str(d['tenant_id']), safe='')}/oauth2/v2.0/token"
        form = urlencode({"client_id": d["client_id"], "client_secret": d["client_secret"],
                          "scope": SCOPE, "grant_type": "client_credentials"})
        answer = await self._send("POST", url, data=form, headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        if answer.status != 200:
            raise AdapterError("teams_unauthorized",
                               "teams: sign-in of the app refused (check tenant id, client id "
                               "and client secret)", detail=_detail(answer))
        body = answer.json()
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise UpstreamUnavailable(KIND, "teams: token answer without access_token")
        lifetime = body.get("expires_in", 3599)
        try:
            seconds = float(lifetime)
        except (TypeError, ValueError):
            seconds = 0.0  # unusable: the next call fetches another
        return body["access_token"], seconds

    async def _token(self, d: Mapping[str, Any]) -> str:
        if self._pool is not None:
            return await self._pool.token(self, d)
        return (await self._fetch_token(d))[0]

    async def _graph(self, d: Mapping[str, Any], method: str, url: str,
                     body: Mapping[str, Any] | None = None) -> HttpAnswer:
        """A Graph call with the app's token; a 401 gets one fresh token and one retry."""
        if not url.startswith(str(d["graph_url"])):
            # NOTE: only the class's own Graph URL gets the token (@odata.nextLink included).
            raise UpstreamUnavailable(KIND, "teams: answer pointed to another server")
        extra: dict[str, Any] = {"json": dict(body)} if body is not None else {}
        for attempt in (1, 2):
            token = await self._token(d)
            answer = await self._send(method, url, headers={"Authorization": f"Bearer {token}"},
                                      **extra)
            if answer.status == 401 and attempt == 1:
                if self._pool is not None:
                    self._pool.forget(d)  # revoked or expired early: one fresh token
                continue
            return answer
        return answer

    def _meeting_url(self, d: Mapping[str, Any], meeting_id: str = "") -> str:
        base = f"{d['graph_url']}users/{quote(str(d['organizer_id']), safe='')}/onlineMeetings"
        return f"{base}/{quote(meeting_id, safe='')}" if meeting_id else base

    async def _pages(self, d: Mapping[str, Any], url: str, what: str) -> list[dict[str, Any]]:
        """Every item of a collection, following ``@odata.nextLink``."""
        items: list[dict[str, Any]] = []
        next_url: str | None = url
        for _ in range(MAX_PAGES):
            if next_url is None:
                return items
            answer = await self._graph(d, "GET", next_url)
            body = _ok(answer, what, expected=(200,))
            if not isinstance(body, dict) or not isinstance(body.get("value"), list):
                raise UpstreamUnavailable(KIND, f"teams: {what}: answer without value")
            items.extend(v for v in body["value"] if isinstance(v, dict))
            link = body.get("@odata.nextLink")
            next_url = link if isinstance(link, str) and link else None
        if next_url is not None:
            raise UpstreamUnavailable(KIND, f"teams: {what}: too many pages")
        return items

    # --- the meeting ---------------------------------------------------------------------

    @staticmethod
    def _data(room: Room) -> Mapping[str, Any]:
        if room.kind != KIND:
            raise AdapterError("invalid_room", f"room of kind {room.kind!r} given to {KIND}")
        if "meeting_id" not in room.data or "client_secret" not in room.data:
            raise AdapterError("invalid_room", "stored teams room is incomplete")
        return room.data

    async def provision(self, spec: RoomSpec) -> Room:
        s = self.validate_settings(spec.settings)
        rename = True
        body = meeting_body(spec.title, self._clock(), s["duration_minutes"])
        answer = await self._graph(s, "POST", self._meeting_url(s), body)
        if answer.status == 400 and RENAME in graph_error(answer)[1]:
            # A tenant without the rename setting: the meeting is made without it.
            rename = False
            body = meeting_body(spec.title, self._clock(), s["duration_minutes"],
                                rename_setting=False)
            answer = await self._graph(s, "POST", self._meeting_url(s), body)
        created = _ok(answer, "create meeting", expected=(201, 200))
        if not isinstance(created, dict) or not created.get("id") or not isinstance(
                created.get("joinWebUrl"), str):
            raise UpstreamUnavailable(KIND, "teams: create meeting answered no id or link")
        if RENAME not in created:
            rename = False  # Graph ignored it: said so on the class page, not claimed
        missing = drift(created, rename_setting=rename)
        if missing:
            raise AdapterError("teams_refused", "teams: the meeting did not keep the lobby "
                               "settings", detail=f"not kept: {sorted(missing)}")
        data = {k: v for k, v in s.items() if k != "kind"}
        data.update(meeting_id=str(created["id"]), join_url=created["joinWebUrl"],
                    rename_locked=rename)
        return Room(class_id=spec.class_id, kind=KIND, upstream_id=data["meeting_id"], data=data)

    async def ensure_locked(self, room: Room) -> str:
        """Read the meeting back, set back any locked setting changed in Teams, and return
        its join link. Fails closed: a meeting that stays open is never handed out."""
        d = self._data(room)
        mid = str(d["meeting_id"])
        now = self._clock().timestamp()
        if self._pool is not None:
            at = self._pool.verified_at(d, mid)
            if at is not None and now - at < VERIFY_EVERY_S:
                return str(d["join_url"])
        rename = bool(d.get("rename_locked", True))
        meeting = _ok(await self._graph(d, "GET", self._meeting_url(d, mid)), "read meeting",
                      expected=(200,))
        if not isinstance(meeting, dict):
            raise UpstreamUnavailable(KIND, "teams: meeting answer is not an object")
        fix = drift(meeting, rename_setting=rename)
        if fix:
            meeting = _ok(await self._graph(d, "PATCH", self._meeting_url(d, mid), fix),
                          "restore meeting settings", expected=(200,))
            if not isinstance(meeting, dict) or drift(meeting, rename_setting=rename):
                raise AdapterError("teams_refused",
                                   "teams: the meeting's lobby settings could not be restored")
        link = meeting.get("joinWebUrl") or d["join_url"]
        if self._pool is not None:
            self._pool.mark_verified(d, mid, now)
        return str(link)

    async def join_url(self, room: Room, participant: Participant) -> str:
        # The same link for everyone (Teams has no personal links): handed out only by
        # the gateway's /go step, after admission, to one device at a time.
        return await self.ensure_locked(room)

    async def remove(self, room: Room, participant: Participant) -> None:
        raise Unsupported(KIND, Capability.REMOVE,
                          "Microsoft Graph cannot remove someone from a Teams meeting (remove "
                          "them in Teams)")

    async def lock(self, room: Room, locked: bool = True) -> None:
        raise Unsupported(KIND, Capability.LOCK,
                          "Microsoft Graph cannot lock a Teams meeting (ClassGuard stops "
                          "handing out its link)")

    async def end(self, room: Room) -> None:
        raise Unsupported(KIND, Capability.END,
                          "Microsoft Graph cannot end a Teams meeting for everyone (end it "
                          "in Teams)")

    async def participants(self, room: Room) -> list[Present]:
        raise Unsupported(KIND, Capability.PRESENCE,
                          "Teams reports attendance only after a session is over")

    async def attendance(self, room: Room, roster: Sequence[RosterName],
                         known: Collection[str]) -> list[AttendanceReport]:
        d = self._data(room)
        base = self._meeting_url(d, str(d["meeting_id"])) + "/attendanceReports"
        try:
            reports = await self._pages(d, base, "list attendance reports")
        except AdapterError as exc:
            if exc.code == "teams_unauthorized":
                raise Unsupported(KIND, Capability.PRESENCE,
                                  "the tenant does not let the app read attendance reports "
                                  "(OnlineMeetingArtifact.Read.All)") from None
            raise
        out = []
        for rep in reports:
            rid = str(rep.get("id") or "")
            if not rid or rid in known:
                continue
            records = await self._pages(
                d, f"{base}/{quote(rid, safe='')}/attendanceRecords", "list attendance records")
            present = tuple(p for p in (record_present(r, roster) for r in records)
                            if p is not None)
            out.append(AttendanceReport(report_id=rid, ended_at=_when(rep.get(
                "meetingEndDateTime")), present=present))
        return out
