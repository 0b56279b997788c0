"""Reporting an incident in real browsers: a leaked link is opened on a second device,
the teacher reports it from the control room (the form pre-filled from the alert),
attaches a screenshot, and an administrator exports the evidence bundle, which
verifies offline and names the student whose link it was."""

from __future__ import annotations

import asyncio
import hashlib
import json
import zipfile
from io import BytesIO
from pathlib import Path

from playwright.async_api import Browser, expect

from audit.evidence import verify_bundle
from gateway.i18n import t
from tests.gateway.helpers import Gateway, make_class, open_link

from .conftest import check_page, new_context, sign_in

VI = "vi"
# a 1x1 PNG: what a teacher's screenshot looks like to the server
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cf000000030101004b5c1a830000000049454e44ae426082")


async def test_teacher_reports_and_admin_exports(browser: Browser, gateway: Gateway,
                                                 artifacts: Path) -> None:
    gw = gateway
    api = gw.api(await gw.staff_user("co.lan", "teacher", org="thpt-a"))
    await gw.staff_user("hieu.truong", "admin", org="thpt-a")
    cid, links = await make_class(gw, api)
    owner, intruder = gw.client(), gw.client(
        user_agent="Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120")
    assert (await open_link(owner, links[0]))[1]["status"] == "waiting"
    status, body = await open_link(intruder, links[0])  # the leaked link, second device
    assert (status, body["reason"]) == (403, "device_mismatch")

    ctx, watch = await new_context(browser)
    page = await ctx.new_page()
    await sign_in(page, gw, "co.lan")
    await page.goto(gw.url(f"/classes/{cid}/control"))
    await page.get_by_role("link", name=t(VI, "control.report_incident")).click()
    await expect(page).to_have_url(gw.url(f"/incidents/new?class_id={cid}"))
    # pre-filled from the alert: the student whose link it was, and the second device
    student = page.get_by_role("checkbox", name=links[0]["name"], exact=True)
    await expect(student).to_be_checked()
    visitors = page.locator("input[type=checkbox][name=visitor]")
    await expect(visitors).to_have_count(1)
    await expect(visitors.first).to_be_checked()
    await check_page(page, watch, lang=VI, where="incident form", shots=artifacts,
                     name="flow-incident-new")
    await page.get_by_label(t(VI, "incident.title")).fill("Người lạ dùng link của một học sinh")
    await page.get_by_label(t(VI, "incident.description")).fill(
        "Một máy tính khác mở link của học sinh lúc 7:40.")
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(VI, "incident.submit")).click()
    assert "/incidents/" in page.url and "/new" not in page.url
    incident_id = page.url.rsplit("/", 1)[1]
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Người lạ dùng link")

    # a screenshot, uploaded from the detail page; its SHA-256 is shown
    await page.get_by_label(t(VI, "incident.add_files")).set_input_files(
        files=[{"name": "man-hinh.png", "mimeType": "image/png", "buffer": PNG}])
    async with page.expect_navigation():
        await page.get_by_role("button", name=t(VI, "incident.upload")).click()
    digest = hashlib.sha256(PNG).hexdigest()
    # in the attachments list and, logged at upload, in the chain of custody
    await expect(page.get_by_text(digest)).to_have_count(2)
    await expect(page.locator('#custody tr[data-type="incident.attach"]')).to_contain_text(digest)
    await expect(page.get_by_text("man-hinh.png")).to_be_visible()
    # teachers report; only administrators export
    await expect(page.locator("#export")).to_have_count(0)
    await check_page(page, watch, lang=VI, where="incident detail (teacher)", shots=artifacts,
                     name="flow-incident-detail")
    await ctx.close()

    ctx, watch = await new_context(browser)
    page = await ctx.new_page()
    await sign_in(page, gw, "hieu.truong")
    await page.goto(gw.url(f"/incidents/{incident_id}"))
    async with page.expect_download() as dl:
        await page.get_by_role("link", name=t(VI, "incident.export_vi")).click()
    download = await dl.value
    bundle = await asyncio.to_thread(Path(await download.path()).read_bytes)
    report = verify_bundle(bundle, gw.svc.audit_key.verifier() if gw.svc.audit_key else None)
    assert report.ok, report.to_json()
    with zipfile.ZipFile(BytesIO(bundle)) as z:
        names = z.namelist()
        events = [json.loads(x) for x in z.read("events.jsonl").splitlines()]
        report_html = z.read("report.html").decode()
    assert any(n.startswith("attachments/") for n in names)
    assert links[0]["name"] in report_html
    assert any(e["record"].get("reason") == "device_mismatch" for e in events)
    assert links[1]["name"] not in report_html  # a classmate not involved is not there
    # the export is in the chain of custody shown on the page
    await page.reload()
    await expect(page.locator('#custody tr[data-type="incident.export"]')).to_have_count(1)
    await check_page(page, watch, lang=VI, where="incident detail (admin)", shots=artifacts,
                     name="flow-incident-exported")
    await ctx.close()
