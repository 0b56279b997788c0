"""``classguard demo``: a demo school, a teacher and a class of five students, so a
newcomer sees the whole chain (teacher control room → student link → meeting)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from meeting_adapters import validate_platform
from meeting_adapters.generic import allow_plain_http, is_private_lan_address
from meeting_adapters.janus import HOOK, hook_credentials
from policies.model import ClassId, Schedule

from . import i18n
from .config import ConfigError, Settings
from .janus_runner import JanusConfig, JanusProcess, find_janus, free_port
from .policy_io import resolve
from .presence import watch_class
from .routes.classes import issue_links, seal_platform
from .routes.platform_hooks import hook_secret_path, load_or_create_hook_secret
from .services import FOUNDATION, services, services_of
from .stores import new_id
from .stores.keys import Keys

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


def demo_settings(settings: Settings) -> tuple[Settings, str | None]:
    """The demo's settings for its public URL, and a warning to print when they allow
    plain http.

    A phone on the same network reaches the demo at ``http://<private address>:8080``:
    for such a public URL, and only for an address of a private network (RFC 1918,
    link-local, IPv6 unique-local), meeting links may use http and cookies are sent
    without ``Secure`` (a browser refuses Secure cookies over http). ``serve`` never
    does this: it needs https (``--tls-cert``/``--tls-key`` or a proxy, README.md).
    Any other http public URL is refused (``ConfigError``)."""
    parts = urlsplit(settings.public_url)
    host = (parts.hostname or "").strip("[]")
    if parts.scheme != "http" or host == "localhost" or host.endswith(".localhost"):
        return settings, None
    if not is_private_lan_address(host):
        raise ConfigError("public_url", "the demo allows plain http only on a private "
                          "network address (10.x, 172.16-31.x, 192.168.x, 169.254.x, "
                          f"fc00::/7, fe80::/10, loopback), got {settings.public_url!r}; "
                          "use such an address or an https:// URL")
    if ipaddress.ip_address(host).is_loopback:
        return settings, None  # as before: browsers treat loopback http as secure
    allow_plain_http(host)
    warning = i18n.t(settings.default_lang, "demo.plain_http_warning",
                     url=settings.public_url)
    return dataclasses.replace(settings, cookie_secure=False), warning


async def _meeting_page(request: web.Request) -> web.Response:
    svc = services(request)
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
    binary = find_janus()
    if binary is None:
        return None
    svc = services_of(app)
    s = svc.settings
    secret = await asyncio.to_thread(load_or_create_hook_secret,
                                     hook_secret_path(Path(s.data_dir), HOOK.name))
    base = s.public_url.rstrip("/")
    port = free_port()
    user, password = hook_credentials(secret, f"ws://127.0.0.1:{port}")
    cfg = JanusConfig(ws_port=port, event_url=HOOK.url(base), event_user=user,
                      event_password=password)
    proc = JanusProcess(binary, Path(s.data_dir) / "janus", cfg)
    try:
        await proc.start()
    except (OSError, RuntimeError) as exc:
        log.warning("demo: janus did not start (%s); using a plain link", exc)
        return None
    app[DEMO_JANUS].process = proc
    app[DEMO_JANUS].ws_url = cfg.ws_url
    await svc.redis.set(_janus_ws_key(s.redis_prefix), cfg.ws_url)
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
    return Keys(prefix).demo_janus_ws()


async def _janus_upstream(request: web.Request) -> str:
    """The demo Janus's loopback WebSocket URL (404 when it runs no Janus)."""
    ws = request.app[DEMO_JANUS].ws_url
    if not ws:
        # Another worker of the group started the demo's Janus (worker 0 sets up).
        svc = services(request)
        ws = str(await svc.redis.get(_janus_ws_key(svc.settings.redis_prefix)) or "")
    if not ws:
        raise web.HTTPNotFound()
    return ws


def _browser_ws_url(settings: Settings) -> str:
    """Where a browser reaches the demo's Janus: through the gateway's own address (a
    phone cannot reach the server's loopback Janus)."""
    base = settings.public_url.rstrip("/")
    scheme, rest = base.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/demo/janus/ws"


