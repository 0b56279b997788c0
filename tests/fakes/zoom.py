"""A local stand-in for Zoom: the documented endpoints ClassGuard uses, nothing more.

* ``POST /oauth/token?grant_type=account_credentials&account_id=..`` with HTTP Basic
  client credentials (Server-to-Server OAuth) -> ``{access_token, token_type, expires_in}``
* ``POST /v2/users/{userId}/meetings``, ``GET /v2/meetings/{id}``
* ``POST /v2/meetings/{id}/registrants`` (``auto_approve``), ``GET`` the list,
  ``PUT /v2/meetings/{id}/registrants/status`` (``approve|cancel|deny``)
* ``PUT /v2/meetings/{id}/status`` (``end``)
* ``GET /w/{id}?tk=..``: stands for the Zoom client opening a registrant's link; 200 only
  for an approved registrant of a meeting that has not ended.

Bearer tokens are checked on every API call; webhooks are sent signed the documented way
(``x-zm-signature: v0=HMAC-SHA256(secret, "v0:{ts}:{body}")``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.loopback import LoopbackServer


class FakeZoom(LoopbackServer):
    def __init__(self, account_id: str, client_id: str, client_secret: str,
                 webhook_secret: str, host_user: str = "teacher@school.example") -> None:
        self.account_id = account_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.webhook_secret = webhook_secret
        self.host_user = host_user
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.meetings: dict[str, dict[str, Any]] = {}
        self.app = web.Application()
        r = self.app.router
        r.add_post("/oauth/token", self._token)
        r.add_post("/v2/users/{user}/meetings", self._create)
        r.add_get("/v2/meetings/{id}", self._get)
        r.add_post("/v2/meetings/{id}/registrants", self._register)
        r.add_get("/v2/meetings/{id}/registrants", self._registrants)
        r.add_put("/v2/meetings/{id}/registrants/status", self._status)
        r.add_put("/v2/meetings/{id}/status", self._meeting_status)
        r.add_get("/w/{id}", self._join)

    @staticmethod
    def _err(status: int, code: int, message: str) -> web.Response:
        return web.json_response({"code": code, "message": message}, status=status)

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.tokens

    async def _token(self, request: web.Request) -> web.Response:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.json_response({"reason": "Invalid client_id or client_secret",
                                      "error": "invalid_client"}, status=400)
        if request.query.get("grant_type") != "account_credentials" or \
                request.query.get("account_id") != self.account_id:
            return web.json_response({"reason": "Invalid request", "error": "invalid_request"},
                                     status=400)
        self.token_requests += 1
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return web.json_response({"access_token": token, "token_type": "bearer",
                                  "expires_in": 3599, "scope": "meeting:write:admin"})

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._err(401, 124, "Invalid access token.")
        if request.match_info["user"] != self.host_user:
            return self._err(404, 1001, "User does not exist.")
        body = await request.json()
        mid = str(80000000000 + len(self.meetings) + secrets.randbelow(10**6))
        self.meetings[mid] = {"body": body, "registrants": {}, "status": "waiting",
                              "id": int(mid)}
        return web.json_response({
            "id": int(mid), "topic": body.get("topic"), "type": body.get("type"),
            "join_url": f"{self.base}/j/{mid}",
            "registration_url": f"{self.base}/meeting/register/{mid}",
            "start_url": f"{self.base}/s/{mid}?zak=secret", "settings": body.get("settings", {}),
        }, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._err(401, 124, "Invalid access token.")
        m = self.meetings.get(request.match_info["id"])
        if m is None:
            return self._err(404, 3001, "Meeting does not exist.")
        return web.json_response({"id": m["id"], "status": m["status"],
                                  "settings": m["body"].get("settings", {})})

    async def _register(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._err(401, 124, "Invalid access token.")
        m = self.meetings.get(request.match_info["id"])
        if m is None:
            return self._err(404, 3001, "Meeting does not exist.")
        body = await request.json()
        if not body.get("email") or not body.get("first_name"):
            return self._err(400, 300, "Validation Failed.")
        settings = m["body"].get("settings", {})
        regs = m["registrants"]
        reg = regs.get(body["email"])
        if reg is None:
            rid = secrets.token_urlsafe(9)
            approved = settings.get("approval_type") == 0 or body.get("auto_approve") is True
            reg = {"id": rid, "email": body["email"], "first_name": body["first_name"],
                   "last_name": body.get("last_name", ""), "tk": secrets.token_urlsafe(24),
                   "status": "approved" if approved else "pending"}
            regs[body["email"]] = reg
        return web.json_response({"id": m["id"], "registrant_id": reg["id"],
                                  "join_url": f"{self.base}/w/{request.match_info['id']}?tk="
                                              f"{reg['tk']}"}, status=201)

    async def _registrants(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._err(401, 124, "Invalid access token.")
        m = self.meetings.get(request.match_info["id"])
        if m is None:
            return self._err(404, 3001, "Meeting does not exist.")
        status = request.query.get("status", "approved")
        regs = [{k: v for k, v in r.items() if k != "tk"} for r in m["registrants"].values()
                if r["status"] == status]
        return web.json_response({"registrants": regs, "total_records": len(regs)})

    async def _status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._err(401, 124, "Invalid access token.")
        m = self.meetings.get(request.match_info["id"])
        if m is None:
            return self._err(404, 3001, "Meeting does not exist.")
        body = await request.json()
        action = body.get("action")
        new = {"approve": "approved", "cancel": "denied", "deny": "denied"}.get(action)
        if new is None:
            return self._err(400, 300, "Invalid action.")
        for item in body.get("registrants") or []:
            for reg in m["registrants"].values():
                if item.get("id") == reg["id"] or item.get("email") == reg["email"]:
                    reg["status"] = new
        return web.Response(status=204)

    async def _meeting_status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._err(401, 124, "Invalid access token.")
        m = self.meetings.get(request.match_info["id"])
        if m is None:
            return self._err(404, 3001, "Meeting does not exist.")
        if (await request.json()).get("action") != "end":
            return self._err(400, 300, "Invalid action.")
        m["status"] = "finished"
        return web.Response(status=204)

    async def _join(self, request: web.Request) -> web.Response:
        m = self.meetings.get(request.match_info["id"])
        tk = request.query.get("tk", "")
        if m is None or m["status"] == "finished":
            return web.Response(status=404, text="This meeting has ended")
        for reg in m["registrants"].values():
            if tk and hmac.compare_digest(reg["tk"], tk):
                if reg["status"] != "approved":
                    return web.Response(status=403, text="Your registration was not approved")
                return web.Response(text=f"joining as {reg['first_name']} {reg['last_name']}")
        return web.Response(status=403, text="Please register for this meeting")

    # --- webhooks --------------------------------------------------------------------

    def signed(self, event: dict[str, Any], ts: int | None = None) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(event).encode()
        stamp = str(ts if ts is not None else int(time.time() * 1000))
        sig = hmac.new(self.webhook_secret.encode(), b"v0:" + stamp.encode() + b":" + body,
                       hashlib.sha256).hexdigest()
        return body, {"x-zm-request-timestamp": stamp, "x-zm-signature": f"v0={sig}",
                      "Content-Type": "application/json"}

    def participant_event(self, mid: str, *, email: str, name: str,
                          event: str = "participant_joined") -> dict[str, Any]:
        return {"event": f"meeting.{event}", "event_ts": int(time.time() * 1000),
                "payload": {"account_id": self.account_id, "object": {
                    "id": int(mid), "uuid": "u" + mid, "host_id": "h1",
                    "participant": {"user_id": secrets.token_hex(4), "user_name": name,
                                    "id": secrets.token_hex(6), "email": email,
                                    "join_time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()),
                                    "participant_user_id": secrets.token_hex(6)}}}}

    async def post(self, url: str, event: dict[str, Any]) -> tuple[int, Any]:
        body, headers = self.signed(event)
        async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text
