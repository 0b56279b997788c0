"""Staff sign in through a real OpenID provider (oidc-provider under node), in Chromium.

The provider's own login and consent pages are used, as a teacher would; the gateway
redirects there with PKCE, state and nonce, and gets the code back on its callback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page

from gateway.i18n import t
from tests.fakes.oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider, running_provider
from tests.gateway.helpers import Gateway, running_gateway

from .conftest import _free_port, new_context

ORG = "truong-thpt-a"
DOMAIN = "truong-a.edu.vn"
ACCOUNTS = {
    "gv-lan": {"email": f"co.lan@{DOMAIN}", "email_verified": True, "name": "Cô Lan"},
    "gv-moi": {"email": f"thay.moi@{DOMAIN}", "email_verified": True, "name": "Thầy Mới"},
    "outsider": {"email": "someone@gmail.com", "email_verified": True, "name": "Người ngoài"},
}


@dataclass
class World:
    gw: Gateway
    provider: Provider
    admin: aiohttp.ClientSession


@pytest.fixture
async def world(tmp_path: Path, redis_url: str, redis_prefix: str,
                redis: Any) -> AsyncIterator[World]:
    port = _free_port()
    callback = f"http://127.0.0.1:{port}/auth/oidc/callback"
    async with running_provider(redirect_uris=[callback], accounts=ACCOUNTS) as provider:
        # The provider listens on loopback: allowed explicitly, as the platform tests do.
        async with running_gateway(tmp_path, redis_url, redis_prefix, port=port,
                                   platform_allow_networks=["127.0.0.1/32"]) as gw:
            assert gw.url("/").startswith(f"http://127.0.0.1:{port}")
            admin = gw.api(await gw.staff_user("qt.hoa", "admin", ORG))
            yield World(gw, provider, admin)


async def configure(w: World, **extra: Any) -> None:
    body = {"provider": "generic", "discovery_url": w.provider.issuer,
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "domains": [DOMAIN],
            **extra}
    r = await w.admin.put(f"/api/v1/orgs/{ORG}/oidc", json=body)
    assert r.status == 200, await r.text()


async def through_provider(page: Page, w: World, email: str, account: str,
                           lang: str = "vi", *, base: str | None = None) -> None:
    """From the sign-in page, through the provider's login and consent pages. ``base``:
    the gateway's address when its ``public_url`` is not the loopback one."""
    home = (base or w.gw.url("")).rstrip("/")
    await page.goto(f"{home}/login?lang={lang}")
    await page.get_by_label(t(lang, "oidc.email")).fill(email)
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(lang, "oidc.button")).click()
    # On to the provider (the gateway's page moves on by itself), through its login and
    # consent pages; a provider session still open skips them.
    for _ in range(8):
        await page.wait_for_load_state()
        url = page.url
        if url.startswith(f"{home}/") and "/auth/oidc/start" not in url:
            break
        if not url.startswith(w.provider.issuer):
            await page.wait_for_url(lambda u: not u.startswith(f"{home}/auth/oidc/start"))
            continue
        async with page.expect_navigation():
            if await page.locator("input[name=login]").count():
                await page.locator("input[name=login]").fill(account)
                await page.locator("input[name=password]").fill("any")
            await page.locator("button[type=submit]").first.click()
    # Back on the gateway; its page after the callback moves on by itself too.
    await page.wait_for_url(lambda url: url.startswith(f"{home}/")
                            and not url.startswith(f"{home}/auth/oidc/continue"))


async def outcome(page: Page) -> str:
    """Where the browser ended up, and the refusal's code if it is a refusal page."""
    code = await page.locator("#oidc-error").get_attribute("data-code") \
        if await page.locator("#oidc-error").count() else None
    return f"{page.url} (refusal: {code})"


async def test_pre_created_teacher_signs_in_and_lands_on_classes(
        world: World, browser: Browser) -> None:
    w = world
    await configure(w)
    staff = w.gw.svc.staff
    assert staff is not None
    await staff.create_user("co.lan", role="teacher", org=ORG,
                            password="correct horse battery staple")
    r = await w.admin.put(f"/api/v1/orgs/{ORG}/oidc/emails",
                          json={"username": "co.lan", "email": f"co.lan@{DOMAIN}"})
    assert r.status == 200, await r.text()
    context, _watch = await new_context(browser)
    page = await context.new_page()
    await through_provider(page, w, f"co.lan@{DOMAIN}", "gv-lan")
    assert page.url == w.gw.url("/classes"), await outcome(page)
    assert "co.lan" in await page.inner_text("header")
    # Sign-out ends the local session and offers the provider's sign-out.
    await page.get_by_role("button", name=t("vi", "login.signout")).click()
    await page.wait_for_url("**/auth/oidc/signed-out**")
    href = await page.locator("#provider-sign-out").get_attribute("href")
    assert href is not None and href.startswith(f"{w.provider.issuer}/session/end")
    await page.goto(w.gw.url("/classes"))
    assert "/login" in page.url
    # Linked now by subject: a second sign-in needs no email lookup.
    await through_provider(page, w, f"co.lan@{DOMAIN}", "gv-lan")
    assert page.url == w.gw.url("/classes"), await outcome(page)
    await context.close()


async def test_unknown_domain_and_unknown_account_are_refused(
        world: World, browser: Browser) -> None:
    w = world
    await configure(w)
    context, _watch = await new_context(browser, locale="en-GB")
    page = await context.new_page()
    # A domain no org claims: refused before any provider is involved.
    await page.goto(w.gw.url("/login?lang=en"))
    await page.get_by_label(t("en", "oidc.email")).fill("a@unknown-school.vn")
    await page.get_by_role("button", name=t("en", "oidc.button")).click()
    await page.wait_for_load_state()
    assert await page.locator("#oidc-error").get_attribute("data-code") == "unknown_domain"
    assert t("en", "oidc.error.unknown_domain") in await page.inner_text("main")
    # The provider vouches for an address outside the org's domains.
    await through_provider(page, w, f"co.lan@{DOMAIN}", "outsider", lang="en")
    assert await page.locator("#oidc-error").get_attribute("data-code") == "unknown_domain"
    # In the domain, but nobody made the account and the org does not provision (a new
    # browser: the provider still has the outsider signed in).
    await context.close()
    context, _watch = await new_context(browser, locale="en-GB")
    page = await context.new_page()
    await through_provider(page, w, f"thay.moi@{DOMAIN}", "gv-moi", lang="en")
    assert await page.locator("#oidc-error").get_attribute("data-code") == "no_account"
    staff = w.gw.svc.staff
    assert staff is not None
    assert await staff.get_user("thay.moi") is None
    await context.close()


async def test_auto_provision_creates_a_teacher(world: World, browser: Browser) -> None:
    w = world
    await configure(w, auto_provision=True)
    context, _watch = await new_context(browser)
    page = await context.new_page()
    await through_provider(page, w, f"thay.moi@{DOMAIN}", "gv-moi")
    assert page.url == w.gw.url("/classes"), await outcome(page)
    staff = w.gw.svc.staff
    assert staff is not None
    user = await staff.get_user("thay.moi")
    assert user is not None and user.role == "teacher" and user.org == ORG
    assert not user.must_change_password
    await context.close()
