"""``classguard demo``: a demo school, a teacher and a class of five students, so a
newcomer sees the whole chain (teacher control room → student link → meeting)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from meeting_adapters import validate_platform
from policies.model import ClassId

from .app import SERVICES
from .janus_runner import JanusProcess
from .policy_io import resolve
from .presence import watch_class
from .state import new_id

log = logging.getLogger("classguard.demo")

DEMO_ROOT = "root"
DEMO_ORG = "demo-school"
DEMO_TEACHER = "teacher"
DEMO_STUDENTS = [
    ("Nguyễn Văn An", "HS001"),
    ("Trần Thị Bình", "HS002"),
    ("Lê Hoàng Cường", "HS003"),
    ("Phạm Thu Dung", "HS004"),
    ("Võ Minh Đức", "HS005"),
]


async def _meeting_page(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    from . import i18n

    lang = i18n.request_lang(request, svc.settings.default_lang)
    html = svc.templates.get_template("demo_meeting.html").render(lang=lang)
    return web.Response(text=html, content_type="text/html")


@dataclass(slots=True)
class _DemoJanus:
    """The demo's own Janus (filled at start-up, stopped at clean-up)."""

    process: JanusProcess | None = None
    ws_url: str = ""


DEMO_JANUS: web.AppKey[_DemoJanus] = web.AppKey("demo_janus", _DemoJanus)


async def _janus_platform(app: web.Application) -> dict[str, Any] | None:
    """Start a loopback Janus when the ``janus`` program is installed; its settings."""
    from meeting_adapters.janus import hook_credentials

    from .janus_runner import JanusConfig, find_janus, free_port
    from .routes.platform_hooks import janus_hook_secret_path, load_or_create_hook_secret

    binary = find_janus()
    if binary is None:
        return None
    svc = app[SERVICES]
    s = svc.settings
    secret = await asyncio.to_thread(load_or_create_hook_secret,
                                     janus_hook_secret_path(Path(s.data_dir)))
    base = s.public_url.rstrip("/")
    port = free_port()
    user, password = hook_credentials(secret, f"ws://127.0.0.1:{port}")
    cfg = JanusConfig(ws_port=port, event_url=f"{base}/hooks/janus", event_user=user,
                      event_password=password)
    proc = JanusProcess(binary, Path(s.data_dir) / "janus", cfg)
    try:
        await proc.start()
    except (OSError, RuntimeError) as exc:
        log.warning("demo: janus did not start (%s); using a plain link", exc)
        return None
    app[DEMO_JANUS].process = proc
    app[DEMO_JANUS].ws_url = cfg.ws_url
    await svc.r.set(_janus_ws_key(s.redis_prefix), cfg.ws_url)
    return validate_platform({
        "kind": "janus", "ws_url": cfg.ws_url, "admin_key": cfg.admin_key,
        "client_url": f"{base}/demo/janus?room={{room}}&id={{id}}&token={{token}}"
                      "&name={display}",
    }, egress=s.egress_policy())


async def _stop_janus(app: web.Application) -> None:
    proc = app[DEMO_JANUS].process
    if proc is not None:
        await proc.stop()


# What the demo's meeting page says; "room.<key>" in the catalogue.
JANUS_ROOM_MSGS = ("connecting", "joined", "joined_no_media", "refused", "refused_advice",
                   "removed", "removed_advice", "ended", "ended_advice", "lost",
                   "lost_advice", "error", "me")


def _janus_ws_key(prefix: str) -> str:
    return f"{prefix}demo:janus_ws"


async def _janus_page(request: web.Request) -> web.Response:
    ws = request.app[DEMO_JANUS].ws_url
    if not ws:
        # Another worker of the group started the demo's Janus (worker 0 sets up).
        svc = request.app[SERVICES]
        ws = await svc.r.get(_janus_ws_key(svc.settings.redis_prefix)) or ""
    if not ws:
        raise web.HTTPNotFound()
    from . import i18n

    svc = request.app[SERVICES]
    # In the language the student chose on the way in (cookie or browser). No language
    # switch here: reloading would spend the page's single-use Janus token.
    lang = i18n.request_lang(request, svc.settings.default_lang)
    page = svc.templates.get_template("janus_room.html").render(
        lang=lang, ws=ws, room_msgs=JANUS_ROOM_MSGS, lang_switch="")
    resp = web.Response(text=page, content_type="text/html")
    # NOTE: this page alone may reach the demo's Janus and use the camera and microphone.
    resp.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"media-src 'self' blob: mediastream:; connect-src 'self' {ws}; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
    resp.headers["Permissions-Policy"] = "camera=(self), microphone=(self), geolocation=()"
    return resp


