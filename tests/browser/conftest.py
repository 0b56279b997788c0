"""Browser tier: Playwright for Python driving Debian's Chromium (``/usr/bin/chromium``).

Every test gets its own gateway on loopback (the real app on a real socket, real Redis
with the test's key prefix) and its own headless Chromium. The browser never needs the
internet: meeting links point at a small page this suite serves on loopback, and
Chromium is started with its background networking switched off.

``PageWatch`` follows one browser context and records what must never happen on our
pages: console errors, uncaught script errors and Content-Security-Policy violations.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.i18n import catalogue, t
from tests.conftest import require_program
from tests.gateway.helpers import TEACHER_PASSWORD, Gateway, running_gateway

try:  # the browser tier needs the test extra; say so instead of an import error
    from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright
except ImportError:  # pragma: no cover - exercised only without the test extra
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("playwright is not installed (pip install -e '.[test]')",
                allow_module_level=True)

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking switches Chromium reaches out to the internet
# (component updates, sync, field trials), which is closed here and slows start-up.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
PHONE_UA = ("Mozilla/5.0 (Linux; Android 13; SM-A145F) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Mobile Safari/537.36")
PHONE = {"viewport": {"width": 360, "height": 740}, "user_agent": PHONE_UA,
         "is_mobile": True, "has_touch": True, "device_scale_factor": 1}
# Roles Chromium gives to controls a person operates; each needs an accessible name.
CONTROL_ROLES = frozenset({"textbox", "searchbox", "combobox", "listbox", "checkbox", "radio",
                           "switch", "spinbutton", "slider", "button", "link", "menuitem",
                           "option", "MenuListOption", "menuitemcheckbox", "menuitemradio"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chromium_path() -> str:
    """Debian's Chromium: skip without it, fail under CI=true (``require_program``)."""
    path = require_program("chromium")
    if Path(CHROMIUM).exists():
        return CHROMIUM
    return path


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium_path, headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def serve_gateway(tmp_path: Path, redis_url: str, redis_prefix: str,
                  **overrides: Any) -> AbstractAsyncContextManager[Gateway]:
    """The gateway on a loopback port known in advance, so that ``public_url`` (and so
    every link, QR code and token issuer) is the address the browser really uses."""
    return running_gateway(tmp_path, redis_url, redis_prefix, port=_free_port(), **overrides)


@pytest.fixture
async def gateway(tmp_path: Path, redis_url: str, redis_prefix: str,
                  redis: Any) -> AsyncIterator[Gateway]:
    async with serve_gateway(tmp_path, redis_url, redis_prefix) as gw:
        yield gw


MEETING_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Meeting room</title></head><body><h1 id="room">Meeting room {room}</h1></body></html>"""


@dataclass
class MeetingServer:
    """Stands in for the meeting platform of a ``generic`` class: a plain page on
    loopback that records who arrived."""

    server: TestServer
    arrivals: list[str] = field(default_factory=list)

    def url(self, room: str) -> str:
        return str(self.server.make_url(f"/room/{room}"))


@pytest.fixture
async def meeting() -> AsyncIterator[MeetingServer]:
    box: dict[str, MeetingServer] = {}

    async def room(request: web.Request) -> web.Response:
        box["m"].arrivals.append(request.match_info["room"])
        return web.Response(text=MEETING_HTML.replace("{room}", request.match_info["room"]),
                            content_type="text/html")

    async def favicon(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/room/{room}", room)
    app.router.add_get("/favicon.ico", favicon)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    box["m"] = MeetingServer(server)
    try:
        yield box["m"]
    finally:
        await server.close()


# --- watching pages ---------------------------------------------------------------------

# Reports every CSP violation to Python at once (a binding is not subject to the CSP).
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cgCsp(e.violatedDirective + " blocked " + (e.blockedURI || "inline") +
                 " at " + e.documentURI);
});
"""


@dataclass
class PageWatch:
    """Console errors, uncaught errors and CSP violations of one browser context.

    ``allowed`` holds regular expressions for console errors a test expects (a refusal
    page answers 403 on purpose, and Chromium logs every 4xx document load)."""

    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    async def attach(self, context: BrowserContext) -> None:
        await context.expose_binding("__cgCsp", lambda _source, text: self.csp.append(text))
        await context.add_init_script(CSP_LISTENER)
        context.on("page", self._page)
        for page in context.pages:
            self._page(page)

    def _page(self, page: Page) -> None:
        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                where = (msg.location or {}).get("url", "")
                self.console.append(f"{msg.text} ({where})")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def problems(self) -> list[str]:
        bad = [c for c in self.console if not any(p.search(c) for p in self.allowed)]
        return ([f"console error: {c}" for c in bad]
                + [f"uncaught error: {e}" for e in self.page_errors]
                + [f"CSP violation: {v}" for v in self.csp])

    def assert_clean(self, where: str) -> None:
        problems = self.problems()
        assert not problems, f"{where}: " + "; ".join(problems)

    def reset(self) -> None:
        self.console.clear()
        self.page_errors.clear()
        self.csp.clear()
        self.allowed.clear()


