"""Small JSON endpoints the administrator and IT pages need.

* Staff accounts and orgs of the administrator's subtree (list, create, disable/enable,
  reset a password to a new one-time password).
* Join-token keys (list, rotate): administrators of the deployment root org only
  (gateway/authz.py ``ROTATE_KEYS``), since the keyring serves every school.
* Setting or clearing the expiry of an existing ban (org bans for IT staff and
  administrators, class bans for the class's host).

Every change is an audit event.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from ..auth import Principal, require_user
from ..authz import Action, allows
from ..config import valid_email
from ..errors import ApiError
from ..keys import KeyringError
from ..services import Services, services
from ..signin import require_fresh_second_factor
from ..staff import StaffError
from ..web_util import read_json, require_fields
from .classes import load_class
from .orgs import org_staff


async def _admin(request: web.Request, action: Action = Action.MANAGE_STAFF
                 ) -> tuple[Services, Principal]:
    svc = services(request)
    p = await require_user(request)
    if not allows(p, action):
        raise ApiError(403, "forbidden", "only administrators manage staff and keys")
    if action is Action.MANAGE_STAFF and request.method != "GET":
        await require_fresh_second_factor(request, p)
    return svc, p


def _staff_error(exc: StaffError) -> ApiError:
    return ApiError(exc.status, exc.code, str(exc), field=exc.field)


def _user_json(u: Any) -> dict[str, Any]:
    # NOTE: only administrators reach these endpoints; the email is shown to them alone.
    return {"username": u.username, "role": u.role, "org": u.org, "disabled": u.disabled,
            "must_change_password": u.must_change_password, "created": u.created,
            "email": u.email}


async def list_users(request: web.Request) -> web.Response:
    svc, p = await _admin(request)
    users = await svc.staff.list_users(org_subtree=p.org)
    return web.json_response({"users": [_user_json(u) for u in users]})


async def create_user(request: web.Request) -> web.Response:
    svc, p = await _admin(request)
    data = require_fields(await read_json(request), required=("username", "role", "org"),
                          optional=("email",))
    org = data["org"]
    address = data.get("email")
    if address is not None and (not isinstance(address, str) or not valid_email(address)):
        raise ApiError(400, "invalid_email", "email must be an address like "
                       "name@school.edu.vn", field="email")
    if not isinstance(org, str) or org not in await svc.staff.org_subtree(p.org):
        raise ApiError(404, "not_found", "org not found in your subtree", field="org")
    # recorded as an intent before the account exists, then its outcome (docs/audit.md)
    async with svc.auditor.intended("staff.user_created", actor=p.actor, org=org,
                                    subject=f"user:{str(data['username'])[:64]}",
                                    facts={"role": str(data["role"])[:32]}):
        try:
            user, one_time = await svc.staff.create_user(str(data["username"]),
                                                         role=str(data["role"]), org=org)
            if address:
                user = await svc.staff.set_email(user.username, address)
        except StaffError as exc:
            raise _staff_error(exc) from exc
    return web.json_response({"user": _user_json(user), "one_time_password": one_time},
                             status=201)


async def _set_disabled(request: web.Request, disabled: bool) -> web.Response:
    svc, p = await _admin(request)
    name = request.match_info["username"]
    target = await svc.staff.get_user(name)
    if target is None or target.org not in await svc.staff.org_subtree(p.org):
        raise ApiError(404, "not_found", "user not found")
    if target.username == p.username:
        raise ApiError(409, "self", "you cannot disable your own account")
    async with svc.auditor.intended(
            "staff.user_disabled" if disabled else "staff.user_enabled",
            actor=p.actor, org=target.org, subject=f"user:{target.username}"):
        user = await (svc.staff.disable_user(name) if disabled else
                      svc.staff.enable_user(name))
    return web.json_response({"user": _user_json(user)})


async def reset_password(request: web.Request) -> web.Response:
    """A new one-time password for an account of the administrator's subtree, to be
    changed at its next sign-in; the account's sessions end (its API tokens stay)."""
    svc, p = await _admin(request)
    target = await svc.staff.get_user(request.match_info["username"])
    if target is None or target.org not in await svc.staff.org_subtree(p.org):
        raise ApiError(404, "not_found", "user not found")
    if target.username == p.username:
        raise ApiError(409, "self", "change your own password instead of resetting it")
    async with svc.auditor.intended("staff.password_reset", actor=p.actor, org=target.org,
                                    subject=f"user:{target.username}", facts={"via": "api"}):
        try:
            user, one_time = await svc.staff.reset_password(target.username)
        except StaffError as exc:
            raise _staff_error(exc) from exc
    return web.json_response({"user": _user_json(user), "one_time_password": one_time})


