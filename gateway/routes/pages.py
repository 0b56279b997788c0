"""Server-rendered staff pages: sign-in, sign-out, language, my classes.

Shared page machinery lives here too (``page_response``, ``staff_page``): every staff
page is rendered on the server with the viewer's language and role-aware navigation;
JSON APIs do the work, small vanilla JS modules in ``gateway/static`` call them.
The other page modules (teacher, IT, administrator) import this one; gateway/app.py
registers them right after it.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import hdrs, web
from babel.dates import format_datetime

from policies import Reason
from policies.model import DEFAULT_TIMEZONE

from .. import i18n
from ..auth import SESSION_COOKIE, Principal, authenticate
from ..authz import Action, allows
from ..errors import ApiError
from ..evidence_report import offset_label
from ..hostctl import visible_classes
from ..services import FOUNDATION, services
from ..signin import set_pending_cookie
from .session import SecondFactorRequired, login_user, set_session_cookie

DEFAULT_TZ = DEFAULT_TIMEZONE
LANG_COOKIE_MAX_AGE = 365 * 86400
PageHandler = Callable[[web.Request, Principal, str], Awaitable[web.StreamResponse]]


# --- formatting (Jinja filters) ---------------------------------------------------------

# English pages write dates day first, as the date inputs do (dd/mm/yyyy) and as
# Vietnamese readers expect: "5/12/26" never means 12 May.
_DATE_LOCALE = {"en": "en_GB"}


def format_when(value: Any, lang: str, tz: str = DEFAULT_TZ, fmt: str = "medium") -> str:
    """A timestamp (a datetime, unix seconds or ms, or ISO 8601) in the viewer's locale
    and time zone."""
    if value is None or value == "":
        return ""
    try:
        if isinstance(value, datetime):
            dt = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        elif isinstance(value, str):
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
        else:
            ts = float(value)
            if ts > 1e11:  # milliseconds
                ts /= 1000.0
            dt = datetime.fromtimestamp(ts, UTC)
        return str(format_datetime(dt, fmt, tzinfo=ZoneInfo(tz),
                                   locale=_DATE_LOCALE.get(lang, lang)))
    except (ValueError, TypeError, OverflowError, LookupError):
        return str(value)


def zone_label(tz: str) -> str:
    """``Asia/Ho_Chi_Minh, UTC+7``: a time zone's name and its offset now."""
    try:
        zone = ZoneInfo(tz)
    except (ValueError, LookupError):
        return tz
    return f"{tz}, {offset_label(zone, int(datetime.now(UTC).timestamp() * 1000))}"


