"""Callbacks from meeting platforms, each authenticated, and the teacher's own entry.

* One ``POST`` route per webhook an adapter declares (``meeting_adapters.Webhook``, listed
  by ``meeting_adapters.registry.webhooks``). The adapter verifies the raw request and
  reads it into neutral events (``MeetingAdapter.read_webhook``); this module applies
  them: a join is judged against the admitted students, an impostor is flagged
  (``presence.Reconciler``: alerts, audit, removal).
  - A per-class hook (``/hooks/<name>/{class_id}``) is checked with the class's own
    platform settings; the class must be live and on that platform.
  - A gateway-wide hook (one URL for every class) is checked with a secret kept in
    ``<data dir>/keys/<name>_hook.secret``; its events name rooms
    (``MeetingAdapter.room_key``), matched to classes through the index
    ``presence.register_room`` keeps, and to the room the class really has.
* ``POST /api/v1/classes/{class_id}/host_join``: the teacher's personal credential
  (moderator) for platforms that have one.

Refusals answer 401 without detail; accepted events answer 200 at once (or the answer
the platform expects, e.g. a URL validation challenge) and are handled beside.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from meeting_adapters import (
    AdapterError,
    HookEvent,
    HookEventKind,
    HookMalformed,
    HookRefused,
    HookRequest,
    Participant,
    Room,
    Unsupported,
    Webhook,
)
from meeting_adapters.registry import webhooks

from ..auth import require_user
from ..errors import ApiError
from ..hostctl import HostControls
from ..presence import Reconciler, room_index_key
from ..services import FOUNDATION, Services, services
from ..stores import ClassInfo
from .classes import load_class

log = logging.getLogger("classguard.hooks")


@dataclass(slots=True)
class HookSecrets:
    """The gateway-wide hooks' secrets by hook name, filled at start-up (the app's state
    is frozen by then; this holder is not)."""

    values: dict[str, str] = field(default_factory=dict)


HOOK_SECRETS: web.AppKey[HookSecrets] = web.AppKey("hook_secrets", HookSecrets)
MAX_HOOK_BYTES: Final = 256 * 1024


def hook_secret_path(data_dir: Path, name: str) -> Path:
    """Where the secret of the gateway-wide webhook ``name`` is kept."""
    return Path(data_dir) / "keys" / f"{name}_hook.secret"


def load_or_create_hook_secret(path: Path) -> str:
    """A gateway-wide hook's secret: random, kept in the data dir (mode 0600)."""
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
    info = await svc.store.get_class(cid)
    return info if info is not None and not info.ended else None


# --- one generic route per declared webhook ---------------------------------------------


def hook_handler(kind: str, hook: Webhook) -> Callable[[web.Request],
                                                       Awaitable[web.Response]]:
    """The route of ``kind``'s webhook ``hook``: verify, answer, then apply the events."""

    async def handle(request: web.Request) -> web.Response:
        svc = services(request)
        controls = HostControls(svc)
        public = svc.settings.public_url
        info: ClassInfo | None = None
        room: Room | None = None
        if hook.per_class:
            info = await _class(svc, request.match_info["class_id"])
            if info is None or info.platform_kind != kind:
                return _unauthorized()
            adapter, room = controls.adapter_and_room(info)
            url, secret = hook.url(public, info.id), ""
        else:
            adapter = controls.adapter(kind)
            url, secret = hook.url(public), request.app[HOOK_SECRETS].values.get(hook.name, "")
        hook_request = HookRequest(headers=request.headers, query=request.query,
                                   body=await _body(request), url=url, secret=secret)
        try:
            result = adapter.read_webhook(hook, hook_request, room)
        except HookRefused as exc:
            log.info("%s webhook refused%s: %s", hook.name,
                     f" for {info.id}" if info is not None else "", exc.why)
            return _unauthorized()
        except HookMalformed as exc:
            raise ApiError(400, "invalid_body", str(exc) or "unreadable event") from None
        for event in result.events:
            # NOTE: answered at once, handled beside: the work may call the platform
            # back, and the platform must not wait on us while we wait on it.
            spawn(svc, apply_event(svc, kind, event, info))
        return web.json_response(dict(result.reply) if result.reply is not None
                                 else {"ok": True})

    return handle


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


async def apply_event(svc: Services, kind: str, event: HookEvent,
                      info: ClassInfo | None) -> None:
    """Judge one event: the class is the per-class hook's, or the one indexed for the
    event's room."""
    if event.room_key is not None:
        cid = await svc.redis.get(room_index_key(svc, kind, event.room_key))
        info = await _class(svc, str(cid)) if cid else None
        if info is None or info.platform_kind != kind:
            return
    if info is None:
        return
    adapter, room = HostControls(svc).adapter_and_room(info)
    if event.room_key is not None and adapter.room_key(room) != event.room_key:
        # NOTE: the event must come from the server the class's room lives on.
        log.warning("%s event for room %s refused for class %s", kind, event.room_key,
                    info.id)
        return
    rec = Reconciler(svc)
    if event.kind is HookEventKind.IMPOSTOR:
        await rec.flag(info, adapter, room, event.present, {})
        return
    try:
        await rec.judge(info, adapter, room, [event.present])
    except AdapterError as exc:
        svc.metrics.upstream_errors.labels(kind).inc()
        log.warning("%s event handling failed: %s", kind, exc)


# --- the teacher's entry -------------------------------------------------------------------


async def host_join(request: web.Request) -> web.Response:
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
    await svc.auditor.record("host.join", actor=p.actor, org=info.org, class_id=info.id,
                             facts={"platform": info.platform_kind})
    return web.json_response({"url": url})


async def _load_secrets(app: web.Application) -> None:
    data_dir = Path(app[FOUNDATION].settings.data_dir)
    for _, hook in webhooks():
        if not hook.per_class:
            app[HOOK_SECRETS].values[hook.name] = await asyncio.to_thread(
                load_or_create_hook_secret, hook_secret_path(data_dir, hook.name))


def setup(app: web.Application) -> None:
    r = app.router
    for kind, hook in webhooks():
        r.add_post(hook.path, hook_handler(kind, hook))
    r.add_post("/api/v1/classes/{class_id}/host_join", host_join)
    app[HOOK_SECRETS] = HookSecrets()
    app.on_startup.append(_load_secrets)


__all__ = ["HOOK_SECRETS", "hook_secret_path", "load_or_create_hook_secret", "setup"]
