"""Roster import: CSV, .xlsx or JSON bytes -> cleaned student entries. Pure, no I/O.

What a teacher uploads is untrusted: spreadsheets exported by school systems, typed by
hand, or crafted. The parser therefore

* decodes CSV as strict UTF-8 (BOM stripped), then UTF-16 when there is a UTF-16 BOM,
  then Windows-1258 (the legacy Vietnamese code page, which writes tone marks as
  combining characters), and nothing else;
* cleans every name: NFC (composed and decomposed Vietnamese become the same string),
  zero-width and bidi-control characters removed, whitespace collapsed;
* rejects per line, with a stable code, what no real name contains: spreadsheet formula
  prefixes (CSV injection), ``<``/``>``, control characters, no letter at all;
* raises ``RosterError`` when the file as a whole is unusable.

Rejection codes (per line): ``formula``, ``invalid_characters``, ``invalid_name``,
``too_long``, ``missing_name``, ``duplicate``, ``blank_line``, ``invalid_item``,
``unknown_field``, ``duplicate_field``, ``invalid_email``. File codes (``RosterError``):
``encoding``, ``format``, ``empty``, ``too_many_rows``, ``too_many_cells``, ``too_large`` (and, from
``roster_worker``, ``too_complex`` and ``busy``). Messages are English; the HTTP layer
turns them into statuses with :func:`http_status`.

Decisions:

* Blank lines (every cell empty) carry no student and are never stored. A run of blank
  lines between two rows is reported once, as ``blank_line`` on its first line (a row
  may have been deleted by mistake); blank lines before the first row and after the
  last are ignored (spreadsheets end in them), so a long run costs one report, not one
  per line. A row with cells but no name is reported (``missing_name``).
* ``line`` is the 1-based line of the file where the row starts (the header counts);
  for .xlsx it is the sheet's row number; for JSON it is the 1-based position of the
  item in the array.
* Duplicates: the same external id twice, or the same name (case-insensitive) with the
  same (or no) external id, are rejected, naming the first line. Two students with the
  same name and different ids are fine (common in Vietnamese classes).
* An optional school-account e-mail column (``email`` header, or ``email`` in JSON) says
  which Google Workspace / Microsoft 365 account a student signs in with, so that a
  platform reporting signed-in accounts (``Present.account``) can tell students from strangers.
  It is stored lower case, checked for shape only, and never put in a link or token. The
  same address on two lines is a ``duplicate``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, Final, Literal

MAX_NAME_CHARS: Final = 100
MAX_ID_CHARS: Final = 64
MAX_EMAIL_CHARS: Final = 254
_EMAIL: Final = re.compile(r"[a-z0-9._%+'-]+@[a-z0-9-]+(\.[a-z0-9-]+)+", re.ASCII)
# Beyond this many lines (blank ones included) after the allowed rows we stop reading.
_EXTRA_LINES: Final = 10_000
# A roster spreadsheet is a few hundred KiB uncompressed (2,000 rows of a few cells, the
# styles and theme of a school export); this bounds a zip bomb, checked on the sizes the
# zip declares before anything is unpacked.
MAX_XLSX_UNCOMPRESSED: Final = 16 * 1024 * 1024
# Cells in all worksheets (``<c`` elements), counted on the raw XML before openpyxl
# builds one object per cell: 2,000 students with 32 columns is 64,000.
MAX_XLSX_CELLS: Final = 200_000
# How a cell element opens, with or without a namespace prefix ("<c ", "<x:c "); "<col",
# "<cfRule" and the like are not cells. A ":c " in text counts too: over-counting fails
# closed, and bytes.count is fast where a regex over 16 MiB is not.
_CELL_TAGS: Final = (b"<c ", b"<c>", b"<c/>", b":c ", b":c>", b":c/>")
_MAX_XLSX_MEMBERS: Final = 1000
_MAX_XLSX_COLS: Final = 32

_ZIP_MAGIC: Final = b"PK\x03\x04"
_OLE_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .xls, or an encrypted .xlsx
_FORMULA_PREFIXES: Final = ("=", "+", "-", "@", "\t", "\r")
# Invisible characters that copy-paste brings along; removed, never kept in a name.
# Bidi controls (U+202A-202E, U+2066-2069, LRM/RLM/ALM) could make a name display as
# something else; zero-width characters could make two names look equal but differ.
_INVISIBLE: Final = frozenset(
    "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u00ad\u061c"
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_XLSX_TYPES: Final = frozenset(
    {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    }
)
_MACRO_TYPES: Final = frozenset(
    {
        "application/vnd.ms-excel.sheet.macroenabled.12",
        "application/vnd.ms-excel.template.macroenabled.12",
        "application/vnd.ms-excel.addin.macroenabled.12",
        "application/vnd.ms-excel.sheet.binary.macroenabled.12",
    }
)
_CSV_TYPES: Final = frozenset(
    {"text/csv", "text/plain", "application/csv", "text/tab-separated-values", "text/x-csv"}
)

# Header cells, compared after _header_key (no diacritics, casefolded, spaces collapsed).
_NAME_HEADERS: Final = frozenset(
    {
        "name", "full name", "fullname", "student name", "student", "student full name",
        "ho va ten", "ho ten", "hoten", "ho va ten hoc sinh", "ho ten hoc sinh",
        "ten hoc sinh", "hoc sinh", "ten", "ho va ten hs", "ho ten hs",
    }
)  # fmt: skip
_ID_HEADERS: Final = frozenset(
    {
        "external id", "externalid", "id", "student id", "studentid", "student code",
        "code", "ma hoc sinh", "ma hs", "mahs", "ma so hoc sinh", "ma so", "mshs", "ma",
        "ma dinh danh", "ma dinh danh hoc sinh", "ma hoc sinh/ma dinh danh",
    }
)  # fmt: skip
_EMAIL_HEADERS: Final = frozenset(
    {
        "email", "e mail", "school email", "school account", "student email",
        "google account", "microsoft account", "account email", "tai khoan",
        "tai khoan truong", "tai khoan hoc sinh", "email truong", "email hoc sinh",
        "dia chi email", "thu dien tu",
    }
)  # fmt: skip
_JSON_FIELDS: Final = frozenset({"name", "external_id", "email"})

Format = Literal["csv", "xlsx", "json"]


class RosterError(Exception):
    """The file as a whole cannot be used. ``code`` is stable, ``message`` English."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class RosterEntry:
    name: str
    external_id: str | None
    line: int
    email: str | None = None  # the student's school account, lower case


