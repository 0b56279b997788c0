"""Administrator pages: staff accounts and orgs of their subtree, join-token keys.

The incident pages (list, report form, detail with attachments, evidence export and the
chain of custody) are shared by teachers, IT staff and administrators; they live in
``pages_incidents``.
"""

from __future__ import annotations

from aiohttp import web

from ..auth import Principal
from ..authz import Action, Target, allows
from ..class_rules import RulesStore
from ..errors import ApiError
from ..services import services
from .pages import page_response, staff_page

ROLES = ("teacher", "it", "admin")


@staff_page(Action.MANAGE_STAFF)
async def staff_accounts_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    subtree = await svc.staff.org_subtree(p.org)
    orgs = [o for o in await svc.staff.list_orgs() if o.slug in subtree]
    users = await svc.staff.list_users(org_subtree=subtree)
    return page_response(request, "admin_staff.html", lang, user=p, users=users, orgs=orgs,
                         roles=ROLES)


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


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/staff", staff_accounts_page)
    app.router.add_get("/admin/keys", keys_page)
    app.router.add_get("/admin/rules", org_rules_page)