async def set_email(request: web.Request) -> web.Response:
    """``PUT {"email": "..."}`` (``null`` or ``""`` clears it): where incident
    notifications reach the account (gateway/notify.py). The address is personal data:
    the audit record says only whether one is set."""
    svc, p = await _admin(request)
    assert svc.staff is not None and svc.auditor is not None
    target = await svc.staff.get_user(request.match_info["username"])
    if target is None or target.org not in await svc.staff.org_subtree(p.org):
        raise ApiError(404, "not_found", "user not found")
    data = require_fields(await read_json(request), required=("email",))
    address = data["email"]
    if address is not None and not isinstance(address, str):
        raise ApiError(400, "invalid_email", "email must be a string or null", field="email")
    async with svc.auditor.intended("staff.user_email_set", actor=p.actor, org=target.org,
                                    subject=f"user:{target.username}",
                                    facts={"email": "set" if address else "cleared"}):
        try:
            user = await svc.staff.set_email(target.username, address)
        except StaffError as exc:
            raise _staff_error(exc) from exc
    return web.json_response({"user": _user_json(user)})


async def disable_user(request: web.Request) -> web.Response:
    return await _set_disabled(request, True)


async def enable_user(request: web.Request) -> web.Response:
    return await _set_disabled(request, False)


async def list_orgs(request: web.Request) -> web.Response:
    svc, p = await _admin(request, Action.MANAGE_ORGS)
    subtree = await svc.staff.org_subtree(p.org)
    orgs = [o for o in await svc.staff.list_orgs() if o.slug in subtree]
    return web.json_response({"orgs": [{"slug": o.slug, "name": o.name, "parent": o.parent}
                                       for o in orgs]})


async def create_org(request: web.Request) -> web.Response:
    svc, p = await _admin(request, Action.MANAGE_ORGS)
    data = require_fields(await read_json(request), required=("slug", "parent"),
                          optional=("name",))
    parent = data["parent"]
    if not isinstance(parent, str) or parent not in await svc.staff.org_subtree(p.org):
        raise ApiError(404, "not_found", "parent org not found in your subtree", field="parent")
    slug = data["slug"]
    if not isinstance(slug, str):
        raise ApiError(400, "invalid_field", "slug must be a string", field="slug")
    if await svc.staff.get_org(slug) is not None:
        raise ApiError(409, "org_exists", "an org with this id already exists", field="slug")
    name = data.get("name")
    async with svc.auditor.intended("staff.org_created", actor=p.actor, org=slug[:64],
                                    facts={"parent": parent}):
        try:
            org = await svc.staff.ensure_org(slug, name=str(name) if name else None,
                                             parent=parent)
        except StaffError as exc:
            raise _staff_error(exc) from exc
    return web.json_response({"org": {"slug": org.slug, "name": org.name,
                                      "parent": org.parent}}, status=201)


async def _key_admin(request: web.Request) -> tuple[Services, Principal]:
    svc, p = await _admin(request)
    if not allows(p, Action.ROTATE_KEYS, await svc.staff.deployment_target()):
        raise ApiError(403, "forbidden",
                       "only administrators of the deployment root org manage keys")
    return svc, p


