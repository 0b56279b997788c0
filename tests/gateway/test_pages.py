"""Server-rendered pages: every page renders in vi and en, escaping, CSRF on every form,
a strict CSP with no inline script or style, role checks, and the small JSON endpoints
the pages use (roster preview, staff accounts, orgs, keys, ban expiry)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .helpers import TEACHER_PASSWORD, Gateway, class_body, make_class, running_gateway

pytestmark = pytest.mark.asyncio

# Catalogue key prefixes: seeing one of these as visible text means a missing translation.
KEY_PREFIXES = ("classform.", "control.", "links.", "roster.", "audit.", "bans.", "staff.",
                "keys.", "policy.", "preset.", "cap.", "pfield.", "platform.", "weekday.",
                "reason.", "wait.", "nav.", "error.", "login.", "classes.", "class.", "join.",
                "advice.", "action.", "alert.", "role.", "schedule.", "form.", "lang.")


VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                  "source", "track", "wbr"})


class Page(HTMLParser):
    """Collects what the checks below need from one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.attr_text: list[str] = []
        self.forms: list[dict[str, Any]] = []
        self.inline_scripts = 0
        self.scripts: list[str] = []
        self.style_attrs = 0
        self.handler_attrs = 0
        self.controls: list[dict[str, str | None]] = []
        self.labels: set[str] = set()
        self.html_lang: str | None = None
        self._in_script = False
        self._in_style = False
        self._label_depth = 0
        self._stack: list[bool] = []  # per open element: inside a data-raw region?

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag not in VOID:
            self._stack.append("data-raw" in a or bool(self._stack and self._stack[-1]))
        if tag == "html":
            self.html_lang = a.get("lang")
        for k, v in attrs:
            if k == "style":
                self.style_attrs += 1
            if k.startswith("on"):
                self.handler_attrs += 1
            if k in ("aria-label", "title", "placeholder", "alt", "value") \
                    or k.startswith(("data-msg", "data-action", "data-alert")):
                # (inside a data-raw region, as its text: the record's raw codes on purpose)
                if v and k != "value" and not (self._stack and self._stack[-1]):
                    self.attr_text.append(v)
        if tag == "script":
            self._in_script = True
            if a.get("src"):
                self.scripts.append(str(a["src"]))
        if tag == "style":
            self._in_style = True
        if tag == "form":
            self.forms.append({"attrs": a, "inputs": []})
        if tag in ("input", "select", "textarea") and self.forms:
            self.forms[-1]["inputs"].append(a)
        if tag == "label":
            if a.get("for"):
                self.labels.add(str(a["for"]))
            self._label_depth += 1
        if tag in ("input", "select", "textarea") and a.get("type") not in ("hidden", "submit"):
            self.controls.append({**a, "_wrapped": "1" if self._label_depth else None})

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID and self._stack:
            self._stack.pop()
        if tag == "script":
            self._in_script = False
        if tag == "style":
            self._in_style = False
        if tag == "label":
            self._label_depth = max(0, self._label_depth - 1)

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1
        if self._in_style and data.strip():
            self.inline_scripts += 1
        if not self._in_script and not (self._stack and self._stack[-1]):
            self.text.append(data)


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    return p


async def sign_in(gw: Gateway, username: str, lang: str = "vi") -> aiohttp.ClientSession:
    """A browser-like session signed in through the sign-in form."""
    s = gw.client()
    r = await s.get(f"/login?lang={lang}")
    assert r.status == 200
    page = parse(await r.text())
    token = next(i["value"] for f in page.forms for i in f["inputs"]
                 if i.get("name") == "csrf_token")
    r = await s.post(f"/login?lang={lang}",
                     data={"username": username, "password": TEACHER_PASSWORD,
                           "csrf_token": token, "next": "/classes"},
                     allow_redirects=False)
    assert r.status == 303, await r.text()
    return s


async def setup_school(gw: Gateway) -> dict[str, Any]:
    staff = gw.svc.staff
    assert staff is not None
    await staff.init_root("so-gd", name="Sở GD&ĐT")
    teacher_token = await gw.staff_user("co.lan", "teacher", org="thpt-a", parent="so-gd")
    await gw.staff_user("anh.it", "it", org="so-gd")
    await gw.staff_user("chi.admin", "admin", org="so-gd")
    api = gw.api(teacher_token)
    cid, links = await make_class(gw, api, roster=[
        {"name": "Nguyễn Văn An", "external_id": "HS001"},
        {"name": "O'Brien & \"Bé\" Tí", "external_id": "HS002"},
    ])
    return {"api": api, "cid": cid, "links": links}


