"""The ``janus`` platform: a Janus VideoRoom that admits only tokens ClassGuard minted.

Settings::

    {"kind": "janus",
     "ws_url": "wss://janus.example.org/ws",     # Janus JSON API over WebSocket
     "client_url": "https://meet.example.org/room.html?room={room}&id={id}&token={token}&name={display}",
     "admin_key": "...",                          # optional: the VideoRoom plugin's admin_key
     "api_secret": "...",                         # optional: Janus core apisecret
     "publishers": 30}

How entry is enforced: the room is created with a random ``secret`` and the ``allowed``
list switched on and empty, so Janus itself refuses every ``join`` whose ``token`` is not
listed. ``join_url`` adds one fresh token per admission (``<pid>-<random>``, where ``pid``
is the participant id ClassGuard assigns to the student) and removes the student's older
tokens; once the join is seen (event handler or ``listparticipants``) the token is removed,
so it works once. ``remove`` = drop the tokens + ``kick``; ``mute`` = ``moderate``;
``lock`` = empty the allowed list; ``end`` = ``destroy``.

Events: Janus's HTTP event handler (``janus.eventhandler.sampleevh``) posts to the
gateway-wide webhook ``/hooks/janus`` with HTTP Basic credentials of *one Janus server*
(``hook_credentials``: the user names the server, the password is keyed by the gateway's
hook secret). Events name rooms by server and number (``room_key``), so a server reports
on its own rooms only. A VideoRoom ``joined`` event carries the token used: the join of an
admitted student retires it (single use); a token used under another participant id, or
a join nobody was admitted for, is an intruder.

Transport: one WebSocket (subprotocol ``janus-protocol``) with one Janus session and one
VideoRoom handle, kept alive with ``keepalive`` requests. A ``JanusPool`` owned by the
gateway keeps these connections across requests; without a pool each call opens and
closes its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import quote, urlsplit

from ._http import check_keys, json_bounded, mask, opt_int, req_secret, ws_url
from ._http import ws_url as ws_url_of
from .base import (
    AdapterBase,
    AdapterError,
    Capability,
    Clock,
    Feature,
    FormField,
    HookEvent,
    HookEventKind,
    HookMalformed,
    HookRefused,
    HookRequest,
    HookResult,
    InvalidSettings,
    Participant,
    Present,
    Room,
    RoomSpec,
    UpstreamUnavailable,
    Webhook,
)
from .egress import EgressPolicy, EgressRefused, open_checked_socket
from .generic import parse_meeting_url

if TYPE_CHECKING:
    import aiohttp
    from websockets.asyncio.client import ClientConnection

__all__ = [
    "JanusAdapter",
    "JanusClient",
    "JanusError",
    "JanusPool",
    "hook_credentials",
    "hook_events",
    "hook_password",
    "hook_server_of",
    "participant_id",
    "render_client_url",
    "server_id",
    "token_owner",
]

log = logging.getLogger("classguard.janus")

KIND: Final = "janus"
PLUGIN: Final = "janus.plugin.videoroom"
SUBPROTOCOL: Final = "janus-protocol"
KEEPALIVE_S: Final = 25.0  # Janus drops sessions idle for 60 s by default
CALL_TIMEOUT_S: Final = 10.0
PLACEHOLDERS: Final = ("room", "id", "token", "display")
_SECRETS: Final = ("admin_key", "api_secret")
# VideoRoom error codes we rely on.
ERR_NO_SUCH_ROOM: Final = 426
ERR_NO_SUCH_FEED: Final = 428
ERR_UNAUTHORIZED: Final = 433
HOOK_USER: Final = "janus"
# The event handler's URL: one for every Janus server (credentials name the server).
HOOK: Final = Webhook(name="janus", path="/hooks/janus")
MAX_HOOK_EVENTS: Final = 200


def utc_now() -> datetime:
    return datetime.now(UTC)


class JanusError(AdapterError):
    """Janus answered with an error (``code`` is ``janus_<number>``)."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(f"janus_{number}", f"janus: {message} ({number})")
        self.number = number


