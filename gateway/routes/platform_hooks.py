"""Callbacks from meeting platforms, each authenticated, and the teacher's own entry.

* ``POST /hooks/janus``: Janus's HTTP event handler (``janus.eventhandler.sampleevh``),
  HTTP Basic with credentials of *one Janus server* (``janus.hook_credentials``: the user
  names the server, the password is keyed by the secret in
  ``<data dir>/keys/janus_hook.secret``; ``classguard janus-hook`` prints them). Events
  are matched to classes by server and room number, so a server reports on its own rooms
  only. A VideoRoom ``joined`` event carries the token used: the join of an admitted
  student retires it (single use); a token used under another participant id, or a join
  nobody was admitted for, is an intruder.
* ``POST /hooks/bbb/{class_id}``: bbb-webhooks callbacks; the ``checksum`` on the URL
  must be the one the class's shared secret gives (see ``bigbluebutton.callback_checksum_ok``).
* ``POST /hooks/zoom/{class_id}``: Zoom webhooks; ``x-zm-signature`` must verify with the
  class's webhook secret token and the timestamp be fresh; ``endpoint.url_validation``
  is answered.
* ``POST /api/v1/classes/{class_id}/host_join``: the teacher's personal credential
  (moderator) for platforms that have one.

Refusals answer 401 without detail; accepted events answer 200 quickly.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from meeting_adapters import AdapterError, Participant, Present, Unsupported

from ..app import SERVICES, Services, services
from ..auth import require_user
from ..errors import ApiError
from ..hostctl import HostControls
from ..presence import Reconciler, janus_room_key
from ..stores import ClassInfo
from ..web_util import loads_bounded

log = logging.getLogger("classguard.hooks")

JANUS_HOOK_USER: Final = "janus"


@dataclass(slots=True)
class HookSecret:
    """Filled at start-up (the app's state is frozen by then; this holder is not)."""

    value: str = ""


JANUS_HOOK_SECRET: web.AppKey[HookSecret] = web.AppKey("janus_hook_secret", HookSecret)
MAX_HOOK_BYTES: Final = 256 * 1024


def janus_hook_secret_path(data_dir: Path) -> Path:
    return Path(data_dir) / "keys" / "janus_hook.secret"


def load_or_create_hook_secret(path: Path) -> str:
    """The Janus event handler's password: random, kept in the data dir (mode 0600)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def _unauthorized() -> web.Response:
    return web.json_response({"error": {"code": "unauthorized", "message": "not signed"}},
                             status=401)


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_HOOK_BYTES:
        raise ApiError(413, "too_large", "event too large")
    body = await request.content.read(MAX_HOOK_BYTES + 1)
    if len(body) > MAX_HOOK_BYTES:
        raise ApiError(413, "too_large", "event too large")
    return body


async def _class(svc: Services, cid: str) -> ClassInfo | None:
    assert svc.store is not None
    info = await svc.store.get_class(cid)
    return info if info is not None and not info.ended else None


# --- Janus ----------------------------------------------------------------------------------


def janus_server_of(header: str, secret: str) -> str | None:
    """The Janus server (``janus.server_id``) whose event handler credentials ``header``
    carries, or ``None`` when they are not valid credentials of any server."""
    from meeting_adapters.janus import hook_password

    if not secret or not header.startswith("Basic "):
        return None
    try:
        got = base64.b64decode(header[6:], validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = got.partition(":")
    prefix = f"{JANUS_HOOK_USER}-"
    sid = user[len(prefix):]
    if not sep or not user.startswith(prefix) or len(sid) != 24 or not all(
            c in "0123456789abcdef" for c in sid):
        return None
    expected = hook_password(secret, sid)
    return sid if hmac.compare_digest(expected.encode(), password.encode()) else None


async def janus_events(request: web.Request) -> web.Response:
    svc = services(request)
    server = janus_server_of(request.headers.get("Authorization", ""),
                             request.app[JANUS_HOOK_SECRET].value)
    if server is None:
        return _unauthorized()
    try:
        data = loads_bounded(await _body(request), max_depth=64)
    except ValueError:
        raise ApiError(400, "invalid_body", "expected JSON") from None
    events = data if isinstance(data, list) else [data]
    for ev in events[:200]:
        inner = (ev.get("event") or {}) if isinstance(ev, dict) else {}
        if inner.get("plugin") != "janus.plugin.videoroom":
            continue
        d = inner.get("data") or {}
        if d.get("event") == "joined" and "room" in d and "id" in d:
            # NOTE: answered at once, handled beside: the work calls Janus back, and Janus
            # must not wait on us while we wait on it.
            spawn(svc, _janus_joined(svc, server, d))
    return web.json_response({"ok": True})


def spawn(svc: Services, coro: Coroutine[Any, Any, None]) -> None:
    """Run hook work in the background, with a reference kept until it ends."""
    task = asyncio.create_task(_guarded(coro))
    svc.tasks.add(task)
    task.add_done_callback(svc.tasks.discard)


async def _guarded(coro: Coroutine[Any, Any, None]) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad event must not end anything else
        log.warning("platform event handling failed: %r", exc)


async def _janus_joined(svc: Services, server: str, d: dict[str, Any]) -> None:
    from meeting_adapters.janus import server_id, token_owner

    cid = await svc.r.get(janus_room_key(svc, server, str(d["room"])))
    info = await _class(svc, str(cid)) if cid else None
    if info is None or info.platform_kind != "janus":
        return
    adapter, room = HostControls(svc).adapter_and_room(info)
    if server_id(str(room.data.get("ws_url"))) != server:
        # NOTE: the event must come from the server the class's room lives on.
        log.warning("janus event of server %s refused for class %s", server, info.id)
        return
    present = Present(upstream_id=str(d["id"]), display_name=str(d.get("display") or ""),
                      student_id=None, joined_at=None)
    rec = Reconciler(svc)
    token = str(d.get("token") or "")
    if token and token_owner(token) != int(d["id"]):
        # NOTE: a token used under another participant id was passed on or stolen; the
        # person inside is not who the token was minted for.
        await rec.flag(info, adapter, room, present, {})
        return
    try:
        await rec.judge(info, adapter, room, [present])
    except AdapterError as exc:
        svc.metrics.upstream_errors.labels("janus").inc()
        log.warning("janus event handling failed: %s", exc)


# --- BigBlueButton ---------------------------------------------------------------------------


async def bbb_events(request: web.Request) -> web.Response:
    svc = services(request)
    info = await _class(svc, request.match_info["class_id"])
    if info is None or info.platform_kind != "bigbluebutton":
        return _unauthorized()
    adapter, room = HostControls(svc).adapter_and_room(info)
    body = (await _body(request)).decode("utf-8", "replace")
    from urllib.parse import parse_qsl

    form = dict(parse_qsl(body, keep_blank_values=True))
    callback = f"{svc.settings.public_url.rstrip('/')}/hooks/bbb/{info.id}"
    if not adapter.verify_callback(room, callback, form, request.query.get("checksum", "")):
        return _unauthorized()
    try:
        events = loads_bounded(form.get("event") or "[]", max_depth=64)
    except ValueError:
        events = []
    for ev in events if isinstance(events, list) else [events]:
        d = (ev or {}).get("data") or {}
        if d.get("id") != "user-joined":
            continue
        user = (d.get("attributes") or {}).get("user") or {}
        if str(user.get("role", "")).upper() == "MODERATOR":
            continue
        uid = str(user.get("external-user-id") or "")
        p = Present(upstream_id=uid, display_name=str(user.get("name") or ""),
                    student_id=uid or None, joined_at=None)
        spawn(svc, _judge(svc, info, adapter, room, p))
    return web.json_response({"ok": True})


async def _judge(svc: Services, info: ClassInfo, adapter: Any, room: Any, p: Present) -> None:
    await Reconciler(svc).judge(info, adapter, room, [p])


# --- Zoom ------------------------------------------------------------------------------------


async def zoom_events(request: web.Request) -> web.Response:
    svc = services(request)
    info = await _class(svc, request.match_info["class_id"])
    if info is None or info.platform_kind != "zoom":
        return _unauthorized()
    adapter, room = HostControls(svc).adapter_and_room(info)
    body = await _body(request)
    why = adapter.verify_webhook(room, request.headers, body)
    if why is not None:
        log.info("zoom webhook refused for %s: %s", info.id, why)
        return _unauthorized()
    from meeting_adapters.zoom import event_json

    event = event_json(body)
    kind = event.get("event")
    if kind == "endpoint.url_validation":
        return web.json_response(adapter.url_validation(room, event))
    if kind in ("meeting.participant_joined", "meeting.participant_joined_waiting_room"):
        p = adapter.webhook_present(room, event)
        if p is not None:
            spawn(svc, _judge(svc, info, adapter, room, p))
    return web.json_response({"ok": True})


# --- the teacher's entry -------------------------------------------------------------------


async def host_join(request: web.Request) -> web.Response:
    from .classes import load_class

    svc = services(request)
    p = await require_user(request)
    info = await load_class(request, p, host=True)
    adapter, room = HostControls(svc).adapter_and_room(info)
    host = Participant(student_id=f"host:{p.username}", display_name=p.username, role="host",
                       ticket="")
    try:
        url = await adapter.join_url(room, host)
    except Unsupported as exc:
        raise ApiError(409, "unsupported_by_platform", exc.message) from exc
    assert svc.auditor is not None
    await svc.auditor.record("host.join", actor=p.actor, org=info.org, class_id=info.id,
                             facts={"platform": info.platform_kind})
    return web.json_response({"url": url})


async def _load_secret(app: web.Application) -> None:
    svc = app[SERVICES]
    app[JANUS_HOOK_SECRET].value = await asyncio.to_thread(
        load_or_create_hook_secret, janus_hook_secret_path(Path(svc.settings.data_dir)))


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/hooks/janus", janus_events)
    r.add_post("/hooks/bbb/{class_id}", bbb_events)
    r.add_post("/hooks/zoom/{class_id}", zoom_events)
    r.add_post("/api/v1/classes/{class_id}/host_join", host_join)
    app[JANUS_HOOK_SECRET] = HookSecret()
    app.on_startup.append(_load_secret)


__all__ = ["JANUS_HOOK_SECRET", "load_or_create_hook_secret", "setup"]
