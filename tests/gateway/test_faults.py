"""Faults survived: a gateway killed (-9) mid-burst, Redis killed (-9) or stopped mid-burst.

The property of docs/audit.md ("no effect without its record"): once the sequencer has
caught up, every admission, knock and host action visible in Redis or already pushed to a
teacher has its audit record, every acknowledged request's record is there, and
``classguard audit verify`` passes. While Redis is gone, joins fail closed (503, a page
in Vietnamese that retries by itself) and service resumes without a gateway restart.

Each test starts its own processes (``classguard serve`` and/or ``redis-server``) and
uses the embedded default or a Redis of its own: killing the machine's shared Redis is
not an option.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.deploy.cluster import (
    CLI,
    REPO,
    Proc,
    free_port,
    gateway_env,
    make_teacher,
    port_open,
    run_cli,
)

from .helpers import class_body, host_control, make_class, running_gateway, token_of

pytestmark = pytest.mark.slow

PREFIX = "cg:"
UA = "Mozilla/5.0 (Linux; Android 13; Mobile) Chrome/120"


def roster(n: int, tag: str) -> list[dict[str, str]]:
    return [{"name": f"Học sinh {tag}{i:03d}", "external_id": f"{tag}{i:03d}"}
            for i in range(n)]


def start_gateway(env: dict[str, str], port: int, log: Path) -> Proc:
    """``classguard serve`` as a subprocess. NOTE: a generous start-up allowance: on a
    loaded machine, start-up after a kill (recovering the embedded Redis) took 30 s."""
    fh = log.open("w")
    popen = subprocess.Popen([*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
                             env=env, stdout=fh, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    p = Proc("gateway", popen, log, fh, port)
    deadline = time.monotonic() + 120
    while not port_open(port):
        if not p.alive or time.monotonic() > deadline:
            p.stop(kill=True)
            raise AssertionError(f"gateway did not start:\n{p.text()}")
        time.sleep(0.1)
    return p


def start_redis(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """A redis-server of the test's own: AOF with fsync on every write."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "redis.log").open("ab") as log:
        p = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "yes", "--appendfsync", "always",
                              "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(200):
        if port_open(port):
            return p
        time.sleep(0.05)
    p.kill()
    raise AssertionError("redis-server did not start")


# --- what the log holds -------------------------------------------------------------


async def settled_records(r: aioredis.Redis, prefix: str, within_s: float = 30.0
                          ) -> list[dict[str, Any]]:
    """Every sequenced record, once the stream and every outbox are empty and the log
    has stopped growing (the sequencer caught up)."""
    deadline = time.monotonic() + within_s
    last = -1
    while True:
        pending = await r.xlen(f"{prefix}audit:stream")
        for box in await r.smembers(f"{prefix}audit:outboxes"):
            pending += await r.xlen(box)
        size = int(await r.hget(f"{prefix}audit:meta", "size") or 0)
        if pending == 0 and size == last:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the sequencer did not catch up: {pending} pending")
        last = size
        await asyncio.sleep(0.3)
    raw = await r.hvals(f"{prefix}audit:rec")
    return [json.loads(x) for x in raw]


def recorded_tickets(records: list[dict[str, Any]]) -> set[str]:
    """Tickets named by a record: a join (admission or knock), a policy admission, or
    a host action's intent or outcome."""
    return {str(rec["facts"]["ticket"]) for rec in records
            if isinstance(rec.get("facts"), dict) and rec["facts"].get("ticket")}


def recorded_subjects(records: list[dict[str, Any]], cid: str, *types: str) -> set[str]:
    out: set[str] = set()
    for rec in records:
        if rec.get("class") != cid or not rec.get("subject"):
            continue
        kind = rec["type"]
        if kind == "intent":
            kind = str(rec.get("facts", {}).get("action"))
        if kind in types:
            out.update(str(rec["subject"]).split(","))
    return out


async def class_state(r: aioredis.Redis, prefix: str, cid: str) -> dict[str, Any]:
    k = f"{prefix}{{c:{cid}}}:"
    return {"admitted": await r.hgetall(k + "admitted"), "waiting": await r.hgetall(k + "waiting"),
            "tk_by": await r.hgetall(k + "tk_by"), "removed": await r.smembers(k + "removed")}


