"""Incident pages: the list per role, the report form pre-filled from a real
``link_shared`` alert, the detail page with its chain of custody, attachments, export for
administrators only, the control room's Report-incident button, escaping, vi and en."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from gateway.joinflow import DEVICE_COOKIE
from gateway.routes.pages_incidents import human_size, people_from_alerts, report_window
from gateway.stores import Student, device_hash

from .helpers import Gateway, make_class, open_link, running_gateway
from .test_pages import check_page, parse, sign_in

HOSTILE = '<script>alert("x")</script> & "Sự cố"'
HOSTILE_ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;Sự cố&#34;"
ROSTER = [
    {"name": "Nguyễn Văn An", "external_id": "HS001"},
    {"name": "Trần Thị Bình", "external_id": "HS002"},
    {"name": "Lê Hoàng Cường", "external_id": "HS003"},
]
VN = ZoneInfo("Asia/Ho_Chi_Minh")
DEV = "ab" * 32


def test_report_window_from_the_class_start_within_31_days() -> None:
    from dataclasses import replace

    from policies.model import Schedule

    now = datetime(2026, 11, 23, 1, 2, 30, tzinfo=UTC)
    start = datetime(2026, 11, 23, 0, 30, 59, tzinfo=UTC)

    class Info:
        schedule = Schedule(starts_at=start, ends_at=start + timedelta(hours=2))

    info: Any = Info()
    since, until = report_window(info, now)
    assert since == datetime(2026, 11, 23, 0, 30, tzinfo=UTC)
    assert until == datetime(2026, 11, 23, 1, 3, tzinfo=UTC)  # rounded up: nothing left out
    Info.schedule = replace(Info.schedule, starts_at=now - timedelta(days=40))
    since, until = report_window(info, now)
    assert until - since == timedelta(days=31)
    Info.schedule = replace(Info.schedule, starts_at=now + timedelta(hours=3),
                            ends_at=now + timedelta(hours=4))
    since, _ = report_window(info, now)
    assert since == datetime(2026, 11, 23, 0, 2, tzinfo=UTC)  # not yet begun: the last hour


def test_people_from_alerts() -> None:
    roster = {"s1": Student("s1", "An", None), "s2": Student("s2", "Bình", None)}  # type: ignore[arg-type]
    alerts = [
        {"kind": "link_shared", "at": 100.0, "student_id": "s1", "device_hint": "iPhone",
         "ban_device": f"d:{DEV}", "ban_ip": "i:203.0.113.9"},
        {"kind": "link_shared", "at": 101.0, "student_id": "s1", "ban_device": f"d:{DEV}",
         "ban_ip": "i:203.0.113.9"},  # the same visitor again
        {"kind": "link_shared", "at": 102.0, "student_id": "gone", "ban_device": "d:short",
         "ban_ip": "i:not-an-ip"},  # no longer on the roster, unusable handles
        {"kind": "banned_returning", "at": 103.0, "student_id": "s2"},
        {"kind": "link_shared", "at": 10.0, "student_id": "s2", "ban_ip": "i:198.51.100.1"},
        {"kind": "flood", "at": 104.0},
    ]
    students, visitors = people_from_alerts(alerts, roster, since_s=50.0)
    assert [s["id"] for s in students] == ["s1", "s2"]
    assert visitors == [{"device": DEV, "ip": "203.0.113.9", "hint": "iPhone", "link_of": "An",
                         "at": 100.0}]


def test_human_size() -> None:
    assert human_size(50 * 2**20, "en") == "50 MiB"
    assert human_size(1536, "vi") == "1,5 KiB"
    assert human_size(999, "en") == "999 B"


async def school(gw: Gateway) -> dict[str, Any]:
    staff = gw.svc.staff
    assert staff is not None
    await staff.init_root("so-gd", name="Sở GD&ĐT")
    lan = gw.api(await gw.staff_user("co.lan", "teacher", org="thpt-a", parent="so-gd"))
    hoa = gw.api(await gw.staff_user("co.hoa", "teacher", org="thpt-a"))
    await gw.staff_user("anh.it", "it", org="so-gd")
    await gw.staff_user("chi.admin", "admin", org="so-gd")
    await gw.staff_user("admin.b", "admin", org="school-b")
    cid, links = await make_class(gw, lan, roster=ROSTER)
    other_cid, _ = await make_class(gw, hoa)
    return {"lan": lan, "hoa": hoa, "cid": cid, "links": links, "other_cid": other_cid}


def window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"since": (now - timedelta(minutes=10)).isoformat(),
            "until": (now + timedelta(minutes=10)).isoformat()}


async def incident(api: aiohttp.ClientSession, cid: str, title: str, **extra: Any) -> str:
    r = await api.post("/api/v1/incidents", json={"class_id": cid, "title": title,
                                                  **window(), **extra})
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


def csrf_of(html: str) -> str:
    """The token incidents.js sends (the page's data-csrf, or its form's field)."""
    m = re.search(r'data-csrf="([^"]+)"', html) or \
        re.search(r'id="incident-form".*?name="csrf_token" value="([^"]+)"', html, re.S)
    assert m, "no CSRF token on the page"
    return unescape(m.group(1))


async def page(s: aiohttp.ClientSession, path: str, status: int = 200) -> str:
    r = await s.get(path)
    text = await r.text()
    assert r.status == status, (path, r.status, text[:500])
    return text


def custody_types(html: str) -> list[str]:
    body = html.split('id="custody"', 1)[1] if 'id="custody"' in html else ""
    return re.findall(r'<tr data-type="([a-z.]+)">', body)


def no_visible_keys(html: str, where: str) -> None:
    p = parse(html)
    visible = " ".join(p.text + p.attr_text)
    m = re.search(r"(?<![\w/.-])(incident|evidence)\.[a-z_]+", visible)
    assert m is None, f"untranslated {m.group(0) if m else ''} on {where}"


def form_inputs(html: str, form_id: str) -> list[dict[str, Any]]:
    for f in parse(html).forms:
        if f["attrs"].get("id") == form_id:
            return list(f["inputs"])
    raise AssertionError(f"no form #{form_id}")


def _iso(shown: str | None) -> str:
    """The form's ``dd/mm/yyyy HH:MM`` as incidents.js sends it."""
    day, clock = str(shown).split(" ")
    d, m, y = day.split("/")
    return f"{y}-{m}-{d}T{clock}:00+07:00"