def safe_next(value: str | None) -> str:
    """Only same-site paths may be a post-sign-in destination (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/classes"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/classes"
    return value


def nav_items(p: Principal | None) -> list[tuple[str, str]]:
    """(path, catalogue key) of the sections this role may use."""
    if p is None or p.must_change_password:
        return []
    items: list[tuple[str, str]] = []
    if allows(p, Action.HOST_CLASS):
        items.append(("/classes", "nav.classes"))
    if allows(p, Action.READ_AUDIT):
        items.append(("/audit", "nav.audit"))
    if allows(p, Action.MANAGE_ORG_BANS):
        items.append(("/bans", "nav.bans"))
    if allows(p, Action.VIEW_CLASS):
        items.append(("/incidents", "nav.incidents"))
    if allows(p, Action.MANAGE_STAFF):
        items += [("/admin/staff", "nav.staff"), ("/admin/keys", "nav.keys")]
    if allows(p, Action.MANAGE_ORGS):
        items.append(("/admin/sign-in", "nav.signin_settings"))
    if allows(p, Action.SET_ORG_POLICY):
        items.append(("/admin/rules", "nav.rules"))
    return items


def page_response(request: web.Request, name: str, lang: str, *, status: int = 200,
                  user: Principal | None = None, **ctx: Any) -> web.Response:
    """Render a page (``remember_lang`` keeps an explicit ``?lang=`` choice)."""
    svc = services(request)
    # The language switch keeps the rest of the address (``next``, audit filters, ...).
    other = "en" if lang == "vi" else "vi"
    kept = [(k, v) for k, v in request.query.items() if k != "lang"]
    html = svc.templates.get_template(name).render(
        lang=lang, user=user, nav=nav_items(user), path=request.path,
        lang_switch=request.path + "?" + urlencode([*kept, ("lang", other)]),
        csrf_token=(user.csrf_token or "") if user else "", **ctx)
    return web.Response(text=html, content_type="text/html", status=status)


def not_found_page(request: web.Request) -> web.Response:
    """The not-found page, in the visitor's language, for a browser that asked for an
    address no route serves."""
    lang = page_lang(request)
    return page_response(request, "error.html", lang, status=404,
                         message=i18n.t(lang, "error.not_found"))


async def remember_lang(request: web.Request, response: web.StreamResponse) -> None:
    """An explicit ``?lang=`` choice on any page, the students' pages included, is
    remembered in a cookie, so the next page (the waiting room after the short-code
    page, the meeting hand-off) speaks the same language."""
    q = request.query.get("lang")
    if (q not in i18n.LANGS or request.cookies.get(i18n.LANG_COOKIE) == q
            or response.content_type != "text/html"
            or isinstance(response, web.WebSocketResponse)):
        return
    # The headers are already built when this signal runs: add the cookie header itself.
    jar: SimpleCookie = SimpleCookie()
    jar[i18n.LANG_COOKIE] = q
    morsel = jar[i18n.LANG_COOKIE]
    morsel.update({"max-age": str(LANG_COOKIE_MAX_AGE), "path": "/", "samesite": "Lax"})
    morsel["httponly"] = True
    if services(request).settings.cookie_secure:
        morsel["secure"] = True
    response.headers.add(hdrs.SET_COOKIE, morsel.OutputString())


def page_lang(request: web.Request) -> str:
    return i18n.request_lang(request, services(request).settings.default_lang)


def staff_page(action: Action) -> Callable[[PageHandler], Callable[
        [web.Request], Awaitable[web.StreamResponse]]]:
    """A page for signed-in staff who may do ``action`` (gateway/authz.py, on something
    of their own): redirects to sign-in, and renders API errors (404 not yours, 403 not
    allowed) as a page in the viewer's language."""

    def wrap(fn: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            lang = page_lang(request)
            p = await authenticate(request, csrf=False, allow_must_change=True)
            if p is None:
                raise web.HTTPSeeOther("/login?next=" + quote(request.path_qs, safe=""))
            if p.must_change_password:
                raise web.HTTPSeeOther(change_password_url(request.path_qs))
            if not allows(p, action):
                return page_response(request, "error.html", lang, status=403, user=p,
                                     message=i18n.t(lang, "error.forbidden"))
            try:
                return await fn(request, p, lang)
            except ApiError as exc:
                if exc.status not in (400, 403, 404, 409):
                    raise
                key = {404: "error.not_found", 403: "error.forbidden"}.get(
                    exc.status, "error.bad_request")
                return page_response(request, "error.html", lang, status=exc.status, user=p,
                                     message=i18n.t(lang, key))
        handler.__name__ = fn.__name__
        handler.__doc__ = fn.__doc__
        return handler

    return wrap


# --- sign-in, sign-out ------------------------------------------------------------------

LOGIN_CSRF_COOKIE = "cg_login_csrf"


def _login_form(request: web.Request, lang: str, *, status: int = 200, error: str | None,
                username: str, nxt: str) -> web.Response:
    """The sign-in form with a fresh double-submit token (no login CSRF: another site
    cannot sign a teacher's browser into an account it controls)."""
    token = secrets.token_urlsafe(16)
    resp = page_response(request, "login.html", lang, status=status, error=error,
                         username=username, next=nxt, login_csrf=token)
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True,
                    secure=services(request).settings.cookie_secure, samesite="Strict",
                    path="/login")
    return resp


def change_password_url(nxt: str) -> str:
    """The forced password change, then on to ``nxt``."""
    return "/account/password?next=" + quote(safe_next(nxt), safe="")


async def login_page(request: web.Request) -> web.StreamResponse:
    lang = page_lang(request)
    p = await authenticate(request, csrf=False, allow_must_change=True)
    if p is not None:
        raise web.HTTPSeeOther(home_of(p))
    return _login_form(request, lang, error=None, username="",
                       nxt=safe_next(request.query.get("next")))


def home_of(p: Principal) -> str:
    home = "/classes" if allows(p, Action.HOST_CLASS) else "/audit"
    return change_password_url(home) if p.must_change_password else home


