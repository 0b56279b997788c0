"""A staff member's own account: changing the password (page and API).

An account created or reset with a one-time password must change it before anything
else: every other staff route answers 403 ``password_change_required`` and every staff
page leads here (``auth.authenticate``, ``pages.staff_page``). A change ends every
session of the account; the one it was made from gets a fresh session at once.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from .. import i18n
from ..auth import Principal, require_user
from ..errors import ApiError, rate_limited
from ..passwords import MIN_LENGTH
from ..services import services
from ..staff import StaffError
from ..web_util import client_ip, read_json, require_fields
from .pages import page_lang, page_response, safe_next
from .session import set_session_cookie

CHANGE_PAGE = "/account/password"


async def _change(request: web.Request, p: Principal, current: object,
                  new: object) -> tuple[str | None, str | None]:
    """Change ``p``'s password; (new cookie, new CSRF token) for a session, else Nones.
    Raises ``StaffError`` for a wrong current or unusable new password."""
    svc = services(request)
    if not isinstance(current, str) or not isinstance(new, str):
        raise StaffError("invalid_body", "passwords must be strings", "password")
    ip = client_ip(request, svc.settings.trusted_proxies)
    # NOTE: a wrong current password fails inside the intent, so it leaves
    # ``intent.failed`` (with the code) next to the login regulation's own count.
    async with svc.auditor.intended(
            "staff.password_changed", actor=p.actor, org=p.org, subject=f"user:{p.username}",
            facts={"via": p.via, "forced": p.must_change_password},
            personal={"ip": ip, "ua": request.headers.get("User-Agent", "")[:512] or None}):
        user = await svc.staff.change_password(p.username, current, new, ip=ip)
    if p.via != "session":
        return None, None
    cookie, csrf, _session = await svc.staff.create_session(
        user, ip=ip, user_agent=request.headers.get("User-Agent", ""))
    return cookie, csrf


def _api_error(exc: StaffError) -> ApiError:
    if exc.code == "regulated":
        return rate_limited(exc.retry_after or 1)
    # The store names its own fields; the request's are current_password and new_password.
    field = "new_password" if exc.field == "password" else exc.field
    return ApiError(exc.status, exc.code, exc.message, field=field)


async def api_change_password(request: web.Request) -> web.Response:
    """``POST /api/v1/account/password`` ``{"current_password", "new_password"}``."""
    p = await require_user(request, allow_must_change=True)
    data = require_fields(await read_json(request),
                          required=("current_password", "new_password"))
    try:
        cookie, csrf = await _change(request, p, data["current_password"],
                                     data["new_password"])
    except StaffError as exc:
        raise _api_error(exc) from exc
    resp = web.json_response({"ok": True, "csrf_token": csrf})
    if cookie is not None:
        set_session_cookie(request, resp, cookie)
    return resp


async def _page_user(request: web.Request) -> Principal:
    p = await require_user(request, csrf=request.method != "GET", allow_must_change=True)
    if p.via != "session":
        raise ApiError(400, "invalid_body", "this page is for signed-in staff")
    return p


async def password_page(request: web.Request) -> web.StreamResponse:
    lang = page_lang(request)
    try:
        p = await _page_user(request)
    except ApiError as exc:
        if exc.status != 401:
            raise
        raise web.HTTPSeeOther("/login?next=" + quote(request.path_qs, safe="")) from exc
    return page_response(request, "account_password.html", lang, user=p, error=None,
                         next=safe_next(request.query.get("next")), forced=p.must_change_password)


_PROBLEM_KEYS = {
    "too_short": "account.pw_too_short",
    "too_long": "account.pw_too_long",
    "contains_username": "account.pw_contains_username",
    "common": "account.pw_common",
    "repetitive": "account.pw_repetitive",
}


async def password_submit(request: web.Request) -> web.StreamResponse:
    lang = page_lang(request)
    try:
        p = await _page_user(request)
    except ApiError as exc:
        if exc.status != 401:
            raise
        raise web.HTTPSeeOther("/login") from exc
    form = await request.post()
    nxt = safe_next(str(form.get("next", "")) or None)
    current = str(form.get("current_password", ""))[:1025]
    new = str(form.get("new_password", ""))[:1025]
    again = str(form.get("new_password_again", ""))[:1025]
    error = None
    status = 400
    if new != again:
        error = i18n.t(lang, "account.pw_mismatch")
    else:
        try:
            cookie, _csrf = await _change(request, p, current, new)
        except StaffError as exc:
            status = exc.status
            if exc.code == "weak_password":
                error = i18n.t(lang, _PROBLEM_KEYS.get(exc.problem or "", "account.pw_weak"),
                               min=MIN_LENGTH)
            elif exc.code == "wrong_password":
                error = i18n.t(lang, "account.pw_wrong_current")
            elif exc.code == "regulated":
                error = i18n.t(lang, "login.regulated", seconds=exc.retry_after or 60)
            else:
                error = i18n.t(lang, "error.bad_request")
        else:
            resp = web.HTTPSeeOther(nxt)
            assert cookie is not None
            set_session_cookie(request, resp, cookie)
            raise resp
    return page_response(request, "account_password.html", lang, status=status, user=p,
                         error=error, next=nxt, forced=p.must_change_password)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/v1/account/password", api_change_password)
    r.add_get(CHANGE_PAGE, password_page)
    r.add_post(CHANGE_PAGE, password_submit)