# --- pure: settings, identities, requests, answers -------------------------------------


def render_client_url(template: str, *, room: int | str, pid: int | str, token: str,
                      display: str) -> str:
    """Fill the client URL template; every value is percent-encoded."""
    values = {"room": str(room), "id": str(pid), "token": token, "display": display}
    out = template
    for name in PLACEHOLDERS:
        out = out.replace("{" + name + "}", quote(values[name], safe=""))
    return out


def _check_template(value: object) -> str:
    field = "platform.client_url"
    if not isinstance(value, str):
        raise InvalidSettings(field, "is required: the page students open, with {room}, "
                              "{id}, {token} and optionally {display}")
    for name in ("room", "id", "token"):
        if "{" + name + "}" not in value:
            raise InvalidSettings(field, f"must contain {{{name}}}")
    sample = render_client_url(value, room=1, pid=2, token="t", display="d")  # noqa: S106
    if "{" in sample or "}" in sample:
        raise InvalidSettings(field, "knows only {room}, {id}, {token} and {display}")
    parse_meeting_url(sample, field)
    return value.strip()


def server_id(ws_url: str) -> str:
    """A short stable name of one Janus server (its canonical ``ws_url``): room numbers
    are only unique per server, so every room is known by server *and* number."""
    canonical = ws_url_of({"ws_url": ws_url}, "ws_url")  # one spelling per server
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def hook_credentials(hook_secret: str, ws_url: str) -> tuple[str, str]:
    """The HTTP Basic user and password the event handler of the Janus at ``ws_url``
    posts with: the user names the server, the password is keyed by the gateway's hook
    secret, so one server's credentials cannot post events for another server's rooms."""
    sid = server_id(ws_url)
    return f"janus-{sid}", hook_password(hook_secret, sid)


def hook_password(hook_secret: str, sid: str) -> str:
    """The event handler password of the server ``sid`` (see ``hook_credentials``)."""
    mac = hmac.new(hook_secret.encode(), f"janus-hook:{sid}".encode(), hashlib.sha256)
    return mac.hexdigest()