def staff_pages(cid: str) -> dict[str, list[str]]:
    return {
        "co.lan": ["/classes", "/classes/new", f"/classes/{cid}", f"/classes/{cid}/roster",
                   f"/classes/{cid}/links", f"/classes/{cid}/control"],
        "anh.it": ["/audit", "/bans", "/classes", f"/classes/{cid}",
                   "/audit?type=class.created&limit=25"],
        "chi.admin": ["/admin/staff", "/admin/keys", "/audit", "/bans", "/classes",
                      f"/classes/{cid}/control"],
    }


def check_page(html: str, lang: str, where: str) -> Page:
    page = parse(html)
    assert page.html_lang == lang, where
    assert page.inline_scripts == 0, f"inline script or style on {where}"
    assert page.style_attrs == 0 and page.handler_attrs == 0, where
    for s in page.scripts:
        assert s.startswith("/static/"), (where, s)
    visible = " ".join(page.text + page.attr_text)
    for prefix in KEY_PREFIXES:
        m = re.search(r"(?<![\w/.-])" + re.escape(prefix) + r"[a-z_]+", visible)
        assert m is None, f"untranslated {m.group(0) if m else ''} on {where}"
    # Every visible control has a label (for=id, wrapped, or aria-label).
    for c in page.controls:
        ok = (c.get("id") in page.labels) or c.get("_wrapped") or c.get("aria-label") \
            or c.get("aria-labelledby")
        assert ok, f"control without a label on {where}: {c}"
    return page


