"""After a first factor: the session, or the second factor first; and step-up.

Every way of proving who one is (the password form and API today, an identity provider
tomorrow) calls :func:`complete_primary_sign_in` once the first factor has passed. It
either opens the session or, when the account has a second factor enrolled, keeps a
short-lived pending sign-in (gateway/mfa.py) and leaves the session for
gateway/routes/mfa.py to open once the second factor is proved.

:func:`require_fresh_second_factor` guards the most sensitive actions (exporting
evidence, rotating keys, erasing personal data, managing staff): a session must have
proved a second factor less than ``STEP_UP_MAX_AGE_S`` ago.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from .auth import Principal
from .errors import ApiError
from .mfa import STEP_UP_MAX_AGE_S, STEP_UP_ROLES, Method, MfaStore, Pending
from .services import Services, services
from .staff import FailedLogins, User
from .web_util import client_ip

PENDING_COOKIE = "cg_mfa_pending"


def mfa_store(svc: Services) -> MfaStore:
    assert svc.redis is not None and svc.secretbox is not None
    url = urlsplit(svc.settings.public_url)
    return MfaStore(svc.redis, svc.settings.redis_prefix, svc.secretbox, clock=svc.clock,
                    rp_id=url.hostname or "localhost", origin=f"{url.scheme}://{url.netloc}",
                    session_ttl_s=svc.settings.session_ttl_s)


@dataclass(frozen=True, slots=True)
class SignIn:
    """Either a session (``cookie``, ``csrf``) or a pending sign-in (``pending``)."""

    user: dict[str, Any]
    cookie: str | None = None
    csrf: str | None = None
    pending: str | None = None
    methods: tuple[Method, ...] = ()


def as_signed_in(user: User, via: str) -> User:
    """The account as its new session carries it. The identity provider proved who this
    is (``via="oidc"``): a one-time password the account was created or reset with, and
    which its owner never uses, is not asked to be changed, with or without a second
    factor after it."""
    return replace(user, must_change_password=False) if via == "oidc" else user


async def complete_primary_sign_in(request: web.Request, user: User, *,
                                   failures: FailedLogins | None = None,
                                   via: str = "password") -> SignIn:
    """The first factor passed (``via``): open the session, or ask for the second."""
    svc = services(request)
    user = as_signed_in(user, via)
    mfa = mfa_store(svc)
    methods = await mfa.methods(user.username)
    failures = failures or FailedLogins()
    ip = client_ip(request, svc.settings.trusted_proxies)
    ua = request.headers.get("User-Agent", "")
    info = {"username": user.username, "role": user.role, "org": user.org}
    if methods:
        token = await mfa.create_pending(Pending(user.username, ip, ua, via,
                                                 (failures.count, failures.recent)))
        return SignIn(user=info, pending=token, methods=tuple(methods))
    cookie, csrf = await open_session(svc, user, ip=ip, user_agent=ua, failures=failures,
                                      via=via, second_factor=None)
    return SignIn(user=info, cookie=cookie, csrf=csrf)


async def open_session(svc: Services, user: User, *, ip: str, user_agent: str,
                       failures: FailedLogins, via: str,
                       second_factor: Method | None) -> tuple[str, str]:
    """Create the session, note it for the owner's session list, audit ``staff.login``."""
    mfa = mfa_store(svc)
    cookie, csrf, session = await svc.staff.create_session(
        user, ip=ip, user_agent=user_agent, failures=failures)
    await mfa.note_session(session.sid_hash, user.username, ip, user_agent, session.created)
    if second_factor is not None:
        await mfa.mark_fresh(session.sid_hash)
    facts: dict[str, Any] = {"via": via}
    if second_factor is not None:
        facts["second_factor"] = second_factor
    await svc.auditor.record("staff.login", actor=f"user:{user.username}", org=user.org,
                             ip=ip, user_agent=user_agent,
                             facts=facts if (via != "password" or second_factor) else None)
    return cookie, csrf


def set_pending_cookie(request: web.Request, resp: web.StreamResponse, token: str) -> None:
    resp.set_cookie(PENDING_COOKIE, token, max_age=300, httponly=True,
                    secure=services(request).settings.cookie_secure, samesite="Strict",
                    path="/")


async def step_up_needed(svc: Services, p: Principal) -> bool:
    """Does this principal's org policy or enrolment call for a second factor?"""
    if p.via != "session":
        # NOTE: bearer tokens are issued by the operator on the command line, expire and
        # are revoked there; scripts cannot answer a second factor.
        return False
    mfa = mfa_store(svc)
    if await mfa.methods(p.username):
        return True
    if p.role not in STEP_UP_ROLES:
        return False
    assert svc.staff is not None
    return await mfa.policy(await svc.staff.org_ancestors(p.org)) == "required"


def verify_url(nxt: str) -> str:
    return "/account/verify?next=" + quote(nxt, safe="")


async def has_fresh_second_factor(svc: Services, p: Principal) -> bool:
    """May ``p`` take a step-up action now (a recent second factor, or none needed)?"""
    if not await step_up_needed(svc, p):
        return True
    assert p.session_id is not None
    age = await mfa_store(svc).fresh_age(p.session_id)
    return age is not None and 0 <= age < STEP_UP_MAX_AGE_S


async def require_fresh_second_factor(request: web.Request, p: Principal) -> None:
    """403 ``step_up_required`` unless the session proved a second factor less than five
    minutes ago (or needs none: see :func:`step_up_needed`)."""
    if await has_fresh_second_factor(services(request), p):
        return
    nxt = request.headers.get("Referer") or "/"
    nxt = urlsplit(nxt).path or "/"
    raise ApiError(403, "step_up_required",
                   "prove your second factor again (less than 5 minutes ago) first",
                   extra={"verify_url": verify_url(nxt)})
