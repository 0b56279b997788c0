"""Attacks on the OpenID Connect sign-in (gateway/oidc.py, gateway/routes/oidc.py).

Forged ID tokens come from a provider stand-in served here on loopback: its discovery
document, its key set and a token endpoint answering the token a case signed (another
issuer, audience, algorithm, key, nonce; expired). Replays use the real provider
(oidc-provider under node, tests/fakes/oidc_provider.py) and its genuine answers.
Every refusal is a page in the visitor's language and a ``staff.login_failed`` record.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from gateway.i18n import t
from gateway.routes.oidc import onward
from tests.fakes.oidc_provider import CLIENT_ID, CLIENT_SECRET, running_provider
from tests.gateway.helpers import Gateway, running_gateway

ORG = "truong-thpt-b"
DOMAIN = "truong-b.edu.vn"
TENANT = "6f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b"
OTHER_TENANT = "11111111-2222-4333-8444-555555555555"


@dataclass
class Forge:
    """The stand-in provider: whatever token ``token`` holds is what /token answers."""

    server: TestServer
    key: RSAKey
    token: str = ""
    issuer_template: bool = False
    algs: list[str] = field(default_factory=lambda: ["RS256"])

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def issuer(self) -> str:
        return self.url + ("/{tenantid}/v2.0" if self.issuer_template else "")


@pytest.fixture
async def forge() -> AsyncIterator[Forge]:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256", "use": "sig"},
                              private=True)
    box: dict[str, Forge] = {}

    async def discovery(request: web.Request) -> web.Response:
        f = box["f"]
        return web.json_response({
            "issuer": f.issuer, "authorization_endpoint": f.url + "/auth",
            "token_endpoint": f.url + "/token", "jwks_uri": f.url + "/jwks",
            "end_session_endpoint": f.url + "/logout",
            "id_token_signing_alg_values_supported": f.algs})

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [box["f"].key.as_dict(private=False)]})

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "x", "token_type": "Bearer",
                                  "id_token": box["f"].token})

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    app.router.add_post("/token", token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    box["f"] = Forge(server, key)
    try:
        yield box["f"]
    finally:
        await server.close()


@pytest.fixture
async def gw(tmp_path: Path, redis_url: str, redis_prefix: str,
             redis: Any) -> AsyncIterator[Gateway]:
    # The providers listen on loopback: allowed explicitly, as the platform tests do.
    # Regulation is loosened here so that every case is answered for itself; the
    # regulation test below runs with the default.
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=["127.0.0.1/32"],
                               login_max_failures=1000,
                               login_account_max_failures=100000) as g:
        yield g


async def configure(gw: Gateway, discovery_url: str, **extra: Any) -> aiohttp.ClientSession:
    admin = gw.api(await gw.staff_user("qt.binh", "admin", ORG))
    staff = gw.svc.staff
    assert staff is not None
    await staff.create_user("co.mai", role="teacher", org=ORG,
                            password="correct horse battery staple")
    body = {"provider": "generic", "discovery_url": discovery_url, "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET, "domains": [DOMAIN], **extra}
    r = await admin.put(f"/api/v1/orgs/{ORG}/oidc", json=body)
    assert r.status == 200, await r.text()
    r = await admin.put(f"/api/v1/orgs/{ORG}/oidc/emails",
                        json={"username": "co.mai", "email": f"co.mai@{DOMAIN}"})
    assert r.status == 200, await r.text()
    return admin


async def begin(client: aiohttp.ClientSession, lang: str = "vi") -> tuple[str, dict[str, str]]:
    """Start a sign-in: (the provider URL the gateway sends the browser to, its query)."""
    r = await client.get("/auth/oidc/start", params={"email": f"co.mai@{DOMAIN}",
                                                      "lang": lang})
    assert r.status == 200, await r.text()
    m = re.search(r'id="oidc-continue" href="([^"]+)"', await r.text())
    assert m, await r.text()
    url = html.unescape(m.group(1))
    return url, {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def refusal(body: str) -> str | None:
    m = re.search(r'id="oidc-error" data-code="([a-z_]+)"', body)
    return m.group(1) if m else None


def claims_for(forge: Forge, nonce: str, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": forge.url, "aud": CLIENT_ID, "sub": "mai-1", "email": f"co.mai@{DOMAIN}",
        "email_verified": True, "iat": now, "exp": now + 300, "nonce": nonce}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def unsigned(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def callback(client: aiohttp.ClientSession, state: str,
                   **extra: str) -> tuple[int, str | None, aiohttp.ClientResponse]:
    r = await client.get("/auth/oidc/callback", params={"state": state, "code": "c0de",
                                                         **extra}, allow_redirects=False)
    return r.status, refusal(await r.text()), r


async def failed_reasons(gw: Gateway, want: set[str]) -> set[str]:
    """The reasons of the ``staff.login_failed`` records, once ``want`` are all there."""
    log = gw.svc.audit_log
    assert log is not None
    seen: set[str] = set()
    for _ in range(100):  # the sequencer numbers events asynchronously
        events, _ = await log.query({"type": "staff.login_failed"}, limit=200)
        seen = {str(e.record.get("reason")) for e in events}
        if want <= seen:
            break
        await asyncio.sleep(0.05)
    return seen


async def test_forged_id_tokens_are_refused_each_with_its_reason(
        gw: Gateway, forge: Forge) -> None:
    await configure(gw, forge.url)
    other_key = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
    hmac_key = OctKey.import_key(CLIENT_SECRET.encode())
    cases: list[tuple[str, Any, str]] = [
        ("another issuer", lambda n: jwt.encode(
            {"alg": "RS256", "kid": "k1"},
            claims_for(forge, n, iss="https://accounts.google.com"), forge.key),
         "wrong_issuer"),
        ("another audience", lambda n: jwt.encode(
            {"alg": "RS256", "kid": "k1"}, claims_for(forge, n, aud="someone-else"),
            forge.key), "wrong_audience"),
        ("expired", lambda n: jwt.encode(
            {"alg": "RS256", "kid": "k1"},
            claims_for(forge, n, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
            forge.key), "expired"),
        ("another sign-in's nonce", lambda n: jwt.encode(
            {"alg": "RS256", "kid": "k1"}, claims_for(forge, "not-" + n), forge.key),
         "wrong_nonce"),
        ("HS256 with the client secret", lambda n: jwt.encode(
            {"alg": "HS256"}, claims_for(forge, n), hmac_key), "wrong_alg"),
        ("alg none", lambda n: unsigned(claims_for(forge, n)), "wrong_alg"),
        ("another key under the provider's kid", lambda n: jwt.encode(
            {"alg": "RS256", "kid": "k1"}, claims_for(forge, n), other_key),
         "bad_signature"),
        ("unverified email", lambda n: jwt.encode(
            {"alg": "RS256", "kid": "k1"}, claims_for(forge, n, email_verified=False),
            forge.key), "unverified_email"),
        ("an address outside the org's domains", lambda n: jwt.encode(
            {"alg": "RS256", "kid": "k1"},
            claims_for(forge, n, email="co.mai@gmail.com"), forge.key), "unknown_domain"),
    ]
    for lang in ("vi", "en"):
        for what, make, code in cases:
            client = gw.client()
            _url, q = await begin(client, lang)
            forge.token = make(q["nonce"])
            status, got, r = await callback(client, q["state"])
            assert got == code, f"{what}: {status} {got}"
            assert status in (400, 403), what
            assert t(lang, f"oidc.error.{code}") in html.unescape(await r.text()), what
    # The genuine token works (so each refusal above is its check's, not a broken flow),
    # once: the same token again is a replay.
    client = gw.client()
    _url, q = await begin(client)
    forge.token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims_for(forge, q["nonce"]),
                             forge.key)
    status, got, r = await callback(client, q["state"])
    assert status == 303 and r.headers["Location"] == onward("/classes"), (status, got)
    status, got, _ = await callback(client, q["state"])
    assert got == "wrong_state"
    want = {f"oidc_{c}" for _, _, c in cases} | {"oidc_wrong_state"}
    assert want <= await failed_reasons(gw, want)


async def test_state_error_and_browser_binding(gw: Gateway, forge: Forge) -> None:
    await configure(gw, forge.url)
    # A callback with error= (the user cancelled, the provider refused).
    client = gw.client()
    _url, q = await begin(client)
    status, got, _ = await callback(client, q["state"], error="access_denied")
    assert (status, got) == (403, "provider_error")
    # A state started in another browser (no state cookie here): refused without being
    # spent, so the browser that started it can still finish.
    victim = gw.client()
    _url, q = await begin(victim)
    attacker = gw.client()
    status, got, _ = await callback(attacker, q["state"])
    assert got == "wrong_state"
    forge.token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims_for(forge, q["nonce"]),
                             forge.key)
    status, got, _ = await callback(victim, q["state"])
    assert status == 303, got
    # An answer naming another provider (RFC 9207 mix-up): refused before the code is used.
    client = gw.client()
    _url, q = await begin(client)
    status, got, _ = await callback(client, q["state"], iss="https://accounts.google.com")
    assert got == "wrong_issuer"
    # A made-up state, no state at all.
    for state in ("A" * 43, ""):
        status, got, _ = await callback(gw.client(), state)
        assert got == "wrong_state"
    assert {"oidc_provider_error", "oidc_wrong_state"} <= await failed_reasons(
        gw, {"oidc_provider_error", "oidc_wrong_state"})


async def test_entra_issuer_template_is_checked_against_tid(gw: Gateway, forge: Forge) -> None:
    forge.issuer_template = True
    await configure(gw, forge.url, tenant_ids=[TENANT])
    iss = f"{forge.url}/{TENANT}/v2.0"
    for over, code in ((dict(iss=iss, tid=OTHER_TENANT), "wrong_issuer"),
                       (dict(iss=f"{forge.url}/{OTHER_TENANT}/v2.0", tid=OTHER_TENANT),
                        "unknown_domain"),
                       (dict(iss=iss), "wrong_issuer"),
                       (dict(iss=iss, tid=TENANT), None)):
        client = gw.client()
        _url, q = await begin(client)
        forge.token = jwt.encode({"alg": "RS256", "kid": "k1"},
                                 claims_for(forge, q["nonce"], **over), forge.key)
        status, got, _ = await callback(client, q["state"])
        assert got == code, (over, status, got)
        if code is None:
            assert status == 303


async def test_callback_is_login_regulated(tmp_path: Path, redis_url: str, redis_prefix: str,
                                           redis: Any, forge: Forge) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=["127.0.0.1/32"],
                               login_max_failures=3) as g:
        await configure(g, forge.url)
        codes = []
        for _ in range(6):
            status, got, r = await callback(g.client(), "B" * 43)
            codes.append((status, got))
        assert codes[0] == (400, "wrong_state")
        assert (429, "regulated") in codes, codes
        assert "Retry-After" in r.headers
        # Regulated before anything is checked: even a genuine sign-in waits.
        client = g.client()
        _url, q = await begin(client)
        forge.token = jwt.encode({"alg": "RS256", "kid": "k1"},
                                 claims_for(forge, q["nonce"]), forge.key)
        status, got, _ = await callback(client, q["state"])
        assert (status, got) == (429, "regulated")
        assert "oidc_regulated" in await failed_reasons(g, {"oidc_regulated"})


async def _through_real_provider(client: aiohttp.ClientSession, url: str,
                                 account: str) -> str:
    """Drive oidc-provider's own login and consent forms; the callback URL it sends to."""
    for _ in range(10):
        r = await client.get(url, allow_redirects=False)
        if r.status in (302, 303):
            url = urljoin(url, r.headers["Location"])
            if "/auth/oidc/callback" in url:
                return url
            continue
        body = await r.text()
        m = re.search(r'<form[^>]*action="([^"]+)"', body)
        assert m, body[:500]
        form = {k: v for k, v in re.findall(
            r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', body)}
        if 'name="login"' in body:
            form.update(login=account, password="any")
        r = await client.post(urljoin(url, html.unescape(m.group(1))), data=form,
                              allow_redirects=False)
        assert r.status in (302, 303), (r.status, (await r.text())[:500])
        url = urljoin(url, r.headers["Location"])
        if "/auth/oidc/callback" in url:
            return url
    raise AssertionError("the provider never sent the browser back")


async def test_real_provider_answers_cannot_be_replayed(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: Any) -> None:
    from tests.browser.conftest import _free_port

    port = _free_port()
    accounts = {"mai": {"email": f"co.mai@{DOMAIN}", "email_verified": True}}
    async with running_provider(
            redirect_uris=[f"http://127.0.0.1:{port}/auth/oidc/callback"],
            accounts=accounts) as provider, running_gateway(
            tmp_path, redis_url, redis_prefix, port=port,
            platform_allow_networks=["127.0.0.1/32"]) as g:
        await configure(g, provider.issuer)
        browser = g.client()
        url, q = await begin(browser)
        assert q["code_challenge_method"] == "S256" and q["nonce"] and q["state"]
        back = await _through_real_provider(browser, url, "mai")
        r = await browser.get(back, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == onward("/classes"), await r.text()
        # A page of the site moves on (the session cookie is SameSite=Strict); an
        # address elsewhere is not followed.
        onward_page = await (await browser.get(r.headers["Location"])).text()
        assert 'content="0; url=/classes"' in onward_page
        away = await (await browser.get(onward("https://evil.example/x"))).text()
        assert 'content="0; url=/classes"' in away and 'href="https://evil' not in away
        # The same answer again, in the same browser and in another one with the state
        # cookie copied: the state is spent.
        r = await browser.get(back, allow_redirects=False)
        assert refusal(await r.text()) == "wrong_state"
        thief = g.client()
        thief.cookie_jar.update_cookies({"cg_oidc_state": q["state"]},
                                        response_url=g.server.make_url("/auth/oidc/"))
        r = await thief.get(back, allow_redirects=False)
        assert refusal(await r.text()) == "wrong_state"
        # A fresh sign-in whose answer carries an old code: the provider refuses it
        # (the code was spent, and PKCE binds it to the first sign-in's verifier).
        url2, q2 = await begin(browser)
        old_code = parse_qs(urlsplit(back).query)["code"][0]
        status, got, _ = await callback(browser, q2["state"], code=old_code)
        assert got == "token_refused", (status, got)


async def test_passwords_turned_off_for_an_org(gw: Gateway, forge: Forge) -> None:
    admin = await configure(gw, forge.url)
    await gw.staff_user("co.khac", "teacher", "truong-khac")
    password = "correct horse battery staple"
    r = await gw.client().post("/api/v1/session",
                               json={"username": "co.mai", "password": password})
    assert r.status == 200  # passwords stay available until the org turns them off
    r = await admin.get(f"/api/v1/orgs/{ORG}/oidc")
    body = await r.json()
    assert "client_secret" not in body and body["passwords"] is True
    body.update(passwords=False)
    del body["org"], body["redirect_path"]
    r = await admin.put(f"/api/v1/orgs/{ORG}/oidc", json=body)  # the secret is kept
    assert r.status == 200, await r.text()
    for pw in (password, "a wrong password, whatever"):
        r = await gw.client().post("/api/v1/session", json={"username": "co.mai",
                                                            "password": pw})
        assert r.status == 403 and (await r.json())["error"]["code"] == "password_sign_in_off"
    # The sign-in form says why, in the visitor's language.
    client = gw.client()
    page = await client.get("/login?lang=en")
    token = re.search(r'name="csrf_token" value="([^"]+)"', await page.text())
    assert token
    r = await client.post("/login?lang=en", data={"username": "co.mai", "password": password,
                                                  "csrf_token": token.group(1), "next": ""},
                          allow_redirects=False)
    assert r.status == 403 and t("en", "oidc.password_off") in html.unescape(await r.text())
    # Another org's accounts are not affected; the org's provider still signs in.
    r = await gw.client().post("/api/v1/session",
                               json={"username": "co.khac", "password": password})
    assert r.status == 200
    client = gw.client()
    _url, q = await begin(client)
    forge.token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims_for(forge, q["nonce"]),
                             forge.key)
    status, _got, _ = await callback(client, q["state"])
    assert status == 303
    assert "password_sign_in_off" in await failed_reasons(gw, {"password_sign_in_off"})


async def test_account_made_with_a_one_time_password_signs_in_through_the_provider(
        gw: Gateway, forge: Forge) -> None:
    """An administrator creates the account the usual way (a one-time password to change);
    signing in through the provider does not ask for a password the person never needs."""
    admin = await configure(gw, forge.url)
    staff = gw.svc.staff
    assert staff is not None
    user, one_time = await staff.create_user("thay.tuan", role="teacher", org=ORG)
    assert one_time and user.must_change_password
    r = await admin.put(f"/api/v1/orgs/{ORG}/oidc/emails",
                        json={"username": "thay.tuan", "email": f"thay.tuan@{DOMAIN}"})
    assert r.status == 200
    client = gw.client()
    _url, q = await begin(client)
    forge.token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims_for(
        forge, q["nonce"], sub="tuan-1", email=f"thay.tuan@{DOMAIN}"), forge.key)
    status, got, r = await callback(client, q["state"])
    assert (status, r.headers.get("Location")) == (303, onward("/classes")), got
    r = await client.get("/api/v1/classes")
    assert r.status == 200, await r.text()
