"""Attachments cannot fill the server: they are kept on disk (sealed, content-addressed,
mode 0600), not in Redis, and each school has a storage quota; the evidence bundle still
carries them and verifies offline."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from .kit import Deployment, Scene, Staff, scene

pytestmark = pytest.mark.slow

QUOTA = 300 * 1024
SERVE_ENV = {"CLASSGUARD_ATTACHMENT_ORG_QUOTA_BYTES": str(QUOTA)}


async def _incident(s: Scene, who: Staff, cid: str) -> str:
    now = datetime.now(UTC)
    r = await who.call("POST", "/api/v1/incidents", json={
        "class_id": cid, "title": "Ảnh chụp màn hình",
        "since": (now - timedelta(minutes=30)).isoformat(),
        "until": (now + timedelta(minutes=30)).isoformat()})
    assert r.status == 201, r
    return str(r.body["id"])


async def _upload(who: Staff, iid: str, data: bytes, name: str):  # type: ignore[no-untyped-def]
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name)
    return await who.call("POST", f"/api/v1/incidents/{iid}/attachments", data=form)


async def test_attachments_on_disk_with_a_per_org_quota(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class()
        first = await _incident(s, s.teacher, k.id)
        shot = b"\x89PNG\r\n\x1a\n" + os.urandom(180 * 1024)
        r = await _upload(s.teacher, first, shot, "anh1.png")
        assert r.status == 201, r
        att = r.body["attachments"][0]
        # on disk, sealed: named by the SHA-256 of the sealed bytes, owner-only
        files = list((deployment.data_dir / "attachments").glob("*/*.sealed"))
        assert len(files) == 1
        sealed = files[0].read_bytes()
        assert files[0].name == hashlib.sha256(sealed).hexdigest() + ".sealed"
        assert files[0].stat().st_mode & 0o777 == 0o600
        assert shot[8:4096] not in sealed
        # the school's quota holds across incidents and uploaders
        second = await _incident(s, s.other_teacher, (await s.new_class(
            owner=s.other_teacher, title="Lý 11B")).id)
        for who, iid in ((s.teacher, first), (s.other_teacher, second)):
            r = await _upload(who, iid, os.urandom(150 * 1024), "chat.bin")
            assert r.status == 413 and r.body["error"]["code"] == "quota_exceeded", r
            assert r.body["error"]["quota_bytes"] == QUOTA
            assert r.body["error"]["used_bytes"] == len(shot)
        assert len(list((deployment.data_dir / "attachments").glob("*/*.sealed"))) == 1
        # what still fits is taken
        r = await _upload(s.teacher, first, b"tin nhan " * 1000, "chat.txt")
        assert r.status == 201, r
        # the bundle carries the attachment and verifies offline
        r2 = await s.admin.session.get(f"/api/v1/incidents/{first}/evidence.zip")
        assert r2.status == 200, await r2.text()
        bundle = await r2.read()
        with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
            inside = [zf.read(n) for n in zf.namelist() if n.startswith("attachments/")]
        assert shot in inside and hashlib.sha256(shot).hexdigest() == att["sha256"]
        path = deployment.data_dir.parent / f"{first}.zip"
        path.write_bytes(bundle)
        res = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "gateway.cli", "evidence", "verify",
                             str(path)], capture_output=True, text=True, timeout=120,
            check=False)
        assert res.returncode == 0, res.stdout + res.stderr
