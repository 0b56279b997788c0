"""Second factor: enrolment and removal (TOTP, passkeys, recovery codes), the second
step of a sign-in, step-up re-verification, and the org policy.

The session of a sign-in whose first factor passed is opened here, by
gateway/signin.py's ``open_session``, once the second factor is proved.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from aiohttp import web

from .. import i18n
from ..auth import Principal, authenticate, require_user
from ..authz import Action, Target, allows
from ..errors import ApiError, rate_limited
from ..mfa import POLICIES, STEP_UP_ROLES, Method, MfaError, MfaStore, Pending, Policy
from ..services import Services, services
from ..signin import (
    PENDING_COOKIE,
    as_signed_in,
    mfa_store,
    open_session,
    require_fresh_second_factor,
    step_up_needed,
)
from ..staff import FailedLogins
from ..web_util import read_json, require_fields
from .pages import page_lang, page_response, safe_next
from .session import account_notices, set_session_cookie


def _mfa_error(exc: MfaError) -> ApiError:
    if exc.code == "regulated":
        return rate_limited(exc.retry_after or 60)
    status = {"invalid_code": 401, "invalid_credential": 400, "already_enrolled": 409,
              "not_pending": 409, "no_challenge": 409, "not_enrolled": 409}.get(exc.code, 400)
    return ApiError(status, exc.code, exc.message)


async def _audit(svc: Services, p: Principal | str, type_: str, org: str,
                 **facts: Any) -> None:
    assert svc.auditor is not None
    actor = p.actor if isinstance(p, Principal) else f"user:{p}"
    subject = f"user:{p.username if isinstance(p, Principal) else p}"
    await svc.auditor.record(type_, actor=actor, org=org, subject=subject, facts=facts or None)


def _session_user(p: Principal) -> Principal:
    if p.via != "session" or p.session_id is None:
        raise ApiError(403, "session_required", "second factors are managed from a signed-in "
                                                "browser session")
    return p


async def _credential(data: dict[str, Any]) -> dict[str, Any]:
    cred = data.get("credential")
    if not isinstance(cred, dict):
        raise ApiError(400, "invalid_field", "credential must be an object", field="credential")
    return cred


# -- the account's own second factors -------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    mfa = mfa_store(svc)
    assert svc.staff is not None
    return web.json_response({
        "methods": await mfa.methods(p.username),
        "recovery_codes_left": await mfa.recovery_left(p.username),
        "policy": await mfa.policy(await svc.staff.org_ancestors(p.org)),
        "step_up_needed": await step_up_needed(svc, p),
    })


async def totp_begin(request: web.Request) -> web.Response:
    svc = services(request)
    p = _session_user(await require_user(request))
    mfa = mfa_store(svc)
    if await mfa.methods(p.username):
        await require_fresh_second_factor(request, p)
    try:
        secret = await mfa.begin_totp(p.username)
    except MfaError as exc:
        raise _mfa_error(exc) from exc
    return web.json_response({"secret": secret,
                              "uri": mfa.provisioning_uri(p.username, secret)})


async def _enrolled(svc: Services, mfa: MfaStore, p: Principal, method: Method) -> None:
    assert p.session_id is not None
    await mfa.mark_fresh(p.session_id)
    await _audit(svc, p, "staff.second_factor_enrolled", p.org, method=method)


async def totp_confirm(request: web.Request) -> web.Response:
    svc = services(request)
    p = _session_user(await require_user(request))
    data = require_fields(await read_json(request), required=("code",))
    if not isinstance(data["code"], str):
        raise ApiError(400, "invalid_field", "code must be a string", field="code")
    mfa = mfa_store(svc)
    try:
        codes = await mfa.confirm_totp(p.username, data["code"])
    except MfaError as exc:
        raise _mfa_error(exc) from exc
    await _enrolled(svc, mfa, p, "totp")
    return web.json_response({"recovery_codes": codes})


async def passkey_options(request: web.Request) -> web.Response:
    svc = services(request)
    p = _session_user(await require_user(request))
    mfa = mfa_store(svc)
    if await mfa.methods(p.username):
        await require_fresh_second_factor(request, p)
    return web.Response(text=await mfa.registration_options(p.username),
                        content_type="application/json")


async def passkey_register(request: web.Request) -> web.Response:
    svc = services(request)
    p = _session_user(await require_user(request))
    cred = await _credential(await read_json(request))
    mfa = mfa_store(svc)
    try:
        codes = await mfa.register(p.username, cred)
    except MfaError as exc:
        raise _mfa_error(exc) from exc
    await _enrolled(svc, mfa, p, "webauthn")
    return web.json_response({"recovery_codes": codes}, status=201)


async def remove(request: web.Request) -> web.Response:
    """``DELETE .../totp`` or ``.../passkeys``: needs a fresh second factor."""
    svc = services(request)
    p = _session_user(await require_user(request))
    await require_fresh_second_factor(request, p)
    mfa = mfa_store(svc)
    method = request.match_info["method"]
    if method == "totp":
        removed = await mfa.remove_totp(p.username)
    else:
        removed = await mfa.remove_passkeys(p.username)
    if not await mfa.methods(p.username):
        await mfa.forget_recovery_codes(p.username)
    if removed:
        await _audit(svc, p, "staff.second_factor_removed", p.org,
                     method="totp" if method == "totp" else "webauthn")
    return web.Response(status=204)


async def recovery_renew(request: web.Request) -> web.Response:
    svc = services(request)
    p = _session_user(await require_user(request))
    mfa = mfa_store(svc)
    if not await mfa.methods(p.username):
        raise ApiError(409, "not_enrolled", "enrol a second factor first")
    await require_fresh_second_factor(request, p)
    codes = await mfa.new_recovery_codes(p.username)
    await _audit(svc, p, "staff.recovery_codes_renewed", p.org)
    return web.json_response({"recovery_codes": codes})


# -- proving the factor: the second step of a sign-in, and step-up ---------------------------


async def _prove(svc: Services, username: str, data: dict[str, Any], purpose: str
                 ) -> Method | None:
    mfa = mfa_store(svc)
    try:
        if "credential" in data:
            ok = await mfa.verify_assertion(username, purpose, await _credential(data))
            return "webauthn" if ok else None
        code = data.get("code")
        if not isinstance(code, str) or not code.strip():
            raise ApiError(400, "missing_field", "give a code or a passkey credential",
                           field="code")
        return await mfa.verify_code(username, code[:64])
    except MfaError as exc:
        raise _mfa_error(exc) from exc


async def _refused(svc: Services, username: str, org: str, purpose: str) -> ApiError:
    assert svc.auditor is not None
    await svc.auditor.record("staff.second_factor_failed", actor=f"user:{username}", org=org,
                             reason="invalid_code", facts={"purpose": purpose})
    return ApiError(401, "invalid_code", "wrong or already used code, or passkey refused")


async def _pending(request: web.Request) -> Pending:
    p = await mfa_store(services(request)).peek_pending(request.cookies.get(PENDING_COOKIE))
    if p is None:
        raise ApiError(401, "sign_in_expired", "sign in again: the first step expired")
    return p


async def pending_passkey_options(request: web.Request) -> web.Response:
    pending = await _pending(request)
    try:
        opts = await mfa_store(services(request)).authentication_options(
            pending.username, "signin")
    except MfaError as exc:
        raise _mfa_error(exc) from exc
    return web.Response(text=opts, content_type="application/json")


async def finish_sign_in(request: web.Request, data: dict[str, Any]
                         ) -> tuple[str, str, dict[str, Any]]:
    """The second factor of a pending sign-in: (cookie, csrf, user) or ApiError."""
    svc = services(request)
    assert svc.staff is not None
    pending = await _pending(request)
    user = await svc.staff.get_user(pending.username)
    if user is None or user.disabled:
        raise ApiError(401, "sign_in_expired", "sign in again")
    method = await _prove(svc, pending.username, data, "signin")
    if method is None:
        raise await _refused(svc, user.username, user.org, "sign_in")
    token = request.cookies.get(PENDING_COOKIE, "")
    taken = await mfa_store(svc).take_pending(token)
    if taken is None:  # used by a parallel request
        raise ApiError(401, "sign_in_expired", "sign in again")
    if method == "recovery":
        await _audit(svc, user.username, "staff.recovery_code_used", user.org,
                     left=await mfa_store(svc).recovery_left(user.username))
    # The account was read again (it may have changed meanwhile); what the first factor
    # settled for this sign-in still holds.
    user = as_signed_in(user, taken.via)
    failures = FailedLogins(count=taken.failures[0], recent=taken.failures[1])
    cookie, csrf = await open_session(svc, user, ip=taken.ip, user_agent=taken.user_agent,
                                      failures=failures, via=taken.via, second_factor=method)
    info = {"username": user.username, "role": user.role, "org": user.org,
            **account_notices(user.must_change_password, failures.count, failures.recent)}
    return cookie, csrf, info


async def post_second_factor(request: web.Request) -> web.Response:
    cookie, csrf, user = await finish_sign_in(request, await read_json(request))
    resp = web.json_response({"user": user, "csrf_token": csrf})
    set_session_cookie(request, resp, cookie)
    resp.del_cookie(PENDING_COOKIE, path="/")
    return resp


async def step_up_passkey_options(request: web.Request) -> web.Response:
    p = _session_user(await require_user(request))
    try:
        opts = await mfa_store(services(request)).authentication_options(p.username, "stepup")
    except MfaError as exc:
        raise _mfa_error(exc) from exc
    return web.Response(text=opts, content_type="application/json")


async def step_up(p: Principal, request: web.Request, data: dict[str, Any]) -> Method:
    svc = services(request)
    _session_user(p)
    method = await _prove(svc, p.username, data, "stepup")
    if method is None:
        raise await _refused(svc, p.username, p.org, "step_up")
    assert p.session_id is not None
    await mfa_store(svc).mark_fresh(p.session_id)
    await _audit(svc, p, "staff.second_factor_verified", p.org, method=method)
    if method == "recovery":
        await _audit(svc, p, "staff.recovery_code_used", p.org,
                     left=await mfa_store(svc).recovery_left(p.username))
    return method


async def post_step_up(request: web.Request) -> web.Response:
    p = await require_user(request)
    method = await step_up(p, request, await read_json(request))
    return web.json_response({"verified": method})


# -- org policy ------------------------------------------------------------------------------


async def put_policy(request: web.Request) -> web.Response:
    svc = services(request)
    assert svc.staff is not None and svc.auditor is not None
    p = await require_user(request)
    slug = request.match_info["org"]
    chain = await svc.staff.org_ancestors(slug)
    if not chain or not allows(p, Action.SET_ORG_POLICY, Target.of_org(chain)):
        raise ApiError(403, "forbidden", "only administrators of the org set its policy")
    data = require_fields(await read_json(request), required=("policy",))
    policy = await set_org_policy(svc, p, slug, data["policy"])
    return web.json_response({"org": slug, "policy": policy})


async def set_org_policy(svc: Services, p: Principal, slug: str, policy: object) -> Policy:
    """Store an org's second-factor policy, audited (the API and the administrators'
    page gateway/routes/pages_admin.py); 400 ``invalid_field`` for anything else."""
    assert svc.auditor is not None
    if policy not in POLICIES:
        raise ApiError(400, "invalid_field", "policy must be required or optional",
                       field="policy")
    await mfa_store(svc).set_policy(slug, policy)
    await svc.auditor.record("org.second_factor_policy_set", actor=p.actor, org=slug,
                             facts={"policy": policy})
    return policy


# -- pages -----------------------------------------------------------------------------------


def _form_data(form: Any) -> dict[str, Any]:
    raw = str(form.get("credential", "") or "")
    if raw:
        try:
            cred = json.loads(raw[:20000])
        except ValueError:
            cred = None
        return {"credential": cred}
    return {"code": str(form.get("code", ""))[:64]}


def _error_text(lang: str, exc: ApiError) -> str:
    if exc.status == 429:
        return i18n.t(lang, "mfa.regulated", seconds=exc.headers.get("Retry-After", "60"))
    if exc.code == "sign_in_expired":
        return i18n.t(lang, "mfa.expired")
    return i18n.t(lang, "mfa.wrong")


async def second_factor_page(request: web.Request) -> web.StreamResponse:
    lang = page_lang(request)
    svc = services(request)
    pending = await mfa_store(svc).peek_pending(request.cookies.get(PENDING_COOKIE))
    if pending is None:
        raise web.HTTPSeeOther(f"/login?lang={lang}")
    nxt = safe_next(request.query.get("next"))
    error: str | None = None
    status_code = 200
    if request.method == "POST":
        form = await request.post()
        try:
            cookie, _csrf, user = await finish_sign_in(request, _form_data(form))
        except ApiError as exc:
            error, status_code = _error_text(lang, exc), exc.status
        else:
            if user.get("must_change_password"):
                nxt = "/account/password?next=" + nxt
            resp = web.HTTPSeeOther(nxt)
            set_session_cookie(request, resp, cookie)
            resp.del_cookie(PENDING_COOKIE, path="/")
            raise resp
    methods = await mfa_store(svc).methods(pending.username)
    return page_response(request, "second_factor.html", lang, status=status_code,
                         error=error, next=nxt, methods=methods,
                         action=f"/login/second-factor?lang={lang}",
                         options_url="/api/v1/session/second-factor/passkey/options",
                         heading="mfa.title", page_csrf="")


async def verify_page(request: web.Request) -> web.StreamResponse:
    """Step-up: prove the second factor again, then back to ``next``."""
    lang = page_lang(request)
    svc = services(request)
    p = await authenticate(request, csrf=request.method == "POST", allow_must_change=False)
    nxt = safe_next(request.query.get("next"))
    if p is None:
        raise web.HTTPSeeOther("/login?next=" + nxt)
    methods = await mfa_store(svc).methods(p.username)
    if not methods:
        raise web.HTTPSeeOther(f"/account/security?lang={lang}")
    error: str | None = None
    status_code = 200
    if request.method == "POST":
        form = await request.post()
        try:
            await step_up(p, request, _form_data(form))
        except ApiError as exc:
            error, status_code = _error_text(lang, exc), exc.status
        else:
            raise web.HTTPSeeOther(nxt)
    return page_response(request, "second_factor.html", lang, status=status_code, user=p,
                         error=error, next=nxt, methods=methods,
                         action=f"/account/verify?lang={lang}&next={quote(nxt, safe='')}",
                         options_url="/api/v1/account/step-up/passkey/options",
                         heading="mfa.verify_title", page_csrf=p.csrf_token or "")


async def security_page(request: web.Request) -> web.StreamResponse:
    lang = page_lang(request)
    svc = services(request)
    p = await authenticate(request, csrf=False, allow_must_change=False)
    if p is None:
        raise web.HTTPSeeOther("/login?next=/account/security")
    mfa = mfa_store(svc)
    assert svc.staff is not None
    policy = await mfa.policy(await svc.staff.org_ancestors(p.org))
    return page_response(
        request, "account_security.html", lang, user=p,
        methods=await mfa.methods(p.username),
        recovery_left=await mfa.recovery_left(p.username),
        required=policy == "required" and p.role in STEP_UP_ROLES)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/account/second-factor", status)
    r.add_post("/api/v1/account/second-factor/totp", totp_begin)
    r.add_post("/api/v1/account/second-factor/totp/confirm", totp_confirm)
    r.add_post("/api/v1/account/second-factor/passkeys/options", passkey_options)
    r.add_post("/api/v1/account/second-factor/passkeys", passkey_register)
    r.add_delete("/api/v1/account/second-factor/{method:totp|passkeys}", remove)
    r.add_post("/api/v1/account/second-factor/recovery-codes", recovery_renew)
    r.add_post("/api/v1/account/step-up", post_step_up)
    r.add_post("/api/v1/account/step-up/passkey/options", step_up_passkey_options)
    r.add_post("/api/v1/session/second-factor", post_second_factor)
    r.add_post("/api/v1/session/second-factor/passkey/options", pending_passkey_options)
    r.add_put("/api/v1/orgs/{org}/second-factor-policy", put_policy)
    r.add_get("/login/second-factor", second_factor_page)
    r.add_post("/login/second-factor", second_factor_page)
    r.add_get("/account/verify", verify_page)
    r.add_post("/account/verify", verify_page)
    r.add_get("/account/security", security_page)
