"""Who is calling: a bearer token (scripts) or a session cookie plus CSRF header."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .app import services
from .errors import ApiError
from .staff import check_csrf
from .web_util import read_form

SESSION_COOKIE = "cg_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Principal:
    username: str
    role: str  # teacher | it | admin
    org: str
    via: str  # bearer | session
    session_id: str | None = None
    csrf_token: str | None = None

    @property
    def actor(self) -> str:
        return f"user:{self.username}"


async def authenticate(request: web.Request, *, csrf: bool = True) -> Principal | None:
    svc = services(request)
    assert svc.staff is not None
    auth = request.headers.get("Authorization", "")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthenticated", "malformed Authorization header")
        user = await svc.staff.resolve_bearer(token.strip())
        if user is None:
            raise ApiError(401, "unauthenticated", "invalid or revoked token")
        return Principal(user.username, user.role, user.org, "bearer")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    session = await svc.staff.load_session(cookie)
    if session is None:
        return None
    if csrf and request.method not in SAFE_METHODS:
        header = request.headers.get("X-CSRF-Token", "")
        if not header and request.content_type == "application/x-www-form-urlencoded":
            form = await read_form(request)
            header = str(form.get("csrf_token", ""))
        if not check_csrf(session, header):
            raise ApiError(403, "csrf_failed", "missing or wrong CSRF token")
    return Principal(
        session.username,
        session.role,
        session.org,
        "session",
        session_id=session.sid_hash,
        csrf_token=session.csrf_token,
    )


async def require_user(request: web.Request, *, csrf: bool = True) -> Principal:
    p = await authenticate(request, csrf=csrf)
    if p is None:
        raise ApiError(401, "unauthenticated", "sign in first")
    return p
