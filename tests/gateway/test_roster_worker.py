"""Roster parsing off the event loop: the child process returns what the parser would,
and hostile or slow files end in a precise ``RosterError``."""

from __future__ import annotations

import io
from pathlib import Path

import openpyxl
import pytest

from gateway.roster import RosterError, http_status, parse_roster
from gateway.roster_worker import RosterParser

BOMBS = Path(__file__).parents[1] / "attacks" / "fixtures" / "rosters"


def _workbook(rows: int) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["Họ và tên", "Mã học sinh"])
    for i in range(rows):
        ws.append([f"Trần Thị Bình {i}", f"HS{i:04d}"])
    ws.append(["", "HS9999"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


async def test_child_returns_what_the_parser_returns() -> None:
    body = _workbook(30)
    got = await RosterParser().parse(body, content_type=None, filename="lop.xlsx")
    want = parse_roster(body, content_type=None, filename="lop.xlsx")
    assert got == want and len(got.students) == 30 and got.format == "xlsx"


async def test_large_csv_goes_to_the_child_too() -> None:
    long_name = "Nguyễn Thị Học Sinh Có Tên Rất Dài Để Tệp Vượt Ngưỡng Hai Trăm Năm Mươi Sáu Ki"
    body = ("Họ và tên,Mã học sinh\n" + "".join(
        f"{long_name} {i},{'M' * 60}{i:04d}\n" for i in range(1900))).encode()
    assert len(body) > 256 * 1024
    got = await RosterParser().parse(body, content_type="text/csv", filename="lop.csv")
    assert got == parse_roster(body, content_type="text/csv", filename="lop.csv")


@pytest.mark.parametrize(("fixture", "code"), [("xlsx_cell_bomb.xlsx", "too_large"),
                                               ("xlsx_dense_sheet.xlsx", "too_many_cells")])
async def test_hostile_workbooks(fixture: str, code: str) -> None:
    with pytest.raises(RosterError) as exc:
        await RosterParser().parse((BOMBS / fixture).read_bytes(), content_type=None,
                                   filename=fixture)
    assert exc.value.code == code and http_status(code) == 413


async def test_a_parse_past_its_time_is_killed() -> None:
    with pytest.raises(RosterError) as exc:
        await RosterParser(timeout_s=0.01).parse(_workbook(5), content_type=None,
                                                 filename="lop.xlsx")
    assert exc.value.code == "too_complex" and http_status("too_complex") == 422