async def login_submit(request: web.Request) -> web.StreamResponse:
    lang = page_lang(request)
    form = await request.post()
    username = str(form.get("username", ""))[:128]
    password = str(form.get("password", ""))[:1024]
    nxt = safe_next(str(form.get("next", "")) or None)
    sent = str(form.get("csrf_token", ""))
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _login_form(request, lang, status=403, error=i18n.t(lang, "login.expired"),
                           username=username, nxt=nxt)
    try:
        cookie, _csrf, user = await login_user(request, username, password)
    except SecondFactorRequired as exc:
        step = web.HTTPSeeOther("/login/second-factor?" + urlencode({"next": nxt, "lang": lang}))
        set_pending_cookie(request, step, exc.pending)
        step.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
        raise step from None
    except ApiError as exc:
        if exc.status == 429:
            secs = exc.headers.get("Retry-After", "60")
            msg = i18n.t(lang, "login.regulated", seconds=secs)
        elif exc.status == 400:
            msg = i18n.t(lang, "login.bad_input")
        elif exc.code == "password_sign_in_off":
            msg = i18n.t(lang, "oidc.password_off")
        else:
            msg = i18n.t(lang, "login.failed")
        resp = _login_form(request, lang, status=exc.status, error=msg, username=username,
                           nxt=nxt)
        resp.headers.update(exc.headers)
        return resp
    if nxt == "/classes" and not allows(
            Principal(str(user["username"]), str(user["role"]), str(user["org"]), "session"),
            Action.HOST_CLASS):
        nxt = "/audit"
    if user.get("must_change_password"):
        nxt = change_password_url(nxt)
    resp = web.HTTPSeeOther(nxt)
    set_session_cookie(request, resp, cookie)
    resp.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
    raise resp


async def logout(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        # authenticate() checks the form's csrf_token: nobody can sign a teacher out
        # from another site.
        p = await authenticate(request, allow_must_change=True)
        if p is not None:
            await svc.staff.revoke_session(cookie)
    # Signed in through the org's OpenID provider: a page offers its sign-out too.
    oidc_org = request.cookies.get("cg_oidc_org", "")
    resp = web.HTTPSeeOther("/auth/oidc/signed-out?" + urlencode({"org": oidc_org})
                            if oidc_org else "/login")
    resp.del_cookie(SESSION_COOKIE, path="/")
    raise resp


async def set_lang(request: web.Request) -> web.StreamResponse:
    """``GET /lang/{lang}?next=/path``: switch language (cookie) and go back."""
    svc = services(request)
    lang = request.match_info["lang"]
    if lang not in i18n.LANGS:
        raise ApiError(404, "not_found", "no such language")
    resp = web.HTTPSeeOther(safe_next(request.query.get("next")))
    resp.set_cookie(i18n.LANG_COOKIE, lang, max_age=LANG_COOKIE_MAX_AGE, httponly=True,
                    secure=svc.settings.cookie_secure, samesite="Lax", path="/")
    raise resp


# --- my classes ---------------------------------------------------------------------------

@staff_page(Action.VIEW_CLASS)
async def classes_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    infos = sorted(await visible_classes(svc, p), key=lambda i: i.schedule.starts_at,
                   reverse=True)
    return page_response(request, "classes.html", lang, user=p, classes=infos,
                         can_create=allows(p, Action.CREATE_CLASS))


async def favicon(request: web.Request) -> web.StreamResponse:
    """Browsers ask for ``/favicon.ico`` on documents without an icon link (the link
    sheet PDF, JSON errors); answer with the page icon instead of a logged 404."""
    resp = web.FileResponse(Path(__file__).parent.parent / "static" / "favicon.svg")
    resp.content_type = "image/svg+xml"
    resp.headers["Cache-Control"] = "public, max-age=86400"
    return resp


async def root(request: web.Request) -> web.StreamResponse:
    p = await authenticate(request, csrf=False, allow_must_change=True)
    raise web.HTTPSeeOther(home_of(p) if p else "/login")


# Student refusals after which trying the same link again can help.
RETRY_REASONS = ("outside_schedule", "rate_limited", "class_locked", "capacity_reached",
                 "platform_down", "go_unknown", "go_not_admitted", "dependency_down")


def install_filters(env: jinja2.Environment, timezone: str) -> None:
    """Filters and globals of every template, the student pages (rendered by
    ``routes.join``) included."""
    env.filters["when"] = format_when
    env.globals["langs"] = i18n.LANGS
    # the zone of times on pages (a page about one class passes its own as ``tz``)
    env.globals["tz"] = timezone
    env.globals["zone_label"] = zone_label
    env.globals["reasons"] = [r.value for r in Reason]
    env.globals["retry_reasons"] = RETRY_REASONS
    env.globals["advice_keys"] = frozenset(
        k for k in i18n.catalogue("vi") if k.startswith("advice."))


def setup(app: web.Application) -> None:
    found = app[FOUNDATION]
    install_filters(found.templates, found.settings.timezone)
    app.on_response_prepare.append(remember_lang)
    r = app.router
    r.add_get("/", root)
    r.add_get("/favicon.ico", favicon)
    r.add_get("/login", login_page)
    r.add_post("/login", login_submit)
    r.add_post("/logout", logout)
    r.add_get("/lang/{lang}", set_lang)
    r.add_get("/classes", classes_page)