def assert_every_effect_recorded(records: list[dict[str, Any]], state: dict[str, Any],
                                 cid: str, pushed: set[str]) -> None:
    tickets = recorded_tickets(records)
    admitted_by = recorded_subjects(records, cid, "host.admit", "host.admit_all")
    removed_by = recorded_subjects(records, cid, "host.remove")
    missing = []
    for sid in state["admitted"]:
        ticket = f"{cid}.{state['tk_by'].get(sid)}"
        if ticket not in tickets and sid not in admitted_by:
            missing.append(("admitted", sid, ticket))
    for rand, entry in state["waiting"].items():
        if f"{cid}.{rand}" not in tickets:
            missing.append(("waiting", json.loads(entry)["student_id"], rand))
    for sid in state["removed"]:
        if sid not in removed_by:
            missing.append(("removed", sid, None))
    for ticket in pushed:
        if ticket.startswith(cid + ".") and ticket not in tickets:
            missing.append(("pushed to the teacher", None, ticket))
    assert not missing, f"{len(missing)} effects without a record: {missing[:10]}"


# --- a gateway killed mid-burst ------------------------------------------------------


@dataclass
class Served:
    env: dict[str, str]
    port: int
    log_dir: Path
    redis: aioredis.Redis
    proc: Proc | None = None
    runs: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.runs += 1
        self.proc = start_gateway(self.env, self.port, self.log_dir / f"serve{self.runs}.log")


