"""Class rules over the API: an org's rules (inherited by its classes and sub-orgs) and a
class's own rules (gateway/class_rules.py). Org administrators set their org's rules
(authz ``SET_ORG_POLICY``), a class's teacher or an administrator above it the class's
(``HOST_CLASS``); whoever may read the org policy or see the class may read them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import i18n
from ..auth import require_user
from ..authz import Action
from ..class_rules import RulesStore, check_rules_body
from ..joinflow import JoinFlow
from ..services import Services, services
from ..web_util import read_json
from .classes import load_class
from .orgs import org_staff


def _store(svc: Services) -> RulesStore:
    return RulesStore(svc.redis, svc.settings.redis_prefix)


async def get_org_rules(request: web.Request) -> web.Response:
    svc, _, org = await org_staff(request, Action.READ_ORG_POLICY)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    store = _store(svc)
    own = await store.org_rules(org)
    effective = await store.effective(None, await svc.staff.org_ancestors(org))
    return web.json_response({"rules": own, "effective": effective.to_json(lang)})


async def put_org_rules(request: web.Request) -> web.Response:
    svc, p, org = await org_staff(request, Action.SET_ORG_POLICY)
    record = check_rules_body(await read_json(request))
    store = _store(svc)
    async with svc.auditor.intended("rules.changed", actor=p.actor, org=org,
                                    facts=_change_facts(record, "org")):
        await store.set_org_rules(org, record)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    effective = await store.effective(None, await svc.staff.org_ancestors(org))
    return web.json_response({"rules": record, "effective": effective.to_json(lang)})


async def get_class_rules(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    own = await _store(svc).class_rules(info.id)
    effective = await JoinFlow(svc).class_rules(info)
    return web.json_response({"rules": own, "effective": effective.to_json(lang)})


async def put_class_rules(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p, host=True)
    record = check_rules_body(await read_json(request))
    async with svc.auditor.intended("rules.changed", actor=p.actor, org=info.org,
                                    class_id=info.id, facts=_change_facts(record, "class")):
        await _store(svc).set_class_rules(info.id, record)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    effective = await JoinFlow(svc).class_rules(info)
    return web.json_response({"rules": record, "effective": effective.to_json(lang)})


def _change_facts(record: dict[str, Any] | None, scope: str) -> dict[str, Any]:
    from ..class_rules import rules_version

    if record is None:
        return {"scope": scope, "cleared": True}
    return {"scope": scope, "version": rules_version(record["text"], record["term"]),
            "term": record["term"] or None}


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/orgs/{org}/rules", get_org_rules)
    r.add_put("/api/v1/orgs/{org}/rules", put_org_rules)
    r.add_get("/api/v1/classes/{class_id}/rules", get_class_rules)
    r.add_put("/api/v1/classes/{class_id}/rules", put_class_rules)
