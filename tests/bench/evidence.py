"""Evidence export benchmark (a script, not collected by pytest).

    python tests/bench/evidence.py [--events 1000000] [--incident-records 1000]

Builds an audit log of ``--events`` records in a private redis-server (bulk appends and
one sequencer run, as in tests/bench/audit.py; persistence is off while building: this
benchmark measures export, not durable appends), then starts a real gateway on that Redis
and measures:

1. ``GET /api/v1/incidents/{id}/evidence.zip`` for an incident whose class and window hold
   ``--incident-records`` records about the student involved, as many records naming other
   students of the same class (withheld), and every other record in 400 other classes
   (target <= 5 s at 1,000,000 / 1,000), with the phases of one more export;
2. ``verify_bundle`` of that bundle in-process, and ``classguard evidence verify`` as a
   fresh process (what a police officer runs).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestServer  # noqa: E402

from audit import AuditLog, AuditSigningKey, Sequencer  # noqa: E402
from audit.evidence import verify_bundle  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.evidence_export import export_incident  # noqa: E402
from gateway.routes.incidents import incident_store  # noqa: E402
from gateway.services import services_of  # noqa: E402


def _bench_audit() -> Any:
    spec = importlib.util.spec_from_file_location("bench_audit", Path(__file__).with_name(
        "audit.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def start_redis(data: str) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [_bench_audit().redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir",
         data, "--appendonly", "no", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


async def main(args: argparse.Namespace) -> None:
    import aiohttp
    import redis.asyncio as aioredis

    bench_event = _bench_audit().event
    tmp = tempfile.mkdtemp(prefix="cg-evidence-bench-")
    proc, port = start_redis(tmp)
    url = f"redis://127.0.0.1:{port}/0"
    prefix = "bench:"
    settings = load_settings({"data_dir": f"{tmp}/data", "redis_url": url,
                              "redis_prefix": prefix, "public_url": "http://school.example",
                              "cookie_secure": False}, {}, None)
    keys_dir = Path(settings.data_dir) / "keys"
    keys_dir.mkdir(parents=True, mode=0o700)
    signer = AuditSigningKey.load_or_create(keys_dir / "audit.key", settings.audit_origin)
    r = aioredis.Redis.from_url(url, max_connections=64)
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    try:
        # 0. a school, a class of 40 with a roster
        await server.start_server()
        svc = services_of(app)
        await svc.staff.ensure_org("school", name="Trường THPT Bench")
        await svc.staff.create_user("co.lan", role="teacher", org="school", password="x" * 12)
        await svc.staff.create_user("admin", role="admin", org="school", password="x" * 12)
        t_tok = await svc.staff.create_api_token("co.lan")
        a_tok = await svc.staff.create_api_token("admin")
        base = server.make_url("")
        teacher = aiohttp.ClientSession(base_url=base,
                                        headers={"Authorization": f"Bearer {t_tok}"})
        admin = aiohttp.ClientSession(base_url=base, headers={"Authorization": f"Bearer {a_tok}"})
        now = datetime.now(UTC)
        res = await teacher.post("/api/v1/classes", json={
            "title": "Toán 10A1", "platform": {"kind": "generic", "url": "https://m.example/x"},
            "schedule": {"starts_at": (now - timedelta(hours=1)).isoformat(),
                         "ends_at": (now + timedelta(hours=3)).isoformat()},
            "policy": {"preset": "strict"}})
        cid = (await res.json())["id"]
        res = await teacher.put(f"/api/v1/classes/{cid}/roster",
                                json=[{"name": f"Học sinh số {i}"} for i in range(40)])
        students = [s["id"] for s in (await res.json())["students"]]
        involved, others = students[0], students[1:]

        # 1. the log: bulk appends, then one sequencer run
        log = AuditLog(r, prefix=prefix, node_id="bench-gw", clock=lambda: int(time.time() * 1000))
        seq = Sequencer(r, prefix=prefix, signer=signer, origin=settings.audit_origin,
                        clock=lambda: int(time.time() * 1000), node_id="bench-seq",
                        batch_size=2000)
        n, per = args.events, max(1, args.events // args.incident_records)

        def item(i: int) -> tuple[dict[str, object], dict[str, object]]:
            if i % per == 0 or i % per == per // 2:
                sid = involved if i % per == 0 else others[i % len(others)]
                return ({"type": "join", "reason": "device_mismatch", "actor": f"student:{sid}",
                         "org": "school", "class": cid, "subject": sid,
                         "facts": {"action": "deny", "rule": "device_binding"}},
                        {"ip": f"203.0.113.{i % 250}", "device": f"{i:064x}",
                         "ua": "Mozilla/5.0 (Android 14)", "name": f"Học sinh {sid}"})
            return bench_event(i)

        since = datetime.now(UTC) - timedelta(seconds=1)
        counter = iter(range(0, n, 1000))

        async def worker() -> None:
            for start in counter:
                await log.append_many([item(i) for i in range(start, min(n, start + 1000))])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(8)))
        t_app = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            size = await seq.sync()
        except Exception:  # noqa: BLE001 - the gateway's own sequencer got the lease first
            while await log.pending():  # noqa: ASYNC110 - polling another process
                await asyncio.sleep(0.5)
            size = await log.size()
        t_seq = time.perf_counter() - t0
        if seq.is_leader:
            await seq.release()
        print(f"log: {size} records (appended in {t_app:.1f} s, sequenced in {t_seq:.1f} s)")

        # 2. the incident and its export over HTTP
        res = await teacher.post("/api/v1/incidents", json={
            "class_id": cid, "title": "Bench", "since": since.isoformat(),
            "until": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
            "student_ids": [involved]})
        iid = (await res.json())["id"]
        runs = []
        bundle = b""
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = await admin.get(f"/api/v1/incidents/{iid}/evidence.zip")
            bundle = await res.read()
            runs.append(time.perf_counter() - t0)
            assert res.status == 200, bundle[:500]
        print(f"export over HTTP: {min(runs):.2f} s best, {max(runs):.2f} s worst of "
              f"{len(runs)}; bundle {len(bundle) / 1e6:.1f} MB (target <= 5 s)")
        inc = await incident_store(svc).get(iid)
        assert inc is not None
        result = await export_incident(svc, incident_store(svc), inc, exporter="bench")
        prev = 0.0
        phases = []
        for k, v in result.timings.items():
            phases.append(f"{k} {v - prev if k != 'total' else v:.2f}")
            prev = v if k != "total" else prev
        print(f"export phases (s): {', '.join(phases)}; {result.records} records, "
              f"{result.withheld} withheld, checkpoint size {result.checkpoint_size}")

        # 3. verification
        t0 = time.perf_counter()
        report = verify_bundle(bundle, signer.verifier())
        t_ver = time.perf_counter() - t0
        print(f"verify_bundle in-process: {t_ver:.2f} s, ok={report.ok}, "
              f"{report.events} records, {report.proofs} proofs")
        path = Path(tmp) / "bundle.zip"
        path.write_bytes(bundle)
        t0 = time.perf_counter()
        out = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "gateway.cli", "evidence", "verify",
                             str(path), "--key", signer.verifier().encode(), "--lang", "en"],
            capture_output=True, text=True, cwd=ROOT)
        t_cli = time.perf_counter() - t0
        print(f"classguard evidence verify (new process): {t_cli:.2f} s, exit "
              f"{out.returncode}: {out.stdout.strip().splitlines()[-1]}")
        await teacher.close()
        await admin.close()
    finally:
        await server.close()
        await r.aclose()
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--incident-records", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(ap.parse_args()))
