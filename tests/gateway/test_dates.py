"""Dates on pages: in the page's zone and day first in both languages, as the date
inputs (dd/mm/yyyy) and the control room's own clock show them."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.routes.pages import format_when


def test_english_pages_write_the_day_first() -> None:
    ts = datetime(2026, 12, 5, 1, 30, tzinfo=UTC).timestamp()  # 08:30 in Hanoi
    assert format_when(ts, "en", "Asia/Ho_Chi_Minh", "short") == "05/12/2026, 08:30"
    assert format_when(ts, "vi", "Asia/Ho_Chi_Minh", "short") == "08:30 5/12/26"
    assert format_when(ts * 1000, "en", "UTC", "medium") == "5 Dec 2026, 01:30:00"
