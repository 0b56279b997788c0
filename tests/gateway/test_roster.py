"""Roster import: encodings, delimiters, headers, xlsx, JSON, cleaning, hostile files."""

from __future__ import annotations

import io
import json
import random
import unicodedata
import zipfile
from pathlib import Path

import openpyxl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.roster import (
    Rejection,
    RosterEntry,
    RosterError,
    RosterParse,
    csv_safe,
    parse_roster,
)

AN = "Nguyễn Văn An"
BINH = "Trần Thị Bình"
CUONG = "Lê Đức Cường"
DUNG = "Phạm Thuỳ Dung"
HIEU = "Hoàng Minh Hiếu"


def csv(
    body: str | bytes, *, content_type: str | None = "text/csv", filename: str | None = None
) -> RosterParse:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return parse_roster(data, content_type=content_type, filename=filename)


def names(parsed: RosterParse) -> list[str]:
    return [s.name for s in parsed.students]


def codes(parsed: RosterParse) -> list[tuple[int, str]]:
    return [(r.line, r.code) for r in parsed.rejected]


def cp1258_form(text: str) -> str:
    """How Windows-1258 writes Vietnamese: base letters with circumflex/breve/horn are
    precomposed (â ê ô ă ơ ư), tone marks are separate combining characters."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", text):
        if ch in "\u0302\u0306\u031b":
            base = max(i for i, c in enumerate(out) if not unicodedata.combining(c))
            out[base] = unicodedata.normalize("NFC", out[base] + ch)
        else:
            out.append(ch)
    return "".join(out)


def xlsx_bytes(rows: list[list[object]]) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


# -- encodings ----------------------------------------------------------------------------


def test_windows_1258_with_decomposed_tones() -> None:
    text = f"Họ và tên;Mã HS\r\n{AN};HS001\r\n{CUONG};HS002\r\n{DUNG};HS003\r\n"
    body = cp1258_form(text).encode("cp1258")
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    parsed = csv(body, content_type="text/csv; charset=windows-1258")
    assert parsed.encoding == "cp1258"
    assert names(parsed) == [AN, CUONG, DUNG]
    assert [s.external_id for s in parsed.students] == ["HS001", "HS002", "HS003"]
    assert all(unicodedata.is_normalized("NFC", n) for n in names(parsed))


def test_composed_and_decomposed_utf8_are_the_same_name() -> None:
    decomposed = unicodedata.normalize("NFD", AN)
    assert decomposed != AN
    parsed = csv(f"{AN},1\n{decomposed},1\n")
    assert names(parsed) == [AN]
    assert codes(parsed) == [(2, "duplicate")]


def test_utf8_with_bom() -> None:
    parsed = csv(b"\xef\xbb\xbf" + f"name,external_id\n{AN},A1\n".encode())
    assert parsed.encoding == "utf-8"
    assert parsed.students == [RosterEntry(AN, "A1", 2)]


def test_utf16_excel_unicode_text() -> None:
    body = f"Họ và tên\tMã HS\r\n{BINH}\tB2\r\n".encode("utf-16")
    parsed = csv(body, content_type="text/plain")
    assert parsed.encoding == "utf-16"
    assert parsed.students == [RosterEntry(BINH, "B2", 2)]


def test_undecodable_bytes_are_an_encoding_error() -> None:
    # 0x81 is undefined in Windows-1258 and invalid as UTF-8.
    with pytest.raises(RosterError) as err:
        csv(b"Nguyen \x81 An\n")
    assert err.value.code == "encoding"


# -- delimiters and headers ---------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_delimiters(delimiter: str) -> None:
    parsed = csv(f"{AN}{delimiter}HS1\n{BINH}{delimiter}HS2\n")
    assert [(s.name, s.external_id) for s in parsed.students] == [(AN, "HS1"), (BINH, "HS2")]


def test_semicolon_with_commas_in_names() -> None:
    parsed = csv('Họ tên;Mã HS\n"Nguyễn, Văn An";1\nBình;2\n')
    assert names(parsed) == ["Nguyễn, Văn An", "Bình"]


@pytest.mark.parametrize(
    ("header", "name_col"),
    [
        ("STT,Họ và tên,Mã học sinh", 1),
        ("stt;HO VA TEN;MA HS", 1),
        ("Mã HS,Họ tên", 1),
        ("id,name", 1),
        ("external_id,name", 1),
        ("Tên,Mã định danh", 0),
        ("Full name,Student ID", 0),
    ],
)
def test_headers_in_vietnamese_and_english(header: str, name_col: int) -> None:
    delim = ";" if ";" in header else ","
    cols = 3 if header.count(delim) == 2 else 2
    row = ["x"] * cols
    row[name_col] = AN
    id_col = next(i for i in range(cols) if i != name_col and (cols == 2 or i != 0))
    row[id_col] = "HS9"
    parsed = csv(f"{header}\n{delim.join(row)}\n")
    assert parsed.students == [RosterEntry(AN, "HS9", 2)]


def test_without_header_first_column_is_name_second_is_id() -> None:
    parsed = csv(f"{AN},HS1,ignored\n{BINH}\n")
    assert parsed.students == [RosterEntry(AN, "HS1", 1), RosterEntry(BINH, None, 2)]


def test_line_numbers_count_header_blank_lines_and_multiline_cells() -> None:
    body = f'name,id\n\n{AN},1\n"{BINH}\nsecond line",2\n\n{CUONG},3\n'
    parsed = csv(body)
    assert [(s.name, s.line) for s in parsed.students] == [
        (AN, 3),
        (f"{BINH} second line", 4),
        (CUONG, 7),
    ]
    # blank lines between rows are reported (nothing stored), one report per run
    assert [(r.line, r.code) for r in parsed.rejected] == [(2, "blank_line"), (6, "blank_line")]


def test_a_run_of_blank_lines_is_one_report_and_trailing_ones_none() -> None:
    parsed = csv(f"\n\n{AN},1\n\n\n\n{BINH},2\n\n\n")
    assert [s.name for s in parsed.students] == [AN, BINH]
    assert [(r.line, r.code, r.message) for r in parsed.rejected] == [
        (4, "blank_line", "lines 4-6 are blank")]


# -- cleaning -----------------------------------------------------------------------------


def test_whitespace_invisibles_and_bidi_controls_are_removed() -> None:
    dirty = "  Nguyễn\u200b  Văn\u00a0\u202eAn\u202c\ufeff  "
    parsed = csv(f"{dirty},HS1\n")
    assert names(parsed) == [AN]


def test_formula_injection_is_rejected() -> None:
    body = (
        f"{AN},1\n"
        '"=HYPERLINK(""https://evil.example"",""click"")",2\n'
        "+cmd|' /C calc'!A0,3\n"
        "-2+3,4\n"
        "@SUM(A1:A2),5\n"
        '"\tTab Start",6\n'
        f"{BINH},=1+1\n"
        f'"  =cmd",7\n'
    )
    parsed = csv(body)
    assert names(parsed) == [AN]
    assert codes(parsed) == [(n, "formula") for n in range(2, 9)]


def test_html_and_control_characters_are_rejected() -> None:
    body = f"{AN},1\n<script>alert(1)</script>,2\nAn > Bình,3\nAn\x07,4\nX\u2061Y,5\n"
    parsed = csv(body)
    assert names(parsed) == [AN]
    assert codes(parsed) == [
        (2, "invalid_characters"),
        (3, "invalid_characters"),
        (4, "invalid_characters"),
        (5, "invalid_characters"),
    ]


def test_ordinary_punctuation_is_kept() -> None:
    parsed = csv("O'Brien & Sons,1\nJean-Luc Picard,2\nNguyễn Văn An (lớp trưởng),3\n")
    assert names(parsed) == ["O'Brien & Sons", "Jean-Luc Picard", "Nguyễn Văn An (lớp trưởng)"]


def test_length_and_letters() -> None:
    body = f"{AN},1\n{'A' * 100},2\n{'A' * 101},3\n12345,4\n,5\n"
    parsed = csv(body)
    assert names(parsed) == [AN, "A" * 100]
    assert codes(parsed) == [(3, "too_long"), (4, "invalid_name"), (5, "missing_name")]


def test_duplicates_name_the_first_line() -> None:
    body = (
        "name,id\n"
        f"{AN},A1\n"
        f"{AN},A2\n"  # same name, different id: two students
        f"{AN.upper()},A1\n"  # same name (case-insensitive) and id
        f"{BINH},A1\n"  # id already used
        f"{CUONG}\n"
        f"{CUONG}\n"  # same name, no id
    )
    parsed = csv(body)
    assert [(s.name, s.external_id) for s in parsed.students] == [
        (AN, "A1"),
        (AN, "A2"),
        (CUONG, None),
    ]
    assert parsed.rejected == [
        Rejection(4, "duplicate", "external id already used on line 2"),
        Rejection(5, "duplicate", "external id already used on line 2"),
        Rejection(7, "duplicate", "same student as line 6; add an external id to tell them apart"),
    ]


def test_csv_safe() -> None:
    for value in ("=1+1", "+1", "-1", "@x", "\tx", "\rx"):
        assert csv_safe(value) == "'" + value
    for value in (AN, "", "1", "a=b", " =x"):
        assert csv_safe(value) == value


# -- xlsx ---------------------------------------------------------------------------------


def test_xlsx_with_header_and_numeric_ids() -> None:
    body = xlsx_bytes(
        [
            ["STT", "Họ và tên", "Mã HS"],
            [1, AN, 1001],
            [2, unicodedata.normalize("NFD", BINH), "HS2"],
            [None, None, None],
            [3, '=HYPERLINK("http://x")', "HS3"],
            [4, CUONG, 1004.0],
        ]
    )
    parsed = parse_roster(body, content_type=XLSX, filename="lop10a1.xlsx")
    assert parsed.format == "xlsx"
    assert parsed.students == [
        RosterEntry(AN, "1001", 2),
        RosterEntry(BINH, "HS2", 3),
        RosterEntry(CUONG, "1004", 6),
    ]
    # openpyxl stores a string starting with "=" as a formula: data_only reads no value,
    # so the row has an id but no name. The empty row between two rows is reported too.
    assert codes(parsed) == [(4, "blank_line"), (5, "missing_name")]


def test_xlsx_without_header_and_detected_by_content() -> None:
    body = xlsx_bytes([[AN, "A"], [BINH, "B"]])
    parsed = parse_roster(body, content_type="application/octet-stream", filename=None)
    assert names(parsed) == [AN, BINH]


def test_xlsx_string_formula_text_is_rejected() -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append([AN])
    ws.cell(row=2, column=1).value = "@SUM(1)"
    ws.cell(row=2, column=1).data_type = "s"
    buf = io.BytesIO()
    wb.save(buf)
    parsed = parse_roster(buf.getvalue(), content_type=XLSX, filename=None)
    assert names(parsed) == [AN]
    assert codes(parsed) == [(2, "formula")]


def _rezip(body: bytes, extra: dict[str, bytes]) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(body))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = extra.pop(info.filename, None)
            dst.writestr(info.filename, data if data is not None else src.read(info))
        for name, data in extra.items():
            dst.writestr(name, data)
    return out.getvalue()


def test_macro_enabled_workbook_is_refused() -> None:
    body = _rezip(xlsx_bytes([[AN]]), {"xl/vbaProject.bin": b"\x00" * 64})
    with pytest.raises(RosterError) as err:
        parse_roster(body, content_type=XLSX, filename="x.xlsx")
    assert err.value.code == "format"
    with pytest.raises(RosterError) as err:
        parse_roster(xlsx_bytes([[AN]]), content_type=None, filename="lop.xlsm")
    assert err.value.code == "format"


def test_xml_entity_expansion_is_refused() -> None:
    body = xlsx_bytes([[AN]])
    src = zipfile.ZipFile(io.BytesIO(body))
    sheet = src.read("xl/worksheets/sheet1.xml")
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>' + sheet.split(b"?>")[-1]
    with pytest.raises(RosterError) as err:
        parse_roster(
            _rezip(body, {"xl/worksheets/sheet1.xml": bomb}), content_type=XLSX, filename=None
        )
    assert err.value.code == "format"


def test_zip_bomb_is_refused() -> None:
    body = _rezip(xlsx_bytes([[AN]]), {"xl/media/huge.xml": b"\x00" * (60 * 1024 * 1024)})
    assert len(body) < 1024 * 1024
    with pytest.raises(RosterError) as err:
        parse_roster(body, content_type=XLSX, filename=None)
    assert err.value.code == "too_large"


@pytest.mark.parametrize(
    "body",
    [
        b"this is not a zip",
        b"PK\x03\x04 truncated zip",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100,  # .xls / encrypted
    ],
)
def test_non_xlsx_input_is_refused_cleanly(body: bytes) -> None:
    with pytest.raises(RosterError) as err:
        parse_roster(body, content_type=XLSX, filename="x.xlsx")
    assert err.value.code == "format"


def test_zip_that_is_not_a_workbook() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(RosterError) as err:
        parse_roster(buf.getvalue(), content_type=None, filename=None)
    assert err.value.code == "format"


# -- JSON ---------------------------------------------------------------------------------


def test_json_roster() -> None:
    doc = [
        {"name": AN, "external_id": "A1"},
        {"name": BINH},
        {"name": CUONG, "external_id": None},
        {"name": DUNG, "external_id": 42},
        {"name": HIEU, "phone": "0901234567"},
        "just a string",
        {},
        {"name": 5},
    ]
    parsed = parse_roster(json.dumps(doc).encode(), content_type="application/json", filename=None)
    assert parsed.format == "json"
    assert [(s.name, s.external_id, s.line) for s in parsed.students] == [
        (AN, "A1", 1),
        (BINH, None, 2),
        (CUONG, None, 3),
        (DUNG, "42", 4),
    ]
    assert parsed.rejected == [
        Rejection(5, "unknown_field", "unknown field 'phone'"),
        Rejection(6, "invalid_item", "each item must be an object"),
        Rejection(8, "invalid_item", "name must be a string, external_id a string"),
    ]


def test_school_account_email_column() -> None:
    csv_body = ("Họ và tên,Mã HS,Email\n"
                f"{AN},A1,An.Nguyen@School.edu.vn\n"
                f"{BINH},A2,\n"
                f"{CUONG},A3,not-an-address\n"
                f"{DUNG},A4,an.nguyen@school.edu.vn\n").encode()
    parsed = parse_roster(csv_body, content_type="text/csv", filename=None)
    assert [(s.name, s.email) for s in parsed.students] == [
        (AN, "an.nguyen@school.edu.vn"), (BINH, None)]
    assert [(r.line, r.code) for r in parsed.rejected] == [(4, "invalid_email"),
                                                            (5, "duplicate")]
    doc = [{"name": AN, "email": "an@school.edu.vn"}, {"name": BINH, "email": 7}]
    parsed = parse_roster(json.dumps(doc).encode(), content_type="application/json",
                          filename=None)
    assert [(s.name, s.email) for s in parsed.students] == [(AN, "an@school.edu.vn")]
    assert [r.code for r in parsed.rejected] == ["invalid_item"]


def test_json_duplicate_member_is_rejected() -> None:
    body = f'[{{"name": "{AN}"}}, {{"name": "A", "name": "{BINH}"}}]'.encode()
    parsed = parse_roster(body, content_type=None, filename="roster.json")
    assert names(parsed) == [AN]
    assert codes(parsed) == [(2, "duplicate_field")]


@pytest.mark.parametrize(
    "body", [b'{"name": "x"}', b'"x"', b"[", b"[" * 100_000, b"\xff[]", b"[1e999999]x"]
)
def test_json_whole_file_errors(body: bytes) -> None:
    with pytest.raises(RosterError) as err:
        parse_roster(body, content_type="application/json", filename=None)
    assert err.value.code in {"format", "encoding"}


def test_json_is_sniffed_without_a_type() -> None:
    parsed = parse_roster(b' [{"name": "An"}]', content_type=None, filename=None)
    assert parsed.format == "json" and names(parsed) == ["An"]


# -- whole-file limits and garbage ----------------------------------------------------------


def test_ten_megabytes_of_rows_is_too_many() -> None:
    line = f"{AN} {{}},HS{{}}\n"
    body = "".join(line.format(i, i) for i in range(300_000)).encode()
    assert len(body) > 10 * 1024 * 1024 * 0.9
    with pytest.raises(RosterError) as err:
        csv(body)
    assert err.value.code == "too_many_rows"


def test_max_rows_is_exact() -> None:
    rows = "".join(f"Học sinh {i},{i}\n" for i in range(10))
    assert (
        len(parse_roster(rows.encode(), content_type=None, filename=None, max_rows=10).students)
        == 10
    )
    with pytest.raises(RosterError) as err:
        parse_roster(rows.encode(), content_type=None, filename=None, max_rows=9)
    assert err.value.code == "too_many_rows"


def test_json_too_many_items() -> None:
    body = json.dumps([{"name": f"Học sinh {i}"} for i in range(11)]).encode()
    with pytest.raises(RosterError) as err:
        parse_roster(body, content_type="application/json", filename=None, max_rows=10)
    assert err.value.code == "too_many_rows"


def test_endless_blank_lines_are_bounded() -> None:
    body = (f"{AN}\n" + "\n" * 50_000 + f"{BINH}\n").encode()
    with pytest.raises(RosterError) as err:
        parse_roster(body, content_type="text/csv", filename=None, max_rows=10)
    assert err.value.code == "too_many_rows"


@pytest.mark.parametrize("body", [b"", b"   \n\n", b"name,id\n", b",,,\n;;;\n"])
def test_empty_files(body: bytes) -> None:
    with pytest.raises(RosterError) as err:
        csv(body)
    assert err.value.code == "empty"


def test_all_rows_rejected_is_an_error() -> None:
    with pytest.raises(RosterError) as err:
        csv("=1+1\n=2+2\n")
    assert err.value.code == "empty"


@pytest.mark.parametrize("seed", range(5))
def test_garbage_binary(seed: int) -> None:
    body = random.Random(seed).randbytes(4096)
    with pytest.raises(RosterError):
        parse_roster(body, content_type=None, filename=None)


def test_png_is_not_a_roster() -> None:
    body = b"\x89PNG\r\n\x1a\n" + bytes(200)
    with pytest.raises(RosterError) as err:
        parse_roster(body, content_type="image/png", filename="x.png")
    assert err.value.code == "format"


def test_giant_field_is_a_format_error() -> None:
    with pytest.raises(RosterError) as err:
        csv('"' + "A" * 200_000 + '"\n')
    assert err.value.code == "format"


# -- fuzzing ------------------------------------------------------------------------------


def _parse_or_roster_error(body: bytes, ctype: str | None, fname: str | None) -> None:
    try:
        parsed = parse_roster(body, content_type=ctype, filename=fname, max_rows=50)
    except RosterError as exc:
        assert exc.code in {"encoding", "format", "empty", "too_many_rows", "too_large"}
        return
    for s in parsed.students:
        assert 1 <= len(s.name) <= 100
        assert unicodedata.is_normalized("NFC", s.name)
        assert not s.name.startswith(("=", "+", "-", "@"))
        assert "<" not in s.name and ">" not in s.name
        assert s.name == " ".join(s.name.split())
        assert s.line >= 1


_ctypes = st.sampled_from([None, "text/csv", "application/json", XLSX, "text/plain", "x/y"])
_fnames = st.sampled_from([None, "a.csv", "a.json", "a.xlsx", "a.xlsm", "a"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), _ctypes, _fnames)
@example(b"PK\x03\x04", None, None)
@example(b'[{"name": "\\ud800"}]', "application/json", None)
@example(b'"a\r\x00b"', "text/csv", None)
def test_fuzz_bytes_raise_only_roster_error(
    body: bytes, ctype: str | None, fname: str | None
) -> None:
    _parse_or_roster_error(body, ctype, fname)


_cell = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30) | st.sampled_from(
    ["=1", "<b>", AN, "", " ", '"', "\r\n", "\u202e", "HS1"]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_cell, max_size=4), max_size=20), st.sampled_from([",", ";", "\t"]))
def test_fuzz_tables_raise_only_roster_error(rows: list[list[str]], delim: str) -> None:
    body = "\n".join(delim.join(r) for r in rows).encode("utf-8")
    _parse_or_roster_error(body, "text/csv", None)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["name", "external_id", "other"]),
            st.none() | st.integers() | st.text(max_size=20) | st.booleans(),
            max_size=3,
        ),
        max_size=20,
    )
)
def test_fuzz_json_raise_only_roster_error(items: list[dict[str, object]]) -> None:
    _parse_or_roster_error(json.dumps(items).encode(), "application/json", None)


ROSTER_FIXTURES = Path(__file__).parent / "fixtures" / "roster"


@pytest.mark.parametrize(
    "name", ["lop10a1_windows1258.csv", "lop10a1_utf8_bom.csv", "lop10a1.json"]
)
def test_fixture_files_give_the_same_roster(name: str) -> None:
    """Three exports of the same class (Windows-1258 with separate tone marks, UTF-8 with
    BOM, JSON) must yield identical, NFC-composed entries."""
    body = (ROSTER_FIXTURES / name).read_bytes()
    parsed = parse_roster(body, content_type=None, filename=name)
    reference = json.loads((ROSTER_FIXTURES / "lop10a1.json").read_text("utf-8"))
    assert [(s.name, s.external_id) for s in parsed.students] == [
        (r["name"], r["external_id"]) for r in reference
    ]
    assert parsed.rejected == []


def test_damaged_xlsx_raises_only_roster_error() -> None:
    """Random byte flips in a real workbook hit zipfile, zlib and openpyxl error paths
    (zlib.error, KeyError, XML errors...): every one must surface as RosterError."""
    base = xlsx_bytes([[f"Học sinh {i}", f"HS{i}"] for i in range(30)])
    rng = random.Random(1234)
    for _ in range(300):
        body = bytearray(base)
        for _ in range(rng.randint(1, 5)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        try:
            parse_roster(bytes(body), content_type=XLSX, filename="x.xlsx")
        except RosterError:
            pass
