"""Problems reported by students and parents, and what staff decide about them.

A student (or a parent on the student's device) reports through one of two credentials,
with no account; both show the same form (category, "student or parent", optional text),
apply the same limits and record the same ``report.created`` event:

* ``GET|POST /report/{ticket}``: through the ticket of a join, on the device it was
  issued to (the device cookie proves the ticket is the student's own; a ticket seen
  over someone's shoulder is not enough). The form's token is derived from that cookie
  (HttpOnly, SameSite=Lax), so another site can neither read nor forge it. The waiting
  page links here, before and after the admission. ``GET /report`` resolves the ticket
  this device last entered a class by (remembered at ``/go``) and redirects to its form,
  or says there is none: the pages the gateway itself serves once a student is in (the
  demo's meeting page and Janus room) link there.
* ``GET|POST /j/{token}/report``: through the student's own link, from any device (the
  "someone is using my link" case comes from a device other than the one the link is
  bound to). The link is verified as a join verifies it (``JoinFlow.check_link``: the
  same refusals, and failures charged to the source), but nothing joins: no device is
  bound, no ticket issued, nothing consumed. The form's token is an HMAC of the link's
  id under a server-held key (``SecretBox.mac``). The refusal page of a link that
  verified but was refused for a reason a student may want to report
  (``REPORTABLE_REASONS``: bound to another device, in the class on another device,
  removed or refused by the host) links here.

Forms posted from another site are refused (``Origin``). Reports are rate-limited per
link (both ways share the link's budget) and per ticket.

A report covers the class and the ten minutes before it (gateway/stores/reports.py),
reaches the control room at once (a ``report`` bus event) and the incidents page, and is
audited (``report.created``: category, role, window and ``via``, the ticket or the link;
the device, when the browser has a device cookie; the reporter's words stay out of the
log). Teachers of the class and administrators of its org turn it into an incident
(``POST /api/v1/reports/{id}/incident``: the school is emailed, measured from the report)
or dismiss it with a reason (``POST /api/v1/reports/{id}/dismiss``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .. import i18n, notify
from ..auth import Principal, require_user
from ..authz import Action, allows, listing_scope
from ..errors import ApiError
from ..hostctl import class_target
from ..joinflow import JoinFlow, JoinOutcome
from ..services import Services, services
from ..stores import Limit, device_hash, split_ticket
from ..stores.reports import CATEGORIES, MAX_TEXT, ROLES, Report, Reports
from ..web_util import client_ip, read_form, read_json, require_fields
from .incidents import incident_store
from .join import _device_cookie, _outcome_response, render

log = logging.getLogger("classguard.reports")

MAX_REASON = 1000
_CONTROL = {"Cc", "Cf", "Zl", "Zp"}
LINK_FORM_PURPOSE = b"report-form"


def report_store(svc: Services) -> Reports:
    return Reports(svc.redis, svc.settings.redis_prefix, clock=svc.clock)


def form_token(cookie: str, ticket: str) -> str:
    """The ticket form's anti-forgery token: only a page that holds the device cookie
    (HttpOnly) can have been given it."""
    return hmac.new(cookie.encode(), b"report|" + ticket.encode(), hashlib.sha256).hexdigest()


def link_form_token(svc: Services, jti: str) -> str:
    """The link form's anti-forgery token: an HMAC of the link's id under a key only the
    server holds, so no other site can compute it."""
    return svc.secretbox.mac(jti.encode(), purpose=LINK_FORM_PURPOSE)


def clean_text(value: Any, field: str, max_len: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, "invalid_field", f"{field} must be a string", field=field)
    text = unicodedata.normalize("NFC", value).replace("\r\n", "\n")
    lines = [" ".join("".join(ch for ch in line if unicodedata.category(ch) not in _CONTROL)
                      .split()) for line in text.split("\n")]
    text = "\n".join(lines).strip()
    if len(text) > max_len:
        raise ApiError(400, "invalid_field", f"{field} may be at most {max_len} characters",
                       field=field)
    return text


def _same_origin(request: web.Request, public_url: str) -> bool:
    """A form posted from another site is refused. NOTE: our pages send no referrer, so
    the browser sends ``Origin: null`` for our own form; the form token (derived from
    the HttpOnly, SameSite=Lax device cookie, or a server-held key) is what proves the
    form is ours."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc in {urlsplit(public_url).netloc, request.host}


