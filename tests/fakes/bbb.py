"""A local stand-in for a BigBlueButton server: the documented API subset ClassGuard uses.

Implements ``create``, ``join``, ``getMeetingInfo``, ``isMeetingRunning``, ``end`` and the
bbb-webhooks calls ``hooks/create``, ``hooks/list``, ``hooks/destroy``, with XML answers
shaped like the documentation's. Like a real server it checks every call's checksum
(call name + query string exactly as sent + shared secret; the digest length selects
SHA-1/256/384/512 among the algorithms it is configured to accept) and refuses joins
without the meeting's current ``createTime``. Callbacks are signed as bbb-webhooks
documents: SHA-1 of callback URL + ``event=...&timestamp=...`` + secret.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web

from tests.fakes.loopback import LoopbackServer

_LENGTHS = {40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}


@dataclass
class Meeting:
    params: dict[str, str]
    create_time: str
    internal_id: str
    attendees: dict[str, dict[str, str]] = field(default_factory=dict)


class FakeBigBlueButton(LoopbackServer):
    def __init__(self, secret: str, algorithms: tuple[str, ...] = ("sha1", "sha256")) -> None:
        self.secret = secret
        self.algorithms = algorithms
        self.meetings: dict[str, Meeting] = {}
        self.hooks: dict[str, dict[str, str]] = {}
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/bigbluebutton/api/{call:.+}", self._handle)
        self.app.router.add_get("/client/{token}", self._client)

    async def start(self) -> str:
        """Start serving; the API's URL."""
        await super().start()
        return f"{self.base}/bigbluebutton/api/"

    # --- helpers ---------------------------------------------------------------------

    @staticmethod
    def _xml(body: str, code: str = "SUCCESS", status: int = 200) -> web.Response:
        return web.Response(text=f"<response><returncode>{code}</returncode>{body}</response>",
                            content_type="text/xml", status=status)

    def _fail(self, key: str, message: str) -> web.Response:
        return self._xml(f"<messageKey>{key}</messageKey><message>{escape(message)}</message>",
                         "FAILED")

    def _checksum_ok(self, call: str, raw_query: str) -> bool:
        parts = raw_query.split("&") if raw_query else []
        sent = [p for p in parts if p.startswith("checksum=")]
        if len(sent) != 1:
            return False
        received = sent[0][len("checksum="):]
        query = "&".join(p for p in parts if not p.startswith("checksum="))
        alg = _LENGTHS.get(len(received))
        if alg is None or alg not in self.algorithms:
            return False
        expected = hashlib.new(alg, (call + query + self.secret).encode()).hexdigest()
        return secrets.compare_digest(expected, received)

    # --- API -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        call = request.match_info["call"]
        raw = request.rel_url.raw_query_string
        params = dict(parse_qsl(raw, keep_blank_values=True))
        params.pop("checksum", None)
        self.calls.append((call, params))
        if not self._checksum_ok(call, raw):
            return self._fail("checksumError", "You did not pass the checksum security check")
        handler = {
            "create": self._create, "join": self._join, "getMeetingInfo": self._info,
            "isMeetingRunning": self._running, "end": self._end,
            "hooks/create": self._hook_create, "hooks/list": self._hook_list,
            "hooks/destroy": self._hook_destroy,
        }.get(call)
        if handler is None:
            return self._fail("unsupportedRequest", "This request is not supported.")
        return await handler(params)

    async def _create(self, p: dict[str, str]) -> web.Response:
        mid = p.get("meetingID")
        if not mid:
            return self._fail("missingParamMeetingID", "You must specify a meeting ID")
        m = self.meetings.get(mid)
        extra = ""
        if m is None:
            m = Meeting(params=p, create_time=str(int(time.time() * 1000)),
                        internal_id=hashlib.sha1(mid.encode()).hexdigest() + "-" +  # noqa: S324
                        str(int(time.time() * 1000)))
            self.meetings[mid] = m
        else:
            extra = ("<messageKey>duplicateWarning</messageKey>"
                     "<message>This conference was already in existence.</message>")
        return self._xml(f"<meetingID>{escape(mid)}</meetingID>"
                         f"<internalMeetingID>{m.internal_id}</internalMeetingID>"
                         f"<createTime>{m.create_time}</createTime>{extra}")

    async def _join(self, p: dict[str, str]) -> web.StreamResponse:
        m = self.meetings.get(p.get("meetingID", ""))
        if m is None:
            return self._fail("invalidMeetingIdentifier", "The meeting ID does not exist")
        if "createTime" in p and p["createTime"] != m.create_time:
            return self._fail("mismatchCreateTimeParam",
                              "The createTime parameter submitted mismatches")
        if not p.get("fullName"):
            return self._fail("missingParamFullName", "You must specify a name")
        role = p.get("role", "").upper()
        if role not in ("VIEWER", "MODERATOR"):
            role = "MODERATOR" if p.get("password") == m.params.get("moderatorPW") else (
                "VIEWER" if p.get("password") == m.params.get("attendeePW") else "")
        if not role:
            return self._fail("invalidPassword", "You must specify a role or password")
        if p.get("guest") == "true" and m.params.get("guestPolicy") == "ALWAYS_DENY":
            return self._fail("guestDeny", "Guests are not allowed")
        uid = p.get("userID") or f"w_{secrets.token_hex(4)}"
        m.attendees[uid] = {"fullName": p["fullName"], "role": role,
                            "internal": f"w_{secrets.token_hex(5)}"}
        token = secrets.token_hex(8)
        await self.emit(m, "user-joined", {"user": {"external-user-id": uid,
                                                     "name": p["fullName"], "role": role}})
        if p.get("redirect", "true") == "true":
            raise web.HTTPFound(f"{self.base}/client/{token}")
        return self._xml(f"<meetingID>{escape(p['meetingID'])}</meetingID>"
                         f"<user_id>{m.attendees[uid]['internal']}</user_id>"
                         f"<session_token>{token}</session_token>"
                         f"<url>{self.base}/client/{token}</url>")

    async def _client(self, request: web.Request) -> web.Response:
        return web.Response(text="BigBlueButton client")

    async def _info(self, p: dict[str, str]) -> web.Response:
        m = self.meetings.get(p.get("meetingID", ""))
        if m is None:
            return self._fail("notFound", "A meeting with that ID does not exist")
        people = "".join(
            f"<attendee><userID>{escape(uid)}</userID><fullName>{escape(a['fullName'])}"
            f"</fullName><role>{a['role']}</role><internalUserID>{a['internal']}"
            f"</internalUserID></attendee>" for uid, a in m.attendees.items())
        metas = "".join(f"<{k[5:]}>{escape(v)}</{k[5:]}>" for k, v in m.params.items()
                        if k.startswith("meta_"))
        return self._xml(f"<meetingID>{escape(m.params['meetingID'])}</meetingID>"
                         f"<createTime>{m.create_time}</createTime><running>true</running>"
                         f"<participantCount>{len(m.attendees)}</participantCount>"
                         f"<attendees>{people}</attendees><metadata>{metas}</metadata>")

    async def _running(self, p: dict[str, str]) -> web.Response:
        running = "true" if p.get("meetingID") in self.meetings else "false"
        return self._xml(f"<running>{running}</running>")

    async def _end(self, p: dict[str, str]) -> web.Response:
        m = self.meetings.pop(p.get("meetingID", ""), None)
        if m is None:
            return self._fail("notFound", "We could not find a meeting with that meeting ID")
        return self._xml("<messageKey>sentEndMeetingRequest</messageKey>"
                         "<message>A request to end the meeting was sent.</message>")

    async def _hook_create(self, p: dict[str, str]) -> web.Response:
        url = p.get("callbackURL")
        if not url:
            return self._fail("missingParamCallbackURL", "You must specify a callbackURL")
        for hid, h in self.hooks.items():
            if h["callbackURL"] == url:
                return self._xml(f"<hookID>{hid}</hookID><messageKey>duplicateWarning"
                                 "</messageKey><message>There is already a hook for this "
                                 "callback URL.</message>")
        hid = str(len(self.hooks) + 1)
        self.hooks[hid] = {"callbackURL": url, "meetingID": p.get("meetingID", "")}
        return self._xml(f"<hookID>{hid}</hookID><permanentHook>false</permanentHook>"
                         "<rawData>false</rawData>")

    async def _hook_list(self, p: dict[str, str]) -> web.Response:
        hooks = "".join(f"<hook><hookID>{hid}</hookID><callbackURL><![CDATA["
                        f"{h['callbackURL']}]]></callbackURL></hook>"
                        for hid, h in self.hooks.items())
        return self._xml(f"<hooks>{hooks}</hooks>")

    async def _hook_destroy(self, p: dict[str, str]) -> web.Response:
        if self.hooks.pop(p.get("hookID", ""), None) is None:
            return self._fail("destroyMissingHook", "The hook informed was not found.")
        return self._xml("<removed>true</removed>")

    # --- test controls ---------------------------------------------------------------

    def expire(self, meeting_id: str) -> None:
        """What BBB does to a meeting nobody joined within a few minutes."""
        self.meetings.pop(meeting_id, None)

    async def emit(self, m: Meeting, event_id: str, attributes: dict[str, Any]) -> None:
        """POST an event to the hooks of this meeting, signed like bbb-webhooks."""
        for h in list(self.hooks.values()):
            if h["meetingID"] not in ("", m.params["meetingID"]):
                continue
            event = json.dumps([{"data": {"type": "event", "id": event_id, "attributes": {
                "meeting": {"internal-meeting-id": m.internal_id,
                            "external-meeting-id": m.params["meetingID"]}, **attributes},
                "event": {"ts": int(time.time() * 1000)}}}])
            form = {"event": event, "timestamp": str(int(time.time() * 1000))}
            joined = "&".join(f"{k}={v}" for k, v in form.items())
            sig = hashlib.sha1((h["callbackURL"] + joined + self.secret).encode()).hexdigest()  # noqa: S324
            sep = "&" if "?" in h["callbackURL"] else "?"
            try:
                async with aiohttp.ClientSession() as s, s.post(
                    f"{h['callbackURL']}{sep}checksum={sig}", data=urlencode(form),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp:
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                pass  # bbb-webhooks retries later; the tests look at presence polls too