@dataclass(frozen=True, slots=True)
class Rejection:
    line: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class RosterParse:
    students: list[RosterEntry] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    format: Format = "csv"
    encoding: str | None = None  # CSV only: "utf-8", "utf-16" or "cp1258"


def csv_safe(value: str) -> str:
    """Escape a value for a CSV/spreadsheet export so it is never run as a formula
    (OWASP: prefix a single quote to values starting with = + - @ tab CR)."""
    if value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


# -- cleaning -------------------------------------------------------------------------


class _Bad(Exception):  # noqa: N818 - internal, turned into a Rejection
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _clean_text(raw: str, what: str, max_chars: int) -> str:
    """NFC, invisibles removed, whitespace collapsed; raises _Bad on what no real name
    or id contains. Returns "" for an empty cell."""
    text = "".join(ch for ch in raw if ch not in _INVISIBLE)
    text = unicodedata.normalize("NFC", text)
    if text.startswith(_FORMULA_PREFIXES):
        raise _Bad(
            "formula", f"{what} starts with {text[0]!r}, which spreadsheets run as a formula"
        )
    for ch in text:
        if ch in "\t\n\r":
            continue  # whitespace inside a quoted cell: collapsed below
        if ch in "<>":
            raise _Bad("invalid_characters", f"{what} contains '{ch}'")
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise _Bad(
                "invalid_characters", f"{what} contains the invisible character U+{ord(ch):04X}"
            )
    text = " ".join(text.split())
    if text.startswith(_FORMULA_PREFIXES):
        raise _Bad(
            "formula", f"{what} starts with {text[0]!r}, which spreadsheets run as a formula"
        )
    if len(text) > max_chars:
        raise _Bad("too_long", f"{what} is longer than {max_chars} characters")
    return text


