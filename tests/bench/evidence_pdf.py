"""Evidence report PDF benchmark (a script, not collected by pytest).

    python tests/bench/evidence_pdf.py [--rows 1000] [--repeat 3] [--out report.pdf]

Builds a report model with ``--rows`` timeline rows (Vietnamese text, a third of the rows
a stranger's, every detail cell long enough to wrap) and times ``render_pdf`` alone: wall
time and the process's CPU time (the CPU time is the fairer figure on a busy machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.evidence_render import render_pdf  # noqa: E402
from gateway.evidence_report import (  # noqa: E402
    AttachmentRow,
    CustodyRow,
    IncidentFacts,
    ReportModel,
    Stamp,
    StrangerRow,
    StudentRow,
    TimelineRow,
    Window,
)

NOTE = "chia sẻ đường dẫn cho người lạ, một ghi chú dài hơn để xuống dòng trong ô. "


def model(rows: int) -> ReportModel:
    timeline = [
        TimelineRow(
            index=i, local=f"2026-12-04 08:{i // 60 % 60:02d}:{i % 60:02d}",
            utc=f"2026-12-04 01:{i // 60 % 60:02d}:{i % 60:02d}", type="Mở đường dẫn vào lớp",
            type_code="join",
            person="Khách 1 → Nguyễn Văn An" if i % 3 == 0 else "Lê Hoàng Cường",
            reason="Đường dẫn này đã được mở trên một thiết bị khác", ip=f"203.0.113.{i % 250}",
            device="ab12cd34ef56", detail="action=deny; " + NOTE * (1 + i % 2))
        for i in range(rows)
    ]
    return ReportModel(
        lang="vi", school="Trường THPT Nguyễn Du",
        org_chain=["Sở GD&ĐT TP.HCM", "Trường THPT Nguyễn Du"], class_title="Toán 10A1",
        class_id="c0000000000001", platform="janus", teacher="co.lan",
        timezone="Asia/Ho_Chi_Minh", tz_label="UTC+7",
        incident=IncidentFacts("inc1", "Người lạ vào lớp bằng đường dẫn của học sinh",
                               "Khoảng 8 giờ, một người lạ dùng đường dẫn của em An.",
                               "co.lan", "2026-12-04 08:10:00", "2026-12-04 01:10:00"),
        window=Window("2026-12-04 08:00:00", "2026-12-04 01:00:00", "2026-12-04 09:00:00",
                      "2026-12-04 02:00:00"),
        timeline=timeline,
        students=[StudentRow("s1", "Nguyễn Văn An", "HS1001", ["198.51.100.10"],
                             ["ab12cd34ef56"], rows // 3)],
        visitors=[StrangerRow(1, ["203.0.113.66"], ["ffee12345678"], ["Nguyễn Văn An"],
                              ["Mozilla/5.0 (Linux; Android 14) Chrome/120.0 Mobile"], 3)],
        host_actions=timeline[:5],
        attachments=[AttachmentRow("attachments/01-e3b0c44298fc1c14.png", "anh.png",
                                   "image/png", 1234, "e3b0c442" * 8, "co.lan")],
        custody=[CustodyRow(1, "2026-12-04 08:10:00", "2026-12-04 01:10:00", "Tạo sự việc",
                            "co.lan")],
        withheld=3, revisions=[], exporter="user:thay.hieu",
        exported_at=Stamp("2026-12-04 09:00:00", "2026-12-04 02:00:00"),
        checkpoint_size=rows + 10, origin="classguard.test/classguard",
        verifier_key="classguard.test/classguard+abcdef01+" + "A" * 43,
        fingerprint="f" * 64, tool_version="bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000, help="timeline rows (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="timed renders (default 3)")
    ap.add_argument("--out", type=Path, help="write the last PDF here")
    args = ap.parse_args()
    m = model(args.rows)
    render_pdf(model(5))  # the fonts are registered once per process
    pdf = b""
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        pdf = render_pdf(m)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{args.rows} rows: wall {wall:.2f} s, cpu {cpu:.2f} s, {len(pdf):,} bytes")
    if args.out:
        args.out.write_bytes(pdf)


if __name__ == "__main__":
    main()