async def submit_report_form(s: aiohttp.ClientSession, html: str, cid: str,
                             title: str) -> aiohttp.ClientResponse:
    """What incidents.js sends for the form as rendered (pre-checked boxes, times)."""
    inputs = form_inputs(html, "incident-form")
    value = {i.get("name"): i.get("value") for i in inputs if i.get("name") in ("since", "until")}
    offset = re.search(r'data-offset="([^"]+)"', html)
    assert offset and offset.group(1) == "+07:00"
    students = [str(i["value"]) for i in inputs
                if i.get("name") == "student_ids" and "checked" in i]
    visitors = []
    for i in inputs:
        if i.get("name") == "visitor" and "checked" in i:
            v = {k: str(i[f"data-{k}"]) for k in ("device", "ip") if i.get(f"data-{k}")}
            visitors.append(v)
    return await s.post("/api/v1/incidents", headers={"X-CSRF-Token": csrf_of(html)}, json={
        "class_id": cid, "title": title, "description": "Dòng 1\n<b>Dòng 2</b>",
        "since": _iso(value["since"]), "until": _iso(value["until"]),
        "student_ids": students, "visitors": visitors})


@pytest.mark.asyncio
async def test_list_per_role_filter_and_escaping(tmp_path: Path, redis_url: str,
                                                 redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        sc = await school(gw)
        mine = await incident(sc["lan"], sc["cid"], HOSTILE)
        theirs = await incident(sc["hoa"], sc["other_cid"], "Sự cố của cô Hoa")
        lan = await sign_in(gw, "co.lan")
        html = await page(lan, "/incidents")
        assert HOSTILE_ESCAPED in html and "<script>alert" not in html
        assert f'href="/incidents/{mine}"' in html and theirs not in html
        assert "Sự cố của cô Hoa" not in html
        assert 'href="/incidents"' in html  # in the navigation
        hoa = await sign_in(gw, "co.hoa")
        html = await page(hoa, "/incidents")
        assert theirs in html and mine not in html and "alert(" not in html
        html = await page(hoa, f"/incidents/{mine}", 404)
        assert "alert(" not in html and "Nguyễn" not in html
        await page(hoa, f"/incidents/new?class_id={sc['cid']}", 404)
        for user in ("anh.it", "chi.admin"):
            s = await sign_in(gw, user)
            html = await page(s, "/incidents")
            assert mine in html and theirs in html, user
            assert 'href="/incidents"' in html
        outsider = await sign_in(gw, "admin.b")
        html = await page(outsider, "/incidents")
        assert mine not in html and theirs not in html
        await page(outsider, f"/incidents/{mine}", 404)
        await page(outsider, "/incidents/inotanincident", 404)
        # the detail page escapes the title, the description and file names too
        r = await sc["lan"].patch(f"/api/v1/incidents/{mine}",
                                  json={"description": "<img src=x onerror=alert(1)>"})
        assert r.status == 200
        form = aiohttp.FormData()
        form.add_field("file", b"chat log", filename='<svg onload=alert(2)>.txt')
        r = await sc["lan"].post(f"/api/v1/incidents/{mine}/attachments", data=form)
        assert r.status == 201, await r.text()
        html = await page(lan, f"/incidents/{mine}")
        assert HOSTILE_ESCAPED in html and "<script>alert" not in html
        assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
        assert "<svg" not in html and "&lt;svg onload=alert(2)&gt;.txt" in html
        # filter by status
        assert gw.svc.staff is not None
        admin_api = gw.api(str(await gw.svc.staff.create_api_token("chi.admin")))
        r = await admin_api.patch(f"/api/v1/incidents/{mine}",
                                  json={"status": "closed", "reason": "đã xử lý"})
        assert r.status == 200
        html = await page(lan, "/incidents?status=closed")
        assert mine in html
        html = await page(lan, "/incidents?status=open")
        assert mine not in html
        html = await page(lan, "/incidents?status=bogus")  # ignored, not an error
        assert mine in html


@pytest.mark.asyncio
async def test_report_form_detail_custody_attachments_export(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        sc = await school(gw)
        cid, links = sc["cid"], sc["links"]
        an = next(x for x in links if x["name"] == "Nguyễn Văn An")
        # An opens his link, then someone on a second device opens it: link_shared
        own, intruder = gw.client(), gw.client(user_agent="Mozilla/5.0 (iPhone) Safari")
        _, body = await open_link(own, an)
        assert body["status"] == "waiting", body
        _, body = await open_link(intruder, an)
        assert body["reason"] == "device_mismatch", body
        cookie = next(c.value for c in intruder.cookie_jar if c.key == DEVICE_COOKIE)
        intruder_device = device_hash(cookie)
        alerts = await gw.svc.store.alerts(cid)  # type: ignore[union-attr]
        assert any(a["kind"] == "link_shared" for a in alerts)

        lan = await sign_in(gw, "co.lan")
        # the control room's Report-incident button leads to the form
        html = await page(lan, f"/classes/{cid}/control")
        assert f'href="/incidents/new?class_id={cid}"' in html
        assert 'aria-describedby="incident-note"' not in html

        html = await page(lan, f"/incidents/new?class_id={cid}")
        check_page(html, "vi", "new incident")
        inputs = form_inputs(html, "incident-form")
        boxes = {str(i["value"]): "checked" in i for i in inputs if i.get("name") == "student_ids"}
        assert boxes[an["student_id"]] is True
        assert [sid for sid, on in boxes.items() if on] == [an["student_id"]]
        assert len(boxes) == len(ROSTER)  # the whole roster, to add others
        visitors = [i for i in inputs if i.get("name") == "visitor"]
        assert len(visitors) == 1 and "checked" in visitors[0]
        assert visitors[0]["data-device"] == intruder_device
        assert visitors[0]["data-ip"] == "127.0.0.1"
        assert "iPhone" in html
        # the window: from the class's start (Vietnam time, to the minute) to now
        info = await gw.svc.store.get_class(cid)  # type: ignore[union-attr]
        assert info is not None
        since = next(i["value"] for i in inputs if i.get("name") == "since")
        until = next(i["value"] for i in inputs if i.get("name") == "until")
        # (shown day first, dd/mm/yyyy HH:MM)
        assert since == info.schedule.starts_at.astimezone(VN).strftime("%d/%m/%Y %H:%M")
        assert datetime.strptime(str(until), "%d/%m/%Y %H:%M").replace(tzinfo=VN) >= \
            datetime.now(UTC) - timedelta(seconds=1)

        r = await submit_report_form(lan, html, cid, "Người lạ dùng đường dẫn của em An")
        assert r.status == 201, await r.text()
        created = await r.json()
        iid = created["id"]
        assert created["student_ids"] == [an["student_id"]]
        assert created["visitors"] == [{"device": intruder_device, "ip": "127.0.0.1"}]
        # an API error names its field, which the form shows beside that field
        r = await submit_report_form(lan, html.replace(f'value="{until}"', f'value="{since}"'),
                                     cid, "x")
        assert r.status == 400 and (await r.json())["error"]["field"] == "until"
        assert 'data-error-for="until"' in html

        html = await page(lan, f"/incidents/{iid}")
        check_page(html, "vi", "incident detail")
        assert "Nguyễn Văn An" in html and "Trần Thị Bình" not in html
        assert "127.0.0.1" in html and intruder_device[:12] in html and "iPhone" in html
        assert "Dòng 1<br>&lt;b&gt;Dòng 2&lt;/b&gt;" in html
        first = custody_types(html)
        assert first[0] == "incident.create" and first.count("incident.view") == 1, first
        assert re.search(r"#\d+</td>", html)  # audit indexes (no proof link for teachers)
        assert "evidence.zip" not in html  # only administrators export
        html = await page(lan, f"/incidents/{iid}")
        assert custody_types(html).count("incident.view") == 2
        # the JSON detail endpoint records the same custody event
        assert (await sc["lan"].get(f"/api/v1/incidents/{iid}")).status == 200

        # an upload, as incidents.js sends it (multipart, CSRF header)
        form = aiohttp.FormData()
        form.add_field("file", b"\x89PNG\r\n\x1a\n fake screenshot", filename="man-hinh.png")
        r = await lan.post(f"/api/v1/incidents/{iid}/attachments", data=form,
                           headers={"X-CSRF-Token": csrf_of(html)})
        assert r.status == 201, await r.text()
        sha = (await r.json())["attachments"][0]["sha256"]
        html = await page(lan, f"/incidents/{iid}")
        types = custody_types(html)
        assert types.count("incident.view") == 4 and types.count("incident.attach") == 1, types
        assert "man-hinh.png" in html and sha in html and "image/png" in html
        assert html.count(sha) == 2  # the attachment and its custody record
        assert re.search(r"50 MiB", html)  # the size limit is shown
        assert 'id="upload-form"' in html

        it = await sign_in(gw, "anh.it")
        html = await page(it, f"/incidents/{iid}")
        assert "evidence.zip" not in html
        assert "/api/v1/audit/proof/inclusion?index=" in html
        admin = await sign_in(gw, "chi.admin")
        html = await page(admin, f"/incidents/{iid}")
        check_page(html, "vi", "incident detail (admin)")
        hrefs = re.findall(r'href="(/api/v1/incidents/[^"]+/evidence\.zip\?lang=(?:vi|en))"', html)
        assert hrefs == [f"/api/v1/incidents/{iid}/evidence.zip?lang=vi",
                         f"/api/v1/incidents/{iid}/evidence.zip?lang=en"]
        r = await admin.get(hrefs[1])
        assert r.status == 200 and r.content_type == "application/zip", await r.text()
        bundle_sha = r.headers["X-Evidence-SHA256"]
        await r.read()
        html = await page(admin, f"/incidents/{iid}")
        assert "incident.export" in custody_types(html) and bundle_sha in html
        assert "Đã xuất bằng chứng" in html

        # closing: only an administrator sees the buttons, and sends a reason
        html = await page(lan, f"/incidents/{iid}")
        assert 'data-status=' not in html and 'id="status-reason"' not in html
        html = await page(admin, f"/incidents/{iid}")
        assert 'data-status="closed"' in html and 'data-status="open"' not in html
        assert 'id="status-reason"' in html
        r = await admin.patch(f"/api/v1/incidents/{iid}",
                              json={"status": "closed", "reason": "đã bàn giao công an"},
                              headers={"X-CSRF-Token": csrf_of(html)})
        assert r.status == 200, await r.text()
        html = await page(admin, f"/incidents/{iid}")
        assert 'id="upload-form"' not in html and 'data-status="open"' in html
        assert "incident.update" in custody_types(html)
        assert "đã bàn giao công an" in html  # the reason, in the history


@pytest.mark.asyncio
async def test_pages_render_in_both_languages(tmp_path: Path, redis_url: str,
                                              redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        sc = await school(gw)
        cid = sc["cid"]
        iid = await incident(sc["lan"], cid, "Quấy rối", visitors=[{"ip": "203.0.113.9"}],
                             student_ids=[sc["links"][0]["student_id"]])
        paths = ["/incidents", "/incidents?status=open", "/incidents/new",
                 f"/incidents/new?class_id={cid}", f"/incidents/{iid}"]
        words = {"vi": ("Sự cố", "Chuỗi lưu giữ"), "en": ("Incidents", "Chain of custody")}
        for lang in ("vi", "en"):
            for user in ("co.lan", "anh.it", "chi.admin"):
                s = await sign_in(gw, user, lang)
                for path in paths:
                    r = await s.get(path)
                    html = await r.text()
                    assert r.status == 200, (user, path, r.status, html[:300])
                    csp = r.headers["Content-Security-Policy"]
                    assert "unsafe-inline" not in csp and "script-src 'self'" in csp
                    where = f"{lang} {user} {path}"
                    p = check_page(html, lang, where)
                    no_visible_keys(html, where)
                    assert words[lang][0] in html, where
                    for form in p.forms:
                        if (form["attrs"].get("method") or "").lower() == "get":
                            continue  # filters and the class picker only read
                        tok = [i.get("value") for i in form["inputs"]
                               if i.get("name") == "csrf_token"]
                        assert tok and tok[0] and len(str(tok[0])) >= 16, (where, form["attrs"])
                html = await (await s.get(f"/incidents/{iid}")).text()
                assert words[lang][1] in html
                assert "203.0.113.9" in html
        # the class picker offers the viewer's classes only
        lan = await sign_in(gw, "co.lan")
        html = await page(lan, "/incidents/new")
        assert f'value="{cid}"' in html and sc["other_cid"] not in html
