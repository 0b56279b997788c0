"""Injection and resource exhaustion: markup and formulas in roster names and titles,
oversized and deeply nested bodies, decompression and entity-expansion bombs, and
hypothesis fuzzing of the token, code and roster parsers through HTTP (no input may
produce a 500).
"""

from __future__ import annotations

import http.client
import io
import json
import re
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .kit import JSON, Deployment, assert_kept_out, next_message, scene

pytestmark = pytest.mark.slow

ROSTERS = Path(__file__).resolve().parent / "fixtures" / "rosters"
MARKUP = json.loads((ROSTERS / "markup_names.json").read_text())
# The payloads as they would appear if a page printed them unescaped.
PAYLOAD_MARKERS = ("<script>alert", "<img src=x", "<svg onload", "onerror=alert",
                   "<b>văn</b>", "</textarea><script>")


def _no_raw_markup(html: str) -> None:
    low = html.lower()
    for marker in PAYLOAD_MARKERS:
        assert marker not in low, marker


async def test_markup_in_roster_names_and_title(deployment: Deployment) -> None:
    """A "class list" full of script: refused per line; the odd-but-real names that are
    accepted, and a hostile class title, reach the teacher's pages, the student's page
    and the control socket only as text."""
    title = "Toán <script>alert(1)</script> 10A1"
    async with scene(deployment) as s:
        k = await s.new_class("strict", title=title)
        api = s.teacher
        for body, ctype in (
            (json.dumps(MARKUP).encode(), "application/json"),
            ((ROSTERS / "markup_names.csv").read_bytes(), "text/csv"),
        ):
            r = await api.call("PUT", f"/api/v1/classes/{k.id}/roster", data=body,
                               headers={"Content-Type": ctype})
            assert r.status == 200, r
            names = [st_["name"] for st_ in r.body["students"]]
            assert sorted(names) == sorted(["Đặng \"Bé\" & Co'", "O'Brien & Nguyễn"]), names
            assert {x["error"] for x in r.body["rejected"]} == {"invalid_characters"}
            assert len(r.body["rejected"]) == 5
        r = await api.call("PUT", f"/api/v1/classes/{k.id}/roster",
                           data=(ROSTERS / "formula_names.csv").read_bytes(),
                           headers={"Content-Type": "text/csv"})
        assert r.status == 400 and r.body["error"]["code"] == "roster_empty", r
        assert {x["error"] for x in r.body["error"].get("rejected", r.body.get("rejected", []))
                } <= {"formula"}
        links = (await api.call("POST", f"/api/v1/classes/{k.id}/links", json={})).body["links"]
        # the student's waiting page and the refusal page
        kid = s.device()
        token = links[0]["url"].rsplit("/j/", 1)[1]
        r = await kid.open_html(token)
        assert r.status == 200 and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.body
        assert "&#34;" in r.body or "&quot;" in r.body or "&#39;" in r.body
        _no_raw_markup(r.body)
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        # the teacher's pages (those this build serves)
        served = 0
        for path in ("/classes", f"/classes/{k.id}", f"/classes/{k.id}/roster",
                     f"/classes/{k.id}/links", f"/classes/{k.id}/control"):
            r = await api.call("GET", path, headers={"Accept": "text/html"})
            assert r.status in (200, 404), (path, r.status)
            if r.status == 200:
                served += 1
                _no_raw_markup(r.body)
                assert "unsafe-inline" not in r.headers["Content-Security-Policy"]
        assert served >= 1
        # the control socket carries names as JSON strings for textContent
        ctl = await api.control(k.id)
        state = await next_message(ctl, type_="state")
        assert state["waiting"][0]["name"] in ("Đặng \"Bé\" & Co'", "O'Brien & Nguyễn")
        await ctl.close()
        r = await s.device().get("/static/control.js")
        assert r.status == 200
        assert not re.search(r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write",
                             r.body)
        events = await s.await_audit(lambda ev: len(ev) >= 2, class_=k.id, type="roster.imported")
        assert [e["facts"]["rejected"] for e in events][:2] == [5, 5]  # newest first


