"""The gateway on a Redis it finds through Sentinel (redis_sentinels), as deployed for HA
(deploy/kubernetes/redis-sentinel.md): a real redis-server and a real Sentinel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.conftest import _free_port, require_program

from .helpers import make_class, open_link, running_gateway, token_of


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
             "--dir", str(tmp_path), "--requirepass", PASSWORD],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
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
    # and a stopped gateway leaves no connection behind, to the master or to the Sentinel
    # it asked where the master is
    assert _clients_left(address) == []
    assert _clients_left(f"127.0.0.1:{master_port}", password=PASSWORD) == []


def _clients_left(address: str, password: str | None = None) -> list[str]:
    """The server's clients other than this probe and Sentinel's own links (named
    ``sentinel-…``), after a moment for closed sockets to be noticed."""
    probe = redis.Redis(port=int(address.rsplit(":", 1)[1]), password=password,
                        decode_responses=True)
    try:
        deadline = time.monotonic() + 5
        while True:
            me = probe.client_id()
            left = [f"{c['addr']} cmd={c['cmd']}" for c in probe.client_list()
                    if int(c["id"]) != me and not c.get("name", "").startswith("sentinel-")]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)
    finally:
        probe.close()


# --- a real failover -------------------------------------------------------------------


def _server_args(server: str, port: int, workdir: Path, *extra: str) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(workdir),
            "--requirepass", PASSWORD, "--masterauth", PASSWORD, *extra]


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A master, a replica and three Sentinels (quorum 2) on loopback; the master's
    command line is kept so the test can start it again after killing it."""
    server = require_program("redis-server")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    out: dict[str, Any] = {"procs": procs, "server": server}
    try:
        mport, rport = _free_port(), _free_port()
        out["master_args"] = _server_args(server, mport, tmp_path / "master")
        procs["master"] = subprocess.Popen(out["master_args"], stdout=subprocess.DEVNULL)
        _wait_port(mport, procs["master"], "master")
        procs["replica"] = subprocess.Popen(
            _server_args(server, rport, tmp_path / "replica", "--replicaof", "127.0.0.1",
                         str(mport)), stdout=subprocess.DEVNULL)
        _wait_port(rport, procs["replica"], "replica")
        sentinels = []
        for i in range(3):
            port = _free_port()
            d = tmp_path / f"sentinel{i}"
            d.mkdir()
            conf = d / "sentinel.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                            f"sentinel monitor classguard 127.0.0.1 {mport} 2\n"
                            "sentinel down-after-milliseconds classguard 1000\n"
                            "sentinel failover-timeout classguard 10000\n"
                            f"sentinel auth-pass classguard {PASSWORD}\n")
            procs[f"sentinel{i}"] = subprocess.Popen([server, str(conf), "--sentinel"],
                                                     stdout=subprocess.DEVNULL)
            _wait_port(port, procs[f"sentinel{i}"], "sentinel")
            sentinels.append(f"127.0.0.1:{port}")
        out.update(master_port=mport, replica_port=rport, sentinels=tuple(sentinels))
        # the replica is in sync and every Sentinel knows it before the test starts
        r = redis.Redis(port=rport, password=PASSWORD)
        deadline = time.monotonic() + 20
        while r.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.1)
        r.close()
        for address in sentinels:
            s = redis.Redis(port=int(address.rsplit(":", 1)[1]))
            while not s.execute_command("SENTINEL", "REPLICAS", "classguard"):
                assert time.monotonic() < deadline, "a Sentinel does not know the replica"
                time.sleep(0.1)
            s.close()
        yield out
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)


def _master_port(sentinels: tuple[str, ...]) -> int:
    s = redis.Redis(port=int(sentinels[0].rsplit(":", 1)[1]), decode_responses=True)
    try:
        _host, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "classguard")
        return int(port)
    finally:
        s.close()


async def test_failover_fails_closed_then_resumes_without_losing_records(
        tmp_path: Path, redis_prefix: str, replicated: dict[str, Any]) -> None:
    """The master is killed (-9) while students join: joins answered meanwhile are 503;
    the Sentinels promote the replica and joins go on with the same gateway process; the
    old master comes back as a replica. With ``audit_durability_replicas=1`` every join
    acknowledged before, during or after the failover has its record on the new master."""
    procs = replicated["procs"]
    roster = [{"name": f"Học sinh {i:03d}", "external_id": f"F{i:03d}"} for i in range(200)]
    async with running_gateway(tmp_path, None, redis_prefix,  # type: ignore[arg-type]
                               redis_sentinels=replicated["sentinels"],
                               redis_sentinel_master="classguard",
                               redis_password=PASSWORD, audit_durability_replicas=1) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api, roster=roster)
        answers: list[tuple[int, int, dict[str, Any], float]] = []

        async def join(i: int) -> None:
            phone = gw.client()
            try:
                r = await phone.get(f"/j/{token_of(links[i])}",
                                    headers={"Accept": "application/json",
                                             "X-Forwarded-For": f"10.7.0.{i % 250 + 1}"})
                answers.append((i, r.status, await r.json(content_type=None),
                                time.monotonic()))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                answers.append((i, -1, {"exception": repr(exc)}, time.monotonic()))

        nxt = 0
        for _ in range(20):  # before: every join acknowledged
            await join(nxt)
            nxt += 1
        assert all(st == 200 for _, st, _, _ in answers), answers
        procs["master"].kill()
        procs["master"].wait()
        killed_at = time.monotonic()
        promoted_at = None
        deadline = killed_at + 45
        while nxt < len(links) - 5:
            await join(nxt)
            nxt += 1
            if promoted_at is None and _master_port(replicated["sentinels"]) != \
                    replicated["master_port"]:
                promoted_at = time.monotonic()
                # the old master is restarted; the Sentinels make it a replica of the
                # new one (so WAIT 1 can be satisfied again)
                procs["master"] = await asyncio.to_thread(
                    subprocess.Popen, replicated["master_args"], stdout=subprocess.DEVNULL)
            ok_after = [a for a in answers if a[3] > killed_at and a[1] == 200]
            if len(ok_after) >= 10:
                break
            assert time.monotonic() < deadline, answers[-5:]
            await asyncio.sleep(0.1)
        during = [a for a in answers if a[3] > killed_at and
                  (promoted_at is None or a[3] < promoted_at)]
        assert during, "no join was tried during the failover"
        for _, status, body, _ in during:
            assert status == 503, (status, body)  # fail closed, nobody let in
        assert promoted_at is not None
        acknowledged = {links[i]["student_id"]: body["ticket"]
                        for i, status, body, _ in answers if status == 200}
        assert len(acknowledged) >= 30
    new_master = redis.Redis(port=_master_port(replicated["sentinels"]), password=PASSWORD,
                             decode_responses=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            pending = new_master.xlen(f"{redis_prefix}audit:stream") + sum(
                new_master.xlen(b) for b in new_master.smembers(f"{redis_prefix}audit:outboxes"))
            if pending == 0:
                break
            assert time.monotonic() < deadline, f"{pending} records not sequenced"
            await asyncio.sleep(0.2)
        records = [json.loads(x) for x in new_master.hvals(f"{redis_prefix}audit:rec")]
        tickets = {str(r["facts"].get("ticket")) for r in records if r["type"] == "join"}
        lost = {sid: t for sid, t in acknowledged.items() if t not in tickets}
        assert not lost, f"acknowledged joins without their record: {lost}"
    finally:
        new_master.close()
