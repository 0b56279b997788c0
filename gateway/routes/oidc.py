"""Staff sign-in through the org's OpenID provider (gateway/oidc.py), its settings API.

    GET  /auth/oidc/start?email=|org=&next=   redirect to the provider (PKCE, state, nonce)
    GET  /auth/oidc/callback                  the provider's answer: session, or a refusal
    GET  /auth/oidc/continue?next=            after the callback: moves on, same-site
    GET  /auth/oidc/signed-out?org=           after sign-out: offers the provider's sign-out
    GET|PUT|DELETE /api/v1/orgs/{org}/oidc    the org's provider (administrators)
    PUT  /api/v1/orgs/{org}/oidc/emails       link an account to its email (administrators)
"""

from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from yarl import URL

from .. import i18n
from ..auth import Principal
from ..authz import Action
from ..errors import ApiError
from ..oidc import (
    CALLBACK_PATH,
    Identity,
    OidcRefused,
    OidcStore,
    OrgOidc,
    authorization_url,
    client_secret_basic,
    email_domain,
    fetch_json,
    identity_of,
    normalize_email,
    parse_settings,
    username_candidates,
    validate_id_token,
)
from ..services import Services, services
from ..signin import complete_primary_sign_in, set_pending_cookie
from ..staff import StaffError, User
from ..web_util import client_ip, read_json, require_fields
from .orgs import org_staff
from .pages import home_of, page_lang, page_response, safe_next
from .session import _audit_refused, set_session_cookie

log = logging.getLogger("classguard.oidc")

CONTINUE_PATH = "/auth/oidc/continue"
STATE_COOKIE = "cg_oidc_state"
ORG_COOKIE = "cg_oidc_org"


def oidc_store(svc: Services) -> OidcStore:
    assert svc.secretbox is not None
    return OidcStore(svc.redis, svc.secretbox, prefix=svc.settings.redis_prefix, clock=svc.clock)


def _http(svc: Services) -> aiohttp.ClientSession:
    assert svc.http is not None
    return svc.http


def redirect_uri(svc: Services) -> str:
    return svc.settings.public_url.rstrip("/") + CALLBACK_PATH


async def refusal_page(request: web.Request, exc: OidcRefused, *, org: str | None = None,
                       who: str = "") -> web.Response:
    """The refusal, audited as a failed sign-in (aggregated per source like the password
    form's), and a page saying what happened in the visitor's language."""
    svc = services(request)
    ip = client_ip(request, svc.settings.trusted_proxies)
    log.info("OpenID sign-in refused (%s): %s", exc.code, exc.detail)
    await _audit_refused(request, ip, f"oidc_{exc.code}", who or (f"org:{org}" if org else ""))
    lang = page_lang(request)
    key = f"oidc.error.{exc.code}"
    message = i18n.t(lang, key) if i18n.t(lang, key) != key else i18n.t(lang, "oidc.error.other")
    resp = page_response(request, "oidc_error.html", lang, status=exc.status,
                         title=i18n.t(lang, "oidc.error.title"), message=message,
                         code=exc.code)
    resp.del_cookie(STATE_COOKIE, path="/auth/oidc")
    return resp


