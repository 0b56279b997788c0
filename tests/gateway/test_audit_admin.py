"""The audit CSV export's rows (pure): every cell escaped against formula injection."""

from __future__ import annotations

import csv
import io

import pytest

from audit import AuditEvent
from gateway.routes.audit_admin import CSV_COLUMNS, csv_rows


@pytest.mark.parametrize("hostile", [
    "=HYPERLINK(\"http://evil.example\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)",
    "\t=1", "\r=1",
])
def test_every_cell_is_escaped(hostile: str) -> None:
    ev = AuditEvent(7, {"type": "join", "ts": 1_700_000_000_000, "actor": hostile,
                        "reason": hostile, "class": "c1", "facts": {"x": hostile}},
                    {"ip": "203.0.113.9", "ua": hostile, "name": hostile})
    rows = list(csv.reader(io.StringIO(csv_rows([ev]))))
    assert rows[0] == list(CSV_COLUMNS)
    row = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    for col in ("actor", "reason", "user_agent", "name"):
        assert row[col] == "'" + hostile, col
    assert row["index"] == "7" and row["time_utc"].startswith("2023-11-14T22:13:20")
    assert all(not c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in rows[1])


def test_plain_values_are_kept() -> None:
    ev = AuditEvent(1, {"type": "host.admit", "actor": "staff:co.lan"}, None)
    row = list(csv.reader(io.StringIO(csv_rows([ev]))))[1]
    assert row[2:5] == ["host.admit", "", "staff:co.lan"] and row[-1] == ""