async def new_context(browser: Browser, *, phone: bool = False, width: int = 1280,
                      locale: str = "vi-VN", **kw: Any) -> tuple[BrowserContext, PageWatch]:
    """A fresh browser context (its own cookies: another device) and its watcher."""
    opts: dict[str, Any] = dict(PHONE) if phone else {
        "viewport": {"width": width, "height": 900 if width > 600 else 740}}
    opts.update(locale=locale, **kw)
    context = await browser.new_context(**opts)
    context.set_default_timeout(10_000)
    watch = PageWatch()
    await watch.attach(context)
    return context, watch


async def unnamed_controls(page: Page) -> list[str]:
    """Controls Chromium's accessibility tree gives no name (what a screen reader would
    announce as just "edit text" or "button")."""
    cdp = await page.context.new_cdp_session(page)
    try:
        tree = await cdp.send("Accessibility.getFullAXTree")
    finally:
        await cdp.detach()
    out = []
    for node in tree["nodes"]:
        if node.get("ignored"):
            continue
        role = (node.get("role") or {}).get("value", "")
        name = str((node.get("name") or {}).get("value", "")).strip()
        if role in CONTROL_ROLES and not name:
            props = {p["name"]: p.get("value", {}).get("value") for p in node.get("properties", [])}
            if props.get("hidden"):
                continue
            out.append(f"{role} (backend node {node.get('backendDOMNodeId')})")
    return out


async def horizontal_overflow(page: Page) -> dict[str, Any] | None:
    """None when the page fits its viewport's width; else the widths and the widest
    elements, to say what to fix."""
    return await page.evaluate("""() => {
      const se = document.scrollingElement;
      if (se.scrollWidth <= window.innerWidth) { return null; }
      const wide = [];
      const clipped = el => {  // inside a box that scrolls or clips its own content
        // (an absolutely positioned box escapes one that is not positioned itself)
        if (["absolute", "fixed"].includes(getComputedStyle(el).position)) { return false; }
        for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
          if (getComputedStyle(p).overflowX !== "visible") { return true; }
        }
        return false;
      };
      for (const el of document.querySelectorAll("body *")) {
        if (clipped(el)) { continue; }
        const r = el.getBoundingClientRect();
        if (r.right > window.innerWidth + 0.5 && r.width > 0) {
          wide.push(el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
                    (el.className && typeof el.className === "string"
                       ? "." + el.className.split(" ").join(".") : "") +
                    " right=" + Math.round(r.right));
        }
      }
      return { scrollWidth: se.scrollWidth, innerWidth: window.innerWidth, wide: wide.slice(0, 8) };
    }""")


async def sign_in(page: Page, gw: Gateway, username: str, *, lang: str = "vi",
                  password: str = TEACHER_PASSWORD, next_path: str | None = None) -> None:
    """Signs in through the sign-in page, as a person would."""
    url = gw.url(f"/login?lang={lang}") + (f"&next={next_path}" if next_path else "")
    await page.goto(url)
    await page.get_by_label(t(lang, "login.username")).fill(username)
    await page.get_by_label(t(lang, "login.password")).fill(password)
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(lang, "login.submit"), exact=True).click()


# --- one page, every check ----------------------------------------------------------------

def _forbidden_words() -> list[str]:
    """Words that must never be visible: catalogue keys (a missing translation shows
    its key) and the machine codes the scripts fall back to (``denied_by_host``)."""
    from meeting_adapters import Capability
    from policies import Reason

    words = set(catalogue("vi")) | {r.value for r in Reason} | {c.value for c in Capability}
    words |= {"admit_all", "mute_all", "reset_device", "revoke_link", "link_shared",
              "banned_returning", "repeated_failures", "intruder_in_room"}
    return sorted(w for w in words if "." in w or "_" in w)


FORBIDDEN = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, _forbidden_words()))
                       + r")(?![\w-])")
# Letters only Vietnamese uses; on an English page they mean an untranslated string
# (names and titles the school typed are taken out first).
VIETNAMESE_LETTERS = re.compile("[ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ]",
                                re.IGNORECASE)
# A machine timestamp (ISO 8601 or Python's str(datetime)) where a person reads a time.
RAW_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2})?")
VISIBLE_TEXT = """() => {
  const body = document.body.cloneNode(true);
  // Text in another language on purpose (the language switch) and raw records
  // (the audit explorer shows event types and reason codes as they are stored).
  body.querySelectorAll('[lang]:not([lang="' + document.documentElement.lang + '"]), ' +
                        'pre, code, script, [hidden], [data-raw]')
      .forEach(e => e.remove());
  return body.innerText;
}"""