def _clean_name(raw: str) -> str:
    name = _clean_text(raw, "name", MAX_NAME_CHARS)
    if name and not any(unicodedata.category(ch).startswith("L") for ch in name):
        raise _Bad("invalid_name", "name has no letters")
    return name


def _clean_id(raw: str | None) -> str | None:
    if raw is None:
        return None
    return _clean_text(raw, "external id", MAX_ID_CHARS) or None


def _clean_email(raw: str | None) -> str | None:
    if raw is None:
        return None
    text = _clean_text(raw, "e-mail", MAX_EMAIL_CHARS).lower()
    if text and not _EMAIL.fullmatch(text):
        raise _Bad("invalid_email", "the e-mail is not a school account address")
    return text or None


class _Collector:
    """Turns raw (line, name, id) rows into entries and rejections; counts rows."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.rows = 0
        self.students: list[RosterEntry] = []
        self.rejected: list[Rejection] = []
        self._by_id: dict[str, int] = {}
        self._by_name: dict[tuple[str, str | None], int] = {}
        self._by_email: dict[str, int] = {}

    def reject(self, line: int, code: str, message: str) -> None:
        self.rejected.append(Rejection(line, code, message))

    def reject_blank(self, first: int, last: int) -> None:
        """One report per run of blank lines between rows (a hint that a row may be
        missing); nothing is stored for them."""
        message = "blank line" if first == last else f"lines {first}-{last} are blank"
        self.reject(first, "blank_line", message)

    def count_row(self) -> None:
        self.rows += 1
        if self.rows > self.max_rows:
            raise RosterError("too_many_rows", f"the roster has more than {self.max_rows} students")

    def add(self, line: int, raw_name: str | None, raw_id: str | None,
            raw_email: str | None = None) -> None:
        """A non-blank row."""
        self.count_row()
        try:
            name = _clean_name(raw_name or "")
            external_id = _clean_id(raw_id)
            email = _clean_email(raw_email)
        except _Bad as bad:
            self.reject(line, bad.code, bad.message)
            return
        if not name:
            self.reject(line, "missing_name", "the row has no name")
            return
        if external_id is not None and external_id in self._by_id:
            first = self._by_id[external_id]
            self.reject(line, "duplicate", f"external id already used on line {first}")
            return
        name_key = (name.casefold(), external_id)
        if name_key in self._by_name:
            first = self._by_name[name_key]
            hint = "" if external_id else "; add an external id to tell them apart"
            self.reject(line, "duplicate", f"same student as line {first}{hint}")
            return
        if email is not None and email in self._by_email:
            first = self._by_email[email]
            self.reject(line, "duplicate", f"e-mail already used on line {first}")
            return
        if external_id is not None:
            self._by_id[external_id] = line
        if email is not None:
            self._by_email[email] = line
        self._by_name[name_key] = line
        self.students.append(RosterEntry(name, external_id, line, email))


# -- rows from tables (CSV, xlsx) -----------------------------------------------------


def _header_key(cell: str) -> str:
    text = unicodedata.normalize("NFKD", cell.replace("đ", "d").replace("Đ", "D"))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = re.sub(r"[_\-.:*]+", " ", text)
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class _Columns:
    name: int
    external_id: int | None
    email: int | None = None


def _header_columns(cells: Sequence[str | None]) -> _Columns | None:
    keys = [_header_key(c) if c else "" for c in cells]
    name_col = next((i for i, k in enumerate(keys) if k in _NAME_HEADERS), None)
    if name_col is None:
        return None
    id_col = next((i for i, k in enumerate(keys) if k in _ID_HEADERS and i != name_col), None)
    email_col = next((i for i, k in enumerate(keys) if k in _EMAIL_HEADERS), None)
    return _Columns(name_col, id_col, email_col)


def _collect_table(rows: Iterable[tuple[int, Sequence[str | None]]], max_rows: int) -> _Collector:
    out = _Collector(max_rows)
    columns: _Columns | None = None
    seen_first = False
    blank_run: list[int] = []  # blank lines since the last row with cells
    for line, cells in rows:
        if not any(c is not None and c.strip() for c in cells):
            if seen_first:
                blank_run.append(line)
            continue
        if blank_run:
            out.reject_blank(blank_run[0], blank_run[-1])
            blank_run = []
        if not seen_first:
            seen_first = True
            columns = _header_columns(cells)
            if columns is not None:
                continue
            columns = _Columns(0, 1)
        assert columns is not None

        def cell(i: int | None, row: Sequence[str | None] = cells) -> str | None:
            return row[i] if i is not None and i < len(row) else None

        out.add(line, cell(columns.name), cell(columns.external_id), cell(columns.email))
    return out


# -- CSV ------------------------------------------------------------------------------


def _decode(body: bytes) -> tuple[str, str]:
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    elif body.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return body.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise RosterError("encoding", "the file is not valid UTF-16") from exc
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return body.decode("cp1258"), "cp1258"
    except UnicodeDecodeError as exc:
        raise RosterError(
            "encoding", "the file is neither UTF-8 nor Windows-1258 text; save it as CSV UTF-8"
        ) from exc


_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0e-\x19\x1b-\x1f\x7f]")


def _looks_binary(text: str) -> bool:
    """Windows-1258 decodes almost any byte, so random bytes "decode". Text files have
    next to no C0 control characters; binary data has about one byte in eight."""
    if "\x00" in text:
        return True
    controls = len(_CONTROL.findall(text))
    return controls > 2 and controls * 100 > len(text)


def _delimiter(text: str) -> str:
    sample = [ln for ln in text.splitlines()[:50] if ln.strip()][:10]
    counts = {d: sum(ln.count(d) for ln in sample) for d in ("\t", ";", ",")}
    best = max(counts, key=lambda d: counts[d])  # ties: the first listed wins
    return best if counts[best] else ","


def _csv_rows(text: str, max_lines: int) -> Iterator[tuple[int, Sequence[str | None]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text), strict=False)
    previous_end = 0
    try:
        for row in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if start > max_lines:
                raise RosterError("too_many_rows", f"the file has more than {max_lines} lines")
            yield start, row
    except csv.Error as exc:
        raise RosterError("format", f"the CSV cannot be read near line {previous_end + 1}") from exc


def _parse_csv(body: bytes, max_rows: int) -> RosterParse:
    text, encoding = _decode(body)
    if _looks_binary(text):
        raise RosterError("format", "this is a binary file, not CSV text")
    # csv's default field size limit (128 KiB) turns a giant field into csv.Error, which
    # becomes a "format" error: no name or id is anywhere near that long.
    out = _collect_table(_csv_rows(text, max_rows + _EXTRA_LINES), max_rows)
    return _finish(out, "csv", encoding)


# -- xlsx -----------------------------------------------------------------------------


def http_status(code: str) -> int:
    """The HTTP status of a file-level ``RosterError`` code."""
    return {"too_many_rows": 413, "too_many_cells": 413, "too_large": 413,
            "too_complex": 422, "busy": 503}.get(code, 400)


def looks_like_xlsx(body: bytes) -> bool:
    return body.startswith(_ZIP_MAGIC)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def check_xlsx_declared_size(body: bytes) -> None:
    """Refuse a workbook whose zip declares too many parts or too many bytes unpacked.

    Reads only the zip's central directory (no decompression): cheap enough for the event
    loop, and it turns a zip bomb away before any worker unpacks a byte. The sizes are
    declared, not trusted: zipfile stops reading a member at its declared size and checks
    its CRC, so a lying member fails later instead of growing."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            infos = zf.infolist()
    except Exception as exc:  # noqa: BLE001 - any damage: a clean RosterError
        raise RosterError("format", "the .xlsx file is damaged") from exc
    if len(infos) > _MAX_XLSX_MEMBERS:
        raise RosterError("format", "the workbook has too many parts")
    total = sum(i.file_size for i in infos)
    if total > MAX_XLSX_UNCOMPRESSED:
        raise RosterError("too_large", f"the workbook unpacks to {_mib(total)}; a class list "
                          f"may unpack to at most {_mib(MAX_XLSX_UNCOMPRESSED)}")


