"""Teacher pages: create a class, class details and policy, roster import with a
preview, personal links with QR codes, the live control room.

The pages read through the same helpers as the JSON API (``load_class``,
``current_links``) and change things only through the API, so a page can never do
what the API would refuse. ``POST .../roster/preview`` is the one endpoint added for
the pages: it parses an upload exactly like ``PUT .../roster`` and saves nothing.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import segno
from aiohttp import web

from meeting_adapters import (
    ADAPTERS,
    Capability,
    capability_matrix,
    form_fields,
    settings_warnings,
)
from policies import PRESETS, load_policy, weakened_checks

from .. import i18n
from ..auth import Principal, require_user
from ..authz import Action, allows
from ..class_rules import RulesStore
from ..collation import name_key
from ..errors import ApiError
from ..hostctl import HostControls, class_target
from ..joinflow import JoinFlow
from ..roster import RosterError, http_status
from ..services import Services, services
from ..stores import ClassInfo
from ..stores.reports import CATEGORIES as REPORT_CATEGORIES
from .classes import current_links, load_class
from .pages import page_response, staff_page

log = logging.getLogger("classguard.pages")


def platform_warnings(svc: Services, info: ClassInfo) -> list[str]:
    """Catalogue keys of warnings about the class's platform settings (its adapter's
    ``settings_warnings``)."""
    try:
        settings = HostControls(svc).sealed_platform(info)["settings"]
        return settings_warnings(info.platform_kind, settings)
    except Exception as exc:  # noqa: BLE001 - never break the page over a warning
        log.warning("class %s: platform settings unreadable: %r", info.id, exc)
        return []


ALL_CAPS = [c.value for c in Capability]
REJECT_CODES = ("formula", "invalid_characters", "invalid_name", "too_long", "missing_name",
                "blank_line",
                "duplicate", "invalid_item", "unknown_field", "duplicate_field", "invalid_email")
CONTROL_MSGS = ("connected", "connecting", "disconnected", "none", "locked", "unlocked",
                "ended", "left_page", "first_seen", "since", "undo_deny", "undo_ban",
                "undone", "confirm_end", "in_class_since", "by_policy", "by_host", "bans_none",
                "lift", "ban_until", "ban_forever", "wait_reason", "error_prefix", "done",
                "no_alerts", "gone", "undo_revoke_link", "admitted_all", "skipped_gone",
                "reset_done", "ban_device_of", "ban_unknown_device", "ban_address", "ban_network")
CONTROL_ACTIONS = ("admit", "deny", "admit_all", "remove", "ban", "unban", "lock", "unlock",
                   "mute_all", "end", "reset_device", "revoke_link")
# Where an alert's sighting came from when not the live room (``gateway/presence.py``).
ALERT_SOURCES = ("attendance_report",)
ALERT_KINDS = ("link_shared", "banned_returning", "repeated_failures", "flood",
               "intruder_in_room", "device_reset_returned")


def policy_lines(lang: str, policy: dict[str, Any]) -> list[str]:
    """The class's resolved policy, one plain sentence per rule."""
    t = i18n.t
    lines = [t(lang, f"policy.admission.{policy.get('admission')}")]
    lines.append(t(lang, "policy.binding.on" if policy.get("device_binding")
                   else "policy.binding.off"))
    if policy.get("device_binding"):
        lines.append(t(lang, f"policy.second_device.{policy.get('second_device')}.explain"))
    if policy.get("enforce_schedule", True):
        lines.append(t(lang, "policy.schedule.on",
                       minutes=policy.get("early_open_minutes", 15)))
    else:
        lines.append(t(lang, "policy.schedule.off"))
    cutoff = policy.get("late_join_cutoff_minutes")
    lines.append(t(lang, "policy.late.on", minutes=cutoff) if cutoff is not None
                 else t(lang, "policy.late.off"))
    lines.append(t(lang, f"policy.on_host_leave.{policy.get('on_host_leave')}.explain"))
    if not policy.get("require_roster", True):
        lines.append(t(lang, "policy.roster.off"))
    if policy.get("capacity"):
        lines.append(t(lang, "policy.capacity", count=policy.get("capacity")))
    if policy.get("auto_remove_intruders"):
        lines.append(t(lang, "policy.intruders.remove"))
    if policy.get("require_rules_ack"):
        lines.append(t(lang, "policy.require_rules_ack"))
    return lines


@staff_page(Action.CREATE_CLASS)
async def new_class_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    now = datetime.fromtimestamp(svc.clock(), UTC).astimezone(ZoneInfo(svc.settings.timezone))
    start = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    return page_response(
        request, "class_new.html", lang, user=p,
        platforms=list(ADAPTERS), platform_fields=form_fields(),
        capabilities=capability_matrix(), all_caps=ALL_CAPS, presets=list(PRESETS),
        current_preset="standard", policy=None,
        # dd/mm/yyyy in both languages (a native date field follows the browser's own
        # locale, often month first); classform.js sends ISO 8601
        today=start.strftime("%d/%m/%Y"), start=start.strftime("%H:%M"),
        end=(start + timedelta(minutes=45)).strftime("%H:%M"),
        term_end=(start + timedelta(days=120)).strftime("%d/%m/%Y"),
    )


