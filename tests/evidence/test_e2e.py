"""An incident end to end: a running gateway on real Redis, exported over HTTP and with
the CLI, verified offline by the command line with no server and no Redis."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from audit.evidence import verify_bundle
from tests.conftest import require_program
from tests.gateway.helpers import running_gateway

from .conftest import Exported
from .scenario import IP_AN, IP_INTRUDER, OVERRIDES, export, run_scenario


def _files(bundle: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def test_bundle_holds_the_incident(exported: Exported) -> None:
    f = _files(exported.bundle)
    lines = [json.loads(x) for x in f["events.jsonl"].decode().splitlines()]
    by_type = {}
    for line in lines:
        by_type.setdefault(line["record"]["type"], []).append(line)
        assert f"proofs/{line['index']}.tlog-proof" in f
    shared = [x for x in by_type["join"] if x["record"]["reason"] == "device_mismatch"]
    assert shared and shared[0]["personal"]["ip"] == IP_INTRUDER
    assert shared[0]["record"]["subject"] == exported.facts["links"][0]["student_id"]
    assert any(x["personal"]["ip"] == IP_AN for x in by_type["join"])
    assert by_type["host.remove"][0]["personal"]["note"] == "chia sẻ đường dẫn cho người lạ"
    assert len(by_type["incident.attach"]) == 2
    assert {"incident.create", "incident.view"} <= set(by_type)
    custody = json.loads(f["custody.json"])
    assert [e["action"] for e in custody["entries"]][-1] == "export"
    manifest = json.loads(f["manifest.json"])
    assert manifest["incident"] == exported.facts["incident"]["id"]
    assert manifest["exporter"] == "user:thay.hieu"
    assert {e["path"] for e in manifest["files"]} == set(f) - {"manifest.json",
                                                               "manifest.json.sig"}
    assert f["manifest.json.sig"].startswith(b"classguard-evidence-manifest v1\n")
    assert exported.facts["headers"]["X-Evidence-SHA256"]
    # attachments: named by position and hash, typed by their bytes, not by the client
    atts = sorted(n for n in f if n.startswith("attachments/"))
    assert atts[0].endswith(".png") and atts[1].endswith(".txt")
    html = f["report.html"].decode()
    assert "Trường THPT Nguyễn Du" in html and "Asia/Ho_Chi_Minh" in html
    assert "Toán 10A1" in html and "co.lan" in html


def test_offline_verify_in_a_bare_process(exported: Exported, tmp_path: Path) -> None:
    """`classguard evidence verify` in a fresh interpreter with no settings and no Redis."""
    path = tmp_path / "bundle.zip"
    path.write_bytes(exported.bundle)
    key = tmp_path / "audit.vkey"
    key.write_text(exported.vkey + "\n")
    env = {"PATH": "/usr/bin:/bin", "CLASSGUARD_REDIS_URL": "redis://192.0.2.1:1/0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "evidence", "verify",
                          str(path), "--key", str(key)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HỢP LỆ" in out.stdout and "Khóa kiểm chứng đã được ghim" in out.stdout
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "evidence", "verify",
                          str(path), "--lang", "en"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and "VALID" in out.stdout and "--key" in out.stdout


def test_pdf_pages_render_with_content(exported: Exported, tmp_path: Path) -> None:
    pdftoppm = require_program("pdftoppm")
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(_files(exported.bundle)["report.pdf"])
    subprocess.run([pdftoppm, "-r", "50", "-png", str(pdf), str(tmp_path / "page")],
                   check=True, timeout=60)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert pages
    for page in pages:
        with Image.open(page) as img:
            hist = img.convert("L").histogram()
            dark = sum(hist[:128])
            assert dark > 500, f"{page.name} looks empty ({dark} dark pixels)"


async def test_english_report_and_cli_export(tmp_path: Path, redis_url: str, redis_prefix: str,
                                             redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import main

    async with running_gateway(tmp_path, redis_url, redis_prefix, **OVERRIDES) as gw:
        s = await export(await run_scenario(gw), "en")
        html = _files(s.bundle)["report.html"].decode()
        assert "Incident report" in html and "What the host did" in html
        # the status moved on; the CLI exports the same incident again
        r = await s.teacher.get(f"/api/v1/incidents/{s.incident['id']}")
        assert (await r.json())["status"] == "exported"
        for k, v in {"CLASSGUARD_REDIS_PREFIX": redis_prefix,
                     "CLASSGUARD_PUBLIC_URL": "http://classguard.test"}.items():
            monkeypatch.setenv(k, v)
        out = tmp_path / "cli.zip"
        code = await asyncio.to_thread(main, [
            "evidence", "export", s.incident["id"], "-o", str(out), "--lang", "en",
            "--data-dir", str(tmp_path / "data"), "--redis-url", redis_url])
        assert code == 0
        assert gw.svc.audit_key is not None
        report = verify_bundle(out.read_bytes(), gw.svc.audit_key.verifier())
        assert report.ok, report.problems
        # the second bundle proves the first export: its hash is in the log now
        lines = [json.loads(x) for x in _files(out.read_bytes())["events.jsonl"].splitlines()]
        exports = [x["record"]["facts"] for x in lines
                   if x["record"]["type"] == "incident.export"]
        assert exports and exports[0]["bundle_sha256"] == s.headers["X-Evidence-SHA256"]
        assert exports[0]["manifest_sha256"] == s.headers["X-Evidence-Manifest-SHA256"]
        assert out.stat().st_mode & 0o077 == 0