async def test_every_page_renders_in_both_languages(tmp_path: Path, redis_url: str,
                                                    redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        school = await setup_school(gw)
        for lang in ("vi", "en"):
            anon = gw.client()
            for path in ("/login", "/join"):
                r = await anon.get(f"{path}?lang={lang}")
                assert r.status == 200, path
                csp = r.headers["Content-Security-Policy"]
                assert "unsafe-inline" not in csp and "script-src 'self'" in csp
                check_page(await r.text(), lang, path)
            # one link per language: a link is bound to the first device that opens it
            link = school["links"][0 if lang == "vi" else 1]
            other = school["links"][1 if lang == "vi" else 0]
            r = await anon.get(link["url"].replace("http://classguard.test", "") + f"?lang={lang}")
            assert r.status == 200
            html = await r.text()
            check_page(html, lang, "wait page")
            assert other["name"].split()[0] not in html  # no other student's data
            for user, paths in staff_pages(school["cid"]).items():
                s = await sign_in(gw, user, lang)
                for path in paths:
                    r = await s.get(path)
                    assert r.status == 200, (user, path, r.status, await r.text())
                    assert "unsafe-inline" not in r.headers["Content-Security-Policy"]
                    check_page(await r.text(), lang, f"{user} {path}")


async def test_student_refusal_pages(tmp_path: Path, redis_url: str, redis_prefix: str,
                                     redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        env = gw.svc.templates
        for lang in ("vi", "en"):
            html = env.get_template("denied.html").render(
                lang=lang, reason="outside_schedule", class_title="Toán <10A1>",
                opens_at="2030-01-06T07:15:00+07:00")
            page = check_page(html, lang, "not yet")
            assert "/static/countdown.js" in page.scripts
            assert "Toán &lt;10A1&gt;" in html
            assert ("07:15" in html) or ("7:15" in html)
            for reason in ("device_mismatch", "platform_down", "removed_by_host", "go_unknown",
                           "token_revoked", "class_locked"):
                html = env.get_template("denied.html").render(lang=lang, reason=reason,
                                                              class_title=None)
                check_page(html, lang, reason)


async def test_unknown_address_is_a_page_for_browsers_and_json_for_clients(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    """A mistyped address in a browser shows the translated not-found page; a script
    (or anything under /api/) keeps the JSON error."""
    from gateway.i18n import t

    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        s = gw.client()
        for lang in ("vi", "en"):
            r = await s.get(gw.url(f"/khong-co-trang-nay?lang={lang}"),
                            headers={"Accept": "text/html,application/xhtml+xml"})
            html = await r.text()
            assert r.status == 404 and r.content_type == "text/html"
            check_page(html, lang, "not found")
            assert t(lang, "error.not_found") in html
        r = await s.get(gw.url("/khong-co-trang-nay"), headers={"Accept": "application/json"})
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        r = await s.get(gw.url("/api/v1/khong-co"), headers={"Accept": "text/html"})
        assert r.status == 404 and r.content_type == "application/json"


async def test_escaping_of_user_supplied_text(tmp_path: Path, redis_url: str, redis_prefix: str,
                                              redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        token = await gw.staff_user("co.lan")
        api = gw.api(token)
        body = class_body()
        body["title"] = '<script>alert("x")</script> & "Toán"'
        r = await api.post("/api/v1/classes", json=body)
        assert r.status == 201
        cid = (await r.json())["id"]
        r = await api.put(f"/api/v1/classes/{cid}/roster",
                          json=[{"name": "O'Brien \"Bé\" & Tí", "external_id": "X1"}])
        assert r.status == 200
        assert (await api.post(f"/api/v1/classes/{cid}/links", json={})).status == 200
        s = await sign_in(gw, "co.lan")
        for path in ("/classes", f"/classes/{cid}", f"/classes/{cid}/links",
                     f"/classes/{cid}/roster", f"/classes/{cid}/control"):
            html = await (await s.get(path)).text()
            assert "<script>alert" not in html, path
            escaped = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;Toán&#34;"
            assert escaped in html, path
        html = await (await s.get(f"/classes/{cid}/links")).text()
        assert "O&#39;Brien &#34;Bé&#34; &amp; Tí" in html
        assert 'src="data:image/svg+xml' in html  # QR made locally


async def test_forms_carry_csrf_and_sign_in_checks_it(tmp_path: Path, redis_url: str,
                                                      redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        school = await setup_school(gw)
        for user, paths in staff_pages(school["cid"]).items():
            s = await sign_in(gw, user)
            r = await s.get("/api/v1/classes")  # just to be sure the session works
            assert r.status in (200,)
            for path in paths:
                page = parse(await (await s.get(path)).text())
                for form in page.forms:
                    method = (form["attrs"].get("method") or "get").lower()
                    if method == "get" and form["attrs"].get("action") == "/audit":
                        continue  # search form: reads only
                    names = [i.get("name") for i in form["inputs"]]
                    assert "csrf_token" in names, (user, path, form["attrs"])
                    tok = next(i["value"] for i in form["inputs"] if i.get("name") == "csrf_token")
                    assert tok and len(tok) >= 16
        # Sign-in without the double-submit token is refused; so is sign-out without CSRF.
        anon = gw.client()
        r = await anon.post("/login", data={"username": "co.lan", "password": TEACHER_PASSWORD},
                            allow_redirects=False)
        assert r.status == 403
        s = await sign_in(gw, "co.lan")
        r = await s.post("/logout", data={}, allow_redirects=False)
        assert r.status == 403
        page = parse(await (await s.get("/classes")).text())
        tok = next(i["value"] for f in page.forms for i in f["inputs"]
                   if i.get("name") == "csrf_token")
        r = await s.post("/logout", data={"csrf_token": tok}, allow_redirects=False)
        assert r.status == 303
        r = await s.get("/classes", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"].startswith("/login?next=")


async def test_roles_and_redirects(tmp_path: Path, redis_url: str, redis_prefix: str,
                                   redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        school = await setup_school(gw)
        await gw.staff_user("co.hoa", "teacher", org="thpt-a")
        anon = gw.client()
        r = await anon.get("/audit", allow_redirects=False)
        assert r.status == 303
        assert r.headers["Location"] in ("/login?next=%2Faudit", "/login?next=/audit")
        r = await anon.get("/login?next=//evil.example/x")
        assert 'name="next" value="/classes"' in await r.text()
        teacher = await sign_in(gw, "co.lan")
        assert (await teacher.get("/audit")).status == 403
        assert (await teacher.get("/admin/staff")).status == 403
        it = await sign_in(gw, "anh.it")
        assert (await it.get("/admin/keys")).status == 403
        # IT staff may read a class but never run its control room.
        assert (await it.get(f"/classes/{school['cid']}/control")).status == 403
        other = await sign_in(gw, "co.hoa")
        r = await other.get(f"/classes/{school['cid']}/links")
        assert r.status == 404
        assert "Nguyễn" not in await r.text()
        r = await gw.client().get("/lang/en?next=/join", allow_redirects=False)
        assert r.status == 303 and "cg_lang=en" in r.headers["Set-Cookie"]


async def test_roster_preview_saves_nothing(tmp_path: Path, redis_url: str, redis_prefix: str,
                                            redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        token = await gw.staff_user("co.lan")
        api = gw.api(token)
        r = await api.post("/api/v1/classes", json=class_body())
        cid = (await r.json())["id"]
        csv = ("Họ và tên,Mã học sinh\nNguyễn Văn An,HS001\n=HYPERLINK(\"x\"),HS002\n"
               "Trần Bình,HS003\n")
        r = await api.post(f"/api/v1/classes/{cid}/roster/preview", data=csv.encode(),
                           headers={"Content-Type": "text/csv"})
        assert r.status == 200
        body = await r.json()
        assert [s["name"] for s in body["students"]] == ["Nguyễn Văn An", "Trần Bình"]
        assert body["rejected"] == [{"line": 3, "error": "formula",
                                     "message": body["rejected"][0]["message"]}]
        r = await api.get(f"/api/v1/classes/{cid}/roster")
        assert (await r.json())["students"] == []
        r = await api.post(f"/api/v1/classes/{cid}/roster/preview", data=b"PK\x03\x04broken",
                           headers={"Content-Type": "application/octet-stream",
                                    "X-Filename": "list.xlsx"})
        assert r.status == 400 and (await r.json())["error"]["code"].startswith("roster_")
        # someone else's class: 404
        other = gw.api(await gw.staff_user("co.hoa"))
        r = await other.post(f"/api/v1/classes/{cid}/roster/preview", data=csv.encode(),
                             headers={"Content-Type": "text/csv"})
        assert r.status == 404


async def test_admin_endpoints(tmp_path: Path, redis_url: str, redis_prefix: str,
                               redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        await setup_school(gw)
        admin = gw.api(await gw.svc.staff.create_api_token("chi.admin"))  # type: ignore[union-attr]
        r = await admin.post("/api/v1/admin/orgs", json={"slug": "thcs-b", "name": "THCS B",
                                                         "parent": "so-gd"})
        assert r.status == 201
        r = await admin.post("/api/v1/admin/users", json={"username": "thay.minh",
                                                          "role": "teacher", "org": "thcs-b"})
        assert r.status == 201
        body = await r.json()
        assert body["one_time_password"] and body["user"]["must_change_password"]
        r = await admin.post("/api/v1/admin/users", json={"username": "x.y", "role": "teacher",
                                                          "org": "elsewhere"})
        assert r.status == 404
        users = (await (await admin.get("/api/v1/admin/users")).json())["users"]
        assert {"co.lan", "anh.it", "chi.admin", "thay.minh"} <= {u["username"] for u in users}
        assert (await admin.post("/api/v1/admin/users/thay.minh/disable")).status == 200
        assert (await admin.post("/api/v1/admin/users/chi.admin/disable")).status == 409
        keys = await (await admin.get("/api/v1/admin/keys")).json()
        before = [k["kid"] for k in keys["keys"] if k["state"] == "active"]
        r = await admin.post("/api/v1/admin/keys/rotate")
        assert r.status == 200
        after = await r.json()
        assert after["active"] not in before
        assert {k["state"] for k in after["keys"]} == {"active", "retired"}
        # A teacher may do none of it; a school admin may not rotate the shared keys.
        teacher = gw.api(await gw.svc.staff.create_api_token("co.lan"))  # type: ignore[union-attr]
        assert (await teacher.get("/api/v1/admin/users")).status == 403
        await gw.staff_user("hieu.pho", "admin", org="thpt-a")
        school_admin = gw.api(await gw.svc.staff.create_api_token("hieu.pho"))  # type: ignore[union-attr]
        assert (await school_admin.post("/api/v1/admin/keys/rotate")).status == 403
        orgs = (await (await school_admin.get("/api/v1/admin/orgs")).json())["orgs"]
        assert [o["slug"] for o in orgs] == ["thpt-a"]


async def test_ban_expiry(tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        await setup_school(gw)
        it = gw.api(await gw.svc.staff.create_api_token("anh.it"))  # type: ignore[union-attr]
        r = await it.post("/api/v1/orgs/so-gd/bans", json={"ip": "203.0.113.7",
                                                           "reason": "spam <b>"})
        assert r.status == 201
        key = (await r.json())["key"]
        r = await it.patch(f"/api/v1/orgs/so-gd/bans/{key}", json={"expires_in_s": 3600})
        assert r.status == 200 and (await r.json())["until"]
        bans = (await (await it.get("/api/v1/orgs/so-gd/bans")).json())["bans"]
        assert bans[0]["until"] and bans[0]["reason"] == "spam <b>"
        r = await it.patch(f"/api/v1/orgs/so-gd/bans/{key}", json={"expires_in_s": 5})
        assert r.status == 400
        s = await sign_in(gw, "anh.it")
        html = await (await s.get("/bans")).text()
        assert "203.0.113.7" in html and "spam &lt;b&gt;" in html
        r = await it.patch("/api/v1/orgs/so-gd/bans/i:198.51.100.1", json={"expires_in_s": None})
        assert r.status == 404