def _check_xlsx_container(body: bytes) -> None:
    """Before openpyxl sees it: a real zip, no macros, no zip bomb, no DTD (entity
    expansion) in any XML part, not too many cells."""
    check_xlsx_declared_size(body)
    cells = 0
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            infos = zf.infolist()
            names = {i.filename.lower() for i in infos}
            if any(n.endswith("vbaproject.bin") for n in names):
                raise RosterError("format", "macro-enabled workbooks are not accepted")
            if "xl/workbook.xml" not in names:
                raise RosterError("format", "this zip file is not an .xlsx workbook")
            for info in infos:
                if not info.filename.lower().endswith((".xml", ".rels")):
                    continue
                # zipfile stops at the declared size and checks the CRC, so the sizes
                # summed above bound this read.
                data = zf.read(info)
                if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
                    raise RosterError("format", "the workbook contains a DTD")
                if info.filename.lower().startswith("xl/worksheets/"):
                    cells += sum(data.count(tag) for tag in _CELL_TAGS)
                    if cells > MAX_XLSX_CELLS:
                        raise RosterError("too_many_cells", f"the workbook has more than "
                                          f"{MAX_XLSX_CELLS} cells; a class list needs far "
                                          "fewer")
                if b"macroEnabled" in data and info.filename == "[Content_Types].xml":
                    raise RosterError("format", "macro-enabled workbooks are not accepted")
    except RosterError:
        raise
    except Exception as exc:  # noqa: BLE001
        # NOTE: a damaged zip raises from zipfile, zlib, bz2 or lzma with many types
        # (BadZipFile, zlib.error, LZMAError, EOFError, NotImplementedError...). The
        # caller must get a clean RosterError.
        raise RosterError("format", "the .xlsx file is damaged") from exc


