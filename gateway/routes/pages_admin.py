"""Administrator pages: staff accounts and orgs of their subtree, one account's sessions,
an org's sign-in settings (OpenID provider, passwords, second factor), join-token keys.

The incident pages (list, report form, detail with attachments, evidence export and the
chain of custody) are shared by teachers, IT staff and administrators; they live in
``pages_incidents``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .. import i18n
from ..auth import Principal, require_user
from ..authz import Action, Target, allows
from ..class_rules import RulesStore
from ..errors import ApiError
from ..oidc import CALLBACK_PATH, DISCOVERY_PROVIDER, OrgOidc
from ..services import services
from ..signin import mfa_store, verify_url
from ..staff import StaffError
from .mfa import set_org_policy
from .oidc import oidc_store, save_settings
from .pages import page_response, staff_page
from .sessions_page import end_all_sessions, end_session, managed_account, sessions_json

ROLES = ("teacher", "it", "admin")


@staff_page(Action.MANAGE_STAFF)
async def staff_accounts_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    subtree = await svc.staff.org_subtree(p.org)
    orgs = [o for o in await svc.staff.list_orgs() if o.slug in subtree]
    users = await svc.staff.list_users(org_subtree=subtree)
    mfa = mfa_store(svc)
    second = {u.username: bool(await mfa.methods(u.username)) for u in users}
    return page_response(request, "admin_staff.html", lang, user=p, users=users, orgs=orgs,
                         roles=ROLES, second_factor=second)


@staff_page(Action.MANAGE_STAFF)
async def keys_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    top = allows(p, Action.ROTATE_KEYS, await svc.staff.deployment_target())
    return page_response(request, "admin_keys.html", lang, user=p, top=top,
                         keys=svc.keyring.list() if top else [],
                         read_only=svc.keyring.read_only,
                         audit_key=svc.audit_key.verifier().encode())


@staff_page(Action.SET_ORG_POLICY)
async def org_rules_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    """The class rules of the administrator's org (``?org=`` another org of their
    subtree), inherited by its classes (gateway/class_rules.py)."""
    svc = services(request)
    org = request.query.get("org") or p.org
    chain = await svc.staff.org_ancestors(org) if len(org) <= 100 else []
    if not chain or not allows(p, Action.SET_ORG_POLICY, Target.of_org(chain)):
        raise ApiError(404, "not_found", "org not found")
    store = RulesStore(svc.redis, svc.settings.redis_prefix)
    info = await svc.staff.get_org(org)
    return page_response(request, "admin_rules.html", lang, user=p, org=org,
                         org_name=info.name if info is not None else org,
                         rules=await store.effective(None, chain),
                         own_rules=await store.org_rules(org))


# -- sign-in settings of an org ----------------------------------------------------------------

PROVIDER_CHOICES = ("google", "entra-multi", "entra-single", DISCOVERY_PROVIDER)
_SPLIT = re.compile(r"[\s,;]+")


def _words(raw: object) -> list[str]:
    return [w for w in _SPLIT.split(str(raw or "")) if w]


def settings_body(form: Mapping[str, object]) -> dict[str, Any]:
    """The API body (gateway/oidc.py ``parse_settings``) of the settings form; checking
    stays there. An empty secret keeps the stored one."""
    choice = str(form.get("provider") or "")
    body: dict[str, Any] = {
        "provider": "entra" if choice.startswith("entra-") else choice,
        "client_id": str(form.get("client_id") or "").strip(),
        "domains": [d.lower() for d in _words(form.get("domains"))],
        "hosted_domain": str(form.get("hosted_domain") or "").strip(),
        "tenant_ids": _words(form.get("tenant_ids")),
        "discovery_url": str(form.get("discovery_url") or "").strip(),
        "auto_provision": form.get("auto_provision") == "on",
        "default_role": str(form.get("default_role") or "teacher"),
        "passwords": form.get("passwords") == "on",
    }
    if choice == "entra-single":
        tenant = str(form.get("tenant") or "").strip()
        # a single-tenant app without its tenant id is not the multi-tenant one
        body["tenant"] = tenant or "-"
    elif choice == "entra-multi":
        body["tenant"] = "organizations"
    groups: dict[str, object] = {}
    for line in str(form.get("group_roles") or "").splitlines():
        if line.strip():
            group, _, role = line.partition("=")
            groups[group.strip()] = role.strip()
    body["group_roles"] = groups
    secret = str(form.get("client_secret") or "")
    if secret:
        body["client_secret"] = secret
    return body


def _form_of(settings: OrgOidc | None) -> dict[str, str]:
    """The form's fields for the stored settings (never the secret)."""
    if settings is None:
        return {"provider": "google", "passwords": "on", "default_role": "teacher"}
    choice: str = settings.provider
    if settings.provider == "entra":
        choice = "entra-multi" if settings.tenant == "organizations" else "entra-single"
    return {
        "provider": choice, "client_id": settings.client_id,
        "tenant": settings.tenant if choice == "entra-single" else "",
        "tenant_ids": ", ".join(settings.tenant_ids),
        "discovery_url": settings.discovery_url if settings.provider == DISCOVERY_PROVIDER else "",
        "domains": ", ".join(settings.domains), "hosted_domain": settings.hosted_domain,
        "auto_provision": "on" if settings.auto_provision else "",
        "default_role": settings.default_role,
        "group_roles": "\n".join(f"{g}={r}" for g, r in settings.group_roles.items()),
        "passwords": "on" if settings.passwords else "",
    }


