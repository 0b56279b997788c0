"""Audit log for IT staff and administrators: search, checkpoint, key, proofs, verify.

Every read of the log is itself an audit event (who looked at what).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from audit import AuditError, AuditQuery, QueryError, verify_log

from ..auth import Principal, require_user
from ..authz import Action, allows
from ..errors import ApiError
from ..services import Services, services

_FILTERS = ("class", "type", "reason", "student", "ip", "since", "until", "limit", "cursor")


async def _reader(request: web.Request) -> Principal:
    p = await require_user(request)
    if not allows(p, Action.READ_AUDIT):
        raise ApiError(403, "forbidden", "only IT staff and administrators read the audit log")
    return p


def _int_param(request: web.Request, name: str, *, required: bool = True,
               default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        if required:
            raise ApiError(400, "missing_field", f"missing query parameter {name}", field=name)
        return default
    if not raw.isdigit() or len(raw) > 15:
        raise ApiError(400, "invalid_field", f"{name} must be a non-negative integer", field=name)
    return int(raw)


async def events(request: web.Request) -> web.Response:
    svc = services(request)
    p = await _reader(request)
    for k in request.query:
        if k not in _FILTERS:
            raise ApiError(400, "unknown_field", f"unknown filter {k[:40]!r} (allowed: "
                           + ", ".join(_FILTERS) + ")", field=k[:40])
        if len(request.query.getall(k)) > 1:
            raise ApiError(400, "invalid_field", f"{k} given more than once", field=k)
    limit = _int_param(request, "limit", required=False, default=50) or 50
    cursor = request.query.get("cursor") or None
    if cursor is not None and (not cursor.isdigit() or len(cursor) > 15):
        raise ApiError(400, "invalid_field", "cursor must be the next_cursor of a page",
                       field="cursor")
    q = parse_query(request.query)
    try:
        found, cursor = await svc.audit_log.query(
            q, limit=min(limit, 500), cursor=cursor, disclose_personal=True,
        )
    except AuditError as exc:
        raise ApiError(400, getattr(exc, "code", "invalid_query"), str(exc)) from exc
    subtree = await svc.staff.org_subtree(p.org)
    # Events with no org (failed sign-ins, refused forgeries) belong to the deployment:
    # only an administrator of its root org sees them.
    is_root = allows(p, Action.READ_DEPLOYMENT_AUDIT, await svc.staff.deployment_target())
    visible: list[dict[str, Any]] = []
    for ev in found:
        org = ev.record.get("org")
        if (org in subtree) or (org is None and is_root):
            visible.append(ev.to_json())
    await record_read(svc, p, q, returned=len(visible), limit=min(limit, 500))
    return web.json_response({"events": visible, "next_cursor": cursor})


def parse_query(params: Mapping[str, Any]) -> AuditQuery:
    """The search, every parameter's shape checked: 400 naming the bad parameter."""
    try:
        return AuditQuery.from_params(params)
    except QueryError as exc:
        raise ApiError(400, exc.code, exc.message, field=exc.field) from exc
    except AuditError as exc:
        raise ApiError(400, "invalid_query", exc.message) from exc


async def record_read(svc: Services, p: Principal, q: AuditQuery | None, *, returned: int,
                      **facts: Any) -> None:
    """The ``audit.read`` event of a search (``q`` None: a search refused as malformed).

    NOTE: the record is immutable, so it holds only shaped values (event types, reason
    codes, a class id, times); the student and the address searched for are personal
    data and go to its erasable part. Nothing typed freely reaches it."""
    shown, personal = q.read_record() if q is not None else ({}, {})
    await svc.auditor.record("audit.read", actor=p.actor, org=p.org,
                             facts={**shown, **facts, "returned": returned},
                             personal=personal or None)


async def checkpoint(request: web.Request) -> web.Response:
    svc = services(request)
    await _reader(request)
    cp = await svc.audit_log.latest_checkpoint()
    if cp is None:
        raise ApiError(404, "not_found", "no checkpoint yet")
    return web.Response(text=cp, content_type="text/plain", charset="utf-8")


async def key(request: web.Request) -> web.Response:
    svc = services(request)
    await _reader(request)
    return web.Response(text=svc.audit_key.verifier().encode() + "\n",
                        content_type="text/plain", charset="utf-8")


async def inclusion(request: web.Request) -> web.Response:
    svc = services(request)
    p = await _reader(request)
    index = _int_param(request, "index")
    size = _int_param(request, "size", required=False)
    assert index is not None
    try:
        proof = await svc.audit_log.inclusion_proof(index, size)
    except AuditError as exc:
        raise ApiError(400, getattr(exc, "code", "invalid_proof"), str(exc)) from exc
    await svc.auditor.record("audit.proof", actor=p.actor, org=p.org,
                             facts={"index": index, "size": proof.size})
    return web.json_response(proof.to_json())


async def consistency(request: web.Request) -> web.Response:
    svc = services(request)
    await _reader(request)
    first = _int_param(request, "first")
    second = _int_param(request, "second", required=False)
    assert first is not None
    try:
        proof = await svc.audit_log.consistency_proof(first, second)
    except AuditError as exc:
        raise ApiError(400, getattr(exc, "code", "invalid_proof"), str(exc)) from exc
    return web.json_response(proof.to_json())


async def verify(request: web.Request) -> web.Response:
    svc = services(request)
    p = await _reader(request)
    report = await verify_log(svc.redis_bytes, svc.settings.redis_prefix,
                              svc.audit_key.verifier(), origin=svc.settings.audit_origin)
    await svc.auditor.record("audit.verify", actor=p.actor, org=p.org,
                             facts={"ok": report.ok, "size": report.size,
                                    "fault": str(report.fault) if report.fault else None})
    return web.json_response(report.to_json(), status=200)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/audit/events", events)
    r.add_get("/api/v1/audit/checkpoint", checkpoint)
    r.add_get("/api/v1/audit/key", key)
    r.add_get("/api/v1/audit/proof/inclusion", inclusion)
    r.add_get("/api/v1/audit/proof/consistency", consistency)
    r.add_post("/api/v1/audit/verify", verify)
