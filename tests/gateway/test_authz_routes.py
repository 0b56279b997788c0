"""Every route refuses every role it must: one table, the real app, real Redis.

The table names every route the app serves (``app.router``): a route added without a row
fails the test. Each row says who gets through: a set of roles, or
``PUBLIC`` for what is open by design (join links, ``/go``, health, the sign-in pages,
platform webhooks with their own signatures, static files). Every role then calls every
route and must be let through exactly when the row says so.

Roles (school A = ``thpt-a`` under the deployment root ``so-gd``; school B = ``thpt-b``):

* ``anonymous``: no credential;
* ``other_teacher``: a teacher of school A who owns another class;
* ``teacher``: the teacher of the class (and reporter of its incident);
* ``other_admin``: an administrator of school B;
* ``it``: IT staff of school A;
* ``admin``: an administrator of school A;
* ``parent_admin``: an administrator of the root org above school A;
* ``disabled``: an administrator of the root org whose account was disabled after its
  session and token were issued (the state a sign-in racing the disabling leaves).

Let through means: not 401, 403 or 404 (the class routes answer 404 to whoever may not
see the class) and, for pages, not a redirect to the sign-in page. Requests carry
malformed bodies wherever a valid one would change what the next role sees: the answer
is then 400 after the authorization, which is what is being tested.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from gateway.bans import make_key
from gateway.routes.reports import report_store

from .helpers import (
    Gateway,
    host_control,
    make_class,
    next_message,
    running_gateway,
)

PUBLIC = "public"
ROLES = ("anonymous", "other_teacher", "teacher", "other_admin", "it", "admin",
         "parent_admin", "disabled")

STAFF = frozenset({"other_teacher", "teacher", "other_admin", "it", "admin", "parent_admin"})
VIEW = frozenset({"teacher", "it", "admin", "parent_admin"})  # the class of school A
HOST = frozenset({"teacher", "admin", "parent_admin"})
CREATE = frozenset({"other_teacher", "teacher", "other_admin", "admin", "parent_admin"})
AUDIT = frozenset({"other_admin", "it", "admin", "parent_admin"})  # each its own subtree
ADMINS = frozenset({"other_admin", "admin", "parent_admin"})
ORG_A = frozenset({"it", "admin", "parent_admin"})  # IT and administrators above school A
ORG_A_ADMINS = frozenset({"admin", "parent_admin"})
ROOT = frozenset({"parent_admin"})

BAN_KEY = make_key(ip="198.51.100.7")
BOGUS: dict[str, Any] = {"bogus": 1}


@dataclass
class World:
    gw: Gateway
    cid: str
    incident: str
    student: str
    tokens: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, tuple[str, str]] = field(default_factory=dict)  # cookie, csrf
    report: str = ""  # a student's report about the class

    def fill(self, path: str) -> str:
        return (path.replace("{class_id}", self.cid)
                .replace("{incident_id}", self.incident)
                .replace("{report_id}", self.report)
                .replace("{org}", "thpt-a")
                .replace("{username}", "victim")
                .replace("{student_id}", self.student)
                .replace("{key}", quote(BAN_KEY, safe="")))


Setup = Callable[[World], Awaitable[None]]


async def _org_ban(w: World) -> None:
    assert w.gw.svc.store is not None
    await w.gw.svc.store.add_ban(class_id=None, org="thpt-a", key=BAN_KEY, reason="test",
                                 by="admin", until=None)


async def _org_oidc(w: World) -> None:
    """School A signs in through an OpenID provider (settings only, no network)."""
    from gateway.oidc import parse_settings
    from gateway.routes.oidc import oidc_store

    settings, secret = parse_settings("thpt-a", {
        "provider": "generic", "discovery_url": "https://id.thpt-a.example",
        "client_id": "classguard", "client_secret": "s", "domains": ["thpt-a.example"]})
    await oidc_store(w.gw.svc).save(settings, secret)


@dataclass(frozen=True)
class Row:
    allowed: frozenset[str] | str
    path: str | None = None  # the path to call, when the route's own needs more than ids
    json: Any = None
    page: bool = False  # an HTML page: session cookie, and refusals may be a redirect
    setup: Setup | None = None


def _since_until() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"since": (now - timedelta(hours=1)).isoformat(), "until": now.isoformat()}


TABLE: dict[tuple[str, str], Row] = {
    # service endpoints: open, or gated by their own network/token setting
    ("GET", "/healthz"): Row(PUBLIC),
    ("GET", "/readyz"): Row(PUBLIC),
    ("GET", "/metrics"): Row(PUBLIC),
    ("GET", "/.well-known/jwks.json"): Row(PUBLIC),
    ("GET", "/static"): Row(PUBLIC, path="/static/app.js"),
    # signing in and out, language, the start page
    ("POST", "/api/v1/session"): Row(PUBLIC, json=BOGUS),
    ("DELETE", "/api/v1/session"): Row(PUBLIC),
    ("GET", "/"): Row(PUBLIC, page=True),
    ("GET", "/favicon.ico"): Row(PUBLIC),
    ("GET", "/login"): Row(PUBLIC, page=True),
    ("POST", "/login"): Row(PUBLIC, page=True),
    ("POST", "/logout"): Row(PUBLIC, page=True),
    ("GET", "/lang/{lang}"): Row(PUBLIC, path="/lang/en?next=/login"),
    # signing in through the org's OpenID provider
    ("GET", "/auth/oidc/start"): Row(PUBLIC, path="/auth/oidc/start?email=a@nowhere.example"),
    ("GET", "/auth/oidc/callback"): Row(PUBLIC, path="/auth/oidc/callback?state=x&code=y"),
    ("GET", "/auth/oidc/signed-out"): Row(PUBLIC, page=True),
    ("GET", "/auth/oidc/continue"): Row(PUBLIC, page=True),
    # students: the join link, the short code, the waiting room, the hand-off
    ("GET", "/j/{token}"): Row(PUBLIC, path="/j/not-a-token"),
    ("GET", "/join"): Row(PUBLIC, page=True),
    ("POST", "/join"): Row(PUBLIC, json={"code": "000000"}),
    ("GET", "/c/{code}"): Row(PUBLIC, path="/c/00000-00000"),
    ("POST", "/rules/{ref}"): Row(PUBLIC, path="/rules/not-a-ref"),
    ("GET", "/ws/wait/{ticket}"): Row(PUBLIC, path="/ws/wait/not-a-ticket"),
    ("GET", "/go/{nonce}"): Row(PUBLIC, path="/go/not-a-nonce"),
    # students and parents report a problem through the student's own ticket
    ("GET", "/report/{ticket}"): Row(PUBLIC, path="/report/not-a-ticket"),
    ("POST", "/report/{ticket}"): Row(PUBLIC, path="/report/not-a-ticket", json=BOGUS),
    # ... through the student's own link, and the ticket this device last entered by
    ("GET", "/j/{token}/report"): Row(PUBLIC, path="/j/not-a-token/report"),
    ("POST", "/j/{token}/report"): Row(PUBLIC, path="/j/not-a-token/report", json=BOGUS),
    ("GET", "/report"): Row(PUBLIC),
    # reports: the class's teacher and administrators above it decide
    ("GET", "/api/v1/reports"): Row(STAFF),
    ("POST", "/api/v1/reports/{report_id}/incident"): Row(HOST),
    ("POST", "/api/v1/reports/{report_id}/dismiss"): Row(HOST, json=BOGUS),
    # meeting platforms call these with their own signatures
    ("POST", "/hooks/janus"): Row(PUBLIC, json=BOGUS),
    ("POST", "/hooks/bbb/{class_id}"): Row(PUBLIC, json=BOGUS),
    ("POST", "/hooks/zoom/{class_id}"): Row(PUBLIC, json=BOGUS),
    # classes
    ("GET", "/api/v1/classes"): Row(STAFF),
    ("POST", "/api/v1/classes"): Row(CREATE, json=BOGUS),
    ("GET", "/api/v1/classes/{class_id}"): Row(VIEW),
    ("GET", "/api/v1/classes/{class_id}/explain"): Row(
        VIEW, path="/api/v1/classes/{class_id}/explain?student_id={student_id}"),
    ("GET", "/api/v1/classes/{class_id}/state"): Row(VIEW),
    ("PUT", "/api/v1/classes/{class_id}/policy"): Row(HOST, json=BOGUS),
    ("GET", "/api/v1/classes/{class_id}/rules"): Row(VIEW),
    ("PUT", "/api/v1/classes/{class_id}/rules"): Row(HOST, json=BOGUS),
    ("PUT", "/api/v1/classes/{class_id}/roster"): Row(HOST, json=BOGUS),
    ("GET", "/api/v1/classes/{class_id}/roster"): Row(HOST),
    ("POST", "/api/v1/classes/{class_id}/roster/preview"): Row(HOST, json=BOGUS),
    ("POST", "/api/v1/classes/{class_id}/links"): Row(HOST, json=BOGUS),
    ("GET", "/api/v1/classes/{class_id}/links"): Row(HOST),
    ("GET", "/api/v1/classes/{class_id}/links.pdf"): Row(HOST),
    ("POST", "/api/v1/classes/{class_id}/actions"): Row(HOST, json={"action": "bogus"}),
    ("GET", "/api/v1/classes/{class_id}/control"): Row(HOST),  # not upgraded: 400 if let in
    ("POST", "/api/v1/classes/{class_id}/host_join"): Row(HOST),
    ("PATCH", "/api/v1/classes/{class_id}/bans/{key}"): Row(HOST, json=BOGUS),
    # incidents (the incident is about the class; its reporter is the teacher)
    ("POST", "/api/v1/incidents"): Row(VIEW, json={"class_id": "{class_id}",
                                                    "title": "Người lạ", **_since_until()}),
    ("GET", "/api/v1/incidents"): Row(STAFF),
    ("GET", "/api/v1/incidents/{incident_id}"): Row(VIEW),
    ("PATCH", "/api/v1/incidents/{incident_id}"): Row(HOST, json={"title": "Người lạ vào lớp"}),
    ("GET", "/api/v1/incidents/{incident_id}/history"): Row(VIEW),
    ("POST", "/api/v1/incidents/{incident_id}/attachments"): Row(VIEW, json=BOGUS),
    ("GET", "/api/v1/incidents/{incident_id}/evidence.zip"): Row(ORG_A_ADMINS),
    ("POST", "/api/v1/incidents/{incident_id}/acknowledge"): Row(ORG_A_ADMINS),
    ("GET", "/api/v1/incidents/{incident_id}/notifications"): Row(VIEW),
    # the audit log
    ("GET", "/api/v1/audit/events"): Row(AUDIT),
    ("GET", "/api/v1/audit/events.csv"): Row(AUDIT),
    ("GET", "/api/v1/audit/checkpoint"): Row(AUDIT),
    ("GET", "/api/v1/audit/key"): Row(AUDIT),
    ("GET", "/api/v1/audit/proof/inclusion"): Row(AUDIT),
    ("GET", "/api/v1/audit/proof/consistency"): Row(AUDIT),
    ("POST", "/api/v1/audit/verify"): Row(AUDIT, json=BOGUS),
    ("POST", "/api/v1/audit/erase"): Row(ADMINS, json=BOGUS),
    # org settings of school A
    ("GET", "/api/v1/orgs/{org}/bans"): Row(ORG_A),
    ("POST", "/api/v1/orgs/{org}/bans"): Row(ORG_A, json=BOGUS),
    ("DELETE", "/api/v1/orgs/{org}/bans/{key}"): Row(ORG_A, setup=_org_ban),
    ("PATCH", "/api/v1/orgs/{org}/bans/{key}"): Row(ORG_A, json=BOGUS),
    ("GET", "/api/v1/orgs/{org}/policy"): Row(ORG_A),
    ("PUT", "/api/v1/orgs/{org}/policy"): Row(ORG_A_ADMINS, json=BOGUS),
    ("GET", "/api/v1/orgs/{org}/rules"): Row(ORG_A),
    ("PUT", "/api/v1/orgs/{org}/rules"): Row(ORG_A_ADMINS, json=BOGUS),
    ("GET", "/api/v1/orgs/{org}/oidc"): Row(ORG_A_ADMINS, setup=_org_oidc),
    ("PUT", "/api/v1/orgs/{org}/oidc"): Row(ORG_A_ADMINS, json=BOGUS),
    ("DELETE", "/api/v1/orgs/{org}/oidc"): Row(ORG_A_ADMINS, setup=_org_oidc),
    ("PUT", "/api/v1/orgs/{org}/oidc/emails"): Row(ORG_A_ADMINS, json=BOGUS),
    # staff accounts (``victim`` is a teacher of school A), orgs, keys
    ("GET", "/api/v1/admin/users"): Row(ADMINS),
    ("POST", "/api/v1/admin/users"): Row(ADMINS, json=BOGUS),
    ("POST", "/api/v1/admin/users/{username}/disable"): Row(ORG_A_ADMINS),
    ("POST", "/api/v1/admin/users/{username}/enable"): Row(ORG_A_ADMINS),
    ("POST", "/api/v1/admin/users/{username}/password-reset"): Row(ORG_A_ADMINS),
    ("PUT", "/api/v1/admin/users/{username}/email"): Row(ORG_A_ADMINS, json=BOGUS),
    ("GET", "/api/v1/admin/orgs"): Row(ADMINS),
    ("POST", "/api/v1/admin/orgs"): Row(ADMINS, json=BOGUS),
    ("GET", "/api/v1/admin/keys"): Row(ROOT),
    ("POST", "/api/v1/admin/keys/rotate"): Row(ROOT),
    # one's own account
    ("POST", "/api/v1/account/password"): Row(STAFF, json=BOGUS),
    ("GET", "/account/password"): Row(STAFF, page=True),
    ("POST", "/account/password"): Row(STAFF, page=True),
    # pages
    ("GET", "/classes"): Row(STAFF, page=True),
    ("GET", "/classes/new"): Row(CREATE, page=True),
    ("GET", "/classes/{class_id}"): Row(VIEW, page=True),
    ("GET", "/classes/{class_id}/roster"): Row(HOST, page=True),
    ("GET", "/classes/{class_id}/links"): Row(HOST, page=True),
    ("GET", "/classes/{class_id}/control"): Row(HOST, page=True),
    ("GET", "/audit"): Row(AUDIT, page=True),
    ("GET", "/bans"): Row(AUDIT, page=True),
    ("GET", "/admin/staff"): Row(ADMINS, page=True),
    ("GET", "/admin/keys"): Row(ADMINS, page=True),
    ("GET", "/admin/sign-in"): Row(ADMINS, page=True),  # their own org's settings
    ("POST", "/admin/sign-in"): Row(ORG_A_ADMINS, page=True, path="/admin/sign-in?org={org}"),
    ("GET", "/admin/staff/{username}/sessions"): Row(ORG_A_ADMINS, page=True),
    ("POST", "/admin/staff/{username}/sessions"): Row(ORG_A_ADMINS, page=True),
    ("GET", "/admin/rules"): Row(ADMINS, page=True),
    ("GET", "/incidents"): Row(STAFF, page=True),
    ("GET", "/incidents/new"): Row(VIEW, page=True, path="/incidents/new?class_id={class_id}"),
    ("GET", "/incidents/{incident_id}"): Row(VIEW, page=True),
    # second factor and sessions (browser sessions only: called with the cookie)
    ("GET", "/api/v1/account/second-factor"): Row(STAFF),
    ("POST", "/api/v1/account/second-factor/totp"): Row(STAFF, page=True),
    ("POST", "/api/v1/account/second-factor/totp/confirm"): Row(STAFF, page=True),
    ("POST", "/api/v1/account/second-factor/passkeys/options"): Row(STAFF, page=True),
    ("POST", "/api/v1/account/second-factor/passkeys"): Row(STAFF, page=True),
    ("DELETE", "/api/v1/account/second-factor/{method}"): Row(
        STAFF, page=True, path="/api/v1/account/second-factor/totp"),
    ("POST", "/api/v1/account/second-factor/recovery-codes"): Row(STAFF, page=True),
    ("POST", "/api/v1/account/step-up"): Row(STAFF, page=True),
    ("POST", "/api/v1/account/step-up/passkey/options"): Row(STAFF, page=True),
    ("POST", "/api/v1/session/second-factor"): Row(PUBLIC, json=BOGUS),
    ("POST", "/api/v1/session/second-factor/passkey/options"): Row(PUBLIC),
    ("PUT", "/api/v1/orgs/{org}/second-factor-policy"): Row(ORG_A_ADMINS, json=BOGUS),
    ("GET", "/login/second-factor"): Row(PUBLIC, page=True),
    ("POST", "/login/second-factor"): Row(PUBLIC, page=True),
    ("GET", "/account/verify"): Row(STAFF, page=True),
    ("POST", "/account/verify"): Row(STAFF, page=True),
    ("GET", "/account/security"): Row(STAFF, page=True),
    ("GET", "/api/v1/account/sessions"): Row(STAFF, page=True),
    ("DELETE", "/api/v1/account/sessions/{sid}"): Row(
        STAFF, path="/api/v1/account/sessions/bogus"),
    ("GET", "/api/v1/admin/users/{username}/sessions"): Row(ORG_A_ADMINS),
    ("DELETE", "/api/v1/admin/users/{username}/sessions"): Row(ORG_A_ADMINS),
    ("DELETE", "/api/v1/admin/users/{username}/sessions/{sid}"): Row(
        ORG_A_ADMINS, path="/api/v1/admin/users/{username}/sessions/bogus"),
    ("GET", "/account/sessions"): Row(STAFF, page=True),
    ("POST", "/account/sessions"): Row(STAFF, page=True),
}


def _routes(gw: Gateway) -> set[tuple[str, str]]:
    """(method, canonical path) of every route; HEAD answers as its GET does."""
    found = set()
    heads = set()
    for route in gw.server.app.router.routes():
        resource = route.resource
        assert resource is not None
        if route.method == "HEAD":
            heads.add(resource.canonical)
        else:
            found.add((route.method, resource.canonical))
    assert heads <= {path for method, path in found if method == "GET"}
    return found


@pytest.fixture
async def world(tmp_path: Path, redis_url: str, redis_prefix: str) -> Any:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        staff = gw.svc.staff
        assert staff is not None
        await staff.init_root("so-gd")
        accounts = {
            "other_teacher": ("co.ha", "teacher", "thpt-a"),
            "teacher": ("co.lan", "teacher", "thpt-a"),
            "other_admin": ("qt.b", "admin", "thpt-b"),
            "it": ("it.hung", "it", "thpt-a"),
            "admin": ("qt.a", "admin", "thpt-a"),
            "parent_admin": ("so.admin", "admin", "so-gd"),
            "disabled": ("so.gone", "admin", "so-gd"),
            "victim": ("victim", "teacher", "thpt-a"),
        }
        tokens = {role: await gw.staff_user(name, r, org, parent=None if org == "so-gd"
                                            else "so-gd")
                  for role, (name, r, org) in accounts.items()}
        sessions = {}
        for role, (name, _, _) in accounts.items():
            user = await staff.get_user(name)
            assert user is not None
            cookie, csrf, _ = await staff.create_session(user, ip="127.0.0.1", user_agent="UA")
            sessions[role] = (cookie, csrf)
        teacher = gw.api(tokens["teacher"])
        cid, links = await make_class(gw, teacher)
        await make_class(gw, gw.api(tokens["other_teacher"]))
        r = await teacher.post("/api/v1/incidents", json={
            "class_id": cid, "title": "Người lạ", **_since_until()})
        assert r.status == 201, await r.text()
        incident = (await r.json())["id"]
        assert gw.svc.store is not None
        await gw.svc.store.add_ban(class_id=cid, org=None, key=BAN_KEY, reason="test",
                                   by="co.lan", until=None)
        # Disabled after its session and token exist, as a sign-in racing the disabling
        # would leave it (disabling through the API would also end both).
        await staff._set_disabled("so.gone", True)
        report = await report_store(gw.svc).create(
            org="thpt-a", class_id=cid, student_id=str(links[0]["student_id"]),
            category="stranger", role="student", text="")
        yield World(gw, cid, incident, str(links[0]["student_id"]), tokens, sessions,
                    report.id)


async def _call(w: World, role: str, method: str, row: Row, path: str, *,
                bearer: bool) -> tuple[int, str]:
    headers: dict[str, str] = {"Accept": "text/html" if row.page else "application/json"}
    if role != "anonymous":
        if bearer:
            headers["Authorization"] = f"Bearer {w.tokens[role]}"
        else:
            cookie, csrf = w.sessions[role]
            headers["Cookie"] = f"cg_session={cookie}"
            headers["X-CSRF-Token"] = csrf
    kw: dict[str, Any] = {}
    if row.json is not None:
        kw["json"] = {k: w.fill(v) if isinstance(v, str) else v for k, v in row.json.items()}
    elif row.page and method == "POST":
        kw["data"] = {"csrf_token": headers.get("X-CSRF-Token", "")}
    async with aiohttp.ClientSession(base_url=w.gw.server.make_url("")) as s:
        async with s.request(method, path, headers=headers, allow_redirects=False,
                             **kw) as r:
            await r.read()
            return r.status, r.headers.get("Location", "")


def _refused(status: int, location: str) -> bool:
    return status in (401, 403, 404) or (status in (302, 303) and
                                         location.startswith("/login"))


async def test_every_route_refuses_every_role_it_must(world: World) -> None:
    served = _routes(world.gw)
    assert served - set(TABLE) == set(), "routes without a row in the table"
    assert set(TABLE) - served == set(), "rows for routes the app does not serve"
    wrong = []
    for (method, canonical), row in TABLE.items():
        path = world.fill(row.path or canonical)
        for role in ROLES:
            if row.allowed == PUBLIC:
                # open by design, answering for itself (a student's refusal, a platform
                # signature): called once, without a credential, it must simply answer
                if role == "anonymous":
                    status, _ = await _call(world, role, method, row, path, bearer=True)
                    assert status < 500, (method, canonical, status)
                continue
            # API routes are called with the bearer token; pages, and the disabled
            # account, with the session cookie too.
            ways = [False] if row.page else [True, False] if role == "disabled" else [True]
            for bearer in ways:
                if row.setup is not None:
                    await row.setup(world)
                status, location = await _call(world, role, method, row, path,
                                                bearer=bearer)
                let_in = not _refused(status, location)
                expected = role in row.allowed
                if let_in != expected:
                    wrong.append(f"{method} {canonical} as {role}"
                                 f"{' (bearer)' if bearer else ''}: {status} {location}")
    assert wrong == [], "\n".join(wrong)


async def test_the_session_of_a_disabled_account_is_refused(world: World) -> None:
    """An account disabled while one of its sessions exists is not signed in any more."""
    s = world.gw.client()
    cookie, _ = world.sessions["disabled"]
    r = await s.get("/api/v1/classes", headers={"Cookie": f"cg_session={cookie}"})
    assert r.status == 401
    assert world.gw.svc.staff is not None
    await world.gw.svc.staff.enable_user("so.gone")
    r = await s.get("/api/v1/classes", headers={"Cookie": f"cg_session={cookie}"})
    assert r.status == 200



async def _closed(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the socket closes; its close code."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return int(msg.data)
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return ws.close_code


async def test_disabling_an_account_ends_its_control_socket(world: World) -> None:
    """The teacher's control room opened with an API token: disabling the account revokes
    the token, and the socket it opened closes with it (it stayed open, and kept
    hosting, before)."""
    teacher = world.gw.api(world.tokens["teacher"])
    ws = await host_control(teacher, world.cid)
    admin = world.gw.api(world.tokens["admin"])
    r = await admin.post("/api/v1/admin/users/co.lan/disable")
    assert r.status == 200, await r.text()
    assert await _closed(ws) == 4401
    st = await world.gw.api(world.tokens["admin"]).get(f"/api/v1/classes/{world.cid}/state")
    assert not (await st.json())["locked"]


async def test_a_control_socket_asks_again_on_every_message(world: World) -> None:
    """An account disabled while its socket is open (without the revocation reaching it)
    can no longer act: the action is refused, recorded, and the socket closes."""
    teacher = world.gw.api(world.tokens["teacher"])
    ws = await host_control(teacher, world.cid)
    assert world.gw.svc.staff is not None
    await world.gw.svc.staff._set_disabled("co.lan", True)
    await ws.send_json({"id": 1, "action": "lock"})
    msg = await next_message(ws, type_="error")
    assert msg["error"]["code"] == "forbidden"
    assert await _closed(ws) == 4403
    admin = world.gw.api(world.tokens["admin"])
    st = await admin.get(f"/api/v1/classes/{world.cid}/state")
    assert not (await st.json())["locked"]
    for _ in range(100):  # the sequencer numbers events asynchronously
        r = await admin.get("/api/v1/audit/events",
                            params={"type": "staff.refused", "class": world.cid})
        refused = (await r.json())["events"]
        if any(e["actor"] == "user:co.lan" and e["reason"] == "forbidden" for e in refused):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"no staff.refused for the disabled host: {refused}")


async def test_events_of_no_org_are_the_deployment_admins_in_every_format(
        world: World) -> None:
    """A failed sign-in belongs to no org: the root's administrator reads it, in the search
    and in the CSV export alike; the administrator of an org that merely has no parent
    (made before every org needed one) reads it in neither."""
    gw = world.gw
    hanoi = gw.api(await gw.staff_user("qt.hanoi", "admin", "hanoi"))
    root = gw.api(world.tokens["parent_admin"])
    r = await gw.client().post("/api/v1/session",
                               json={"username": "nobody.here", "password": "x" * 12})
    assert r.status == 401
    for _ in range(100):  # the sequencer numbers events asynchronously
        r = await root.get("/api/v1/audit/events", params={"type": "staff.login_failed"})
        if (await r.json())["events"]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the failed sign-in was not recorded")
    r = await root.get("/api/v1/audit/events.csv", params={"type": "staff.login_failed"})
    assert "staff.login_failed" in await r.text()
    r = await hanoi.get("/api/v1/audit/events", params={"type": "staff.login_failed"})
    assert r.status == 200 and (await r.json())["events"] == []
    r = await hanoi.get("/api/v1/audit/events.csv", params={"type": "staff.login_failed"})
    assert r.status == 200 and "staff.login_failed" not in await r.text()