@staff_page(Action.MANAGE_ORGS)
async def signin_settings_page(request: web.Request, p: Principal, lang: str
                               ) -> web.StreamResponse:
    """An org's OpenID provider, passwords on or off, and its second-factor policy:
    the same checks, storage and audit records as PUT /api/v1/orgs/{org}/oidc and
    PUT /api/v1/orgs/{org}/second-factor-policy."""
    svc = services(request)
    assert svc.staff is not None
    subtree = await svc.staff.org_subtree(p.org)
    orgs = [o for o in await svc.staff.list_orgs() if o.slug in subtree]
    org = (request.query.get("org") or p.org)[:64]
    chain = await svc.staff.org_ancestors(org)
    if not chain or not allows(p, Action.MANAGE_ORGS, Target.of_org(chain)):
        raise ApiError(404, "not_found", "org not found")
    store = oidc_store(svc)
    stored = await store.get(org)
    fields = _form_of(stored)
    error: str | None = None
    error_field = ""
    notice: str | None = None
    status = 200
    if request.method == "POST":
        # CSRF as on every staff form; 403 page when missing or wrong
        p = await require_user(request)
        form = await request.post()
        what = form.get("what")
        if what == "oidc":
            try:
                await save_settings(svc, p, org, settings_body(form))
            except StaffError as exc:
                error_field = exc.field or ""
                key = f"signin_settings.bad.{error_field}"
                error = i18n.t(lang, key if key in i18n.catalogue(lang) else "signin_settings.bad")
                status = 400
                fields = {k: str(v) for k, v in form.items()
                          if k not in ("client_secret", "csrf_token")}
            else:
                notice = i18n.t(lang, "signin_settings.saved")
                stored = await store.get(org)
                fields = _form_of(stored)
        elif what == "policy":
            if not allows(p, Action.SET_ORG_POLICY, Target.of_org(chain)):
                raise ApiError(403, "forbidden", "only administrators of the org")
            try:
                await set_org_policy(svc, p, org, form.get("policy"))
            except ApiError as exc:
                if exc.status != 400:
                    raise
                error, error_field, status = i18n.t(lang, "signin_settings.bad"), "policy", 400
            else:
                notice = i18n.t(lang, "signin_settings.policy_saved")
        else:
            raise ApiError(400, "invalid_field", "what must be oidc or policy")
    own_policy = await mfa_store(svc).policy([org])
    return page_response(
        request, "admin_signin.html", lang, status=status, user=p, orgs=orgs, org=org,
        fields=defaultdict(str, fields), configured=stored is not None,
        has_secret=bool(stored and await store.client_secret(org)),
        policy=own_policy, error=error, error_field=error_field, notice=notice,
        providers=PROVIDER_CHOICES, roles=ROLES,
        redirect_uri=svc.settings.public_url.rstrip("/") + CALLBACK_PATH)


# -- one person's sessions ---------------------------------------------------------------------


@staff_page(Action.MANAGE_STAFF)
async def staff_sessions_page(request: web.Request, p: Principal, lang: str
                              ) -> web.StreamResponse:
    """An account's sessions, for an administrator of its org: each can be ended, or all
    (the admin sessions API's checks: CSRF, the org subtree, a fresh second factor)."""
    try:
        svc, p, username, org = await managed_account(request)
    except ApiError as exc:
        if exc.code != "step_up_required":
            raise
        raise web.HTTPSeeOther(verify_url(request.path_qs)) from exc
    notice: str | None = None
    if request.method == "POST":
        form = await request.post()
        sid = str(form.get("session") or "")
        if sid:
            ended = await end_session(svc, p, username, org, sid[:64])
            notice = i18n.t(lang, "sessions.ended" if ended else "sessions.gone")
        else:
            n = await end_all_sessions(svc, p, username, org)
            notice = i18n.t(lang, "staff_sessions.ended_all", n=n)
    rows = await sessions_json(svc, username, p.session_id)
    return page_response(request, "admin_staff_sessions.html", lang, user=p,
                         account=username, org=org, sessions=rows, notice=notice,
                         methods=await mfa_store(svc).methods(username))


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/staff", staff_accounts_page)
    app.router.add_get("/admin/keys", keys_page)
    app.router.add_get("/admin/sign-in", signin_settings_page)
    app.router.add_post("/admin/sign-in", signin_settings_page)
    app.router.add_get("/admin/staff/{username}/sessions", staff_sessions_page)
    app.router.add_post("/admin/staff/{username}/sessions", staff_sessions_page)
    app.router.add_get("/admin/rules", org_rules_page)