# WCAG 2.x contrast of every visible text against the background it is drawn on: 4.5:1,
# or 3:1 for large text (24px, or 18.66px bold). Disabled controls are exempt (WCAG 1.4.3).
LOW_CONTRAST = """() => {
  const parse = c => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const lum = ([r, g, b]) => { const f = v => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const over = (top, under) => { const a = top[3];
    return [0, 1, 2].map(i => top[i] * a + under[i] * (1 - a)).concat([1]); };
  const background = el => { const layers = [];
    for (let e = el; e; e = e.parentElement) { const s = getComputedStyle(e);
      if (s.backgroundImage !== 'none') return null;
      const c = parse(s.backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
    let bg = [255, 255, 255, 1];
    for (let i = layers.length - 1; i >= 0; i--) bg = over(layers[i], bg);
    return bg; };
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement; if (!el || seen.has(el) || !n.textContent.trim()) continue;
    seen.add(el);
    if (el.closest('[disabled], [aria-disabled="true"], [hidden], .sr-only, option')) continue;
    const r = el.getBoundingClientRect(); if (!r.width || !r.height) continue;
    const s = getComputedStyle(el);
    if (s.visibility !== 'visible' || Number(s.opacity) === 0) continue;
    const bg = background(el); const fg = parse(s.color); if (!bg || !fg) continue;
    const c = over(fg, bg); const L1 = lum(c), L2 = lum(bg);
    const ratio = (Math.max(L1, L2) + 0.05) / (Math.min(L1, L2) + 0.05);
    const size = parseFloat(s.fontSize), bold = Number(s.fontWeight) >= 700;
    const need = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
    if (ratio < need) {
      out.push(n.textContent.trim().slice(0, 40) + ' ' + ratio.toFixed(2) + '<' + need);
    }
  }
  return out.slice(0, 10);
}"""

# The element keyboard focus is on, and whether its focus is drawn (outline or ring).
FOCUSED = """() => { const e = document.activeElement;
  if (!e || e === document.body) return null;
  const s = getComputedStyle(e);
  const ring = (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0)
               || s.boxShadow !== 'none';
  const text = (e.innerText || e.value || e.getAttribute('aria-label') || '').trim();
  return {tag: e.tagName, text: text.slice(0, 30), ring: ring}; }"""


async def keyboard_focus_problems(page: Page, presses: int = 25) -> list[str]:
    """Tab through the page as a keyboard user: every stop must show where focus is."""
    await page.evaluate("() => { document.activeElement && document.activeElement.blur(); "
                        "window.scrollTo(0, 0); }")
    problems, stops = [], 0
    for _ in range(presses):
        await page.keyboard.press("Tab")
        f = await page.evaluate(FOCUSED)
        if f is None:
            break
        stops += 1
        if not f["ring"]:
            problems.append(f"{f['tag']} {f['text']!r}: focus not visible")
    if stops == 0:
        problems.append("no control can be reached with Tab")
    return problems


async def check_page(page: Page, watch: PageWatch, *, lang: str, where: str,
                     shots: Path | None = None, name: str = "",
                     data: tuple[str, ...] = ()) -> None:
    """What every page must get right, in the browser: its language, no console error,
    no CSP violation, no horizontal scrolling, every control named, text contrast AA,
    keyboard focus visible at every Tab stop, nothing left untranslated. Saves a
    full-page screenshot when ``shots`` is given (before the Tab walk moves focus)."""
    width = page.viewport_size["width"] if page.viewport_size else 0
    if shots is not None:
        await page.screenshot(path=str(shots / f"{name}-{lang}-{width}.png"), full_page=True)
    assert await page.evaluate("document.documentElement.lang") == lang, where
    watch.assert_clean(where)
    over = await horizontal_overflow(page)
    assert over is None, f"{where} scrolls sideways at {width}px: {over}"
    unnamed = await unnamed_controls(page)
    assert not unnamed, f"{where}: controls without an accessible name: {unnamed}"
    low = await page.evaluate(LOW_CONTRAST)
    assert not low, f"{where}: text below WCAG AA contrast: {low}"
    focus = await keyboard_focus_problems(page)
    assert not focus, f"{where}: keyboard focus: {focus}"
    text = await page.evaluate(VISIBLE_TEXT)
    m = FORBIDDEN.search(text)
    assert m is None, f"{where}: untranslated {m.group(0)!r} is visible" if m else ""
    m = RAW_TIME.search(text)
    assert m is None, f"{where}: an unformatted time {m.group(0)!r} is visible" if m else ""
    if lang == "en":
        for d in data:
            text = text.replace(d, "")
        m = VIETNAMESE_LETTERS.search(text)
        if m:
            at = max(0, m.start() - 40)
            raise AssertionError(f"{where}: Vietnamese text on the English page: "
                                 f"{text[at:m.start() + 40]!r}")