def _keys_json(svc: Services) -> dict[str, Any]:
    return {"keys": [{"kid": k.kid, "state": k.state, "created_at": k.created_at,
                      "retired_at": k.retired_at, "not_after": k.not_after}
                     for k in svc.keyring.list()],
            "read_only": svc.keyring.read_only}


async def list_keys(request: web.Request) -> web.Response:
    svc, _ = await _key_admin(request)
    return web.json_response(_keys_json(svc))


async def rotate_key(request: web.Request) -> web.Response:
    svc, p = await _key_admin(request)
    if svc.keyring.read_only:
        raise ApiError(409, "read_only", "the join-token keys are given by files; rotate them "
                                          "where they are managed")
    async with svc.auditor.intended("keys.rotated", actor=p.actor, org=p.org) as out:
        try:
            kid = await asyncio.to_thread(svc.keyring.rotate,
                                          svc.settings.join_token_default_lifetime_s)
        except KeyringError as exc:
            # The key files are broken (by hand, or a full disk): the old key stays active.
            raise ApiError(500, f"keys_{exc.code}", exc.message) from exc
        out.facts["kid"] = kid
    return web.json_response({"active": kid, **_keys_json(svc)})


def _expiry(data: Any) -> int | None:
    d = require_fields(data, required=("expires_in_s",))
    exp = d["expires_in_s"]
    if exp is None:
        return None
    if isinstance(exp, bool) or not isinstance(exp, int) or not 60 <= exp <= 366 * 86400:
        raise ApiError(400, "invalid_field", "expires_in_s must be 60 s to 366 days, or null",
                       field="expires_in_s")
    return exp


async def _reexpire(svc: Services, p: Principal, *, key: str, class_id: str | None,
                    org: str | None, exp: int | None, audit_org: str) -> web.Response:
    current = {b.key: b for b in await svc.store.bans(class_id=class_id, org=org)}
    ban = current.get(key)
    if ban is None:
        raise ApiError(404, "not_found", "no such ban")
    until = svc.clock() + exp if exp else None
    async with svc.auditor.intended(
            "ban.expiry_set", actor=p.actor, org=audit_org, class_id=class_id,
            facts={"kind": key.split(":", 1)[0], "scope": "class" if class_id else "org",
                   "until": until},
            personal={"ban": key}):
        await svc.store.add_ban(class_id=class_id, org=None if class_id else org, key=key,
                                reason=ban.reason, by=p.username, until=until)
    return web.json_response({"ok": True, "key": key, "until": until})


async def expire_org_ban(request: web.Request) -> web.Response:
    svc, p, org = await org_staff(request, Action.MANAGE_ORG_BANS)
    exp = _expiry(await read_json(request))
    return await _reexpire(svc, p, key=unquote(request.match_info["key"]), class_id=None,
                           org=org, exp=exp, audit_org=org)


async def expire_class_ban(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p, host=True)
    exp = _expiry(await read_json(request))
    return await _reexpire(svc, p, key=unquote(request.match_info["key"]), class_id=info.id,
                           org=None, exp=exp, audit_org=info.org)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/admin/users", list_users)
    r.add_post("/api/v1/admin/users", create_user)
    r.add_post("/api/v1/admin/users/{username}/disable", disable_user)
    r.add_post("/api/v1/admin/users/{username}/enable", enable_user)
    r.add_post("/api/v1/admin/users/{username}/password-reset", reset_password)
    r.add_put("/api/v1/admin/users/{username}/email", set_email)
    r.add_get("/api/v1/admin/orgs", list_orgs)
    r.add_post("/api/v1/admin/orgs", create_org)
    r.add_get("/api/v1/admin/keys", list_keys)
    r.add_post("/api/v1/admin/keys/rotate", rotate_key)
    r.add_patch("/api/v1/orgs/{org}/bans/{key:.+}", expire_org_ban)
    r.add_patch("/api/v1/classes/{class_id}/bans/{key:.+}", expire_class_ban)
