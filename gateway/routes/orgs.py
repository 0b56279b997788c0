"""Org-wide settings for IT staff and administrators: bans and policy defaults."""

from __future__ import annotations

import json
from urllib.parse import unquote

from aiohttp import web

from ..auth import Principal, require_user
from ..authz import Action, Target, allows
from ..bans import make_key
from ..errors import ApiError
from ..policy_io import check_defaults, org_policy_key
from ..services import Services, services
from ..web_util import read_json, require_fields


async def org_staff(request: web.Request, action: Action) -> tuple[Services, Principal, str]:
    """The org in the URL, if the caller may do ``action`` there: 403 for a role that may
    not do it anywhere, 404 for an org outside the caller's subtree."""
    svc = services(request)
    p = await require_user(request)
    org = request.match_info["org"]
    if not allows(p, action):
        raise ApiError(403, "forbidden", "not allowed for your role")
    if not allows(p, action, Target.of_org(await svc.staff.org_ancestors(org))):
        raise ApiError(404, "not_found", "org not found")
    return svc, p, org


async def list_bans(request: web.Request) -> web.Response:
    svc, _, org = await org_staff(request, Action.MANAGE_ORG_BANS)
    return web.json_response({"bans": [b.to_json() for b in await svc.store.bans(org=org)]})


async def add_ban(request: web.Request) -> web.Response:
    svc, p, org = await org_staff(request, Action.MANAGE_ORG_BANS)
    data = require_fields(await read_json(request), required=("reason",),
                          optional=("ip", "cidr", "device", "expires_in_s"))
    key = make_key(device=data.get("device"), ip=data.get("ip"), cidr=data.get("cidr"))
    reason = data["reason"]
    if not isinstance(reason, str) or not 1 <= len(reason) <= 500:
        raise ApiError(400, "invalid_field", "reason must be a short text", field="reason")
    exp = data.get("expires_in_s")
    if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int)
                            or not 60 <= exp <= 366 * 86400):
        raise ApiError(400, "invalid_field", "expires_in_s must be 60 s to 366 days",
                       field="expires_in_s")
    until = svc.clock() + exp if exp else None
    # recorded as an intent before the ban takes effect, then its outcome (docs/audit.md)
    async with svc.auditor.intended("ban.added", actor=p.actor, org=org,
                                    facts={"kind": key.split(":", 1)[0], "scope": "org",
                                           "until": until},
                                    personal={"ban": key, "reason": reason}):
        await svc.store.add_ban(class_id=None, org=org, key=key, reason=reason,
                                by=p.username, until=until)
    return web.json_response({"ok": True, "key": key}, status=201)


async def lift_ban(request: web.Request) -> web.Response:
    svc, p, org = await org_staff(request, Action.MANAGE_ORG_BANS)
    key = unquote(request.match_info["key"])
    async with svc.auditor.intended("ban.lifted", actor=p.actor, org=org,
                                    facts={"kind": key.split(":", 1)[0], "scope": "org"},
                                    personal={"ban": key}):
        if not await svc.store.lift_ban(key, org=org):
            raise ApiError(404, "not_found", "no such ban")
    return web.Response(status=204)


async def get_policy(request: web.Request) -> web.Response:
    svc, _, org = await org_staff(request, Action.READ_ORG_POLICY)
    raw = await svc.redis.get(org_policy_key(svc.settings.redis_prefix, org))
    return web.json_response({"defaults": json.loads(raw) if raw else {}})


async def put_policy(request: web.Request) -> web.Response:
    svc, p, org = await org_staff(request, Action.SET_ORG_POLICY)
    defaults = check_defaults(await read_json(request))
    async with svc.auditor.intended("policy.org_defaults", actor=p.actor, org=org,
                                    facts={"fields": ",".join(sorted(defaults)) or None}):
        await svc.redis.set(org_policy_key(svc.settings.redis_prefix, org), json.dumps(defaults))
    return web.json_response({"defaults": defaults})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/orgs/{org}/bans", list_bans)
    r.add_post("/api/v1/orgs/{org}/bans", add_ban)
    r.add_delete("/api/v1/orgs/{org}/bans/{key:.+}", lift_ban)
    r.add_get("/api/v1/orgs/{org}/policy", get_policy)
    r.add_put("/api/v1/orgs/{org}/policy", put_policy)
