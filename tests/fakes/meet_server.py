"""A local implementation of the documented Google Meet REST API v2 (and of the OAuth
token endpoint and Admin SDK ``users.get`` it needs), for tests: not Google's service.

Implemented, as the public references describe them:

* ``POST /token``: the JWT bearer grant (``grant_type=urn:ietf:params:oauth:grant-type:
  jwt-bearer``, ``assertion`` = RS256 JWT of a known service account with ``iss``,
  ``sub``, ``scope``, ``aud``, ``iat``, ``exp`` at most an hour apart); the signature is
  verified with the account's public key, the subject and scopes against the
  domain-wide delegation the fake was given. Errors as ``{"error", "error_description"}``.
* ``POST /v2/spaces`` (``config.accessType``, ``config.entryPointAccess``),
  ``GET /v2/spaces/{id}``, ``PATCH /v2/spaces/{id}?updateMask=..``,
  ``POST /v2/spaces/{id}:endActiveConference``
* ``GET /v2/conferenceRecords?filter=space.name = "spaces/.." AND end_time IS NULL``
* ``GET /v2/conferenceRecords/{id}/participants?filter=latest_end_time IS NULL``
  (``signedinUser`` / ``anonymousUser`` / ``phoneUser``)
* ``GET /directory/v1/users/{id}?viewType=domain_public`` -> ``primaryEmail``

Lists page with ``pageSize`` / ``pageToken`` / ``nextPageToken``. Errors use Google's
shape ``{"error": {"code", "message", "status", "details"}}``: 401 ``UNAUTHENTICATED``
with ``WWW-Authenticate: Bearer``, 403 ``PERMISSION_DENIED``, 404 ``NOT_FOUND``, 429
``RESOURCE_EXHAUSTED`` (with ``Retry-After`` when asked), 503 ``UNAVAILABLE``.
``fail_next`` queues such answers for the next API calls.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.loopback import LoopbackServer

GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MEET_SCOPES = {"https://www.googleapis.com/auth/meetings.space.created",
               "https://www.googleapis.com/auth/meetings.space.readonly"}
DIRECTORY_SCOPE = "https://www.googleapis.com/auth/admin.directory.user.readonly"
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
          404: "NOT_FOUND", 409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED",
          500: "INTERNAL", 503: "UNAVAILABLE"}


def new_service_account(email: str = "classguard@school-project.iam.gserviceaccount.com"
                        ) -> tuple[dict[str, str], rsa.RSAPublicKey]:
    """A service account JSON key (as Google's console downloads it) and its public key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    key = {"type": "service_account", "project_id": "school-project",
           "private_key_id": secrets.token_hex(20), "private_key": pem,
           "client_email": email, "client_id": str(10**20 + secrets.randbelow(10**20)),
           "auth_uri": "https://accounts.google.com/o/oauth2/auth",
           "token_uri": "https://oauth2.googleapis.com/token"}
    return key, private.public_key()


@dataclass
class Conference:
    name: str
    space: str
    start: str
    end: str | None = None
    participants: list[dict[str, Any]] = field(default_factory=list)