async def _setup_demo(app: web.Application) -> None:
    from .routes.classes import issue_links, seal_platform

    svc = app[SERVICES]
    assert svc.staff is not None and svc.store is not None and svc.secretbox is not None
    s = svc.settings
    # The demo school lies under the deployment root (made here on a fresh data dir), as
    # every school does: its teacher and administrators get no deployment-wide rights.
    root = await svc.staff.deployment_root()
    if root is None:
        root = (await svc.staff.init_root(DEMO_ROOT, name="Sở GD&ĐT (demo)")).slug
    if await svc.staff.get_org(DEMO_ORG) is None:
        await svc.staff.ensure_org(DEMO_ORG, name="Trường THCS Demo", parent=root)
    password = secrets.token_urlsafe(12)
    if await svc.staff.get_user(DEMO_TEACHER) is None:
        await svc.staff.create_user(DEMO_TEACHER, role="teacher", org=DEMO_ORG, password=password)
    else:
        await svc.staff.set_password(DEMO_TEACHER, password)
    now = datetime.fromtimestamp(svc.clock(), UTC)
    platform = await _janus_platform(app) or validate_platform(
        {"kind": "generic", "url": s.public_url.rstrip("/") + "/demo/meeting"})
    cid = ClassId(new_id("c"))
    info = await svc.store.create_class(
        class_id=cid, owner=DEMO_TEACHER, org=DEMO_ORG, title="Toán 10A1 (demo)",
        platform_kind=str(platform["kind"]),
        platform_sealed=await seal_platform(svc, cid, "Toán 10A1 (demo)", platform),
        schedule=__import__("policies.model", fromlist=["Schedule"]).Schedule(
            starts_at=now - timedelta(minutes=5), ends_at=now + timedelta(hours=3),
            term_ends_at=now + timedelta(days=30)),
        # Stored resolved, every field explicit, as the API stores it: the class page
        # and the join path read the fields, never the preset alone.
        policy=resolve({"preset": "strict"}, None),
    )
    await watch_class(svc, info)
    await svc.store.replace_roster(info.id, DEMO_STUDENTS and [(n, e) for n, e in DEMO_STUDENTS])
    links = await issue_links(svc, info, None, "system:demo")
    base = s.public_url.rstrip("/")
    lines = [
        "",
        "ClassGuard demo is ready.",
        f"  Teacher sign-in: {base}/login   user: {DEMO_TEACHER}   password: {password}",
        f"  Control room:    {base}/classes/{info.id}/control",
        f"  Short-code page: {base}/join",
        f"  Meeting:         {platform['kind']}"
        + (" (a local Janus VideoRoom; only ClassGuard's tokens get in)"
           if platform["kind"] == "janus" else " (a plain link: install janus for more)"),
        "  Students' personal links:",
    ]
    for link in links:
        lines.append(f"    {link['name']:<18} {link['code']}  {link['url']}")
    print("\n".join(lines), flush=True)


def add_demo(app: web.Application, *, setup: bool = True) -> None:
    """The demo's pages; with ``setup``, also its school, class and Janus (one process
    of a group sets them up, every process serves the pages)."""
    svc = app[SERVICES]
    # NOTE: the demo starts its own Janus on 127.0.0.1; that address alone joins the
    # platform allow list, and only in the demo (before start-up builds the HTTP session).
    if "127.0.0.1/32" not in svc.settings.platform_allow_networks:
        svc.settings = dataclasses.replace(svc.settings, platform_allow_networks=(
            *svc.settings.platform_allow_networks, "127.0.0.1/32"))
    app[DEMO_JANUS] = _DemoJanus()
    app.router.add_get("/demo/meeting", _meeting_page)
    app.router.add_get("/demo/janus", _janus_page)
    if setup:
        app.on_startup.append(_setup_demo)
        app.on_cleanup.append(_stop_janus)