def _xlsx_cell(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).upper()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # An id column typed as numbers arrives as 12345.0.
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def _parse_xlsx(body: bytes, max_rows: int) -> RosterParse:
    _check_xlsx_container(body)
    import openpyxl  # imported here: CSV-only deployments never load it
    from openpyxl import xml as openpyxl_xml

    # NOTE: the byte scan for a DTD above misses XML parts encoded as UTF-16; openpyxl
    # parsing through defusedxml is what refuses entity expansion there. Fail closed
    # when it is missing (it is a declared dependency, pyproject.toml).
    if not getattr(openpyxl_xml, "DEFUSEDXML", False):
        raise RosterError("format", ".xlsx import needs the defusedxml package; ask the "
                          "operator to install it")

    max_lines = max_rows + _EXTRA_LINES
    try:
        # NOTE: openpyxl warns about styles and extensions it does not understand;
        # harmless for reading values. catch_warnings is process-global: acceptable
        # for a parse that runs rarely and briefly.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wb = openpyxl.load_workbook(
                io.BytesIO(body), read_only=True, data_only=True, keep_links=False
            )
            try:
                if not wb.worksheets:
                    raise RosterError("empty", "the workbook has no sheet")
                ws = wb.worksheets[0]
                rows: list[tuple[int, Sequence[str | None]]] = []
                for line, values in enumerate(
                    ws.iter_rows(
                        min_row=1, max_row=max_lines + 1, max_col=_MAX_XLSX_COLS, values_only=True
                    ),
                    start=1,
                ):
                    cells = [_xlsx_cell(v) for v in values]
                    if line > max_lines:
                        if any(c and c.strip() for c in cells):
                            raise RosterError(
                                "too_many_rows", f"the sheet has more than {max_lines} rows"
                            )
                        break
                    rows.append((line, cells))
            finally:
                wb.close()
    except RosterError:
        raise
    except Exception as exc:  # noqa: BLE001
        # NOTE: openpyxl on a crafted file can raise nearly anything (KeyError,
        # TypeError, ValueError, zip and XML errors). The caller must get a clean
        # RosterError, never a 500.
        raise RosterError("format", "the .xlsx file cannot be read") from exc
    return _finish(_collect_table(rows, max_rows), "xlsx", None)


# -- JSON -----------------------------------------------------------------------------


class _Obj(dict[str, Any]):
    """A JSON object that remembers member names given more than once."""

    duplicates: tuple[str, ...] = ()


