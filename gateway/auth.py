"""Who is calling: a bearer token (scripts) or a session cookie plus CSRF header."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from .auditing import milestone
from .errors import ApiError, Refusal
from .mfa import touch_session
from .services import services
from .staff import check_csrf
from .staff_secrets import parse_api_token
from .web_util import client_ip, read_form

log = logging.getLogger("classguard.auth")

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
    must_change_password: bool = False
    # Failed sign-ins at the account before this session began (shown to the owner).
    failed_logins: int = 0
    failed_recent: tuple[tuple[float, str], ...] = ()
    # Bearer tokens: the token's id, so a socket it opened closes when it is revoked.
    token_id: str | None = None
    # What gateway/authz.py reads. Requests never carry a disabled account (its sessions
    # and tokens are refused below); a long-lived socket re-reads the account.
    disabled: bool = False

    @property
    def actor(self) -> str:
        return f"user:{self.username}"


# Who the request turned out to be, once known (even when the request is then refused).
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


def password_change_required() -> ApiError:
    return ApiError(403, "password_change_required",
                    "choose a new password first: POST /api/v1/account/password")


async def authenticate(request: web.Request, *, csrf: bool = True,
                       allow_must_change: bool = False) -> Principal | None:
    """Who is calling, or None. A session of an account that must change its password is
    refused (403 ``password_change_required``) unless ``allow_must_change``: only the
    password change itself, sign-out and the pages that lead there allow it.

    NOTE: bearer tokens are not held back by the flag: they are issued by the operator
    on the command line, separately from the password, expire and can be revoked."""
    svc = services(request)
    auth = request.headers.get("Authorization", "")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthenticated", "malformed Authorization header")
        user = await svc.staff.resolve_bearer(token.strip())
        if user is None:
            raise ApiError(401, "unauthenticated", "invalid or revoked token")
        parsed = parse_api_token(token.strip())
        p = Principal(user.username, user.role, user.org, "bearer",
                      token_id=parsed[0] if parsed else None)
        request[PRINCIPAL] = p
        return p
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    session = await svc.staff.load_session(cookie)
    if session is None:
        return None
    # NOTE: disabling an account ends its sessions, but a sign-in that was under way at
    # that moment can still write one afterwards: the account itself is asked, as a
    # bearer token's is (StaffStore.resolve_bearer).
    account = await svc.staff.get_user(session.username)
    if account is None or account.disabled:
        return None
    p = Principal(
        session.username,
        session.role,
        session.org,
        "session",
        session_id=session.sid_hash,
        csrf_token=session.csrf_token,
        must_change_password=session.must_change_password,
        failed_logins=session.failed_logins,
        failed_recent=session.failed_recent,
    )
    request[PRINCIPAL] = p
    assert svc.redis is not None
    await touch_session(svc.redis, svc.settings.redis_prefix, session.sid_hash, svc.clock())
    if csrf and request.method not in SAFE_METHODS:
        header = request.headers.get("X-CSRF-Token", "")
        if not header and request.content_type == "application/x-www-form-urlencoded":
            form = await read_form(request)
            header = str(form.get("csrf_token", ""))
        if not check_csrf(session, header):
            raise ApiError(403, "csrf_failed", "missing or wrong CSRF token")
    if p.must_change_password and not allow_must_change:
        raise password_change_required()
    return p


async def require_user(request: web.Request, *, csrf: bool = True,
                       allow_must_change: bool = False) -> Principal:
    p = await authenticate(request, csrf=csrf, allow_must_change=allow_must_change)
    if p is None:
        raise ApiError(401, "unauthenticated", "sign in first")
    return p


# Refusals recorded one by one per staff member per minute; beyond, at the 100th,
# 1000th... with the count.
STAFF_REFUSALS_PER_MINUTE = 30

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def refusal_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record ``staff.refused`` for every 403 and every ``Refusal`` (a class that is not
    the caller's answers 404) given to a signed-in staff member, before the error
    middleware answers it. Students and visitors (no staff credential) are not staff:
    their refusals are join events.

    NOTE: a teacher probing other classes, IT staff trying host actions, a cross-site
    request riding a session (``csrf_failed``, ``bad_origin``) are in the audit trail,
    rate-limited per staff member so the refusals cannot flood the log."""
    try:
        return await handler(request)
    except ApiError as exc:
        if is_staff_refusal(request, exc):
            try:
                await record_refusal(request, exc)
            except Exception as rec_exc:  # noqa: BLE001 - the refusal itself still stands
                log.warning("could not record a staff refusal: %r", rec_exc)
        raise


def is_staff_refusal(request: web.Request, exc: ApiError) -> bool:
    return PRINCIPAL in request and (exc.status == 403 or isinstance(exc, Refusal))


async def record_refusal(request: web.Request, exc: ApiError) -> None:
    """Append the ``staff.refused`` event for ``exc`` (see ``refusal_middleware``)."""
    svc = services(request)
    p = request[PRINCIPAL]
    ip = client_ip(request, svc.settings.trusted_proxies)
    n, _first = await svc.store.count_refusals(f"staff:{p.username}", 60)
    if n > STAFF_REFUSALS_PER_MINUTE and not milestone(n):
        return
    class_id = exc.class_id if isinstance(exc, Refusal) else None
    org = exc.org if isinstance(exc, Refusal) else None
    if class_id is None and request.match_info.get("class_id"):
        info = await svc.store.get_class(request.match_info["class_id"])
        if info is not None:
            class_id, org = info.id, info.org
    if org is None:
        org = p.org
    resource = request.match_info.route.resource
    await svc.auditor.record(
        "staff.refused", actor=p.actor, org=org, class_id=class_id, reason=exc.code,
        ip=ip, user_agent=request.headers.get("User-Agent", ""),
        facts={"status": exc.status, "method": request.method,
               "route": resource.canonical if resource is not None else None,
               "via": p.via,
               "count": n if n > STAFF_REFUSALS_PER_MINUTE else None},
    )
