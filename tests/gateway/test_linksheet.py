"""The printed link cards: each card shows its own code and how to use it, and no
sample code a student could mistake for theirs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.i18n import t
from gateway.linksheet import card_qr, render_link_sheet, short_url
from tests.conftest import require_program

from .helpers import make_class, running_gateway

LINKS = [
    {"name": "Nguyễn Văn An", "code": "7KQ2M-9XWRT", "url": "https://lop.example.vn/j/abc"},
    {"name": "Trần Thị Bình", "code": "H3P8V-Z6N4D", "url": "https://lop.example.vn/j/def"},
]


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_cards_show_their_own_code_and_no_sample(tmp_path: Path, lang: str) -> None:
    pdftotext = require_program("pdftotext")
    pdf = tmp_path / "cards.pdf"
    pdf.write_bytes(render_link_sheet("Toán 10A1", LINKS, lang, "https://lop.example.vn"))
    text = subprocess.run([pdftotext, str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    flat = " ".join(text.split())
    for link in LINKS:
        assert link["code"] in flat and link["name"] in flat
    assert "ABCDE" not in flat
    expected = " ".join(t(lang, "linksheet.how_to_join",
                          url="https://lop.example.vn/join").split())
    assert flat.count(expected) == len(LINKS), flat


# --- The card's QR code carries the short URL -----------------------------------------

def test_qr_code_is_a_short_url_of_version_at_most_5_at_m() -> None:
    # A long school host name still fits: version 5-M holds 84 bytes.
    public = "https://lop-truc-tuyen.truong-thpt-nguyen-binh-khiem.edu.vn/"
    for link in LINKS:
        url = short_url(public, link["code"])
        assert url == public.rstrip("/") + "/c/" + link["code"].replace("-", "")
        qr = card_qr(public, link["code"])
        assert qr.error == "M" and isinstance(qr.version, int) and qr.version <= 5, \
            (qr.version, url)
        assert "/j/" not in url
    with pytest.raises(ValueError):
        short_url(public, "not a code")


async def test_short_url_joins_like_the_code_and_is_refused_after_revocation(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: object) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        link = links[0]
        public = gw.svc.settings.public_url
        url = short_url(public, link["code"])
        path = url[len(public.rstrip("/")):]
        assert path.startswith("/c/")
        kid = gw.client()
        r = await kid.get(path, headers={"Accept": "application/json"})
        body = await r.json()
        assert r.status == 200 and body["status"] == "waiting", body
        # the student's page, as the same phone's camera opens it
        r = await kid.get(path)
        assert r.status == 200 and "/ws/wait/" in await r.text()
        r = await gw.client().get("/c/00000-00000", headers={"Accept": "application/json"})
        assert r.status == 404
        r = await api.post(f"/api/v1/classes/{cid}/actions",
                           json={"action": "revoke_link", "student_id": link["student_id"]})
        assert (await r.json())["revoked"] is True
        r = await gw.client().get(path, headers={"Accept": "application/json"})
        assert r.status in (403, 404), await r.text()
        if r.status == 403:
            assert (await r.json())["reason"] == "token_revoked"