async def _janus_ws_proxy(request: web.Request) -> web.StreamResponse:
    """The Janus WebSocket API, relayed to the demo's loopback Janus. Janus itself still
    lets no one into a room without a token the gateway minted."""
    import aiohttp

    upstream_url = await _janus_upstream(request)
    client = web.WebSocketResponse(protocols=("janus-protocol",), max_msg_size=1 << 20)
    await client.prepare(request)
    async with aiohttp.ClientSession() as session, session.ws_connect(
            upstream_url, protocols=("janus-protocol",), max_msg_size=1 << 20) as upstream:

        async def relay(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                else:
                    break

        tasks = [asyncio.create_task(relay(client, upstream)),
                 asyncio.create_task(relay(upstream, client))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    return client


async def _janus_page(request: web.Request) -> web.Response:
    await _janus_upstream(request)
    found = request.app[FOUNDATION]
    ws = _browser_ws_url(found.settings)
    # In the language the student chose on the way in (cookie or browser). No language
    # switch here: reloading would spend the page's single-use Janus token.
    lang = i18n.request_lang(request, found.settings.default_lang)
    page = found.templates.get_template("janus_room.html").render(
        lang=lang, ws=ws, room_msgs=JANUS_ROOM_MSGS, lang_switch="")
    resp = web.Response(text=page, content_type="text/html")
    # NOTE: this page alone may reach the demo's Janus and use the camera and microphone.
    resp.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"media-src 'self' blob: mediastream:; connect-src 'self' {ws}; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
    resp.headers["Permissions-Policy"] = "camera=(self), microphone=(self), geolocation=()"
    return resp


# What the demo prints once its port is bound (filled by set-up, printed by gateway/cli.py).
DEMO_ANNOUNCEMENT: web.AppKey[list[str]] = web.AppKey("demo_announcement", list)


def _demo_class_key(prefix: str) -> str:
    """The id of the demo's class: a restart in the same data folder reuses it."""
    return Keys(prefix).demo_class()


def announcement(app: web.Application) -> str | None:
    """The demo's sign-in, links and warnings, once set-up has run (else ``None``)."""
    lines: list[str] = app.get(DEMO_ANNOUNCEMENT, [])
    return "\n".join(lines) if lines else None


async def _setup_demo(app: web.Application) -> None:
    svc = services_of(app)
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
    # NOTE: one demo class per data folder: a restart brings the same class up again
    # (new room, schedule and links), it does not add a second one.
    known = str(await svc.redis.get(_demo_class_key(s.redis_prefix)) or "")
    cid = ClassId(known) if known and await svc.store.get_class(known) else ClassId(new_id("c"))
    info = await svc.store.create_class(
        class_id=cid, owner=DEMO_TEACHER, org=DEMO_ORG, title="Toán 10A1 (demo)",
        platform_kind=str(platform["kind"]),
        platform_sealed=await seal_platform(svc, cid, "Toán 10A1 (demo)", platform),
        schedule=Schedule(
            starts_at=now - timedelta(minutes=5), ends_at=now + timedelta(hours=3),
            term_ends_at=now + timedelta(days=30)),
        # Stored resolved, every field explicit, as the API stores it: the class page
        # and the join path read the fields, never the preset alone.
        policy=resolve({"preset": "strict"}, None),
    )
    await svc.redis.set(_demo_class_key(s.redis_prefix), info.id)
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
    warning = app.get(DEMO_WARNING)
    if warning:
        lines += ["", "!" * 78, f"!! {warning}", "!" * 78]
    # Printed by gateway/cli.py once the port is bound: a link printed before that may
    # point at a port another program holds.
    app[DEMO_ANNOUNCEMENT][:] = lines


DEMO_WARNING: web.AppKey[str] = web.AppKey("demo_warning", str)


async def _demo_lifetime(app: web.Application) -> AsyncIterator[None]:
    """Set the demo up after the app's own resources; stop its Janus before they close,
    also when set-up fails half way (aiohttp runs no ``on_cleanup`` after a failed
    start-up, but does finish the clean-up contexts that started)."""
    try:
        await _setup_demo(app)
        yield
    finally:
        await _stop_janus(app)


def add_demo(app: web.Application, *, setup: bool = True, warning: str | None = None) -> None:
    """The demo's pages; with ``setup``, also its school, class and Janus (one process
    of a group sets them up, every process serves the pages). ``warning`` is printed
    with the links (``demo_settings``)."""
    found = app[FOUNDATION]
    app[DEMO_ANNOUNCEMENT] = []
    if warning:
        app[DEMO_WARNING] = warning
    # NOTE: the demo starts its own Janus on 127.0.0.1; that address alone joins the
    # platform allow list, and only in the demo (before start-up builds the HTTP session).
    if "127.0.0.1/32" not in found.settings.platform_allow_networks:
        found.settings = dataclasses.replace(found.settings, platform_allow_networks=(
            *found.settings.platform_allow_networks, "127.0.0.1/32"))
    app[DEMO_JANUS] = _DemoJanus()
    app.router.add_get("/demo/meeting", _meeting_page)
    app.router.add_get("/demo/janus", _janus_page)
    app.router.add_get("/demo/janus/ws", _janus_ws_proxy)
    if setup:
        app.cleanup_ctx.append(_demo_lifetime)
