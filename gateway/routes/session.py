"""Staff sign-in and sign-out (cookie session + CSRF token)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..auditing import milestone
from ..auth import SESSION_COOKIE, authenticate
from ..errors import ApiError, rate_limited
from ..joinflow import RATE_LIMIT_AUDIT_WINDOW_S
from ..oidc import OidcStore
from ..services import services
from ..signin import complete_primary_sign_in, set_pending_cookie
from ..stores import Limit
from ..web_util import client_ip, read_json, require_fields


class SecondFactorRequired(ApiError):
    """The password was right; the account's second factor comes next."""

    def __init__(self, pending: str, methods: tuple[str, ...]) -> None:
        super().__init__(401, "second_factor_required", "prove your second factor: "
                         "POST /api/v1/session/second-factor",
                         extra={"methods": list(methods)})
        self.pending = pending


def set_session_cookie(request: web.Request, resp: web.StreamResponse, value: str) -> None:
    svc = services(request)
    resp.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=svc.settings.session_ttl_s,
        httponly=True,
        secure=svc.settings.cookie_secure,
        samesite="Strict",
        path="/",
    )


# Sign-in attempts per address, whatever their outcome (each costs a password hash).
# NOTE: generous for a school whose staff sign in from one NAT address at the bell.
SIGN_INS_PER_S = 2.0
SIGN_INS_BURST = 100


async def _audit_refused(request: web.Request, ip: str, code: str, username: str) -> None:
    """A refused sign-in, audited per source, outcome and window in aggregate.

    NOTE: as garbage at /j/: the first refusal from an address in a window is recorded,
    then the 10th, 100th, ... with the count so far, so a flood of wrong passwords
    (or of attempts refused by regulation or the rate limit) cannot fill the log."""
    svc = services(request)
    n, first = await svc.store.count_refusals(f"login:{code}:{ip}",
                                              RATE_LIMIT_AUDIT_WINDOW_S)
    if not milestone(n):
        return
    await svc.auditor.record(
        "staff.login_failed", actor="visitor", reason=code, ip=ip,
        user_agent=request.headers.get("User-Agent", ""),
        personal={"username": username[:128]},
        facts={"count": n, "window_s": RATE_LIMIT_AUDIT_WINDOW_S,
               "first_at": int(first * 1000)},
    )


async def login_user(
    request: web.Request, username: str, password: str
) -> tuple[str, str, dict[str, Any]]:
    """Shared by the API and the sign-in page: (cookie, csrf, user json) or ApiError."""
    svc = services(request)
    if not isinstance(username, str) or not isinstance(password, str) or len(username) > 128 \
            or len(password) > 1024:
        raise ApiError(400, "invalid_body", "username and password must be short strings")
    ip = client_ip(request, svc.settings.trusted_proxies)
    wait = await svc.store.rate_limit(
        [Limit(f"login:ip:{ip}", per_second=SIGN_INS_PER_S, burst=SIGN_INS_BURST)])
    if wait > 0:
        svc.metrics.rate_limited.labels("login").inc()
        await _audit_refused(request, ip, "rate_limited", username)
        raise rate_limited(wait)
    await _refuse_if_passwords_off(request, ip, username)
    res = await svc.staff.login(username, password, ip=ip)
    if not res.ok:
        await _audit_refused(request, ip, res.code, username)
        if res.code == "regulated":
            raise rate_limited(res.retry_after or 1)
        raise ApiError(401, "invalid_credentials", "wrong username or password")
    assert res.user is not None
    done = await complete_primary_sign_in(request, res.user, failures=res.failures)
    if done.pending is not None:
        raise SecondFactorRequired(done.pending, done.methods)
    assert done.cookie is not None and done.csrf is not None
    cookie, csrf = done.cookie, done.csrf
    user = {"username": res.user.username, "role": res.user.role, "org": res.user.org,
            **account_notices(res.user.must_change_password, res.failures.count,
                              res.failures.recent)}
    return cookie, csrf, user


async def _refuse_if_passwords_off(request: web.Request, ip: str, username: str) -> None:
    """403 ``password_sign_in_off`` for an account whose org signs in only through its
    OpenID provider (gateway/oidc.py).

    NOTE: asked before the password is checked, so a password is never confirmed for such
    an account; the price is that the refusal shows the username exists (and costs no
    password hash, so nothing can be guessed through it)."""
    svc = services(request)
    assert svc.staff is not None and svc.secretbox is not None
    user = await svc.staff.get_user(username)
    if user is None:
        return
    store = OidcStore(svc.redis, svc.secretbox, prefix=svc.settings.redis_prefix)
    if await store.passwords_allowed(user.org, await svc.staff.org_ancestors(user.org)):
        return
    await _audit_refused(request, ip, "password_sign_in_off", username)
    raise ApiError(403, "password_sign_in_off",
                   "password sign-in is turned off for this organisation; "
                   "sign in with its identity provider")


def account_notices(must_change: bool, failed: int,
                    recent: tuple[tuple[float, str], ...]) -> dict[str, Any]:
    """What the owner must know at sign-in: a password to change, and the failed sign-ins
    at the account since the last successful one (newest first)."""
    return {"must_change_password": must_change,
            "failed_logins": {"count": failed,
                              "recent": [{"at": t, "ip": ip} for t, ip in recent]}}


async def post_session(request: web.Request) -> web.Response:
    data = require_fields(await read_json(request), required=("username", "password"))
    try:
        cookie, csrf, user = await login_user(request, data["username"], data["password"])
    except SecondFactorRequired as exc:
        pending = web.json_response({"error": {"code": exc.code, "message": exc.message,
                                               "methods": exc.extra["methods"]}}, status=401)
        set_pending_cookie(request, pending, exc.pending)
        return pending
    resp = web.json_response({"user": user, "csrf_token": csrf})
    set_session_cookie(request, resp, cookie)
    return resp


async def delete_session(request: web.Request) -> web.Response:
    svc = services(request)
    p = await authenticate(request, allow_must_change=True)
    cookie = request.cookies.get(SESSION_COOKIE)
    if p is not None and cookie:
        await svc.staff.revoke_session(cookie)
    resp = web.Response(status=204)
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/session", post_session)
    app.router.add_delete("/api/v1/session", delete_session)
