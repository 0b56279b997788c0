"""The page checks of this suite catch what they are meant to catch: each fault is
planted on a real page and must be reported (a check that cannot fail proves nothing)."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser

from tests.gateway.helpers import Gateway

from .conftest import check_page, horizontal_overflow, new_context, unnamed_controls

FAULTS = [
    ("csp", """() => { const s = document.createElement("script");
                       s.textContent = "window.x = 1"; document.body.appendChild(s); }"""),
    ("csp", """() => { const i = document.createElement("img");
                       i.src = "https://cdn.example.org/x.png"; document.body.appendChild(i); }"""),
    ("console", "() => { console.error('boom'); }"),
    ("uncaught", "() => { setTimeout(() => { throw new Error('boom'); }, 0); }"),
    ("overflow", """() => { const d = document.createElement("div");
                            d.textContent = "x".repeat(400); d.style.whiteSpace = "nowrap";
                            document.querySelector("main").appendChild(d); }"""),
    ("overflow", """() => { const l = document.createElement("span"); l.className = "sr-only";
                            l.textContent = "hidden"; const box = document.createElement("div");
                            box.style.overflowX = "auto"; box.style.marginLeft = "500px";
                            box.appendChild(l);
                            document.querySelector("main").appendChild(box); }"""),
    ("unnamed", """() => { document.querySelector("form").appendChild(
                             document.createElement("input")); }"""),
    ("unnamed", """() => { document.querySelector("form").appendChild(
                             document.createElement("button")); }"""),
    ("untranslated", """() => { document.querySelector("h1").textContent = "login.title"; }"""),
    ("untranslated", """() => { document.querySelector("h1").textContent = "denied_by_host"; }"""),
    ("untranslated", """() => { document.querySelector("h1").textContent = "Đăng nhập"; }"""),
    ("raw time", """() => { document.querySelector("h1").textContent =
                              "2026-11-23 07:30:00+00:00"; }"""),
    ("contrast", """() => { document.querySelector("h1").style.color = "#bbbbbb"; }"""),
    ("contrast", """() => { const p = document.createElement("p"); p.textContent = "small grey";
                            p.style.color = "#8a8a8a"; p.style.fontSize = "14px";
                            document.querySelector("main").appendChild(p); }"""),
    ("focus", """() => { const s = new CSSStyleSheet();
                         s.replaceSync("* { outline: none !important; " +
                                       "box-shadow: none !important; }");
                         document.adoptedStyleSheets = [...document.adoptedStyleSheets, s]; }"""),

]


REPORTED_AS = {"csp": "CSP violation", "console": "console error: boom",
               "uncaught": "uncaught error: .*boom", "overflow": "scrolls sideways",
               "unnamed": "without an accessible name", "raw time": "unformatted time",
               "untranslated": "untranslated 'login.title'|untranslated 'denied_by_host'"
                               "|Vietnamese text on the English page",
               "contrast": "below WCAG AA contrast", "focus": "focus not visible"}


async def test_each_fault_is_reported(browser: Browser, gateway: Gateway) -> None:
    # The unspoiled page passes every check ...
    ctx, watch = await new_context(browser, width=360)
    page = await ctx.new_page()
    await page.goto(gateway.url("/login?lang=en"))
    await check_page(page, watch, lang="en", where="sign-in page")
    await ctx.close()
    # ... and each planted fault fails the check that is meant to catch it.
    for fault, planted in FAULTS:
        ctx, watch = await new_context(browser, width=360)
        page = await ctx.new_page()
        await page.goto(gateway.url("/login?lang=en"))
        # Style attributes are refused by our CSP: layout faults are planted through the
        # CSSOM (page.evaluate itself is not subject to the page's CSP).
        await page.evaluate(planted)
        await page.wait_for_timeout(100)
        if fault == "overflow":
            assert await horizontal_overflow(page) is not None, planted
        if fault == "unnamed":
            assert await unnamed_controls(page), planted
        with pytest.raises(AssertionError, match=REPORTED_AS[fault]):
            await check_page(page, watch, lang="en", where=f"planted {fault}")
        await ctx.close()