def hook_server_of(header: str, secret: str) -> str | None:
    """The Janus server (``server_id``) whose event handler credentials the
    ``Authorization`` header carries, or ``None`` when they are not valid credentials of
    any server."""
    if not secret or not header.startswith("Basic "):
        return None
    try:
        got = base64.b64decode(header[6:], validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = got.partition(":")
    prefix = f"{HOOK_USER}-"
    sid = user[len(prefix):]
    if not sep or not user.startswith(prefix) or len(sid) != 24 or not all(
            c in "0123456789abcdef" for c in sid):
        return None
    expected = hook_password(secret, sid)
    return sid if hmac.compare_digest(expected.encode(), password.encode()) else None


def room_key_of(server: str, room: int | str) -> str:
    """How events name a room: its server (``server_id``) and number."""
    return f"{server}:{room}"


def hook_events(server: str, data: object) -> list[HookEvent]:
    """The VideoRoom ``joined`` events of one event handler post from ``server``.

    A join whose token was minted for another participant id is an impostor: the token
    was passed on or stolen, so the person inside is not who it was minted for.
    """
    out: list[HookEvent] = []
    events = data if isinstance(data, list) else [data]
    for ev in events[:MAX_HOOK_EVENTS]:
        inner = (ev.get("event") or {}) if isinstance(ev, dict) else {}
        if not isinstance(inner, dict) or inner.get("plugin") != PLUGIN:
            continue
        d = inner.get("data") or {}
        if not isinstance(d, dict) or d.get("event") != "joined" or "room" not in d or (
                "id" not in d):
            continue
        present = Present(upstream_id=str(d["id"]), display_name=str(d.get("display") or ""),
                          student_id=None, joined_at=None)
        token = str(d.get("token") or "")
        kind = HookEventKind.JOINED
        if token:
            try:
                pid = int(d["id"])
            except (TypeError, ValueError):
                continue  # a participant id that is no number: not a VideoRoom join
            if token_owner(token) != pid:
                kind = HookEventKind.IMPOSTOR
        out.append(HookEvent(kind, present, room_key_of(server, str(d["room"]))))
    return out


def participant_id(pid_key: str, student_id: str) -> int:
    """The Janus participant id of a student in one room: keyed hash, below 2**52 so
    browsers (JavaScript numbers) keep it exact, never 0."""
    digest = hmac.new(pid_key.encode(), student_id.encode(), hashlib.sha256).digest()
    return (int.from_bytes(digest[:7], "big") >> 4) or 1


def new_token(pid: int) -> str:
    return f"{pid}-{secrets.token_urlsafe(18)}"


def token_owner(token: str) -> int | None:
    """The participant id a token was minted for (``None`` when it is not ours)."""
    head, sep, _ = token.partition("-")
    return int(head) if sep and head.isdigit() and len(head) <= 20 else None


def tokens_of(allowed: list[str], pid: int) -> list[str]:
    prefix = f"{pid}-"
    return [t for t in allowed if t.startswith(prefix)]


def plugin_data(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The VideoRoom answer inside a Janus message, or ``JanusError``."""
    if answer.get("janus") == "error":
        err = answer.get("error") or {}
        raise JanusError(int(err.get("code", 0)), str(err.get("reason", "error")))
    data = (answer.get("plugindata") or {}).get("data")
    if not isinstance(data, dict):
        raise UpstreamUnavailable(KIND, "janus: answer without plugin data")
    if "error_code" in data:
        raise JanusError(int(data["error_code"]), str(data.get("error", "error")))
    return data


def parse_participants(data: Mapping[str, Any]) -> list[Present]:
    out = []
    for p in data.get("participants") or []:
        if isinstance(p, dict) and "id" in p:
            out.append(Present(upstream_id=str(p["id"]), display_name=str(p.get("display", "")),
                               student_id=None, joined_at=None))
    return out


def audio_mids(attached: Mapping[str, Any]) -> list[str]:
    """Publisher mids of audio streams, from a subscriber's ``attached`` answer."""
    return [str(s["feed_mid"]) for s in attached.get("streams") or []
            if isinstance(s, dict) and s.get("type") == "audio" and "feed_mid" in s]


# --- I/O: one WebSocket, one session, one handle ---------------------------------------


class JanusClient:
    """A Janus session on one WebSocket, with a VideoRoom handle and keepalives."""

    def __init__(self, url: str, api_secret: str | None = None, *,
                 egress: EgressPolicy | None = None) -> None:
        self.url = url
        self._secret = api_secret
        self._egress = egress if egress is not None else EgressPolicy()
        self._ws: ClientConnection | None = None
        self._session: int | None = None
        self._handle: int | None = None
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def open(self) -> bool:
        return self._ws is not None and self._session is not None and bool(self._tasks)

    async def connect(self) -> None:
        import websockets

        parts = urlsplit(self.url)
        host = parts.hostname or ""
        try:
            # NOTE: the socket is opened here, to an address the egress policy allows;
            # websockets then refuses to follow any redirect (it cannot reuse the socket).
            sock = await open_checked_socket(
                self._egress, host, parts.port or (443 if parts.scheme == "wss" else 80),
                CALL_TIMEOUT_S)
        except EgressRefused as exc:
            log.warning("janus: connection refused by the egress policy: %s", exc)
            raise UpstreamUnavailable(KIND, "janus: platform unreachable") from None
        except (OSError, TimeoutError) as exc:
            log.warning("janus: cannot connect to %s: %s", parts.netloc, type(exc).__name__)
            raise UpstreamUnavailable(KIND, "janus: platform unreachable") from None
        try:
            self._ws = await asyncio.wait_for(
                websockets.connect(self.url, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                                   max_size=2**20, open_timeout=CALL_TIMEOUT_S, sock=sock,
                                   proxy=None),
                CALL_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError, websockets.WebSocketException) as exc:
            sock.close()
            log.warning("janus: handshake with %s failed: %s", parts.netloc, type(exc).__name__)
            raise UpstreamUnavailable(KIND, "janus: platform unreachable") from None
        reader = asyncio.create_task(self._read())
        self._tasks.add(reader)
        created = await self._call({"janus": "create"})
        self._session = int(created["data"]["id"])
        attached = await self._call({"janus": "attach", "session_id": self._session,
                                     "plugin": PLUGIN})
        self._handle = int(attached["data"]["id"])
        ka = asyncio.create_task(self._keepalive())
        self._tasks.add(ka)

    async def close(self) -> None:
        if self._ws is not None and self._session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.send(json.dumps(
                    {"janus": "destroy", "session_id": self._session,
                     "transaction": secrets.token_hex(8), **self._auth()})), 1.0)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2.0)
        self._ws = None
        self._session = None

    def _auth(self) -> dict[str, str]:
        return {"apisecret": self._secret} if self._secret else {}

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                try:
                    msg = json.loads(raw)
                except (ValueError, RecursionError):
                    continue
                if not isinstance(msg, dict) or msg.get("janus") == "ack":
                    continue  # plugin messages answer "ack" first, then the result
                tx = msg.get("transaction")
                if not isinstance(tx, str):
                    continue  # events Janus pushes on its own (e.g. "kicked")
                fut = self._waiters.pop(tx, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except Exception as exc:  # noqa: BLE001 - any end of the socket ends the session
            log.info("janus connection ended: %r", exc)
        finally:
            err = UpstreamUnavailable(KIND, "janus: connection lost")
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_exception(err)
            self._waiters.clear()
            self._session = None

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            if self._ws is None or self._session is None:
                return
            try:
                await self._ws.send(json.dumps({"janus": "keepalive", "session_id": self._session,
                                                "transaction": secrets.token_hex(8),
                                                **self._auth()}))
            except Exception:  # noqa: BLE001 - the reader notices and fails the waiters
                return

    async def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self._ws is None:
            raise UpstreamUnavailable(KIND, "janus: not connected")
        tx = secrets.token_hex(8)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[tx] = fut
        try:
            await self._ws.send(json.dumps({**msg, "transaction": tx, **self._auth()}))
            answer = await asyncio.wait_for(fut, CALL_TIMEOUT_S)
        except TimeoutError:
            raise UpstreamUnavailable(KIND, "janus: no answer in time") from None
        except UpstreamUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - websocket errors of every kind
            raise UpstreamUnavailable(KIND, f"janus: {type(exc).__name__}") from None
        finally:
            self._waiters.pop(tx, None)
        if answer.get("janus") == "error":
            err = answer.get("error") or {}
            raise JanusError(int(err.get("code", 0)), str(err.get("reason", "error")))
        return answer

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send one VideoRoom request on our handle; the plugin's answer data."""
        if self._session is None or self._handle is None:
            raise UpstreamUnavailable(KIND, "janus: session lost")
        answer = await self._call({"janus": "message", "session_id": self._session,
                                   "handle_id": self._handle, "body": body})
        return plugin_data(answer)

    async def mids_of(self, room: int, feed: int) -> list[str]:
        """Audio mids a publisher sends, found with a short-lived subscriber handle."""
        assert self._session is not None
        attached = await self._call({"janus": "attach", "session_id": self._session,
                                     "plugin": PLUGIN})
        handle = int(attached["data"]["id"])
        try:
            answer = await self._call({"janus": "message", "session_id": self._session,
                                       "handle_id": handle,
                                       "body": {"request": "join", "ptype": "subscriber",
                                                "room": room, "streams": [{"feed": feed}]}})
            return audio_mids(plugin_data(answer))
        finally:
            with contextlib.suppress(AdapterError):
                await self._call({"janus": "detach", "session_id": self._session,
                                  "handle_id": handle})


class JanusPool:
    """Long-lived Janus connections of one gateway process, keyed by URL and secret.

    Opened lazily, re-opened when Janus went away, closed by ``aclose`` (the gateway
    calls it in its cleanup context).
    """

    def __init__(self, egress: EgressPolicy | None = None) -> None:
        self._clients: dict[tuple[str, str | None], JanusClient] = {}
        self._lock = asyncio.Lock()
        self.egress = egress if egress is not None else EgressPolicy()

    async def get(self, url: str, api_secret: str | None) -> JanusClient:
        async with self._lock:
            client = self._clients.get((url, api_secret))
            if client is not None and client.open:
                return client
            if client is not None:
                await client.close()
            client = JanusClient(url, api_secret, egress=self.egress)
            await client.connect()
            self._clients[(url, api_secret)] = client
            return client

    async def aclose(self) -> None:
        async with self._lock:
            for client in self._clients.values():
                await client.close()
            self._clients.clear()


@dataclass(frozen=True, slots=True)
class _RoomRef:
    room: int
    secret: str
    pid_key: str
    ws_url: str
    api_secret: str | None
    client_url: str
    admin_key: str | None = None  # to create the room again after a Janus restart

    @classmethod
    def of(cls, room: Room) -> _RoomRef:
        if room.kind != KIND:
            raise AdapterError("invalid_room", f"room of kind {room.kind!r} given to {KIND}")
        d = room.data
        try:
            return cls(room=int(d["room"]), secret=str(d["secret"]), pid_key=str(d["pid_key"]),
                       ws_url=str(d["ws_url"]), api_secret=d.get("api_secret"),
                       client_url=str(d["client_url"]), admin_key=d.get("admin_key"))
        except (KeyError, TypeError, ValueError):
            raise AdapterError("invalid_room", "stored janus room is incomplete") from None


# --- the adapter ------------------------------------------------------------------------


class JanusAdapter(AdapterBase):
    """Janus VideoRoom: Janus itself refuses anyone without a ClassGuard token."""

    kind: ClassVar[str] = KIND
    # settings holding URLs the gateway itself calls (checked against the egress policy)
    egress_fields: ClassVar[tuple[str, ...]] = ("ws_url",)
    form_fields: ClassVar[tuple[FormField, ...]] = (
        FormField("ws_url", "url", required=True, placeholder="wss://janus.school.edu.vn/janus"),
        FormField("client_url", "url", required=True,
                  placeholder="https://janus.school.edu.vn/room.html?room={room}"),
        FormField("admin_key", "password"),
        FormField("api_secret", "password"),
        FormField("publishers", "text", placeholder="30", integer=True),
    )
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    features: ClassVar[frozenset[Feature]] = frozenset({
        Feature.IDENTIFY, Feature.CONSUME, Feature.EVICT, Feature.WEBHOOKS,
        Feature.ROOM_INDEX, Feature.POOL})
    webhooks: ClassVar[tuple[Webhook, ...]] = (HOOK,)

    def __init__(self, *, http_session: aiohttp.ClientSession | None = None,
                 clock: Clock = utc_now, pool: JanusPool | None = None,
                 egress: EgressPolicy | None = None) -> None:
        self._http = http_session
        self._clock = clock
        self._pool = pool
        self._egress = egress if egress is not None else (
            pool.egress if pool is not None else EgressPolicy())

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(settings, KIND, ("ws_url", "client_url", "admin_key", "api_secret",
                                    "publishers"))
        out: dict[str, Any] = {
            "kind": KIND,
            "ws_url": ws_url(settings, "ws_url"),
            "client_url": _check_template(settings.get("client_url")),
            "publishers": opt_int(settings, "publishers", 30, 1, 500),
        }
        for name in _SECRETS:
            value = req_secret(settings, name, min_len=4, required=False)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def redact(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        return mask(settings, _SECRETS)

    @classmethod
    def open_pool(cls, egress: EgressPolicy) -> JanusPool:
        return JanusPool(egress)

    def room_key(self, room: Room) -> str:
        """Room numbers are unique per server only, and the server is the teacher's to
        choose: a room is known by server and number."""
        return room_key_of(server_id(str(room.data["ws_url"])), room.upstream_id)

    def read_webhook(self, hook: Webhook, request: HookRequest,
                     room: Room | None) -> HookResult:
        server = hook_server_of(request.headers.get("Authorization", ""), request.secret)
        if server is None:
            raise HookRefused("not the credentials of a Janus server")
        try:
            data = json_bounded(request.body, max_depth=64)
        except ValueError:
            raise HookMalformed("expected JSON") from None
        return HookResult(events=tuple(hook_events(server, data)))

    @contextlib.asynccontextmanager
    async def _client(self, url: str, api_secret: str | None) -> AsyncIterator[JanusClient]:
        if self._pool is not None:
            client = await self._pool.get(url, api_secret)
            yield client
            return
        client = JanusClient(url, api_secret, egress=self._egress)
        try:
            await client.connect()
            yield client
        finally:
            await client.close()

    async def provision(self, spec: RoomSpec) -> Room:
        s = self.validate_settings(spec.settings)
        room_secret = secrets.token_urlsafe(24)
        body: dict[str, Any] = {
            "request": "create",
            "description": f"ClassGuard {spec.class_id}",
            "secret": room_secret,
            "is_private": True,  # not listed by "list"
            "allowed": [],  # ACL on and empty: nobody gets in without our token
            "publishers": s["publishers"],
            "permanent": False,
        }
        if "admin_key" in s:
            body["admin_key"] = s["admin_key"]
        async with self._client(s["ws_url"], s.get("api_secret")) as c:
            data = await c.request(body)
        room_id = int(data["room"])
        return Room(class_id=spec.class_id, kind=KIND, upstream_id=str(room_id), data={
            "room": room_id,
            "secret": room_secret,
            "pid_key": secrets.token_urlsafe(24),
            "ws_url": s["ws_url"],
            "api_secret": s.get("api_secret"),
            "client_url": s["client_url"],
            "admin_key": s.get("admin_key"),
        })

    async def _allowed(self, c: JanusClient, r: _RoomRef, action: str,
                       tokens: list[str]) -> list[str]:
        data = await c.request({"request": "allowed", "secret": r.secret, "room": r.room,
                                "action": action, "allowed": tokens})
        return [str(t) for t in data.get("allowed") or []]

    def participant_id(self, room: Room, student_id: str) -> int:
        return participant_id(_RoomRef.of(room).pid_key, student_id)

    def identify(self, room: Room, student_ids: Sequence[str]) -> dict[str, str]:
        """Upstream participant id -> student id, for the students given."""
        key = _RoomRef.of(room).pid_key
        return {str(participant_id(key, sid)): sid for sid in student_ids}

    async def join_url(self, room: Room, participant: Participant) -> str:
        r = _RoomRef.of(room)
        pid = participant_id(r.pid_key, participant.student_id)
        token = new_token(pid)
        async with self._client(r.ws_url, r.api_secret) as c:
            try:
                allowed = await self._allowed(c, r, "add", [token])
            except JanusError as exc:
                if exc.number != ERR_NO_SUCH_ROOM:
                    raise
                await self._recreate(c, r, room.class_id)
                allowed = await self._allowed(c, r, "add", [token])
            stale = [t for t in tokens_of(allowed, pid) if t != token]
            if stale:  # one live token per student: the latest admission
                await self._allowed(c, r, "remove", stale)
        return render_client_url(r.client_url, room=r.room, pid=pid, token=token,
                                 display=participant.display_name)

    async def consume(self, room: Room, upstream_ids: Sequence[str]) -> int:
        """Single use: drop the tokens of participants seen in the room. Returns how many."""
        r = _RoomRef.of(room)
        async with self._client(r.ws_url, r.api_secret) as c:
            allowed = await self._allowed(c, r, "add", [])
            used = [t for t in allowed if str(token_owner(t)) in set(upstream_ids)]
            if used:
                await self._allowed(c, r, "remove", used)
        return len(used)

    async def remove(self, room: Room, participant: Participant) -> None:
        r = _RoomRef.of(room)
        pid = participant_id(r.pid_key, participant.student_id)
        async with self._client(r.ws_url, r.api_secret) as c:
            allowed = await self._allowed(c, r, "add", [])
            mine = tokens_of(allowed, pid)
            if mine:
                await self._allowed(c, r, "remove", mine)
            await self._kick(c, r, pid)

    async def evict(self, room: Room, present: Present) -> None:
        """Kick someone found in the room (an intruder) by their upstream id."""
        r = _RoomRef.of(room)
        if not present.upstream_id.isdigit():
            raise AdapterError("invalid_participant", "janus participant ids are numbers")
        async with self._client(r.ws_url, r.api_secret) as c:
            await self._kick(c, r, int(present.upstream_id))

    @staticmethod
    async def _kick(c: JanusClient, r: _RoomRef, pid: int) -> None:
        try:
            await c.request({"request": "kick", "secret": r.secret, "room": r.room, "id": pid})
        except JanusError as exc:
            if exc.number != ERR_NO_SUCH_FEED:  # not in the room: nothing to kick
                raise

    async def mute(self, room: Room, participant: Participant | None = None) -> None:
        r = _RoomRef.of(room)
        async with self._client(r.ws_url, r.api_secret) as c:
            listed = await c.request({"request": "listparticipants", "room": r.room})
            people = [p for p in listed.get("participants") or [] if p.get("publisher")]
            if participant is not None:
                pid = participant_id(r.pid_key, participant.student_id)
                people = [p for p in people if int(p["id"]) == pid]
            for p in people:
                for mid in await c.mids_of(r.room, int(p["id"])):
                    await c.request({"request": "moderate", "secret": r.secret, "room": r.room,
                                     "id": int(p["id"]), "mid": mid, "mute": True})

    async def lock(self, room: Room, locked: bool = True) -> None:
        if not locked:
            return  # new tokens are minted again on the next admission
        r = _RoomRef.of(room)
        async with self._client(r.ws_url, r.api_secret) as c:
            allowed = await self._allowed(c, r, "add", [])
            if allowed:
                await self._allowed(c, r, "remove", allowed)

    async def end(self, room: Room) -> None:
        r = _RoomRef.of(room)
        async with self._client(r.ws_url, r.api_secret) as c:
            try:
                await c.request({"request": "destroy", "secret": r.secret, "room": r.room})
            except JanusError as exc:
                if exc.number != ERR_NO_SUCH_ROOM:
                    raise

    async def _recreate(self, c: JanusClient, r: _RoomRef, class_id: str) -> None:
        """Janus restarted and forgot the room: create it again under the same number
        and secret, its access list on and empty (tokens are added one by one, as
        before), so a class outlives a Janus restart."""
        body: dict[str, Any] = {"request": "create", "room": r.room, "secret": r.secret,
                                "description": f"ClassGuard {class_id}", "is_private": True,
                                "allowed": [], "permanent": False}
        if r.admin_key is not None:
            body["admin_key"] = r.admin_key
        await c.request(body)

    async def participants(self, room: Room) -> list[Present]:
        r = _RoomRef.of(room)
        async with self._client(r.ws_url, r.api_secret) as c:
            try:
                data = await c.request({"request": "listparticipants", "room": r.room})
            except JanusError as exc:
                # A Janus that restarted forgot the room: nobody can be in it.
                if exc.number != ERR_NO_SUCH_ROOM:
                    raise
                return []
        return parse_participants(data)
