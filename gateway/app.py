"""The one application factory, used by the CLI and the tests alike. It only composes:
middlewares, each route module's ``setup``, the static files, and ``cleanup_ctx``, which
opens the services (gateway/services.py) at start-up and closes them at clean-up.
No module-level mutable state.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from .auth import refusal_middleware
from .config import Settings
from .errors import make_error_middleware
from .metrics import Metrics
from .notify import Notifier
from .presence import Reconciler
from .routes import (
    account,
    admin_api,
    audit,
    audit_admin,
    classes,
    control,
    incidents,
    join,
    mfa,
    oidc,
    orgs,
    pages,
    pages_admin,
    pages_incidents,
    pages_it,
    pages_teacher,
    platform_hooks,
    reports,
    rules_api,
    service,
    session,
    sessions_page,
)
from .services import FOUNDATION, Clock, Foundation, make_templates, open_services

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    resp = await handler(request)
    if isinstance(resp, web.WebSocketResponse):
        return resp
    h = resp.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    # NOTE: join links carry the token in the path; never leak it through Referer.
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if not request.path.startswith("/static/"):
        h.setdefault("Cache-Control", "no-store")
    return resp


async def _services(app: web.Application) -> AsyncIterator[None]:
    found = app[FOUNDATION]
    async with open_services(found, reconciler=Reconciler, notifier=Notifier) as svc:
        found.started = svc
        yield


def create_app(settings: Settings, *, clock: Clock = time.time,
               sequencer: bool = True) -> web.Application:
    """The gateway. ``sequencer=False``: a worker of a supervised group, whose
    sequencer process runs the audit sequencer (gateway/workers.py)."""
    metrics = Metrics.create()
    templates = make_templates()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[security_headers, metrics.middleware(),
                     make_error_middleware(metrics.redis_errors.inc, pages.not_found_page,
                                           templates),
                     refusal_middleware],
    )
    app[FOUNDATION] = Foundation(settings=settings, clock=clock, metrics=metrics,
                                 templates=templates, sequencer_elsewhere=not sequencer)
    app.cleanup_ctx.append(_services)
    # NOTE: the order is the routing order; the page modules follow the shared page
    # machinery of routes/pages.py.
    for module in (service, session, classes, control, join, pages, pages_teacher, pages_it,
                   pages_admin, pages_incidents, admin_api, account, audit, orgs,
                   platform_hooks, incidents, audit_admin, mfa, sessions_page, oidc, reports,
                   rules_api):
        module.setup(app)
    static_dir = Path(__file__).parent / "static"
    app.router.add_static("/static/", static_dir, name="static", append_version=True)
    return app
