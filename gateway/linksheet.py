"""The printable link sheet: one cut-out card per student with name, short code and
a QR code of the card's short URL (``<public_url>/c/<code>``, answered like the typed
code: see gateway/routes/join.py and THREAT_MODEL.md). Rendered locally (segno +
fpdf2); the bundled DejaVu font carries every Vietnamese diacritic."""

from __future__ import annotations

import io
from collections.abc import Sequence
from importlib import resources
from typing import Any

import segno
from fpdf import FPDF

from . import i18n
from .codes import normalize_code

_CARD_W, _CARD_H = 95.0, 62.0
_MARGIN_X, _MARGIN_Y = 10.0, 12.0


def _font_path(name: str) -> str:
    return str(resources.files("gateway").joinpath("fonts", name))


def short_url(public_url: str, code: str) -> str:
    """The URL a card's QR code carries: the short code under the public URL. Short
    enough for a QR code of version <= 5 at error correction M, which cheap phone
    cameras read from a printed card."""
    canonical = normalize_code(code)
    if canonical is None:
        raise ValueError("not a join code")
    return f"{public_url.rstrip('/')}/c/{canonical}"


def card_qr(public_url: str, code: str) -> segno.QRCode:
    return segno.make(short_url(public_url, code), error="m", boost_error=False)


def render_link_sheet(
    class_title: str, links: Sequence[dict[str, Any]], lang: str, public_url: str
) -> bytes:
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    pdf.add_font("DejaVu", "", _font_path("DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", _font_path("DejaVuSans-Bold.ttf"))
    pdf.set_title(f"{class_title} - ClassGuard")
    per_page = 8
    join_url = public_url.rstrip("/") + "/join"
    if not links:
        pdf.add_page()
        pdf.set_font("DejaVu", "B", 14)
        pdf.cell(0, 10, class_title)
    for i, link in enumerate(links):
        if i % per_page == 0:
            pdf.add_page()
            pdf.set_font("DejaVu", "B", 11)
            pdf.set_xy(_MARGIN_X, 4)
            pdf.cell(0, 6, class_title)
        slot = i % per_page
        x = _MARGIN_X + (slot % 2) * _CARD_W
        y = _MARGIN_Y + (slot // 2) * (_CARD_H + 6)
        pdf.set_draw_color(150, 150, 150)
        pdf.set_dash_pattern(dash=1.5, gap=1.5)
        pdf.rect(x, y, _CARD_W - 4, _CARD_H)
        pdf.set_dash_pattern()
        qr = card_qr(public_url, str(link["code"]))
        buf = io.BytesIO()
        qr.save(buf, kind="png", scale=4, border=2)
        buf.seek(0)
        pdf.image(buf, x=x + 2, y=y + 2, w=40, h=40)
        pdf.set_xy(x + 44, y + 4)
        pdf.set_font("DejaVu", "B", 12)
        pdf.multi_cell(_CARD_W - 50, 6, str(link["name"]), align="L")
        pdf.set_xy(x + 44, y + 22)
        pdf.set_font("DejaVu", "", 8)
        pdf.multi_cell(_CARD_W - 50, 4, i18n.t(lang, "join.code_label"), align="L")
        pdf.set_xy(x + 44, y + 27)
        pdf.set_font("DejaVu", "B", 14)
        pdf.cell(_CARD_W - 50, 8, str(link["code"]))
        pdf.set_xy(x + 2, y + 44)
        pdf.set_font("DejaVu", "", 8)
        # (the card's own code is above: no sample code beside it)
        pdf.multi_cell(_CARD_W - 8, 4, i18n.t(lang, "linksheet.how_to_join", url=join_url),
                       align="L")
    return bytes(pdf.output())
