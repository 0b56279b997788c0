"""A local implementation of the documented Microsoft Graph endpoints ClassGuard uses for
Teams meetings (not Microsoft's service; only what the published API reference describes):

* ``POST /{tenant}/oauth2/v2.0/token``: client-credentials grant (form body with
  ``client_id``, ``client_secret``, ``scope=https://graph.microsoft.com/.default``,
  ``grant_type=client_credentials``) -> ``{token_type, expires_in, access_token}``;
  ``401 {"error": "invalid_client", ...}`` for a wrong secret.
* ``POST /v1.0/users/{userId}/onlineMeetings`` (201), ``GET`` and ``PATCH
  /v1.0/users/{userId}/onlineMeetings/{meetingId}``: app-only calls are allowed only for
  users an application access policy was granted to (403 otherwise).
* ``GET .../onlineMeetings/{meetingId}/attendanceReports`` and
  ``.../attendanceReports/{reportId}/attendanceRecords``: pages of ``page_size`` items
  with ``@odata.nextLink``; 403 unless the app has ``OnlineMeetingArtifact.Read.All``.
* ``GET /l/meetup-join/{meetingId}``: stands for the Teams client opening the join link
  (everyone but the organizer waits in the lobby).

Errors have Graph's shape ``{"error": {"code", "message", "innerError": {"date",
"request-id", "client-request-id"}}}``; a missing or bad token is 401 with
``WWW-Authenticate``. ``fail_next`` queues throttling (429 with ``Retry-After``) and
server errors (503/504/500) for the next Graph calls.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
WWW_AUTHENTICATE = ('Bearer realm="", authorization_uri="https://login.microsoftonline.com/'
                    'common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"')


@dataclass
class Failure:
    status: int
    retry_after: str | None = None


@dataclass
class Meeting:
    id: str
    organizer: str
    body: dict[str, Any]
    reports: list[dict[str, Any]] = field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class FakeGraph(LoopbackServer):
    def __init__(self, tenant_id: str, client_id: str, client_secret: str,
                 organizer_id: str, *, rename_supported: bool = True,
                 artifacts_granted: bool = True, token_lifetime_s: int = 3599,
                 page_size: int = 2) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.organizer_id = organizer_id
        # users an application access policy was granted to (Grant-CsApplicationAccessPolicy)
        self.policy_users = {organizer_id}
        self.rename_supported = rename_supported
        self.artifacts_granted = artifacts_granted
        self.token_lifetime_s = token_lifetime_s
        self.page_size = page_size
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.bearers: list[str] = []  # every bearer token presented, valid or not
        self.meetings: dict[str, Meeting] = {}
        self.failures: list[Failure] = []
        # (method, path, monotonic time, status) of every Graph call
        self.calls: list[tuple[str, str, float, int]] = []
        self.app = web.Application(middlewares=[self._record])
        r = self.app.router
        r.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        r.add_post("/v1.0/users/{user}/onlineMeetings", self._create)
        r.add_get("/v1.0/users/{user}/onlineMeetings/{id}", self._get)
        r.add_patch("/v1.0/users/{user}/onlineMeetings/{id}", self._patch)
        r.add_get("/v1.0/users/{user}/onlineMeetings/{id}/attendanceReports", self._reports)
        r.add_get("/v1.0/users/{user}/onlineMeetings/{id}/attendanceReports/{rid}/"
                  "attendanceRecords", self._records)
        r.add_get("/l/meetup-join/{id}", self._join)

    # --- test controls ---------------------------------------------------------------

    def fail_next(self, status: int, *, retry_after: str | None = None, count: int = 1) -> None:
        self.failures.extend(Failure(status, retry_after) for _ in range(count))

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def add_report(self, meeting_id: str, attendees: list[dict[str, Any]]) -> str:
        """A session of the meeting is over: its attendance report, the organizer first."""
        m = self.meetings[meeting_id]
        rid = str(uuid.uuid4())
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        records = [{"id": self.organizer_id, "emailAddress": "teacher@school.example",
                    "role": "Organizer", "totalAttendanceInSeconds": 2700,
                    "identity": {"id": self.organizer_id, "displayName": "Cô Lan",
                                 "tenantId": self.tenant_id},
                    "attendanceIntervals": [{"joinDateTime": now, "leaveDateTime": now,
                                             "durationInSeconds": 2700}]}]
        for a in attendees:
            ident = {"id": a.get("id") or str(uuid.uuid4()), "displayName": a["name"],
                     "tenantId": a.get("tenant")}
            records.append({"id": ident["id"], "emailAddress": a.get("email"),
                            "role": a.get("role", "Attendee"), "totalAttendanceInSeconds": 600,
                            "identity": ident,
                            "attendanceIntervals": [{"joinDateTime": now, "leaveDateTime": now,
                                                     "durationInSeconds": 600}]})
        m.reports.append({"id": rid, "totalParticipantCount": len(records),
                          "meetingStartDateTime": now, "meetingEndDateTime": now})
        m.records[rid] = records
        return rid

    # --- plumbing --------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        graph = request.path.startswith("/v1.0/")
        if graph and self.failures:
            f = self.failures.pop(0)
            resp: web.StreamResponse = self._err(
                f.status, {429: "TooManyRequests", 503: "serviceNotAvailable",
                           504: "UnknownError"}.get(f.status, "InternalServerError"),
                "Please retry again later." if f.status in (429, 503) else "Error")
            if f.retry_after is not None:
                resp.headers["Retry-After"] = f.retry_after
        else:
            resp = await handler(request)
        if graph:
            self.calls.append((request.method, request.path, time.monotonic(), resp.status))
        return resp

    @staticmethod
    def _err(status: int, code: str, message: str) -> web.Response:
        rid = str(uuid.uuid4())
        return web.json_response({"error": {"code": code, "message": message, "innerError": {
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "request-id": rid,
            "client-request-id": rid}}}, status=status)

    def _auth(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        self.bearers.append(auth[7:])
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            resp = self._err(401, "InvalidAuthenticationToken",
                             "Access token is empty." if not auth else
                             "Lifetime validation failed, the token is expired.")
            resp.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
            return resp
        user = request.match_info.get("user", "")
        if user not in self.policy_users:
            return self._err(403, "Forbidden", "Application does not have permission to "
                             "access the online meetings of this user.")
        return None

    def _meeting(self, request: web.Request) -> Meeting | web.Response:
        m = self.meetings.get(unquote(request.match_info["id"]))
        if m is None or m.organizer != request.match_info["user"]:
            return self._err(404, "NotFound", "The specified meeting was not found.")
        return m

    def _view(self, m: Meeting) -> dict[str, Any]:
        return {"@odata.context": f"{self.base}/v1.0/$metadata#onlineMeetings/$entity",
                "id": m.id, **m.body,
                "joinWebUrl": f"{self.base}/l/meetup-join/{quote(m.id, safe='')}",
                "participants": {"organizer": {"identity": {"user": {
                    "id": m.organizer}}, "role": "presenter"}, "attendees": []}}

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        skip = int(request.query.get("$skiptoken") or 0)
        page = items[skip: skip + self.page_size]
        body: dict[str, Any] = {"@odata.context": f"{self.base}/v1.0/$metadata", "value": page}
        if skip + self.page_size < len(items):
            body["@odata.nextLink"] = (f"{self.base}{request.path}?$skiptoken="
                                       f"{skip + self.page_size}")
        return web.json_response(body)

    # --- endpoints -------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.match_info["tenant"] != self.tenant_id:
            return web.json_response({"error": "invalid_request",
                                      "error_description": "AADSTS90002: Tenant not found."},
                                     status=400)
        if form.get("grant_type") != "client_credentials" or form.get("scope") != GRAPH_SCOPE:
            return web.json_response({"error": "invalid_request",
                                      "error_description": "AADSTS900144: bad request."},
                                     status=400)
        if form.get("client_id") != self.client_id or \
                form.get("client_secret") != self.client_secret:
            return web.json_response({"error": "invalid_client", "error_description":
                                      "AADSTS7000215: Invalid client secret provided."},
                                     status=401)
        self.token_requests += 1
        token = base64.urlsafe_b64encode(secrets.token_bytes(24)).decode()
        self.tokens.add(token)
        return web.json_response({"token_type": "Bearer", "expires_in": self.token_lifetime_s,
                                  "ext_expires_in": self.token_lifetime_s,
                                  "access_token": token})

    async def _create(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        body = await request.json()
        if not self.rename_supported and "allowParticipantsToChangeName" in body:
            return self._err(400, "BadRequest",
                             "Invalid property 'allowParticipantsToChangeName'.")
        mid = "MSo" + base64.urlsafe_b64encode(
            f"1*{request.match_info['user']}*0**19:meeting_{secrets.token_hex(8)}"
            "@thread.v2".encode()).decode()
        kept = {k: v for k, v in body.items() if k != "participants"}
        self.meetings[mid] = Meeting(id=mid, organizer=request.match_info["user"], body=kept)
        return web.json_response(self._view(self.meetings[mid]), status=201)

    async def _get(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        m = self._meeting(request)
        return m if isinstance(m, web.Response) else web.json_response(self._view(m))

    async def _patch(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        m = self._meeting(request)
        if isinstance(m, web.Response):
            return m
        body = await request.json()
        if not self.rename_supported and "allowParticipantsToChangeName" in body:
            return self._err(400, "BadRequest",
                             "Invalid property 'allowParticipantsToChangeName'.")
        m.body.update(body)
        return web.json_response(self._view(m))

    async def _reports(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        if not self.artifacts_granted:
            return self._err(403, "Forbidden", "Application does not have permission.")
        m = self._meeting(request)
        return m if isinstance(m, web.Response) else self._page(request, m.reports)

    async def _records(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        if not self.artifacts_granted:
            return self._err(403, "Forbidden", "Application does not have permission.")
        m = self._meeting(request)
        if isinstance(m, web.Response):
            return m
        records = m.records.get(request.match_info["rid"])
        if records is None:
            return self._err(404, "NotFound", "The attendance report was not found.")
        return self._page(request, records)

    async def _join(self, request: web.Request) -> web.Response:
        m = self.meetings.get(unquote(request.match_info["id"]))
        if m is None:
            return web.Response(status=404, text="This meeting link is not valid")
        lobby = m.body.get("lobbyBypassSettings") or {}
        if lobby.get("scope") == "everyone":
            return web.Response(text="joined the meeting")
        return web.Response(text="Someone in the meeting should let you in soon")