class FakeMeet(LoopbackServer):
    def __init__(self, key: dict[str, str], public_key: rsa.RSAPublicKey, *,
                 delegated: dict[str, set[str]], directory: dict[str, str] | None = None,
                 token_lifetime_s: int = 3599, page_size_cap: int = 100,
                 now: Callable[[], float] = time.time) -> None:
        self.now = now  # Google's clock (tests may move it with the gateway's)
        self.key = key
        self.public_key = public_key
        # domain-wide delegation as granted in the Admin console: subject -> scopes
        self.delegated = delegated
        self.directory = directory or {}  # user id -> primary e-mail
        self.token_lifetime_s = token_lifetime_s
        self.page_size_cap = page_size_cap
        self.tokens: dict[str, tuple[set[str], str, float]] = {}
        self.token_requests = 0
        self.assertions: list[dict[str, Any]] = []
        self.spaces: dict[str, dict[str, Any]] = {}
        self.conferences: dict[str, Conference] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_next: list[tuple[int, dict[str, str]]] = []
        self.app = web.Application()
        r = self.app.router
        r.add_post("/token", self._token)
        r.add_post("/v2/spaces", self._create)
        r.add_route("*", "/v2/spaces/{rest}", self._space)
        r.add_get("/v2/conferenceRecords", self._records)
        r.add_get("/v2/conferenceRecords/{id}/participants", self._participants)
        r.add_get("/directory/v1/users/{id}", self._user)

    # --- the room, driven by the tests --------------------------------------------

    def start_conference(self, space: str) -> Conference:
        name = f"conferenceRecords/{secrets.token_hex(8)}"
        conf = Conference(name, space, _now())
        self.conferences[name] = conf
        self.spaces[space]["activeConference"] = {"conferenceRecord": name}
        return conf

    def join(self, conf: Conference, *, signed_in: tuple[str, str] | None = None,
             anonymous: str | None = None, phone: str | None = None) -> dict[str, Any]:
        """Someone enters: ``signed_in`` = (user id, display name)."""
        row: dict[str, Any] = {"name": f"{conf.name}/participants/{secrets.token_hex(6)}",
                               "earliestStartTime": _now()}
        if signed_in is not None:
            row["signedinUser"] = {"user": f"users/{signed_in[0]}", "displayName": signed_in[1]}
        elif phone is not None:
            row["phoneUser"] = {"displayName": phone}
        else:
            row["anonymousUser"] = {"displayName": anonymous or "Anonymous"}
        conf.participants.append(row)
        return row

    @staticmethod
    def leave(row: dict[str, Any]) -> None:
        row["latestEndTime"] = _now()

    # --- helpers -------------------------------------------------------------------

    @staticmethod
    def error(code: int, message: str, status: str | None = None,
              headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message,
                                            "status": status or STATUS.get(code, "UNKNOWN"),
                                            "details": []}}, status=code, headers=headers)

    def _auth(self, request: web.Request, scopes: set[str]) -> web.Response | None:
        self.calls.append((request.method, request.path_qs))
        if self.fail_next:
            code, headers = self.fail_next.pop(0)
            return self.error(code, "injected failure", headers=headers)
        auth = request.headers.get("Authorization", "")
        tok = self.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if tok is None or tok[2] < self.now():
            return self.error(401, "Request had invalid authentication credentials.",
                              headers={"WWW-Authenticate": 'Bearer realm="https://accounts.'
                                       'google.com/", error="invalid_token"'})
        if not scopes & tok[0]:
            return self.error(403, "Request had insufficient authentication scopes.")
        return None

    def _page(self, request: web.Request, items: list[Any], field: str) -> web.Response:
        try:
            size = min(int(request.query.get("pageSize", "25")), self.page_size_cap)
            start = int(request.query.get("pageToken") or "0")
        except ValueError:
            return self.error(400, "Invalid page token or size.")
        body: dict[str, Any] = {field: items[start:start + size]}
        if start + size < len(items):
            body["nextPageToken"] = str(start + size)
        return web.json_response(body)

    # --- OAuth ---------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != GRANT:
            return web.json_response({"error": "unsupported_grant_type",
                                      "error_description": "Invalid grant_type"}, status=400)
        try:
            claims = jwt.decode(str(form.get("assertion", "")), self.public_key,
                                algorithms=["RS256"], audience=f"{self.base}/token",
                                issuer=self.key["client_email"],
                                options={"require": ["iat", "exp", "iss", "aud", "scope"],
                                         "verify_exp": False, "verify_iat": False})
        except jwt.PyJWTError as exc:
            return web.json_response({"error": "invalid_grant",
                                      "error_description": f"Invalid JWT: {exc}"}, status=400)
        header = jwt.get_unverified_header(str(form["assertion"]))
        if header.get("kid") != self.key["private_key_id"] or \
                claims["exp"] - claims["iat"] > 3600 or claims["iat"] > self.now() + 60 or \
                claims["exp"] < self.now():
            return web.json_response({"error": "invalid_grant", "error_description":
                                      "Invalid JWT: Token must be a short-lived token (60 "
                                      "minutes) and in a reasonable timeframe."}, status=400)
        scopes = set(str(claims["scope"]).split())
        allowed = self.delegated.get(str(claims.get("sub")), set())
        if not scopes or not scopes <= allowed:
            return web.json_response({"error": "unauthorized_client", "error_description":
                                      "Client is unauthorized to retrieve access tokens "
                                      "using this method, or client not authorized for any "
                                      "of the scopes requested."}, status=401)
        self.assertions.append(claims)
        self.token_requests += 1
        token = "ya29." + secrets.token_urlsafe(24)
        self.tokens[token] = (scopes, str(claims["sub"]), self.now() + self.token_lifetime_s)
        return web.json_response({"access_token": token, "expires_in": self.token_lifetime_s,
                                  "token_type": "Bearer"})

    def expire_tokens(self) -> None:
        """Google revokes or expires every token early (the client must get a new one)."""
        self.tokens.clear()

    # --- spaces --------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        if (refused := self._auth(request, {"https://www.googleapis.com/auth/meetings.space."
                                            "created"})) is not None:
            return refused
        body = await request.json() if request.can_read_body else {}
        config = dict(body.get("config") or {})
        if config.get("accessType") not in (None, "OPEN", "TRUSTED", "RESTRICTED") or \
                config.get("entryPointAccess") not in (None, "ALL", "CREATOR_APP_ONLY"):
            return self.error(400, "Invalid value for config.")
        config.setdefault("accessType", "TRUSTED")
        config.setdefault("entryPointAccess", "ALL")
        sid = secrets.token_urlsafe(9).replace("-", "a").replace("_", "b")
        code = "-".join(secrets.token_hex(2)[:n] for n in (3, 4, 3))
        space: dict[str, Any] = {"name": f"spaces/{sid}", "meetingUri": f"https://meet.google.com/{code}",
                                 "meetingCode": code, "config": config}
        self.spaces[space["name"]] = space
        return web.json_response(space)

    async def _space(self, request: web.Request) -> web.Response:
        rest = request.match_info["rest"]
        sid, _, verb = rest.partition(":")
        name = f"spaces/{sid}"
        if (refused := self._auth(request, MEET_SCOPES)) is not None:
            return refused
        space = self.spaces.get(name)
        if space is None:
            return self.error(404, "Requested entity was not found.")
        if request.method == "GET" and not verb:
            return web.json_response(space)
        if request.method == "PATCH" and not verb:
            body = await request.json()
            for path in request.query.get("updateMask", "").split(","):
                if path.startswith("config.") and path[7:] in (body.get("config") or {}):
                    space["config"][path[7:]] = body["config"][path[7:]]
            return web.json_response(space)
        if request.method == "POST" and verb == "endActiveConference":
            active = space.pop("activeConference", None)
            if active is None:
                return self.error(400, "No active conference.", "FAILED_PRECONDITION")
            conf = self.conferences[active["conferenceRecord"]]
            conf.end = _now()
            for row in conf.participants:
                row.setdefault("latestEndTime", conf.end)
            return web.json_response({})
        return self.error(404, "Method not found.")

    # --- conference records ----------------------------------------------------------

    async def _records(self, request: web.Request) -> web.Response:
        if (refused := self._auth(request, MEET_SCOPES)) is not None:
            return refused
        flt = request.query.get("filter", "")
        m = re.fullmatch(r'\s*space\.name\s*=\s*"([^"]+)"(\s+AND\s+end_time\s+IS\s+NULL)?\s*',
                         flt)
        if flt and m is None:
            return self.error(400, "Invalid filter.")
        records = sorted(self.conferences.values(), key=lambda c: c.start, reverse=True)
        if m is not None:
            records = [c for c in records if c.space == m.group(1)
                       and (m.group(2) is None or c.end is None)]
        items = [{"name": c.name, "space": c.space, "startTime": c.start,
                  **({"endTime": c.end} if c.end else {})} for c in records]
        return self._page(request, items, "conferenceRecords")

    async def _participants(self, request: web.Request) -> web.Response:
        if (refused := self._auth(request, MEET_SCOPES)) is not None:
            return refused
        conf = self.conferences.get(f"conferenceRecords/{request.match_info['id']}")
        if conf is None:
            return self.error(404, "Requested entity was not found.")
        flt = request.query.get("filter", "")
        rows = conf.participants
        if flt.replace(" ", "") == "latest_end_timeISNULL":
            rows = [r for r in rows if "latestEndTime" not in r]
        elif flt:
            return self.error(400, "Invalid filter.")
        return self._page(request, rows, "participants")

    # --- Admin SDK directory ---------------------------------------------------------

    async def _user(self, request: web.Request) -> web.Response:
        if (refused := self._auth(request, {DIRECTORY_SCOPE})) is not None:
            return refused
        email = self.directory.get(request.match_info["id"])
        if email is None:
            return self.error(404, "Resource Not Found: userKey")
        return web.json_response({"kind": "admin#directory#user",
                                  "id": request.match_info["id"], "primaryEmail": email})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
