"""The gateway on a Redis it finds through Sentinel (redis_sentinels), as deployed for HA
(deploy/kubernetes/redis-sentinel.md): a real redis-server and a real Sentinel."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import _free_port, require_program

from .helpers import make_class, open_link, running_gateway


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"{what} did not start")
            time.sleep(0.05)


PASSWORD = "sentinel-test-secret"


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(sentinel address, master port): a password-protected master and one Sentinel
    monitoring it."""
    server = require_program("redis-server")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        master_port = _free_port()
        procs.append(subprocess.Popen(
            [server, "--port", str(master_port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(tmp_path), "--requirepass", PASSWORD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_port(master_port, procs[0], "redis-server")
        sentinel_port = _free_port()
        conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its file: a writable copy
        conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                        f"sentinel monitor classguard 127.0.0.1 {master_port} 1\n"
                        "sentinel down-after-milliseconds classguard 2000\n"
                        f"sentinel auth-pass classguard {PASSWORD}\n")
        procs.append(subprocess.Popen([server, str(conf), "--sentinel"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_port(sentinel_port, procs[1], "redis sentinel")
        yield f"127.0.0.1:{sentinel_port}", master_port
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


async def test_joins_through_sentinel(tmp_path: Path, redis_prefix: str,
                                      sentinel: tuple[str, int]) -> None:
    address, master_port = sentinel
    async with running_gateway(tmp_path, None, redis_prefix,  # type: ignore[arg-type]
                               redis_sentinels=(address,),
                               redis_sentinel_master="classguard",
                               redis_password=PASSWORD) as gw:
        assert PASSWORD not in repr(gw.svc.settings)
        ready = await (await gw.client().get("/readyz")).json()
        assert ready["status"] == "ready", ready
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        status, body = await open_link(gw.client(), links[0])
        assert (status, body["status"]) == (200, "waiting")
    # the state is on the master Sentinel named
    master = redis.Redis(port=master_port, password=PASSWORD)
    try:
        assert list(master.scan_iter(match=f"{redis_prefix}*{cid}*", count=1000))
    finally:
        master.close()