def _obj_hook(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    dups = []
    for k, v in pairs:
        if k in obj:
            dups.append(k)
        obj[k] = v
    if dups:
        obj.duplicates = tuple(dups)
    return obj


def _parse_json(body: bytes, max_rows: int) -> RosterParse:
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        doc = json.loads(body.decode("utf-8"), object_pairs_hook=_obj_hook)
    except UnicodeDecodeError as exc:
        raise RosterError("encoding", "JSON must be UTF-8") from exc
    except (ValueError, RecursionError) as exc:
        raise RosterError("format", "the JSON cannot be parsed") from exc
    if not isinstance(doc, list):
        raise RosterError("format", 'expected a JSON array of {"name", "external_id"} objects')
    out = _Collector(max_rows)
    for position, item in enumerate(doc, start=1):
        if not isinstance(item, dict):
            out.count_row()
            out.reject(position, "invalid_item", "each item must be an object")
            continue
        if not item:
            continue  # {} is the JSON form of a blank line
        if isinstance(item, _Obj) and item.duplicates:
            out.count_row()
            out.reject(position, "duplicate_field", f"field '{item.duplicates[0]}' is given twice")
            continue
        unknown = sorted(k for k in item if k not in _JSON_FIELDS)
        if unknown:
            out.count_row()
            shown = unknown[0][:40]
            out.reject(position, "unknown_field", f"unknown field '{shown}'")
            continue
        name, external_id = item.get("name"), item.get("external_id")
        email = item.get("email")
        if not isinstance(name, str) or (
            external_id is not None and not isinstance(external_id, str | int)
        ) or (email is not None and not isinstance(email, str)):
            out.count_row()
            out.reject(position, "invalid_item", "name must be a string, external_id a string")
            continue
        if isinstance(external_id, bool):
            out.count_row()
            out.reject(position, "invalid_item", "external_id must be a string")
            continue
        out.add(position, name, None if external_id is None else str(external_id), email)
    return _finish(out, "json", None)


# -- entry point ----------------------------------------------------------------------


def _finish(out: _Collector, fmt: Format, encoding: str | None) -> RosterParse:
    if out.rows == 0:
        raise RosterError("empty", "the file has no student rows")
    if not out.students:
        # Every row rejected: almost always the wrong file or column, not a roster.
        raise RosterError(
            "empty", "no usable student row; first problem: " + out.rejected[0].message
        )
    return RosterParse(list(out.students), list(out.rejected), fmt, encoding)


def _media_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _detect(body: bytes, content_type: str | None, filename: str | None) -> Format:
    media = _media_type(content_type)
    ext = ""
    if filename and "." in filename:
        ext = filename.rsplit(".", 1)[1].strip().lower()
    if media in _MACRO_TYPES or ext in ("xlsm", "xltm", "xlsb", "xlam"):
        raise RosterError("format", "macro-enabled workbooks are not accepted; save as .xlsx")
    if body.startswith(_OLE_MAGIC) or ext == "xls" or media == "application/vnd.ms-excel":
        raise RosterError(
            "format", "old .xls (or password-protected) workbooks are not accepted; save as .xlsx"
        )
    if body.startswith(_ZIP_MAGIC):
        return "xlsx"
    if media in _XLSX_TYPES or ext == "xlsx":
        raise RosterError("format", "the file is not an .xlsx workbook")
    if media == "application/json" or media.endswith("+json") or ext == "json":
        return "json"
    if media in _CSV_TYPES or ext in ("csv", "tsv", "txt"):
        return "csv"
    head = body[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith((b"[", b"{")):
        return "json"
    return "csv"


def parse_roster(
    body: bytes,
    *,
    content_type: str | None,
    filename: str | None,
    max_rows: int = 2000,
) -> RosterParse:
    """Parse an uploaded roster. Raises only ``RosterError`` (whole file unusable).

    The format comes from the content (a zip is .xlsx), then the declared media type,
    then the file name, then a sniff (``[`` starts JSON, anything else is CSV). Byte
    size limits are the HTTP layer's; this enforces ``max_rows`` students.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        raise RosterError("format", "the roster must be bytes")
    body = bytes(body)
    if not body.strip():
        raise RosterError("empty", "the file is empty")
    fmt = _detect(body, content_type, filename)
    if fmt == "xlsx":
        return _parse_xlsx(body, max_rows)
    if fmt == "json":
        return _parse_json(body, max_rows)
    return _parse_csv(body, max_rows)