@pytest.fixture(params=["embedded", "external"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    env = gateway_env(tmp_path / "data", redis_url="", redis_prefix=PREFIX,
                      public_url=f"http://127.0.0.1:{port}")
    redis_proc = None
    if request.param == "embedded":
        env.pop("CLASSGUARD_REDIS_URL")
        client = aioredis.Redis(unix_socket_path=str(tmp_path / "data" / "redis" / "redis.sock"),
                                decode_responses=True)
    else:
        rport = free_port()
        redis_proc = start_redis(tmp_path / "redis", rport)
        env["CLASSGUARD_REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
        client = aioredis.Redis(port=rport, decode_responses=True)
    run_cli(["init"], env)
    s = Served(env, port, tmp_path, client)
    try:
        yield s
    finally:
        if s.proc is not None:
            s.proc.stop()
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait()


async def _setup_classes(base: str, token: str) -> list[tuple[str, list[dict[str, Any]]]]:
    auth = {"Authorization": f"Bearer {token}"}
    out = []
    async with aiohttp.ClientSession(base_url=base, headers=auth) as api:
        for preset, tag in (("standard", "A"), ("strict", "B")):
            r = await api.post("/api/v1/classes", json=class_body(preset))
            assert r.status == 201, await r.text()
            cid = (await r.json())["id"]
            r = await api.put(f"/api/v1/classes/{cid}/roster", json=roster(60, tag))
            assert r.status == 200, await r.text()
            r = await api.post(f"/api/v1/classes/{cid}/links", json={})
            out.append((cid, (await r.json())["links"]))
    return out


@dataclass
class Burst:
    pushed: set[str] = field(default_factory=set)  # tickets the teachers were shown admitted
    answers: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    actions: int = 0


async def _burst(s: Served, token: str, classes: list[tuple[str, list[dict[str, Any]]]],
                 kill_after_pushed: int) -> Burst:
    """Every student of both classes opens their link; the teacher of the strict class
    admits each knock and removes every fifth admitted student. The gateway is killed
    (-9) once the teachers were shown ``kill_after_pushed`` admissions."""
    out = Burst()
    auth = {"Authorization": f"Bearer {token}"}
    killed = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(base_url=s.base, headers=auth, timeout=timeout) as api, \
            aiohttp.ClientSession(base_url=s.base, timeout=timeout) as phones:
        controls = [await host_control(api, cid) for cid, _ in classes]
        strict_cid = classes[1][0]

        def maybe_kill() -> None:
            # mid-burst: once the teachers were shown enough admissions, some of them
            # made by the host's own actions
            if len(out.pushed) >= kill_after_pushed and out.actions >= 3 \
                    and not killed.is_set():
                killed.set()
                assert s.proc is not None
                s.proc.popen.send_signal(signal.SIGKILL)

        async def act(body: dict[str, Any]) -> None:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                r = await api.post(f"/api/v1/classes/{strict_cid}/actions", json=body)
                if r.status == 200:
                    out.actions += 1
                    maybe_kill()

        tasks: set[asyncio.Task[None]] = set()

        async def watch(ws: aiohttp.ClientWebSocketResponse, host: bool) -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = json.loads(msg.data)
                # one event per frame, or a list of the class's events of one loop turn
                for m in frame if isinstance(frame, list) else [frame]:
                    if m.get("type") == "admitted" and m.get("ticket"):
                        out.pushed.add(str(m["ticket"]))
                        maybe_kill()
                        if host and len(out.pushed) % 5 == 0 and m.get("student_id"):
                            t = asyncio.create_task(act({"action": "remove",
                                                         "student_id": m["student_id"]}))
                            tasks.add(t)
                    elif host and m.get("type") == "knock" and m.get("ticket"):
                        t = asyncio.create_task(act({"action": "admit",
                                                     "ticket": m["ticket"]}))
                        tasks.add(t)

        watchers = [asyncio.create_task(watch(ws, i == 1)) for i, ws in enumerate(controls)]
        sem = asyncio.Semaphore(16)

        async def student(ci: int, si: int, link: dict[str, Any]) -> None:
            async with sem:
                if killed.is_set():
                    return
                headers = {"Accept": "application/json", "User-Agent": UA,
                           "X-Forwarded-For": f"10.9.{ci}.{si + 1}"}
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError,
                                         ValueError):
                    r = await phones.get(f"/j/{token_of(link)}", headers=headers,
                                         allow_redirects=False)
                    out.answers.append((link["student_id"], r.status,
                                        await r.json(content_type=None)))

        # the two classes' students arrive interleaved
        plan = sorted(((si, ci, link) for ci, (_, links) in enumerate(classes)
                       for si, link in enumerate(links)), key=lambda x: (x[0], x[1]))
        await asyncio.gather(*(student(ci, si, link) for si, ci, link in plan))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(killed.wait(), 10)
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    assert killed.is_set(), "the burst ended before the gateway was killed"
    return out


async def test_gateway_killed_mid_burst_leaves_no_effect_without_its_record(
        served: Served) -> None:
    s = served
    token = make_teacher(s.env, "co.lan", "school-a")
    s.start()
    classes = await _setup_classes(s.base, token)
    burst = await _burst(s, token, classes, kill_after_pushed=40)
    assert s.proc is not None
    s.proc.popen.wait(timeout=10)
    s.proc.stop()
    # restart on the same data dir; the new process's sequencer drains what is left
    s.start()
    try:
        records = await settled_records(s.redis, PREFIX)
        acknowledged = {sid for sid, status, body in burst.answers
                        if status == 200 and body.get("status") in ("admitted", "waiting")}
        for cid, _links in classes:
            state = await class_state(s.redis, PREFIX, cid)
            assert_every_effect_recorded(records, state, cid, burst.pushed)
        joined = {str(rec["subject"]) for rec in records if rec["type"] == "join"}
        assert acknowledged <= joined, acknowledged - joined
        ids = [rec["id"] for rec in records]
        assert len(ids) == len(set(ids)), "a record was sequenced twice"
        assert len(burst.pushed) >= 40 and burst.actions > 0
    finally:
        assert s.proc is not None
        s.proc.stop()
    out = run_cli(["audit", "verify"], s.env)
    assert "ok" in out.lower() or "pass" in out.lower(), out
    await s.redis.aclose()


# --- Redis killed or stopped mid-burst ------------------------------------------------


@dataclass
class OwnRedis:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restart(self) -> None:
        self.proc = start_redis(self.dir, self.port)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    port = free_port()
    r = OwnRedis(port, tmp_path / "redis", start_redis(tmp_path / "redis", port))
    try:
        yield r
    finally:
        if r.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.proc.pid, signal.SIGCONT)
            r.proc.kill()
        r.proc.wait()


@contextlib.asynccontextmanager
async def _class_running(tmp_path: Path, url: str
                         ) -> AsyncIterator[tuple[Any, str, list[dict[str, Any]],
                                                  aiohttp.ClientWebSocketResponse]]:
    async with running_gateway(tmp_path, url, PREFIX) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api, preset="standard", roster=roster(80, "R"))
        ws = await host_control(api, cid)
        yield gw, cid, links, ws
        await ws.close()


Join = Callable[[dict[str, Any], int, bool], Awaitable[tuple[int, Any, float]]]


