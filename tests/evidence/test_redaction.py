"""Students who are not involved appear nowhere in the bundle: not in any file, not in a
file name, not in the PDF's text. Only hashes of their records lie inside the proofs."""

from __future__ import annotations

import io
import subprocess
import unicodedata
import zipfile
import zlib
from pathlib import Path

from tests.conftest import require_program

from .conftest import Exported
from .scenario import IP_BINH, IP_CUONG, ROSTER


def _needles(exported: Exported) -> list[str]:
    others = exported.facts["links"][1:]
    out = [IP_BINH, IP_CUONG]
    for link in others:
        out += [link["student_id"], link["name"], link["code"], link["url"].rsplit("/", 1)[-1]]
    for row in ROSTER[1:]:
        out.append(row["external_id"])
        # the names also without diacritics and in parts, as a PDF may break them up
        plain = unicodedata.normalize("NFD", row["name"])
        out.append("".join(c for c in plain if unicodedata.category(c) != "Mn"))
        out.append(row["name"].split()[-1] + " ")  # given name
    return [n for n in out if n]


def _pdf_streams(pdf: bytes) -> list[bytes]:
    out = []
    pos = 0
    while (start := pdf.find(b"stream\n", pos)) != -1:
        end = pdf.find(b"endstream", start)
        raw = pdf[start + 7 : end]
        try:
            out.append(zlib.decompress(raw))
        except zlib.error:
            out.append(raw)
        pos = end
    return out


def test_no_trace_of_students_not_involved(exported: Exported, tmp_path: Path) -> None:
    pdftotext = require_program("pdftotext")
    with zipfile.ZipFile(io.BytesIO(exported.bundle)) as zf:
        names = zf.namelist()
        files = {n: zf.read(n) for n in names}
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(files["report.pdf"])
    pdf_text = subprocess.run([pdftotext, "-enc", "UTF-8", str(pdf), "-"], check=True,
                              capture_output=True).stdout.decode()
    haystacks: dict[str, str] = {
        "zip file names": "\n".join(names),
        "pdf text": pdf_text,
        "raw zip": exported.bundle.decode("latin-1"),
    }
    for name, data in files.items():
        haystacks[name] = data.decode("utf-8", "replace")
    for n, stream in enumerate(_pdf_streams(files["report.pdf"])):
        haystacks[f"pdf stream {n}"] = stream.decode("latin-1")
    # the involved student and the intruder are there (the search itself works)
    involved = exported.facts["links"][0]
    assert involved["name"] in pdf_text and involved["name"] in haystacks["report.html"]
    assert "203.0.113.66" in pdf_text
    for needle in _needles(exported):
        for where, text in haystacks.items():
            assert needle not in text, f"{needle!r} found in {where}"
            nfd = unicodedata.normalize("NFD", needle)
            assert nfd == needle or nfd not in text, f"{needle!r} (NFD) found in {where}"


def test_withheld_records_are_counted(exported: Exported) -> None:
    with zipfile.ZipFile(io.BytesIO(exported.bundle)) as zf:
        html = zf.read("report.html").decode()
    # admit_all and Bình's device reset name students who are not involved
    assert "bản ghi khác trong khoảng thời gian này" in html