async def test_oversized_json_bodies(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        big = b'{"title": "' + b"A" * (2 * 1024 * 1024) + b'"}'
        anon = s.device()
        targets: list[tuple[Any, str, str]] = [
            (s.teacher, "POST", "/api/v1/classes"),
            (s.teacher, "POST", f"/api/v1/classes/{k.id}/actions"),
            (s.teacher, "PUT", f"/api/v1/classes/{k.id}/policy"),
            (anon, "POST", "/join"),
            (anon, "POST", "/api/v1/session"),
        ]
        for who, method, path in targets:
            if who is anon:
                r = await anon.post(path, data=io.BytesIO(big),
                                    headers={**JSON, "Content-Type": "application/json"})
            else:
                r = await who.call(method, path, data=io.BytesIO(big),
                                   headers={"Content-Type": "application/json"})
            assert r.status == 413, (path, r.status, r.body)
            assert r.body["error"]["code"] in ("too_large", "payload_too_large"), r.body
        r = await s.teacher.call("PUT", f"/api/v1/classes/{k.id}/roster",
                                 data=io.BytesIO(b"Nguyen Van A,HS1\n" * 400_000),
                                 headers={"Content-Type": "text/csv"})
        assert r.status == 413
        await s.admit_legit(k, 0)


async def test_deeply_nested_json_bodies(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        bombs = ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000,
                 '{"code": ' + "[" * 30_000 + "]" * 30_000 + "}"]
        anon = s.device()
        for bomb in bombs:
            for who, path in ((s.teacher, "/api/v1/classes"),
                              (s.teacher, f"/api/v1/classes/{k.id}/actions"),
                              (s.teacher, f"/api/v1/classes/{k.id}/roster"),
                              (anon, "/join"), (anon, "/api/v1/session")):
                kw: dict[str, Any] = {"data": bomb,
                                      "headers": {**JSON, "Content-Type": "application/json"}}
                r = await (who.call("PUT" if path.endswith("roster") else "POST", path, **kw)
                           if who is not anon else anon.post(path, **kw))
                assert r.status == 400, (path, r.status, r.body)
        assert_kept_out(anon)
        await s.admit_legit(k, 0)


async def test_deeply_nested_message_on_the_control_socket(deployment: Deployment) -> None:
    """A nesting bomb sent over the teacher's control socket (64 KiB frames) is an
    error reply, not a dead socket."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        ctl = await s.teacher.control(k.id)
        await next_message(ctl, type_="state")
        await ctl.send_str("[" * 30_000 + "]" * 30_000)
        reply = await next_message(ctl, type_="error")
        assert reply["error"]["code"] == "invalid_json", reply
        await ctl.send_json({"action": "refresh"})
        assert (await next_message(ctl, type_="state"))["class_id"] == k.id
        await ctl.close()


@pytest.mark.parametrize("bomb", ["xlsx_zip_bomb.xlsx", "xlsx_billion_laughs.xlsx"])
async def test_roster_workbook_bombs(deployment: Deployment, bomb: str) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        r = await s.teacher.call(
            "PUT", f"/api/v1/classes/{k.id}/roster", data=(ROSTERS / bomb).read_bytes(),
            headers={"Content-Type": "application/vnd.openxmlformats-officedocument."
                                     "spreadsheetml.sheet", "X-Filename": bomb})
        assert r.status in (400, 413), r
        assert r.body["error"]["code"].startswith("roster_")
        roster = await s.teacher.call("GET", f"/api/v1/classes/{k.id}/roster")
        assert len(roster.body["students"]) == 4  # the previous roster stands
        await s.admit_legit(k, 0)


async def test_form_without_multipart_boundary(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        anon = s.device()
        for path in ("/join", "/login"):
            for ctype in ("multipart/form-data", "multipart/form-data; boundary=cgfuzz"):
                r = await anon.post(path, data=b"{'code': None}",
                                    headers={"Content-Type": ctype})
                assert r.status == 400, (path, ctype, r.status, r.body)


# --- fuzzing through HTTP -------------------------------------------------------------------
# Synchronous (hypothesis drives the examples) with http.client, rotating the source
# address so the per-address limits do not turn the fuzzer into a rate-limit test.

class _Http:
    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.port = int(dep.base.rsplit(":", 1)[1])
        self.n = count()
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if next(self.n) % 10 == 0 or self.conn is None:
            if self.conn is not None:
                self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                                   source_address=(self.dep.new_ip(), 0))
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return resp.status, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@pytest.fixture(scope="module")
def http_(deployment: Deployment) -> Any:
    h = _Http(deployment)
    yield h
    h.close()


@pytest.fixture(scope="module")
def live_class(deployment: Deployment, http_: _Http) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {deployment.accounts['co.lan'].token}",
            "Content-Type": "application/json"}
    from .kit import ROSTER, class_body

    status, data = http_.request("POST", "/api/v1/classes", json.dumps(class_body()).encode(),
                                 auth)
    assert status == 201, data
    cid = json.loads(data)["id"]
    http_.request("PUT", f"/api/v1/classes/{cid}/roster", json.dumps(ROSTER).encode(), auth)
    status, data = http_.request("POST", f"/api/v1/classes/{cid}/links", b"{}", auth)
    assert status == 200, data
    links = json.loads(data)["links"]
    return {"id": cid, "token": links[0]["url"].rsplit("/j/", 1)[1], "auth": auth}


def _mutations(token: str) -> st.SearchStrategy[str]:
    h, p, sig = token.split(".")
    seg = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.",
                  max_size=120)
    return st.one_of(
        st.text(max_size=300),
        st.builds(lambda a, b, c: f"{a}.{b}.{c}", seg, seg, seg),
        st.builds(lambda x: f"{x}.{p}.{sig}", seg),
        st.builds(lambda x: f"{h}.{x}.{sig}", seg),
        st.builds(lambda x: f"{h}.{p}.{x}", seg),
        st.builds(lambda i, c: token[:i] + c + token[i + 1:],
                  st.integers(0, len(token) - 1), st.characters()),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    )


FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def test_fuzz_join_token_never_500(http_: _Http, live_class: dict[str, Any]) -> None:
    @FUZZ
    @given(_mutations(live_class["token"]))
    @example("." * 2000)
    @example("eyJ" + "A" * 5000)
    def run(token: str) -> None:
        path = "/j/" + quote(token, safe="")
        for accept in ("application/json", "text/html"):
            status, body = http_.request("GET", path, headers={"Accept": accept})
            assert status < 500, (token, status, body[:300])
            assert status != 200 or b'"redirect"' not in body
            assert status not in (302, 303), token

    run()


def test_fuzz_join_code_never_500(http_: _Http) -> None:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                   max_size=4),
        max_leaves=10)

    @FUZZ
    @given(st.one_of(json_values.map(lambda v: {"code": v}), json_values),
           st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                            "text/plain", "multipart/form-data",
                            "multipart/form-data; boundary=cgfuzz"]))
    def run(value: Any, ctype: str) -> None:
        if ctype == "application/json":
            body = json.dumps(value).encode()
        else:
            body = str(value).encode()
        status, data = http_.request("POST", "/join", body,
                                     {"Content-Type": ctype, "Accept": "application/json"})
        assert status < 500, (value, ctype, status, data[:300])
        assert b'"redirect"' not in data

    run()


def test_fuzz_roster_upload_never_500(http_: _Http, live_class: dict[str, Any]) -> None:
    path = f"/api/v1/classes/{live_class['id']}/roster"
    csv_like = st.lists(st.lists(st.text(max_size=30), max_size=4), max_size=6).map(
        lambda rows: "\n".join(",".join(r) for r in rows))
    bodies = st.one_of(
        st.binary(max_size=600),
        csv_like.map(str.encode),
        csv_like.flatmap(lambda t: st.sampled_from(["utf-8", "utf-16", "cp1258", "latin-1"])
                         .map(lambda enc: t.encode(enc, errors="replace"))),
        st.lists(st.dictionaries(st.sampled_from(["name", "external_id", "x"]),
                                 st.text(max_size=20) | st.integers() | st.none(), max_size=3),
                 max_size=5).map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=400).map(lambda b: b"PK\x03\x04" + b),
    )

    @FUZZ
    @given(bodies, st.sampled_from([
        "text/csv", "application/json", "text/plain", "application/octet-stream",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"]))
    def run(body: bytes, ctype: str) -> None:
        headers = {**live_class["auth"], "Content-Type": ctype}
        status, data = http_.request("PUT", path, body, headers)
        assert status < 500, (body[:200], ctype, status, data[:300])
        assert status in (200, 400, 413, 415), (status, data[:300])

    run()
