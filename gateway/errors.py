"""One place that turns every failure into the error JSON of docs/api.md.

``{"error": {"code": ..., "message": ..., "field": ...}}`` with a fitting status; never a
stack trace. Package errors (PolicyError, StaffError, AdapterError, RosterError, ...)
carry a stable ``code`` and are mapped here, so route code can simply raise them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import jinja2
import redis.exceptions
from aiohttp import web
from aiohttp.typedefs import Middleware

from . import i18n

log = logging.getLogger("classguard.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error with an HTTP status, a stable code and an English message.

    ``message_key`` (optional) names a translation catalogue entry used for the
    human message in the visitor's language.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}


class Refusal(ApiError):
    """A signed-in staff member refused a resource they named (a class that is not
    theirs: 404, so its existence is not confirmed; an action above their role: 403).
    Recorded as ``staff.refused`` by ``auth.refusal_middleware``, like every 403 that a
    signed-in staff member gets."""

    def __init__(self, status: int, code: str, message: str, *, class_id: str | None = None,
                 org: str | None = None, field: str | None = None) -> None:
        super().__init__(status, code, message, field=field)
        self.class_id = class_id
        self.org = org


def bad_request(code: str, message: str, field: str | None = None) -> ApiError:
    return ApiError(400, code, message, field=field)


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def forbidden(message: str = "not allowed") -> ApiError:
    return ApiError(403, "forbidden", message)


def rate_limited(retry_after: float) -> ApiError:
    secs = max(1, int(retry_after + 0.999))
    return ApiError(
        429, "rate_limited", "too many requests", headers={"Retry-After": str(secs)}
    )


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    if extra:
        err.update(extra)
    return web.Response(
        status=status,
        text=json.dumps({"error": err}, ensure_ascii=False),
        content_type="application/json",
        headers=headers,
    )


# status for the stable codes of the package errors
_CODE_STATUS = {
    "invalid_policy": 400,
    "invalid_platform": 400,
    "unsupported_by_platform": 409,
    "platform_unreachable": 503,
    "user_exists": 409,
    "not_found": 404,
    "encoding": 400,
    "format": 400,
    "empty": 400,
    "too_many_rows": 413,
    "too_large": 413,
    "audit_not_durable": 503,
}


# Adapter codes that are ours (settings, capabilities); every other adapter code reports
# what a platform server answered.
_ADAPTER_OWN_CODES = frozenset({"invalid_platform", "unsupported_by_platform", "invalid_room",
                                "invalid_participant"})


def _from_platform_error(request: web.Request, exc: Exception) -> web.Response | None:
    """A platform failure as one generic, translated message; the detail goes to the log.

    NOTE: the platform URL is the teacher's to choose, so its answers (an error
    message in the body) and the way a connection failed (refused, timed
    out, denied by the egress policy) would turn the gateway into a port scanner and an
    echo of internal services. None of it reaches the client.
    """
    from meeting_adapters import AdapterError

    if not isinstance(exc, AdapterError) or exc.code in _ADAPTER_OWN_CODES:
        return None
    log.warning("platform error on %s: %s %s (%r)", _route_name(request), exc.code,
                exc.message, exc.detail)
    lang = i18n.request_lang(request)
    if exc.code == "platform_unreachable":
        return error_response(503, "platform_unreachable",
                              i18n.t(lang, "error.platform_unreachable"))
    return error_response(502, "platform_refused", i18n.t(lang, "error.platform_refused"))


def _from_package_error(exc: Exception) -> web.Response | None:
    code = getattr(exc, "code", None)
    if not isinstance(code, str) or type(exc).__module__.split(".")[0] not in {
        "policies",
        "meeting_adapters",
        "audit",
        "gateway",
    }:
        return None
    message = getattr(exc, "message", None) or str(exc) or code
    field = getattr(exc, "field", None)
    status = getattr(exc, "status", None) or _CODE_STATUS.get(code, 400)
    return error_response(int(status), code, str(message), field)


# aiohttp's own body parsers: an exception raised inside them is about the bytes the
# client sent (a multipart type without a boundary, a body that is not multipart).
_BODY_PARSERS = {("aiohttp.multipart", None), ("aiohttp.web_request", "post"),
                 ("aiohttp.web_request", "multipart")}


def _raised_by_body_parser(exc: BaseException) -> bool:
    """Whether ``exc`` came out of aiohttp's form/multipart parsing. The routes read
    forms through ``web_util.read_form``, which answers 400 itself; this catches any
    reader that calls ``request.post()``/``request.multipart()`` directly."""
    if not isinstance(exc, (ValueError, LookupError, AssertionError)):
        return False
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        module = frame.f_globals.get("__name__")
        if (module, None) in _BODY_PARSERS or (module, frame.f_code.co_name) in _BODY_PARSERS:
            return True
        tb = tb.tb_next
    return False


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


RETRY_AFTER_S = 10
# The student's pages: a person with a phone, not a client that reads JSON.
_STUDENT_PATHS = ("/j/", "/join", "/go/")


def _student_page(request: web.Request) -> bool:
    return request.method == "GET" and request.path.startswith(_STUDENT_PATHS) and \
        _wants_html(request)


def _unavailable_page(templates: jinja2.Environment, lang: str) -> web.Response:
    """The student's page while Redis is unreachable: what happened, in their language,
    and a script that opens the link again by itself (static/retry.js)."""
    html = templates.get_template("denied.html").render(
        lang=lang, reason="dependency_down", retry_s=RETRY_AFTER_S, class_title=None)
    return web.Response(text=html, content_type="text/html", status=503,
                        headers={"Retry-After": str(RETRY_AFTER_S)})


def _wants_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and not request.path.startswith("/api/")


def make_error_middleware(
    on_dependency_error: Callable[[], None] = lambda: None,
    not_found_page: Callable[[web.Request], web.StreamResponse] | None = None,
    templates: jinja2.Environment | None = None,
) -> Middleware:
    """The middleware; ``on_dependency_error`` counts Redis failures in metrics;
    ``not_found_page`` renders the not-found page for a browser asking for an unknown
    address (API clients keep the JSON error); with ``templates``, a student's page
    that fails on a dependency renders the "try again" page rather than JSON."""

    @web.middleware
    async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _handle(request, handler, on_dependency_error, not_found_page,
                             templates)

    return error_middleware


async def _handle(request: web.Request, handler: Handler,
                  on_dependency_error: Callable[[], None],
                  not_found_page: Callable[[web.Request], web.StreamResponse] | None,
                  templates: jinja2.Environment | None,
                  ) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(
            exc.status, exc.code, exc.message, exc.field, exc.headers, exc.extra
        )
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "too_large", "request body too large")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            if not_found_page is not None and _wants_html(request):
                return not_found_page(request)
            return error_response(404, "not_found", "not found")
        if exc.status == 405:
            return error_response(405, "method_not_allowed", "method not allowed")
        return error_response(exc.status, f"http_{exc.status}", exc.reason or "error")
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
            redis.exceptions.ReadOnlyError) as exc:
        # NOTE: fail closed. Any dependency outage is a 503; nobody is admitted. A
        # replica answering READONLY is a master that was demoted by a failover.
        # NOTE: never log the path itself: /j/<token> is a personal credential.
        log.warning("dependency unavailable on %s: %s", _route_name(request), exc)
        on_dependency_error()
        lang = i18n.request_lang(request)
        if templates is not None and _student_page(request):
            return _unavailable_page(templates, lang)
        return error_response(
            503, "dependency_unavailable", i18n.t(lang, "error.redis_down"),
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    except redis.exceptions.ResponseError as exc:
        if not is_out_of_memory(exc):
            return _unhandled(request, exc, templates)
        # NOTE: fail closed. Redis is at its maxmemory (noeviction) and refuses writes:
        # nothing was half-written by a script (Redis refuses it before its first write).
        log.error("Redis is full (maxmemory) on %s: writes refused", _route_name(request))
        on_dependency_error()
        lang = i18n.request_lang(request)
        return error_response(503, "storage_full", i18n.t(lang, "error.storage_full"))
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a stack trace
        return _unhandled(request, exc, templates)


def is_out_of_memory(exc: BaseException) -> bool:
    """A Redis refusal because the server reached its maxmemory (directly or from
    inside a script)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.exceptions.ResponseError)
        and "command not allowed when used memory" in str(exc))


def _unhandled(request: web.Request, exc: Exception,
               templates: jinja2.Environment | None) -> web.StreamResponse:
    """Called inside the ``except`` block, so ``log.exception`` has the traceback."""
    if getattr(exc, "code", None) == "audit_not_durable" and templates is not None \
            and _student_page(request):
        log.warning("audit not durable on %s: %s", _route_name(request), exc)
        return _unavailable_page(templates, i18n.request_lang(request))
    mapped = _from_platform_error(request, exc) or _from_package_error(exc)
    if mapped is not None:
        return mapped
    if _raised_by_body_parser(exc):
        return error_response(400, "invalid_body", "the request body cannot be parsed")
    log.exception("unhandled error on %s %s", request.method, _route_name(request))
    return error_response(500, "internal_error", "internal error")