async def _join_on(phone: aiohttp.ClientSession, link: dict[str, Any], n: int, html: bool
                   ) -> tuple[int, Any, float]:
    headers = {"Accept": "text/html" if html else "application/json",
               "X-Forwarded-For": f"10.8.0.{n % 250 + 1}"}
    try:
        r = await phone.get(f"/j/{token_of(link)}", headers=headers, allow_redirects=False)
        body = await (r.text() if html else r.json(content_type=None))
        return r.status, body, time.monotonic()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return -1, repr(exc), time.monotonic()


async def _join(gw: Any, link: dict[str, Any], n: int, *, html: bool = False
                ) -> tuple[int, Any, float]:
    return await _join_on(gw.client(), link, n, html)


async def _through_outage(join: Join, links: list[dict[str, Any]], cid: str,
                          r: aioredis.Redis, *, go_down: Callable[[], None],
                          come_up: Callable[[float], Awaitable[float]],
                          heals_itself: bool) -> None:
    """Joins run while Redis goes down (``go_down``) and comes back (``come_up``, given
    when it went down, returns when it was back): the requests answered while it is gone
    are 503 (the page says so in Vietnamese and retries by itself), nobody is let in
    meanwhile, every acknowledged join keeps its record, and joins work again once Redis
    is back, with the same gateway process. ``heals_itself``: Redis comes back on its own
    (the embedded one, restarted by its owner) at a moment the test only observes, so
    answers before that may already be 200s."""
    before = [asyncio.create_task(join(link, i, False)) for i, link in enumerate(links[:30])]
    await asyncio.sleep(0.05)
    go_down()
    down_at = time.monotonic()
    answers = await asyncio.gather(*before)
    # while it is gone: more students try
    during_tasks = [asyncio.create_task(join(link, 30 + i, False))
                    for i, link in enumerate(links[30:40])]
    page = await join(links[40], 40, True)
    during = await asyncio.gather(*during_tasks)
    up_at = await come_up(down_at)
    for status, body, _at in [*answers, *during]:
        # fail closed: an error is a 503, never a 500 or a half-admitted student
        assert status in (200, 503, -1), (status, body)
        if status == 503:
            assert body["error"]["code"] == "dependency_unavailable"
    for status, body, at in during:
        if at < up_at and not heals_itself:
            assert status == 503, (status, body)
    status, html, at = page
    if status == 503 or (at < up_at and not heals_itself):
        assert status == 503
        assert "Hệ thống đang tạm gián đoạn" in html and 'src="/static/retry.js"' in html
    # service resumes, no restart of the gateway
    deadline = time.monotonic() + 30
    while True:
        status, body, _ = await join(links[50], 50, False)
        if status == 200:
            break
        assert time.monotonic() < deadline, (status, body)
        await asyncio.sleep(0.2)
    assert body["status"] == "admitted"
    acknowledged = {links[i]["student_id"] for i, (st, b, _) in enumerate(answers)
                    if st == 200 and b.get("status") == "admitted"}
    acknowledged |= {links[30 + i]["student_id"] for i, (st, b, _) in enumerate(during)
                     if st == 200}
    acknowledged.add(links[50]["student_id"])
    assert any(st == 503 for st, _, _ in [*answers, *during, page]), \
        "no request met the outage"
    records = await settled_records(r, PREFIX)
    joined = {str(rec["subject"]) for rec in records
              if rec["type"] == "join" and rec["facts"].get("action") == "admit"}
    assert acknowledged <= joined, f"acknowledged joins lost: {acknowledged - joined}"
    state = await class_state(r, PREFIX, cid)
    assert_every_effect_recorded(records, state, cid, set())


async def _outage(tmp_path: Path, own_redis: OwnRedis, *, stop: bool) -> None:
    """An external Redis of the test's own killed (-9, then started again by the test)
    or stopped (SIGSTOP, 10 s) under a gateway served in this process."""
    async with _class_running(tmp_path, own_redis.url) as (gw, cid, links, _ws):
        def go_down() -> None:
            if stop:
                os.kill(own_redis.proc.pid, signal.SIGSTOP)
            else:
                own_redis.proc.send_signal(signal.SIGKILL)
                own_redis.proc.wait()

        async def come_up(down_at: float) -> float:
            if stop:
                await asyncio.sleep(max(0.0, down_at + 10 - time.monotonic()))
                up_at = time.monotonic()
                os.kill(own_redis.proc.pid, signal.SIGCONT)
            else:
                up_at = time.monotonic()
                await asyncio.to_thread(own_redis.restart)
            return up_at

        async def join(link: dict[str, Any], n: int, html: bool) -> tuple[int, Any, float]:
            return await _join(gw, link, n, html=html)

        r = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
        try:
            await _through_outage(join, links, cid, r, go_down=go_down, come_up=come_up,
                                  heals_itself=False)
        finally:
            await r.aclose()


