"""``classguard serve --workers N`` (gateway/workers.py): the supervisor, its workers on
one port, the sequencer process, and /metrics over the whole group. Real processes,
the embedded Redis, real signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import redis.asyncio as aioredis

from audit import AuditLog
from gateway.stores import ClassStore
from gateway.workers import (
    BACKOFF_MAX_S,
    WorkersError,
    backoff_s,
    cgroup_cpu_limit,
    parse_workers,
    usable_cpus,
)

from .helpers import class_body, token_of

CLI = [sys.executable, "-m", "gateway.cli"]
START_S = 180  # a worker imports the package and sets up; slow on a busy 2-core machine


# --- pure -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ("max 100000", None), ("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1),
    ("", None), (None, None), ("garbage", None), ("0 100000", None), ("x 100000", None),
])
def test_cgroup_cpu_limit(text: str | None, want: int | None) -> None:
    assert cgroup_cpu_limit(text) == want


def test_usable_cpus_is_the_affinity_mask_capped_by_the_quota() -> None:
    assert usable_cpus({0, 1, 2, 3}, None) == 4
    assert usable_cpus({0, 1, 2, 3}, "200000 100000") == 2
    assert usable_cpus({5}, "max 100000") == 1
    assert usable_cpus({0, 1}, "800000 100000") == 2


@pytest.mark.parametrize(("value", "want"), [
    (None, 1), ("1", 1), ("4", 4), (" 8 ", 8), (3, 3), ("auto", 6), ("AUTO", 6), ("256", 256),
])
def test_parse_workers(value: Any, want: int) -> None:
    assert parse_workers(value, cpus=lambda: 6) == want


@pytest.mark.parametrize("value", ["0", "-1", "257", "two", "1.5", "", True, 0])
def test_parse_workers_refuses(value: Any) -> None:
    with pytest.raises(WorkersError, match="workers: must be a whole number 1-256 or auto"):
        parse_workers(value, cpus=lambda: 6)


def test_backoff_doubles_to_a_cap() -> None:
    assert [backoff_s(n) for n in range(5)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert backoff_s(50) == BACKOFF_MAX_S


def test_bad_workers_flag_is_one_line_exit_2() -> None:
    res = subprocess.run([*CLI, "serve", "--workers", "lots"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 2
    assert res.stderr.strip() == ("classguard: error: workers: must be a whole number 1-256 "
                                  "or auto, got 'lots'")


# --- the group, for real --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path, redis_prefix: str) -> Iterator[dict[str, str]]:
    e = dict(os.environ)
    e.update({
        "CLASSGUARD_DATA_DIR": str(tmp_path / "data"),
        "CLASSGUARD_COOKIE_SECURE": "false",
        "CLASSGUARD_REDIS_PREFIX": redis_prefix,
        # The students come through a proxy on loopback, each from their own address.
        "CLASSGUARD_TRUSTED_PROXIES": "127.0.0.1/32",
    })
    for k in ("CLASSGUARD_REDIS_URL", "REDIS_URL", "CLASSGUARD_WORKERS",
              "PROMETHEUS_MULTIPROC_DIR"):
        e.pop(k, None)
    yield e


class Group:
    def __init__(self, env: dict[str, str], port: int, log: Path, *extra: str) -> None:
        self.log = log
        self.fh = log.open("w")
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([*CLI, "serve", "--port", str(port), *extra], env=env,
                                     stdout=self.fh, stderr=subprocess.STDOUT, text=True)

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = START_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.compile(pattern, re.M).search(self.text(), after)
            if m is not None:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"the supervisor exited:\n{self.text()}")
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text()}")

    def children(self) -> dict[str, int]:
        """Live children by kind: worker pids, the sequencer's, redis-server's."""
        out: dict[str, int] = {}
        for c in psutil.Process(self.proc.pid).children():
            try:
                cmd = c.cmdline()
            except psutil.Error:
                continue
            if "--sequencer-only" in cmd:
                out["sequencer"] = c.pid
            elif "--worker" in cmd:
                out[f"worker {cmd[cmd.index('--worker') + 1]}"] = c.pid
            elif "redis-server" in " ".join(cmd):
                out["redis"] = c.pid
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.fh.close()
        return self.proc.returncode


def run_cli(args: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    res = subprocess.run([*CLI, *args], env=env, input=stdin, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, f"{args}: {res.stdout}\n{res.stderr}"
    return res.stdout


def teacher_token(env: dict[str, str]) -> str:
    """The deployment's root, a teacher of a school under it, and the teacher's API token."""
    run_cli(["init"], env)
    run_cli(["user", "add", "co.lan", "--role", "teacher", "--org", "school-a",
             "--parent", "root", "--password-stdin"], env, stdin="a long enough password\n")
    return run_cli(["user", "token", "co.lan"], env).split()[-1]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _setup_class(base: str, token: str, students: int) -> tuple[str, list[dict[str, Any]]]:
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url=base, headers=auth) as api:
        r = await api.post("/api/v1/classes", json=class_body("standard"))
        assert r.status == 201, await r.text()
        cid = (await r.json())["id"]
        roster = [{"name": f"Học sinh {i}", "external_id": f"HS{i:04d}"} for i in range(students)]
        r = await api.put(f"/api/v1/classes/{cid}/roster", json=roster)
        assert r.status == 200, await r.text()
        r = await api.post(f"/api/v1/classes/{cid}/links")
        assert r.status in (200, 201), await r.text()
        return cid, (await r.json())["links"]


async def _kill_one_under_load(g: Group, token: str, students: int) -> dict[str, Any]:
    """Students join (each link once, each from their own address, a new connection
    each so the kernel spreads them over the workers) while worker 0 is killed with
    -9; the load goes on until its replacement serves. What each join got."""
    cid, links = await _setup_class(g.base, token, students)
    auth = {"Authorization": f"Bearer {token}"}
    acked: dict[str, float] = {}  # student id -> when the admission was answered
    knocked: set[str] = set()  # answered "waiting": the teacher's socket was away
    failed: list[str] = []
    killed: dict[str, Any] = {}
    queue = list(enumerate(links))
    done = asyncio.Event()
    answered = asyncio.Event()  # set on every answer

    async def until(enough: Any) -> None:
        while not enough():
            answered.clear()
            await answered.wait()

    async def student(http: aiohttp.ClientSession) -> None:
        while queue and not done.is_set():
            i, link = queue.pop(0)
            xff = f"10.{i // 250 % 250}.{i % 250}.{7 + i // 62500}"
            try:
                r = await http.get(f"/j/{token_of(link)}", allow_redirects=False, headers={
                    "Accept": "application/json", "X-Forwarded-For": xff})
                body = await r.json()
            except (TimeoutError, aiohttp.ClientError, ValueError):
                failed.append(link["student_id"])  # never answered: not acknowledged
                continue
            if r.status == 200 and body.get("status") == "admitted":
                acked[link["student_id"]] = time.monotonic()
            elif r.status == 200 and body.get("status") == "waiting":
                knocked.add(link["student_id"])
            else:
                failed.append(f"{link['student_id']}: {r.status} {body}")
            answered.set()
            await asyncio.sleep(0.2)

    async def killer() -> None:
        await until(lambda: len(acked) >= 40)
        before = g.children()
        killed["pid"] = before["worker 0"]
        killed["others"] = {k: v for k, v in before.items() if k != "worker 0"}
        killed["log_at"] = len(g.text())
        # Every join acknowledged so far was counted before it was answered.
        killed["acked_before"] = len(acked)
        killed["metrics_before"] = await (await http.get("/metrics")).text()
        os.kill(killed["pid"], signal.SIGKILL)
        killed["at"] = time.monotonic()
        m = await asyncio.to_thread(
            g.wait_for, r"worker 0 \(pid (\d+)\) listening", after=killed["log_at"])
        killed["replacement"] = int(m.group(1))
        killed["replaced_at"] = time.monotonic()
        target = len(acked) + 20
        await until(lambda: len(acked) >= target or not queue)
        done.set()

    conn = aiohttp.TCPConnector(force_close=True)  # a new connection per request
    async with aiohttp.ClientSession(base_url=g.base, connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=30)) as http, \
            aiohttp.ClientSession(base_url=g.base, headers=auth) as api:
        # NOTE: aiohttp sends an idempotent request again, once, when the server drops
        # the connection; a second opening of a link is a new device for the gateway (and
        # refused as such), not what this test is about. One attempt per link here.
        http._retry_connection = False
        # The host is present: roster students of a ``standard`` class get in at once.
        # The teacher's socket may be on the worker killed: they reconnect, as the
        # control page does; students who come meanwhile wait.
        host_ready = asyncio.Event()

        async def teacher() -> None:
            while not done.is_set():
                with contextlib.suppress(aiohttp.ClientError):
                    async with api.ws_connect(f"/api/v1/classes/{cid}/control") as ws:
                        host_ready.set()
                        async for _ in ws:
                            if done.is_set():
                                break
                await asyncio.sleep(0.2)

        host_task = asyncio.create_task(teacher())
        await host_ready.wait()
        kill_task = asyncio.create_task(killer())
        await asyncio.gather(*(student(http) for _ in range(4)))
        done.set()
        await kill_task
        killed["metrics_after"] = await (await http.get("/metrics")).text()
        host_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await host_task
    return {"cid": cid, "acked": acked, "knocked": knocked, "failed": failed, **killed}


async def _check_state(url: str, prefix: str, cid: str, acked: set[str],
                       knocked: set[str]) -> tuple[set[str], set[str]]:
    """The acknowledged students missing from the class's admissions (or, for those
    told to wait, from its waiting room), and from the audit log (waiting for the
    sequencer to index what was appended)."""
    text = aioredis.Redis.from_url(url, decode_responses=True)
    raw = aioredis.Redis.from_url(url)
    try:
        store = ClassStore(text, prefix)
        admitted = set(await store.admitted(cid))
        waiting = {str(w.get("student_id")) for w in (await store.waiting(cid)).values()}
        log = AuditLog(raw, prefix=prefix, node_id="test", clock=lambda: int(time.time() * 1000))
        audited: set[str] = set()
        for _ in range(150):
            audited.clear()
            cursor = None
            while True:
                found, cursor = await log.query({"class_id": cid, "type": "join"}, limit=500,
                                                cursor=cursor)
                for ev in found:
                    action = ev.record.get("facts", {}).get("action")
                    subject = str(ev.record.get("subject"))
                    if action == "admit" or (action == "wait" and subject in knocked):
                        audited.add(subject)
                if cursor is None:
                    break
            if acked | knocked <= audited:
                break
            await asyncio.sleep(0.2)
        return (acked - admitted) | (knocked - waiting - admitted), (acked | knocked) - audited
    finally:
        await text.aclose()
        await raw.aclose()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_one_worker_under_load(env: dict[str, str], tmp_path: Path,
                                      redis_prefix: str) -> None:
    g = Group(env, free_port(), tmp_path / "group.log", "--workers", "2")
    try:
        g.wait_for(r"^ClassGuard listening on .*\(2 workers and a sequencer")
        token = teacher_token(env)
        out = asyncio.run(_kill_one_under_load(g, token, students=1500))

        # The supervisor replaced the dead worker; the others never stopped.
        assert out["replacement"] != out["pid"] and not alive(out["pid"])
        after = g.children()
        assert after["worker 0"] == out["replacement"]
        assert {k: after[k] for k in out["others"]} == out["others"]
        assert re.search(rf"worker 0 \(pid {out['pid']}\) exited with signal SIGKILL",
                         g.text())
        # ... and the other worker kept admitting while the replacement started.
        during = [t for t in out["acked"].values() if out["at"] < t < out["replaced_at"]]
        assert during, f"nothing admitted between the kill and the replacement: {out}"

        # No acknowledged join lost: each is in the class's admissions and in the log.
        acked = set(out["acked"])
        url = f"unix://{tmp_path / 'data' / 'redis' / 'redis.sock'}"
        no_state, no_audit = asyncio.run(_check_state(url, redis_prefix, out["cid"], acked,
                                                      out["knocked"]))
        assert not no_state and not no_audit, (no_state, no_audit)
        # Refusals other than "no answer" would be a bug, not the kill.
        assert all(":" not in f for f in out["failed"]), out["failed"][:5]

        # /metrics is the group's: the joins counted by the dead worker still count, the
        # sequencer process leads, the collector figures cover every live worker.
        before, final = out["metrics_before"], out["metrics_after"]
        assert metric_sum(before, "classguard_join_attempts_total", action="admit") >= \
            out["acked_before"]
        assert metric_sum(final, "classguard_join_attempts_total", action="admit") >= len(acked)
        assert metric_sum(final, "classguard_audit_sequencer_leader") == 1
        assert metric_sum(final, "classguard_gc_frozen_objects") > 2 * 10_000
        assert metric_sum(final, "classguard_gc_pause_seconds_count") > 0
        assert metric_sum(final, "classguard_processes") == 4  # supervisor, 2, sequencer

        # SIGTERM stops the whole group and its Redis, and exits 0.
        pids = list(g.children().values())
        assert len(pids) == 4
        assert g.stop() == 0
        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if alive(p)]
    finally:
        g.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_workers_dying_at_start_exit_non_zero(env: dict[str, str], tmp_path: Path) -> None:
    # The port is held by a socket without SO_REUSEPORT: every worker fails to bind.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        g = Group(env, port, tmp_path / "group.log", "--workers", "2")
        try:
            code = g.proc.wait(timeout=START_S * 3)
        finally:
            g.stop()
    text = g.text()
    assert code == 1, text
    assert "classguard: error: workers keep dying at start (5 in a row" in text
    assert "address already in use" in text.lower()
    # nothing left behind: no worker, no Redis
    assert not (tmp_path / "data" / "redis" / "redis.sock").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_supervisor_restarts_its_killed_embedded_redis(env: dict[str, str],
                                                       tmp_path: Path) -> None:
    g = Group(env, free_port(), tmp_path / "group.log", "--workers", "2")
    try:
        g.wait_for(r"^ClassGuard listening on .*\(2 workers and a sequencer")
        token = teacher_token(env)
        _cid, links = asyncio.run(_setup_class(g.base, token, 3))
        before = g.children()
        os.kill(before["redis"], signal.SIGKILL)
        g.wait_for(r"embedded Redis restarted", timeout=60)
        after = g.children()
        assert after["redis"] != before["redis"] and not alive(before["redis"])
        # the group's Redis, restarted too, keeps the memory cap that fails closed
        import redis as sync_redis

        sock = tmp_path / "data" / "redis" / "redis.sock"
        with sync_redis.Redis(unix_socket_path=str(sock)) as r:
            assert r.config_get("maxmemory")["maxmemory"] == str(1 << 30)
            assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        # the workers and the sequencer were not restarted: they reconnect
        assert {k: v for k, v in after.items() if k != "redis"} == \
            {k: v for k, v in before.items() if k != "redis"}

        async def join_until_answered() -> dict[str, Any]:
            deadline = time.monotonic() + 30
            async with aiohttp.ClientSession(base_url=g.base) as phone:
                while True:
                    r = await phone.get(f"/j/{token_of(links[0])}", allow_redirects=False,
                                        headers={"Accept": "application/json",
                                                 "X-Forwarded-For": "10.7.0.1"})
                    if r.status == 200:
                        return dict(await r.json())
                    assert r.status == 503, (r.status, await r.text())
                    assert time.monotonic() < deadline, g.text()
                    await asyncio.sleep(0.2)

        # no teacher present: the standard preset puts the student in the waiting room
        assert asyncio.run(join_until_answered())["status"] in ("admitted", "waiting")
        # the restarted server never outlives the group
        pids = list(g.children().values())
        assert g.stop() == 0
        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if alive(p)]
    finally:
        g.stop()