@dataclass(frozen=True, slots=True)
class Reporter:
    """Who reports, as their credential proved it: the class and student, the link, the
    device (a hash, when the browser has a device cookie), how (``via``: ticket or link),
    where the form posts, its token and the budgets a report is charged."""

    via: str
    action: str
    class_id: str
    student_id: str
    jti: str
    device: str | None
    token: str
    limits: tuple[Limit, ...]


def _jti_limit(jti: str) -> Limit:
    return Limit(f"report:jti:{jti}", per_second=1 / 60, burst=5)


async def _ticket_reporter(request: web.Request) -> Reporter:
    """The ticket in the address, when this device holds it (404 otherwise)."""
    svc = services(request)
    tid = request.match_info["ticket"]
    cookie = _device_cookie(request)
    t = await svc.store.ticket(tid) if split_ticket(tid) is not None else None
    if t is None or cookie is None or device_hash(cookie) != t.device:
        raise ApiError(404, "not_found", "no such ticket on this device")
    limits = [Limit(f"report:ticket:{t.id}", per_second=1 / 60, burst=3)]
    if t.jti:
        limits.append(_jti_limit(t.jti))
    return Reporter(via="ticket", action=f"/report/{t.id}", class_id=t.class_id,
                    student_id=t.student_id, jti=t.jti, device=t.device,
                    token=form_token(cookie, t.id), limits=tuple(limits))


async def _link_reporter(request: web.Request) -> Reporter | web.StreamResponse:
    """The link in the address, verified as a join verifies it; the refusal a join
    would get (and the failure charged to the source) when it is no credential."""
    svc = services(request)
    token = request.match_info["token"]
    cookie = _device_cookie(request)
    check = await JoinFlow(svc).check_link(
        token, ip=client_ip(request, svc.settings.trusted_proxies),
        device_cookie=cookie, user_agent=request.headers.get("User-Agent", "")[:512],
        via="report")
    if check.refusal is not None or check.facts is None or check.info is None:
        assert check.refusal is not None
        return _link_refused(request, check.refusal)
    facts = check.facts
    jti = str(facts.jti)
    return Reporter(via="link", action=f"/j/{token}/report", class_id=check.info.id,
                    student_id=str(facts.student_id), jti=jti,
                    device=device_hash(cookie) if cookie else None,
                    token=link_form_token(svc, jti), limits=(_jti_limit(jti),))


def _link_refused(request: web.Request, out: JoinOutcome) -> web.StreamResponse:
    """A refused link: the join's refusal page, or a JSON error."""
    if request.content_type == "application/json" or _wants_json(request):
        if out.retry_after > 0:
            raise ApiError(429, "rate_limited", "too many requests", headers={
                "Retry-After": str(max(1, int(out.retry_after + 0.999)))})
        raise ApiError(403, out.decision.reason.value, "this link cannot be used to report")
    resp = _outcome_response(request, out)
    if isinstance(resp, web.HTTPException):  # (never: a refusal is a page)
        raise resp
    return resp


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def _form(request: web.Request, rep: Reporter, lang: str, *, status: int = 200,
          error: str | None = None, values: dict[str, str] | None = None) -> web.Response:
    svc = services(request)
    return render(svc, "report_form.html", lang, status=status, action=rep.action,
                  token=rep.token, categories=CATEGORIES, roles=ROLES,
                  max_text=MAX_TEXT, error=error, values=values or {})