@staff_page(Action.VIEW_CLASS)
async def class_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    info = await load_class(request, p)
    target = await class_target(svc, info)
    roster = await svc.store.roster(info.id)
    try:
        weakened = list(weakened_checks(load_policy(info.policy)))
    except Exception:  # noqa: BLE001 - a stored policy is valid; never break the page
        weakened = []
    return page_response(
        request, "class.html", lang, user=p, info=info, roster_size=len(roster),
        caps=capability_matrix().get(info.platform_kind, []), all_caps=ALL_CAPS,
        presets=list(PRESETS), known_presets={f"preset.{k}" for k in PRESETS},
        policy_lines=policy_lines(lang, info.policy), weakened=weakened,
        can_host=allows(p, Action.HOST_CLASS, target),
        platform_warnings=platform_warnings(svc, info),
        rules=await JoinFlow(svc).class_rules(info),
        own_rules=await RulesStore(svc.redis, svc.settings.redis_prefix).class_rules(info.id),
    )


@staff_page(Action.HOST_CLASS)
async def roster_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    info = await load_class(request, p, host=True)
    students = sorted(await svc.store.roster(info.id), key=lambda s: (name_key(s.name), s.id))
    return page_response(request, "roster.html", lang, user=p, info=info, students=students,
                         reject_codes=REJECT_CODES)


async def roster_preview(request: web.Request) -> web.Response:
    """``POST /api/v1/classes/{id}/roster/preview``: what ``PUT .../roster`` would keep
    and reject for this upload. Nothing is saved."""
    svc = services(request)
    p = await require_user(request)
    await load_class(request, p, host=True)
    limit = svc.settings.roster_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"roster file larger than {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise ApiError(413, "too_large", f"roster file larger than {limit} bytes")
    try:
        parsed = await svc.roster_parser.parse(body, content_type=request.content_type,
                                               filename=request.headers.get("X-Filename"))
    except RosterError as exc:
        raise ApiError(http_status(exc.code), f"roster_{exc.code}", exc.message) from exc
    return web.json_response({
        "students": [{"line": s.line, "name": s.name, "external_id": s.external_id,
                      "email": s.email}
                     for s in parsed.students],
        "rejected": [{"line": r.line, "error": r.code, "message": r.message}
                     for r in parsed.rejected],
    })


QR_MIN_PX = 132


def qr_image(url: str) -> dict[str, Any]:
    """The link as a QR code (SVG data: URI, made locally; no external service) and its
    size in CSS pixels: a whole number of pixels per module, so that every module is
    drawn sharp (a join link is a long token, about 70 modules across)."""
    qr = segno.make(url, error="m")
    modules = int(qr.symbol_size(scale=1, border=2)[0])
    scale = max(2, -(-QR_MIN_PX // modules))
    return {"src": str(qr.svg_data_uri(scale=scale, border=2)), "size": modules * scale}


@staff_page(Action.HOST_CLASS)
async def links_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    svc = services(request)
    info = await load_class(request, p, host=True)
    roster = await svc.store.roster(info.id)
    links = await current_links(svc, info)

    def with_qr() -> list[dict[str, Any]]:
        return [{**link, "qr": qr_image(link["url"])} for link in links]

    shown = await asyncio.to_thread(with_qr)
    return page_response(request, "links.html", lang, user=p, info=info, links=shown,
                         roster_size=len(roster), missing=len(roster) - len(links),
                         join_url=svc.settings.public_url.rstrip("/") + "/join")


def incident_url(class_id: str) -> str:
    """Where "Report incident" goes: the report form, pre-filled for this class."""
    return f"/incidents/new?class_id={quote(class_id, safe='')}"


@staff_page(Action.HOST_CLASS)
async def control_page(request: web.Request, p: Principal, lang: str) -> web.StreamResponse:
    info = await load_class(request, p, host=True)
    caps = set(capability_matrix().get(info.platform_kind, []))
    return page_response(
        request, "control.html", lang, user=p, info=info,
        can_mute=Capability.MUTE.value in caps, incident_url=incident_url(info.id),
        msg_keys=CONTROL_MSGS, actions=CONTROL_ACTIONS, alert_kinds=ALERT_KINDS,
        alert_sources=ALERT_SOURCES, report_categories=REPORT_CATEGORIES,
    )


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/classes/new", new_class_page)
    r.add_get("/classes/{class_id}", class_page)
    r.add_get("/classes/{class_id}/roster", roster_page)
    r.add_get("/classes/{class_id}/links", links_page)
    r.add_get("/classes/{class_id}/control", control_page)
    r.add_post("/api/v1/classes/{class_id}/roster/preview", roster_preview)