async def start(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    store = oidc_store(svc)
    email = normalize_email(request.query.get("email", ""))[:254]
    org = request.query.get("org", "")[:64]
    if not org and email:
        org = await store.org_of_domain(email_domain(email)) or ""
    settings = await store.get(org) if org else None
    if settings is None:
        return await refusal_page(request, OidcRefused("unknown_domain", email or org,
                                                       status=403), who=email)
    try:
        doc = await store.discovery(_http(svc), settings)
    except OidcRefused as exc:
        return await refusal_page(request, exc, org=org)
    state, pending = await store.begin(org, safe_next(request.query.get("next")))
    url = authorization_url(doc, settings, redirect_uri=redirect_uri(svc), state=state,
                            pending=pending, login_hint=email)
    # A page that moves on to the provider, not a redirect: the sign-in form's page
    # allows forms to lead only to this site (Content-Security-Policy form-action).
    resp = page_response(request, "oidc_redirect.html", page_lang(request), url=url)
    # Binds the sign-in to this browser: a state carried to another browser is refused.
    # Lax: the provider's redirect back is a top-level cross-site navigation.
    resp.set_cookie(STATE_COOKIE, state, max_age=600, httponly=True,
                    secure=svc.settings.cookie_secure, samesite="Lax", path="/auth/oidc")
    return resp


async def callback(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    assert svc.staff is not None and svc.auditor is not None
    store = oidc_store(svc)
    ip = client_ip(request, svc.settings.trusted_proxies)
    q = request.query
    state = q.get("state", "")
    cookie_state = request.cookies.get(STATE_COOKIE, "")
    # Regulated per source, as the password form is: a flood of forged callbacks is
    # refused before any token is fetched or checked.
    attempt = await svc.staff.regulator.begin(account=f"oidc\0{ip}", ip=ip)
    if attempt.retry_after:
        exc = OidcRefused("regulated", f"retry after {attempt.retry_after}s", status=429)
        resp = await refusal_page(request, exc)
        resp.headers["Retry-After"] = str(attempt.retry_after)
        return resp
    pending = None
    if state and cookie_state and secrets.compare_digest(state.encode(), cookie_state.encode()):
        pending = await store.take(state)
    try:
        if pending is None:
            raise OidcRefused("wrong_state", "state missing, unknown, used or not this browser's")
        if "error" in q:
            raise OidcRefused("provider_error", q.get("error", "")[:64], status=403)
        settings = await store.get(pending.org)
        if settings is None:
            raise OidcRefused("unknown_domain", f"org {pending.org} has no provider", status=403)
        user = await _complete(request, svc, store, settings, pending.nonce,
                                         pending.verifier)
    except OidcRefused as exc:
        await svc.staff.regulator.failed(attempt)
        return await refusal_page(request, exc, org=pending.org if pending else None)
    await svc.staff.regulator.succeeded(attempt)
    # The provider proved who this is: a one-time password the account was created with
    # (and never used) is not asked to be changed (gateway/signin.py, as_signed_in). The
    # second factor, when the account has one, follows any first factor.
    done = await complete_primary_sign_in(request, user, via="oidc")
    home = home_of(Principal(user.username, user.role, user.org, "session"))
    nxt = pending.next if pending.next != "/classes" else home
    if done.pending is not None:
        resp = web.HTTPSeeOther(onward("/login/second-factor?" + urlencode({"next": nxt})))
        set_pending_cookie(request, resp, done.pending)
    else:
        assert done.cookie is not None
        resp = web.HTTPSeeOther(onward(nxt))
        set_session_cookie(request, resp, done.cookie)
    resp.del_cookie(STATE_COOKIE, path="/auth/oidc")
    resp.set_cookie(ORG_COOKIE, settings.org, max_age=svc.settings.session_ttl_s,
                    httponly=True, secure=svc.settings.cookie_secure, samesite="Strict",
                    path="/")
    raise resp


def onward(nxt: str) -> str:
    """Where the callback sends the browser: a page of this site that moves on to ``nxt``.

    The session and pending sign-in cookies are SameSite=Strict, and the callback is
    reached by a redirect that began on the provider's site: a browser does not send
    Strict cookies anywhere along such a redirect chain, so a redirect straight to
    ``nxt`` would arrive without the session just opened. A navigation started by a
    page of this site carries them."""
    return str(URL(CONTINUE_PATH).with_query({"next": nxt}))


async def continue_page(request: web.Request) -> web.Response:
    """After the callback: moves on (same-site now) to ``next``."""
    nxt = safe_next(request.query.get("next"))
    return page_response(request, "oidc_continue.html", page_lang(request), url=nxt)


async def _complete(request: web.Request, svc: Services, store: OidcStore, settings: OrgOidc,
                    nonce: str, verifier: str) -> User:
    """Trade the code for tokens, check the ID token, find or make the account."""
    assert svc.staff is not None and svc.auditor is not None
    code = request.query.get("code", "")
    if not code or len(code) > 2048:
        raise OidcRefused("bad_token", "no authorization code")
    http = _http(svc)
    doc = await store.discovery(http, settings)
    # RFC 9207: a provider that names itself in the answer must be the org's (mix-up).
    answered_by = request.query.get("iss")
    if answered_by is not None and "{tenantid}" not in str(doc["issuer"]) \
            and answered_by != doc["issuer"]:
        raise OidcRefused("wrong_issuer", f"answer from {answered_by[:200]!r}")
    secret = await store.client_secret(settings.org)
    form = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": redirect_uri(svc), "code_verifier": verifier,
            "client_id": settings.client_id}
    auth = client_secret_basic(settings.client_id, secret) if secret else None
    tokens = await fetch_json(http, str(doc["token_endpoint"]), data=form, authorization=auth)
    claims = await validate_id_token(store, http, doc, settings, secret,
                                     str(tokens.get("id_token", "")), nonce, svc.clock())
    identity = identity_of(settings, claims)
    return await _account_of(svc, store, settings, identity)


async def _account_of(svc: Services, store: OidcStore, settings: OrgOidc,
                      identity: Identity) -> User:
    """The linked account; else the pre-created one with this email (linked now); else a
    new one if the org provisions its domains; else ``no_account``."""
    assert svc.staff is not None and svc.auditor is not None
    username = await store.user_of_subject(identity.issuer, identity.subject)
    linked_now = False
    if username is None:
        username = await store.user_of_email(identity.email)
        linked_now = username is not None
    user = await svc.staff.get_user(username) if username else None
    if user is not None:
        if user.disabled:
            raise OidcRefused("no_account", f"{user.username} is disabled", status=403)
        if not await svc.staff.is_within(user.org, settings.org):
            raise OidcRefused("no_account", f"{user.username} is not in {settings.org}",
                              status=403)
        if linked_now:
            await store.link_subject(identity.issuer, identity.subject, user.username)
            await svc.auditor.record("staff.oidc_linked", actor=f"user:{user.username}",
                                     org=user.org, facts={"provider": settings.provider},
                                     personal={"email": identity.email})
        return user
    if not settings.auto_provision or not settings.domains:
        raise OidcRefused("no_account", identity.email, status=403)
    for candidate in username_candidates(identity.email):
        try:
            # A random password nobody knows: the account signs in through the provider.
            user, _ = await svc.staff.create_user(candidate, role=identity.role,
                                                  org=settings.org,
                                                  password=secrets.token_urlsafe(32))
        except StaffError as exc:
            if exc.code == "user_exists":
                continue
            raise OidcRefused("no_account", f"cannot create: {exc.code}", status=403) from exc
        await store.set_email(user.username, identity.email)
        await store.link_subject(identity.issuer, identity.subject, user.username)
        await svc.auditor.record("staff.oidc_provisioned", actor=f"user:{user.username}",
                                 org=user.org, facts={"provider": settings.provider,
                                                      "role": user.role},
                                 personal={"email": identity.email})
        return user
    raise OidcRefused("no_account", "no free username", status=403)


async def signed_out(request: web.Request) -> web.StreamResponse:
    """After sign-out: the local session is over; offer the provider's sign-out too."""
    svc = services(request)
    lang = page_lang(request)
    store = oidc_store(svc)
    org = request.query.get("org", "")[:64]
    settings = await store.get(org) if org else None
    end_session = None
    if settings is not None:
        try:
            doc = await store.discovery(_http(svc), settings)
        except OidcRefused:
            doc = {}
        endpoint = doc.get("end_session_endpoint")
        if isinstance(endpoint, str) and endpoint.startswith(("https://", "http://")):
            end_session = endpoint + ("&" if "?" in endpoint else "?") + urlencode(
                {"client_id": settings.client_id,
                 "post_logout_redirect_uri": svc.settings.public_url.rstrip("/") + "/login"})
    resp = page_response(request, "oidc_signed_out.html", lang, end_session=end_session)
    resp.del_cookie(ORG_COOKIE, path="/")
    return resp


# -- settings API ------------------------------------------------------------------------------


async def get_settings(request: web.Request) -> web.Response:
    svc, _, org = await org_staff(request, Action.MANAGE_ORGS)
    settings = await oidc_store(svc).get(org)
    if settings is None:
        raise ApiError(404, "not_found", "this org has no OpenID provider")
    return web.json_response(settings.public())


async def save_settings(svc: Services, p: Principal, org: str, data: dict[str, Any]
                        ) -> OrgOidc:
    """Check and store an org's provider, audited (the API and the administrators' page
    gateway/routes/pages_admin.py); ``StaffError`` naming the bad field keeps nothing."""
    assert svc.auditor is not None
    settings, secret = parse_settings(org, data)
    async with svc.auditor.intended("org.oidc_set", actor=p.actor, org=org,
                                    facts={"provider": settings.provider,
                                           "auto_provision": settings.auto_provision,
                                           "passwords": settings.passwords}):
        await oidc_store(svc).save(settings, secret)
    return settings


async def put_settings(request: web.Request) -> web.Response:
    svc, p, org = await org_staff(request, Action.MANAGE_ORGS)
    try:
        settings = await save_settings(svc, p, org, await read_json(request))
    except StaffError as exc:
        raise ApiError(exc.status, exc.code, exc.message, field=exc.field) from exc
    return web.json_response(settings.public())


async def delete_settings(request: web.Request) -> web.Response:
    svc, p, org = await org_staff(request, Action.MANAGE_ORGS)
    assert svc.auditor is not None
    async with svc.auditor.intended("org.oidc_removed", actor=p.actor, org=org):
        if not await oidc_store(svc).delete(org):
            raise ApiError(404, "not_found", "this org has no OpenID provider")
    return web.Response(status=204)


async def put_email(request: web.Request) -> web.Response:
    svc, p, org = await org_staff(request, Action.MANAGE_STAFF)
    assert svc.staff is not None and svc.auditor is not None
    data = require_fields(await read_json(request), required=("username", "email"))
    user = await svc.staff.get_user(str(data["username"]))
    if user is None or not await svc.staff.is_within(user.org, org):
        raise ApiError(404, "not_found", "no such account in this org")
    try:
        await oidc_store(svc).set_email(user.username, str(data["email"]))
    except StaffError as exc:
        raise ApiError(exc.status, exc.code, exc.message, field=exc.field) from exc
    await svc.auditor.record("staff.oidc_email_set", actor=p.actor, org=user.org,
                             subject=f"user:{user.username}",
                             personal={"email": normalize_email(str(data["email"]))})
    return web.json_response({"username": user.username,
                              "email": normalize_email(str(data["email"]))})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/auth/oidc/start", start)
    r.add_get(CALLBACK_PATH, callback)
    r.add_get(CONTINUE_PATH, continue_page)
    r.add_get("/auth/oidc/signed-out", signed_out)
    r.add_get("/api/v1/orgs/{org}/oidc", get_settings)
    r.add_put("/api/v1/orgs/{org}/oidc", put_settings)
    r.add_delete("/api/v1/orgs/{org}/oidc", delete_settings)
    r.add_put("/api/v1/orgs/{org}/oidc/emails", put_email)
