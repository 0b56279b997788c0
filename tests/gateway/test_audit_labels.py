"""The audit page names what it shows: event types and reasons in words, the class by
its title, a student by name; the raw codes stay on hover (title) and in the record."""

from __future__ import annotations

import html
from pathlib import Path

import pytest

from gateway.i18n import t

from .helpers import open_link, running_gateway
from .test_pages import setup_school, sign_in


@pytest.mark.parametrize("lang", ["vi", "en"])
async def test_audit_page_shows_words_and_names(tmp_path: Path, redis_url: str,
                                                redis_prefix: str, redis: object,
                                                lang: str) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        school = await setup_school(gw)
        cid, an = school["cid"], school["links"][0]
        status, body = await open_link(gw.client(), an)
        assert body["status"] == "waiting"
        r = await school["api"].post(f"/api/v1/classes/{cid}/actions",
                                     json={"action": "admit", "student_id": an["student_id"]})
        assert r.status == 200
        it = await sign_in(gw, "anh.it", lang)
        r = await it.get(f"/audit?lang={lang}&class={cid}")
        assert r.status == 200
        page = html.unescape(await r.text())
        summary = page.split('<ul class="events"', 1)[1]
        assert f'title="join">{t(lang, "evidence.type.join")}</strong>' in summary
        assert f'title="host.admit">{t(lang, "evidence.type.host.admit")}</strong>' in summary
        assert f'title="awaiting_host">{t(lang, "reason.awaiting_host")}</span>' in summary
        assert f'title="{cid}">· Toán 10A1</span>' in summary
        assert f'title="student:{an["student_id"]}">{an["name"]}</span>' in summary


async def test_bans_page_names_the_student(tmp_path: Path, redis_url: str,
                                           redis_prefix: str, redis: object) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        school = await setup_school(gw)
        cid, an = school["cid"], school["links"][0]
        await open_link(gw.client(), an)
        r = await school["api"].post(f"/api/v1/classes/{cid}/actions", json={
            "action": "ban", "student_id": an["student_id"], "scope": "device"})
        assert r.status == 200, await r.text()
        it = await sign_in(gw, "anh.it", "vi")
        page = html.unescape(await (await it.get("/bans?lang=vi")).text())
        assert t("vi", "control.ban_device_of", name=an["name"]) in page
        assert t("vi", "bans.device_hidden") not in page