async def report_page(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    try:
        rep = await _ticket_reporter(request)
    except ApiError:
        return render(svc, "denied.html", lang, status=404, reason="report_no_ticket",
                      class_title=None)
    return _form(request, rep, lang)


async def report_create(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    if not _same_origin(request, svc.settings.public_url):
        raise ApiError(403, "bad_origin", "cross-site form refused")
    return await _create(request, await _ticket_reporter(request))


async def link_report_page(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    rep = await _link_reporter(request)
    if not isinstance(rep, Reporter):
        return rep
    return _form(request, rep, lang)


async def link_report_create(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    if not _same_origin(request, svc.settings.public_url):
        raise ApiError(403, "bad_origin", "cross-site form refused")
    rep = await _link_reporter(request)
    if not isinstance(rep, Reporter):
        return rep
    return await _create(request, rep)


async def current_report(request: web.Request) -> web.StreamResponse:
    """``GET /report``: the report form of the ticket this device last entered a class by
    (the pages a student sees once admitted link here), or a page saying there is none."""
    svc = services(request)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    cookie = _device_cookie(request)
    dev = device_hash(cookie) if cookie else None
    tid = await svc.store.entered_ticket(dev) if dev else None
    t = await svc.store.ticket(tid) if tid and split_ticket(tid) is not None else None
    if t is None or t.device != dev:
        return render(svc, "denied.html", lang, status=404, reason="report_no_class",
                      class_title=None)
    raise web.HTTPSeeOther(f"/report/{t.id}?lang={lang}")


async def _create(request: web.Request, rep: Reporter) -> web.StreamResponse:
    """A report through either credential, once the request's origin was checked and
    the credential verified."""
    svc = services(request)
    lang = i18n.request_lang(request, svc.settings.default_lang)
    as_json = request.content_type == "application/json"
    raw: dict[str, Any]
    if as_json:
        data = await read_json(request)
        raw = require_fields(data, required=("category", "role", "token"), optional=("text",))
    else:
        form = await read_form(request)
        raw = {k: form.get(k) for k in ("category", "role", "token", "text")}
    token = raw.get("token")
    if not isinstance(token, str) or not hmac.compare_digest(token, rep.token):
        raise ApiError(403, "csrf_failed", "missing or wrong form token")
    values = {k: str(raw.get(k) or "")[:MAX_TEXT + 1] for k in ("category", "role", "text")}
    try:
        if raw.get("category") not in CATEGORIES:
            raise ApiError(400, "invalid_field",
                           f"category must be one of {', '.join(CATEGORIES)}", field="category")
        if raw.get("role") not in ROLES:
            raise ApiError(400, "invalid_field", "role must be student or parent",
                           field="role")
        text = clean_text(raw.get("text"), "text", MAX_TEXT)
    except ApiError as exc:
        if as_json or _wants_json(request):
            raise
        return _form(request, rep, lang, status=400, values=values,
                     error=i18n.t(lang, f"report.error.{exc.field}"))
    wait, _ = await svc.store.rate_limit_check(list(rep.limits))
    if wait > 0:
        svc.metrics.rate_limited.labels("report").inc()
        retry = str(max(1, int(wait + 0.999)))
        if as_json or _wants_json(request):
            raise ApiError(429, "rate_limited", "too many reports, retry later",
                           headers={"Retry-After": retry})
        resp = _form(request, rep, lang, status=429, values=values,
                     error=i18n.t(lang, "report.error.rate_limited", seconds=retry))
        resp.headers["Retry-After"] = retry
        return resp
    info = await svc.store.get_class(rep.class_id)
    if info is None:
        raise ApiError(404, "not_found", "class not found")
    made = await report_store(svc).create(org=info.org, class_id=info.id,
                                          student_id=rep.student_id,
                                          category=str(raw["category"]),
                                          role=str(raw["role"]), text=text)
    # NOTE: the reporter's words are not in the log (free text stays out of the
    # immutable record); the report keeps them for the staff who decide on it.
    await svc.auditor.record(
        "report.created", actor=f"student:{rep.student_id}", org=info.org, class_id=info.id,
        subject=rep.student_id, reason=made.category,
        facts={"report": made.id, "reporter": made.role, "via": rep.via,
               "since": int(made.since * 1000), "until": int(made.until * 1000),
               "text_chars": len(text) or None},
        ip=client_ip(request, svc.settings.trusted_proxies), device=rep.device,
        user_agent=request.headers.get("User-Agent", ""))
    await svc.bus.publish(info.id, {"type": "report", "report": made.to_json()})
    if as_json or _wants_json(request):
        return web.json_response({"id": made.id, "status": made.status}, status=201)
    return render(svc, "report_done.html", lang, status=201)


# --- staff --------------------------------------------------------------------------


async def visible_reports(svc: Services, p: Principal, *, class_id: str | None = None,
                          status: str | None = None) -> list[Report]:
    """Reports this principal may act on, newest first: a teacher's own classes, the org
    subtree for administrators."""
    store = report_store(svc)
    scope = listing_scope(p, Action.HANDLE_REPORT)
    if scope == "subtree":
        found = await store.of_orgs(sorted(await svc.staff.org_subtree(p.org)))
    elif scope == "owned":
        classes = await svc.store.classes_of_owner(p.username)
        found = await store.of_classes([c.id for c in classes])
    else:
        found = []
    return [r for r in found if (not class_id or r.class_id == class_id)
            and (not status or r.status == status)]


async def _load(request: web.Request, p: Principal) -> Report:
    svc = services(request)
    rep = await report_store(svc).get(request.match_info["report_id"])
    info = await svc.store.get_class(rep.class_id) if rep is not None else None
    if rep is None or info is None or not allows(p, Action.HANDLE_REPORT,
                                                 await class_target(svc, info)):
        raise ApiError(404, "not_found", "report not found")
    return rep


async def list_reports(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    found = await visible_reports(svc, p, class_id=request.query.get("class_id"),
                                  status=request.query.get("status"))
    return web.json_response({"reports": [r.to_json() for r in found]})


async def _claim(svc: Services, rep: Report, p: Principal) -> None:
    if rep.status != "open" or not await report_store(svc).claim(rep.id, p.username):
        raise ApiError(409, "already_decided", "this report was already decided")


async def to_incident(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    rep = await _load(request, p)
    await _claim(svc, rep, p)
    store = report_store(svc)
    try:
        title = i18n.t(svc.settings.default_lang, f"report.category.{rep.category}")
        async with svc.auditor.intended(
                "incident.create", actor=p.actor, org=rep.org, class_id=rep.class_id,
                facts={"since": int(rep.since * 1000), "until": int(rep.until * 1000),
                       "report": rep.id, "hold": "placed"},
                personal={"ip": client_ip(request, svc.settings.trusted_proxies),
                          "ua": request.headers.get("User-Agent", "")[:512]}) as out:
            inc = await incident_store(svc).create(
                org=rep.org, class_id=rep.class_id, title=title, description=rep.text,
                since_ms=int(rep.since * 1000), until_ms=int(rep.until * 1000),
                student_ids=[], visitors=[], indexes=[], created_by=p.username)
            out.facts = {"incident": inc.id, **out.facts}
    except BaseException:
        await store.release(rep.id)
        raise
    done = await store.decide(rep, status="incident", by=p.username, incident=inc.id)
    await svc.auditor.record("report.converted", actor=p.actor, org=rep.org,
                             class_id=rep.class_id, reason=rep.category,
                             facts={"report": rep.id, "incident": inc.id})
    await notify.incident_opened(svc, inc, reported_at=rep.at)
    await svc.bus.publish(rep.class_id, {"type": "report_decided", "report": done.to_json()})
    return web.json_response({"report": done.to_json(), "incident": inc.to_json()},
                             status=201)


async def dismiss(request: web.Request) -> web.Response:
    svc = services(request)
    p = await require_user(request)
    rep = await _load(request, p)
    d = require_fields(await read_json(request), required=("reason",))
    reason = clean_text(d["reason"], "reason", MAX_REASON)
    if not reason:
        raise ApiError(400, "missing_field", "a reason is required", field="reason")
    await _claim(svc, rep, p)
    done = await report_store(svc).decide(rep, status="dismissed", by=p.username,
                                          reason=reason)
    # NOTE: the reason is the staff member's words: kept in the erasable personal part.
    await svc.auditor.record("report.dismissed", actor=p.actor, org=rep.org,
                             class_id=rep.class_id, reason=rep.category,
                             facts={"report": rep.id}, personal={"reason": reason})
    await svc.bus.publish(rep.class_id, {"type": "report_decided", "report": done.to_json()})
    return web.json_response({"report": done.to_json()})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/report", current_report)
    r.add_get("/report/{ticket}", report_page)
    r.add_post("/report/{ticket}", report_create)
    r.add_get("/j/{token}/report", link_report_page)
    r.add_post("/j/{token}/report", link_report_create)
    r.add_get("/api/v1/reports", list_reports)
    r.add_post("/api/v1/reports/{report_id}/incident", to_incident)
    r.add_post("/api/v1/reports/{report_id}/dismiss", dismiss)
