"""One roster upload must not freeze the gateway: hostile workbooks are refused quickly
with a precise 413, and every other request is answered meanwhile (the parse runs in a
child process, never on the event loop)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from .kit import Deployment, scene

pytestmark = pytest.mark.slow

ROSTERS = Path(__file__).parent / "fixtures" / "rosters"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
#: What "answered promptly" means on a loaded 2-core machine; the old parse stalled
#: every request for 2-7 s.
PROBE_MAX_S = 1.0


@pytest.mark.parametrize(("fixture", "code", "max_s"), [
    # 140 KB -> 47 MiB: refused on the zip's declared sizes, before any unpacking
    ("xlsx_cell_bomb.xlsx", "roster_too_large", 2.0),
    # under the size limit: a child process counts the cells (its start-up costs about a
    # second of CPU, several seconds of wall clock on a loaded machine), well within the
    # child's 20 s timeout
    ("xlsx_dense_sheet.xlsx", "roster_too_many_cells", 15.0),
])
async def test_hostile_roster_does_not_stall_other_requests(
        deployment: Deployment, fixture: str, code: str, max_s: float) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        body = (ROSTERS / fixture).read_bytes()
        probe = s.device()
        await probe.get("/healthz")  # connection warm
        lags: list[float] = []
        done = asyncio.Event()

        async def probing() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                r = await probe.get("/healthz")
                lags.append(time.perf_counter() - t0)
                assert r.status == 200, r
                await asyncio.sleep(0.02)

        prober = asyncio.create_task(probing())
        t0 = time.perf_counter()
        try:
            r = await s.teacher.call("PUT", f"/api/v1/classes/{k.id}/roster", data=body,
                                     headers={"Content-Type": XLSX, "X-Filename": fixture})
            took = time.perf_counter() - t0
            await asyncio.sleep(0.1)  # a probe or two after the answer
        finally:
            done.set()
            await prober
        print(f"{fixture}: refused in {took:.3f} s; {len(lags)} probes meanwhile, slowest "
              f"{max(lags or [0]):.3f} s")
        assert r.status == 413 and r.body["error"]["code"] == code, r
        assert took < max_s, f"the hostile upload took {took:.1f} s to refuse"
        assert lags and max(lags) < PROBE_MAX_S, \
            f"other requests stalled up to {max(lags):.2f} s ({len(lags)} probes)"
        roster = await s.teacher.call("GET", f"/api/v1/classes/{k.id}/roster")
        assert len(roster.body["students"]) == 4  # the previous roster stands


async def test_a_real_workbook_still_imports(deployment: Deployment) -> None:
    """The child process returns what the in-process parser would."""
    import io

    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["Họ và tên", "Mã học sinh"])
    for i in range(40):
        ws.append([f"Nguyễn Văn {chr(65 + i % 26)}{i}", f"HS{i:03d}"])
    ws.append(["@SUM(1+1)*cmd", "HS999"])
    buf = io.BytesIO()
    wb.save(buf)
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        r = await s.teacher.call("PUT", f"/api/v1/classes/{k.id}/roster", data=buf.getvalue(),
                                 headers={"Content-Type": XLSX, "X-Filename": "lop.xlsx"})
        assert r.status == 200, r
        assert len(r.body["students"]) == 40
        assert [x["error"] for x in r.body["rejected"]] == ["formula"]