async def test_redis_killed_mid_burst(tmp_path: Path, own_redis: OwnRedis) -> None:
    await _outage(tmp_path, own_redis, stop=False)


async def test_redis_stopped_for_ten_seconds(tmp_path: Path, own_redis: OwnRedis) -> None:
    await _outage(tmp_path, own_redis, stop=True)


# --- the embedded default: its redis-server killed or stopped --------------------------


def _embedded_redis_pid(data_dir: Path, gateway_pid: int) -> int | None:
    """The pid of the gateway's own redis-server: the pid file's, if that process is
    a live child of the gateway (a killed server leaves its pid file behind)."""
    try:
        pid = int((data_dir / "redis" / "redis.pid").read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rpartition(")")[2].split()
    return pid if fields[0] != "Z" and int(fields[1]) == gateway_pid else None


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
async def test_embedded_redis_killed_or_stopped_mid_burst(tmp_path: Path, fault: str) -> None:
    """``classguard serve`` with no Redis URL: its private redis-server is killed (-9;
    the gateway restarts it on the same socket and AOF) or stopped for 10 s."""
    data = tmp_path / "data"
    port = free_port()
    env = gateway_env(data, redis_url="", redis_prefix=PREFIX,
                      public_url=f"http://127.0.0.1:{port}")
    env.pop("CLASSGUARD_REDIS_URL")
    run_cli(["init"], env)
    token = make_teacher(env, "co.lan", "school-a")
    proc = start_gateway(env, port, tmp_path / "serve.log")
    gateway_pid = proc.popen.pid
    r = aioredis.Redis(unix_socket_path=str(data / "redis" / "redis.sock"),
                       decode_responses=True)
    base = f"http://127.0.0.1:{port}"
    timeout = aiohttp.ClientTimeout(total=20)
    try:
        async with aiohttp.ClientSession(base_url=base, timeout=timeout,
                                         headers={"Authorization": f"Bearer {token}"}) as api, \
                aiohttp.ClientSession(base_url=base, timeout=timeout) as phone:
            resp = await api.post("/api/v1/classes", json=class_body("standard"))
            assert resp.status == 201, await resp.text()
            cid = (await resp.json())["id"]
            resp = await api.put(f"/api/v1/classes/{cid}/roster", json=roster(80, "E"))
            assert resp.status == 200, await resp.text()
            resp = await api.post(f"/api/v1/classes/{cid}/links", json={})
            links = (await resp.json())["links"]
            ws = await host_control(api, cid)
            server_pid = _embedded_redis_pid(data, gateway_pid)
            assert server_pid is not None

            def go_down() -> None:
                os.kill(server_pid, signal.SIGSTOP if fault == "sigstop" else signal.SIGKILL)

            async def come_up(down_at: float) -> float:
                if fault == "sigstop":
                    await asyncio.sleep(max(0.0, down_at + 10 - time.monotonic()))
                    up_at = time.monotonic()
                    os.kill(server_pid, signal.SIGCONT)
                    return up_at
                # nobody but the gateway brings it back
                deadline = time.monotonic() + 30
                while True:
                    pid = _embedded_redis_pid(data, gateway_pid)
                    if pid is not None and pid != server_pid:
                        with contextlib.suppress(Exception):
                            if await r.ping():
                                return time.monotonic()
                    assert time.monotonic() < deadline, proc.text()
                    await asyncio.sleep(0.05)

            async def join(link: dict[str, Any], n: int, html: bool
                           ) -> tuple[int, Any, float]:
                return await _join_on(phone, link, n, html)

            await _through_outage(join, links, cid, r, go_down=go_down, come_up=come_up,
                                  heals_itself=fault == "sigkill")
            await ws.close()
        # the same gateway process served throughout
        assert proc.alive and proc.popen.pid == gateway_pid
        if fault == "sigkill":
            assert "embedded Redis restarted" in proc.text()
            assert _embedded_redis_pid(data, gateway_pid) not in (None, server_pid)
        else:
            assert _embedded_redis_pid(data, gateway_pid) == server_pid
    finally:
        await r.aclose()
        proc.stop()
