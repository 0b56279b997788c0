"""The printed link cards: each card shows its own code and how to use it, and no
sample code a student could mistake for theirs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.i18n import t
from gateway.linksheet import render_link_sheet
from tests.conftest import require_program

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
