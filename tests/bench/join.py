"""Join-link benchmark: ``classguard serve`` against a bare EdDSA-verify handler.

    python tests/bench/join.py                       # wrk: 1 worker, 2 workers, open loop
    python tests/bench/join.py --valid 8000 --paced-seconds 8    # quicker
    python tests/bench/join.py --driver python       # the phases below, Python client
    python tests/bench/join.py --driver python --valid 4000 --garbage 8000 --sockets 2000
    python tests/bench/join.py --valid 4000 --garbage 8000 --sockets 2000   # quicker
    python tests/bench/join.py --py-spy /tmp/join.svg   # also profile the first joins
    python tests/bench/join.py --py-spy /tmp/g.txt --py-spy-phase "garbage token"
    python tests/bench/join.py --paced-load 0.3      # the open-loop phase at 30 %

``--driver wrk`` (the default; tests/bench/wrkdrive.py says how the Lua script works):
load from ``wrk``, every request a link not opened before, ``X-Forwarded-For`` from a
pool of ``--xff-pool`` addresses (each in its own /24) that the gateway trusts from
127.0.0.1, ``standard`` classes with their teachers' control sockets open. In one run:
the baseline (below) closed loop; first joins against ``serve --workers 1``; the
baseline again (the better of the two is the reference); open loop at 50 % and 80 % of
the first-join rate just measured (``--paced-seconds`` each, fresh links); then the
gateway restarted with ``--workers 2`` on the same Redis and first joins again. CPU
seconds per part (gateway with all its processes, Redis, baseline, hosts, wrk) and CPU
per join are printed with each phase.

``--driver python``: the earlier client, for the phases wrk cannot do (garbage, forged
and banned sources from many real source addresses, waiting sockets). All on
loopback, in one run, in this order:

1. ``baseline``: a bare aiohttp handler (a separate process started from this script)
   that verifies the same join tokens with pyjwt (EdDSA, the gateway's key from
   ``/.well-known/jwks.json``, ``aud``/``iss``/required claims as the gateway) and
   answers 302 -- nothing else;
2. ``first joins``: ``GET /j/<token>`` (``Accept: application/json``) against the
   gateway, ``standard`` preset, the teachers' control sockets open (so roster students
   are admitted at once), every link opened once by a fresh device (no ``cg_dev``);
3. ``readmits``: every link of (2) opened again with the device cookie it was given;
   then, below saturation, ``first joins at R/s``: links not opened before, sent at a
   fixed rate R (``--paced-load``, default half the first-join rate just measured) over
   the same 64 connections, open loop -- each request is due at k / R and its latency
   runs from then, so a stall delays what was due meanwhile -- and the same links at
   the same rate to the baseline;
4. ``garbage``: random strings in the token's place; ``forged``: well-shaped tokens
   with our ``kid``, a fresh ``jti`` and a random signature (the signature check runs);
5. ``garbage, one address``: the same garbage from 127.0.0.1 only: after the burst the
   per-address limiter refuses (429) -- the cost of a refusal, not of a verification;
6. ``banned source``: genuine links opened from networks an IT account banned org-wide
   (one ``/16`` ban per network the phase's addresses come from): refused on the ban,
   read in the first round trip, before the signature check;
7. memory per waiting socket: ``strict`` classes, every student opens their link (so
   they wait) and then ``WS /ws/wait/<ticket>`` with their device cookie, 20 sockets per
   source address (the gateway limits sockets per address); the gateway's RSS is read
   from /proc before and after the sockets are open.

Load generator: a small HTTP/1.1 client on asyncio's Protocol API (keep-alive, one
request in flight per connection, no pipelining), in ``--clients`` processes, 64
connections in all. Not wrk: wrk cannot choose the source address, and the gateway limits
per address (5/s, burst 20) and per /24 (50/s, burst 200). Here every connection is
bound to its own 127.x.y.z in its own /24 (Linux routes all of 127.0.0.0/8 to lo) and
carries at most ``--per-conn`` requests (default 10, under the burst) before it is
closed and the slot reconnects from the next address: the many-students (or
many-attackers) case, with no X-Forwarded-For and no trusted proxy. Not aiohttp's
client: it costs several times more CPU per request, and on a 2-core machine the load
generator shares the CPU with the server under test. The baseline and the gateway get
exactly the same generator, connection churn included; latency is timed from the start
of each request (the TCP connect included when the request opens a new connection) to
the last byte of its answer. The CPU used by each process during each phase is printed,
so a reader can see which side was saturated (a server near 100 % is the bottleneck).

Redis: a redis-server of our own on a free port (AOF with ``--fsync``, default
``always`` as deploy/compose.yaml), or ``--redis-url`` with a unique key prefix that
is deleted afterwards. Classes have ``--per-class`` students (the class flood limit is
100 joins/s with a burst of 500, so the links are interleaved across many classes and
that limit never binds; a 429 would show in the outcome column).

At the end, the gateway's garbage-collector pauses over the whole run (from its
``/metrics``): the one full collection is the one made at start, before serving.

Printed figures, not assertions. Not collected by pytest (tests/bench is in
norecursedirs).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp  # noqa: E402 - path set up above for running as a script

from tests.bench.wrkdrive import machine_ticks  # noqa: E402
from tests.deploy.cluster import (  # noqa: E402
    free_port,
    gateway_env,
    make_teacher,
    port_open,
    rss_bytes,
    run_cli,
    start_gateway,
    start_redis,
)

UA = "Mozilla/5.0 (Linux; Android 13; Mobile) Chrome/120"
CONNECTIONS = 64
# Waiting sockets per source address (a family, or a class behind one NAT at most; the
# gateway accepts a burst of 30 handshakes per address).
SOCKETS_PER_ADDRESS = 20


# --- small helpers ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise the soft limit on open files (inherited by every child we start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Sources:
    """Loopback source addresses, one /24 each: 127.A.B.7 with A in 1..254."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            i = self.next % (254 * 256)
            self.next += 1
            out.append(f"127.{1 + i // 256}.{i % 256}.7")
        return out

    def next_16(self) -> None:
        """Continue from the next /16 (the one in use may be banned)."""
        self.next = -(-self.next // 256) * 256


# --- the load generator (one process per --clients) -------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bytes, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed by the server"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        i = self.buf.find(b"\r\n\r\n")
        if i < 0:
            return
        lines = bytes(self.buf[:i]).split(b"\r\n")
        status = int(lines[0][9:12])
        length = 0
        cookie = b""
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"set-cookie":
                value = value.strip()
                if value.startswith(b"cg_dev="):
                    cookie = value[7:].split(b";", 1)[0]
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                self.waiter.set_exception(RuntimeError("chunked answers are not handled"))
                return
        end = i + 4 + length
        if len(self.buf) < end:
            return
        body = bytes(self.buf[i + 4:end])
        del self.buf[:end]
        self.waiter.set_result((status, cookie, body, close))

    async def request(self, raw: bytes) -> tuple[int, bytes, bytes, bool]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


def _field(body: bytes, name: bytes) -> str:
    key = b'"' + name + b'": "'
    i = body.find(key)
    if i < 0:
        return ""
    i += len(key)
    return body[i:body.find(b'"', i)].decode(errors="replace")


async def _load(port: int, jobs: list[tuple[str, str]], conns: int, sources: list[str],
                per_conn: int, keep: bool, start_at: float, rate: float = 0.0
                ) -> dict[str, Any]:
    """Send ``jobs`` over ``conns`` connections. ``rate`` > 0: open loop, the k-th
    request is due at k / rate seconds and its latency runs from when it was due (a
    request that waits for a free connection counts its wait); else closed loop."""
    loop = asyncio.get_running_loop()
    head = f"Host: 127.0.0.1:{port}\r\nAccept: application/json\r\nUser-Agent: {UA}\r\n"
    lat: list[float] = []
    outcomes: Counter[str] = Counter()
    kept: dict[str, tuple[str, str]] = {}
    todo = iter(jobs)
    addrs = itertools.cycle(sources)
    seq = itertools.count()
    origin = 0.0

    async def slot() -> None:
        conn: _Conn | None = None
        used = 0
        for path, cookie in todo:
            if rate > 0:
                due = origin + next(seq) / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                t0 = due
            else:
                t0 = time.perf_counter()
            try:
                if conn is None or conn.closed:
                    src = next(addrs)
                    _, conn = await loop.create_connection(
                        _Conn, "127.0.0.1", port, local_addr=(src, 0) if src else None)
                    used = 0
                raw = (f"GET {path} HTTP/1.1\r\n{head}"
                       + (f"Cookie: cg_dev={cookie}\r\n" if cookie else "") + "\r\n").encode()
                status, dev, body, close = await conn.request(raw)
            except (OSError, RuntimeError) as exc:
                outcomes[f"error {type(exc).__name__}"] += 1
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
                continue
            lat.append(time.perf_counter() - t0)
            used += 1
            if status == 200 or status >= 400:
                what = _field(body, b"status") or _field(body, b"code")
                why = _field(body, b"reason")
                outcomes[f"{status} {what}{'/' + why if why and status >= 400 else ''}"] += 1
            else:
                outcomes[str(status)] += 1
            if keep:
                kept[path] = (dev.decode() or cookie, body.decode())
            if close or used >= per_conn:
                assert conn.transport is not None
                conn.transport.close()
                conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    origin = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(conns)))
    return {"lat": lat, "outcomes": dict(outcomes), "t0": t0, "t1": time.time(),
            "kept": kept}


def _load_main(q: Any, *args: Any) -> None:
    try:
        q.put(asyncio.run(_load(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        q.put({"fatal": repr(exc)})


@dataclass
class Phase:
    name: str
    target: str
    n: int
    seconds: float
    lat: list[float]
    outcomes: Counter[str]
    cpu: dict[str, float] = field(default_factory=dict)
    kept: dict[str, tuple[str, str]] = field(default_factory=dict)

    def rate(self, ok: str | None = None) -> float:
        good = self.n if ok is None else sum(v for k, v in self.outcomes.items()
                                             if k.startswith(ok))
        return good / self.seconds if self.seconds > 0 else 0.0


def run_phase(name: str, target: str, port: int, jobs: list[tuple[str, str]], *,
              clients: int, sources: list[str], per_conn: int, watch: dict[str, list[int]],
              keep: bool = False, timeout: float = 300, rate: float = 0.0) -> Phase:
    """Send every job once over CONNECTIONS connections split across ``clients``
    processes (``rate`` > 0: at that many requests per second in all, open loop);
    returns the figures of the phase."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    start_at = time.time() + 0.5
    procs = []
    for c in range(clients):
        share = jobs[c::clients]
        conns = CONNECTIONS // clients + (1 if c < CONNECTIONS % clients else 0)
        srcs = sources[c::clients] if sources else [""]
        procs.append(ctx.Process(target=_load_main, args=(
            q, port, share, conns, srcs, per_conn if sources else 10**9, keep, start_at,
            rate / clients)))
    for p in procs:
        p.start()
    watch = {**watch, "load generator": [p.pid for p in procs if p.pid]}
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = {k: sum(cpu_seconds(p) for p in pids) for k, pids in watch.items()}
    m0 = machine_ticks()
    w0 = time.time()
    outs = []
    deadline = time.monotonic() + timeout
    while len(outs) < clients:
        try:
            outs.append(q.get(timeout=1.0))
            if len(outs) == clients:
                # CPU up to the end of the phase, before the workers exit.
                cpu1 = {k: sum(cpu_seconds(p) for p in pids) for k, pids in watch.items()}
                m1 = machine_ticks()
                wall = time.time() - w0
        except Exception:  # noqa: BLE001 - queue.Empty: keep waiting
            if time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"phase {name} did not finish in {timeout} s") from None
    for p in procs:
        p.join(timeout=10)
    fatal = [o["fatal"] for o in outs if "fatal" in o]
    if fatal:
        raise RuntimeError(f"load generator failed in {name}: {fatal}")
    t0 = min(o["t0"] for o in outs)
    t1 = max(o["t1"] for o in outs)
    outcomes: Counter[str] = Counter()
    kept: dict[str, tuple[str, str]] = {}
    for o in outs:
        outcomes.update(o["outcomes"])
        kept.update(o["kept"])
    cpu = {k: (cpu1[k] - cpu0[k]) / max(wall, 1e-9) for k in watch}
    # Whatever else ran on the machine meanwhile (in CPUs), so a noisy run shows.
    busy = (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * (os.cpu_count() or 1)
    cpu["others"] = max(0.0, busy - sum(cpu.values()))
    return Phase(name, target, sum(outcomes.values()), t1 - t0,
                 [x for o in outs for x in o["lat"]], outcomes, cpu, kept)


# --- setup: classes, links, the teachers' sockets ---------------------------------------


def class_body(i: int, preset: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "title": f"Bench {preset} {i:03d}",
        "platform": {"kind": "generic", "url": f"https://meet.example.org/bench-{i}"},
        "schedule": {"starts_at": (now - timedelta(minutes=1)).isoformat(),
                     "ends_at": (now + timedelta(hours=2)).isoformat(),
                     "term_ends_at": (now + timedelta(days=60)).isoformat()},
        "policy": {"preset": preset},
    }


async def create_classes(base: str, token: str, preset: str, n_links: int,
                         per_class: int) -> list[tuple[str, list[str]]]:
    """Classes of ``preset`` holding ``n_links`` roster students in all, with links;
    returns (class id, tokens) per class."""
    auth = {"Authorization": f"Bearer {token}"}
    sizes = [per_class] * (n_links // per_class)
    if n_links % per_class:
        sizes.append(n_links % per_class)
    sem = asyncio.Semaphore(4)
    tag = secrets.token_hex(3)

    async def one(http: aiohttp.ClientSession, i: int, size: int) -> tuple[str, list[str]]:
        async with sem:
            r = await http.post(f"{base}/api/v1/classes", json=class_body(i, preset),
                                headers=auth)
            if r.status != 201:
                raise RuntimeError(f"create class: {r.status} {await r.text()}")
            cid = (await r.json())["id"]
            roster = [{"name": f"Học sinh {preset} {i:03d}-{j:04d}",
                       "external_id": f"B{tag}{i:03d}{j:04d}"} for j in range(size)]
            r = await http.put(f"{base}/api/v1/classes/{cid}/roster", json=roster, headers=auth)
            if r.status != 200:
                raise RuntimeError(f"roster: {r.status} {await r.text()}")
            r = await http.post(f"{base}/api/v1/classes/{cid}/links", json={}, headers=auth)
            if r.status != 200:
                raise RuntimeError(f"links: {r.status} {await r.text()}")
            links = (await r.json())["links"]
            return cid, [str(link["url"]).rsplit("/j/", 1)[1] for link in links]

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        return list(await asyncio.gather(*(one(http, i, n) for i, n in enumerate(sizes))))


def interleave(classes: list[tuple[str, list[str]]]) -> list[str]:
    """Tokens round-robin across classes, so no class sees more than its share."""
    return [t for group in itertools.zip_longest(*(toks for _, toks in classes))
            for t in group if t is not None]


async def _hosts(base: str, token: str, cids: list[str], ready: Any, stop: Any,
                 q: Any) -> None:
    ws_base = base.replace("http://", "ws://")
    seen = Counter[str]()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        socks = []
        tasks = []

        async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
            try:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(msg.data)
                        seen["(frames)"] += 1
                        # one event, or the events of one class from one event-loop turn
                        for ev in data if isinstance(data, list) else [data]:
                            kind = ev.get("type", "?")
                            if kind == "state" and ev.get("host_present") is False:
                                kind = "state: host absent"
                            elif kind == "alert":
                                kind = f"alert: {ev.get('kind')}"
                            seen[kind] += 1
            except (aiohttp.ClientError, ConnectionError) as exc:
                seen[f"socket failed ({type(exc).__name__})"] += 1
            if not stop.is_set():
                # The gateway closed a teacher's socket during the run: its class has no
                # host from then on (its students wait), so say so in the figures.
                seen[f"closed by the gateway ({ws.close_code})"] += 1

        sem = asyncio.Semaphore(16)

        async def open_one(cid: str) -> None:
            async with sem:
                ws = await http.ws_connect(f"{ws_base}/api/v1/classes/{cid}/control",
                                           headers={"Authorization": f"Bearer {token}"})
                first = await ws.receive_json(timeout=60)
            if first.get("type") != "state":
                raise RuntimeError(f"control socket: {first}")
            socks.append(ws)
            # NOTE: read from the moment it opens, as a control room does: a socket left
            # unread does not answer the gateway's pings (the client answers them as it
            # reads), so the gateway closed the first ones opened when opening them all
            # took longer than its heartbeat (25 s + 12.5 s for the pong), and their
            # classes had no host (their students were told to wait).
            tasks.append(asyncio.create_task(drain(ws)))

        await asyncio.gather(*(open_one(cid) for cid in cids))
        ready.set()
        await asyncio.to_thread(stop.wait)
        for ws in socks:
            await ws.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    q.put(dict(seen))


def _hosts_main(*args: Any) -> None:
    try:
        asyncio.run(_hosts(*args))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        args[-1].put({"fatal": repr(exc)})


class Hosts:
    """The teachers: one control socket per class, in a process of their own, reading
    everything the gateway pushes (admissions, knocks) as a control room would."""

    def __init__(self, base: str, token: str, cids: list[str]) -> None:
        ctx = mp.get_context("fork")
        self.ready, self.stop_evt, self.q = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_hosts_main,
                                args=(base, token, cids, self.ready, self.stop_evt, self.q))
        self.proc.start()
        if not self.ready.wait(900):
            why = "still opening" if self.q.empty() else self.q.get()
            self.proc.kill()  # (left running, it would hold the run's exit for ever)
            self.proc.join()
            raise RuntimeError(f"control sockets did not open: {why}")

    def stop(self) -> dict[str, int]:
        self.stop_evt.set()
        seen: dict[str, int] = self.q.get(timeout=60)
        self.proc.join(timeout=10)
        return seen


# --- the baseline: verify the token, answer 302 -----------------------------------------


def serve_baseline(port: int, jwks_file: str, issuer: str) -> None:
    import jwt
    from aiohttp import web

    keys = {k["kid"]: jwt.PyJWK(k).key for k in json.loads(Path(jwks_file).read_text())["keys"]}
    required = ["iss", "aud", "sub", "cls", "jti", "iat", "nbf", "exp"]

    async def join(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            jwt.decode(token, key=keys[kid], algorithms=["EdDSA"],
                       audience="classguard:join", issuer=issuer,
                       options={"require": required})
        except (jwt.PyJWTError, KeyError):
            return web.Response(status=403, text="forbidden")
        raise web.HTTPFound("https://meet.example.org/room")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})  # wrk's idle connections (wrkdrive.py)

    app = web.Application()
    app.router.add_get("/j/{token}", join)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- memory per waiting socket ----------------------------------------------------------


async def _holders(port: int, socks: list[tuple[str, str, str]], opened: Any, stop: Any,
                   q: Any) -> None:
    sem = asyncio.Semaphore(32)
    ok = Counter[str]()
    held: list[aiohttp.ClientWebSocketResponse] = []
    # One session per source address: the gateway limits waiting sockets per address
    # (as it would see a school's NAT), so the sockets come from many, as students do.
    sessions: dict[str, aiohttp.ClientSession] = {}

    def session_of(addr: str) -> aiohttp.ClientSession:
        if addr not in sessions:
            sessions[addr] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, local_addr=(addr, 0)),
                timeout=aiohttp.ClientTimeout(total=None))
        return sessions[addr]

    try:

        async def one(path: str, cookie: str, addr: str) -> None:
            async with sem:
                try:
                    ws = await session_of(addr).ws_connect(f"ws://127.0.0.1:{port}{path}",
                                               headers={"Cookie": f"cg_dev={cookie}",
                                                        "User-Agent": UA},
                                               heartbeat=None,
                                               timeout=aiohttp.ClientWSTimeout(ws_close=5))
                    first = await ws.receive_json(timeout=30)
                except Exception as exc:  # noqa: BLE001 - counted
                    ok[f"error {type(exc).__name__}"] += 1
                    return
                ok[str(first.get("type"))] += 1
                held.append(ws)
                with opened.get_lock():
                    opened.value += 1

        await asyncio.gather(*(one(p, c, a) for p, c, a in socks))

        async def keep(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for _ in ws:  # answers the server's pings
                pass

        tasks = [asyncio.create_task(keep(ws)) for ws in held]
        q.put(dict(ok))
        await asyncio.to_thread(stop.wait)
        await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await asyncio.gather(*(s.close() for s in sessions.values()), return_exceptions=True)


def _holders_main(*args: Any) -> None:
    try:
        asyncio.run(_holders(*args))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        args[-1].put({"fatal": repr(exc)})


def measure_sockets(port: int, gw_pid: int, socks: list[tuple[str, str, str]],
                    clients: int) -> dict[str, Any]:
    """``socks``: (path, device cookie, source address) of each waiting socket."""
    ctx = mp.get_context("fork")
    opened, stop, q = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
    time.sleep(2.0)
    before = rss_bytes(gw_pid)[0]
    fds0 = len(os.listdir(f"/proc/{gw_pid}/fd"))
    t0 = time.monotonic()
    procs = [ctx.Process(target=_holders_main, args=(port, socks[c::clients], opened, stop, q))
             for c in range(clients)]
    for p in procs:
        p.start()
    results: Counter[str] = Counter()
    for _ in procs:
        r = q.get(timeout=600)
        if "fatal" in r:
            stop.set()
            raise RuntimeError(f"socket holder failed: {r['fatal']}")
        results.update(r)
    open_s = time.monotonic() - t0
    time.sleep(3.0)  # let the gateway settle (buffers, pending tasks)
    after = rss_bytes(gw_pid)[0]
    fds1 = len(os.listdir(f"/proc/{gw_pid}/fd"))
    n = opened.value
    stop.set()
    for p in procs:
        p.join(timeout=60)
    time.sleep(1.0)
    return {"requested": len(socks), "open": n, "first_messages": dict(results),
            "open_s": open_s, "rss_before": before, "rss_after": after,
            "rss_after_close": rss_bytes(gw_pid)[0], "fds_before": fds0, "fds_after": fds1,
            "per_socket": (after - before) / n if n else float("nan")}


# --- profiles ---------------------------------------------------------------------------


# Frames of the join path whose inclusive share is worth reading (name prefixes).
JOIN_FRAMES = (
    "join_link", "JoinFlow.with_token", "peek_token", "JoinFlow.rate_limit",
    "verify_join_token", "JoinFlow._decide", "Limits.rate_limit", "Join.snapshot",
    "Room.note_ip", "evaluate", "JoinFlow._apply", "Join.apply_entry",
    "Room.current_ticket_of", "Bus.publish",
    "Room.mint_nonce", "JoinFlow._record", "AuditLog.append", "_outcome_response",
    "Bus.run", "Sequencer.run", "control_ws",
)


def profile_summary(raw: Path, top: int = 20) -> None:
    """Print shares of py-spy's collapsed stacks (``--format raw``): the join path's
    frames (inclusive) and the frames with the most samples of their own. Idle pool
    threads (parked in ``concurrent.futures``) are left out."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if n_s.isdigit() and not stack.startswith("Thread._bootstrap"):
            stacks.append((stack.split(";"), int(n_s)))
    total = sum(n for _, n in stacks)
    if not total:
        print("  (no samples)")
        return
    print(f"  {total} samples of the event loop thread; inclusive share:")
    for name in JOIN_FRAMES:
        n = sum(c for frames, c in stacks if any(f.startswith(name + " ") for f in frames))
        print(f"  {n / total:6.1%}  {name}")
    lib = sum(c for frames, c in stacks if any("redis/" in f for f in frames))
    print(f"  {lib / total:6.1%}  any frame of the redis client library (redis-py)")
    own: Counter[str] = Counter()
    for frames, c in stacks:
        own[frames[-1]] += c
    print("  most samples of their own:")
    for f, c in own.most_common(top):
        print(f"  {c / total:6.1%}  {f[:140]}")


# --- the run ----------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--valid", type=int, default=6000, help="links opened as first joins")
    p.add_argument("--warmup", type=int, default=600, help="requests before measuring")
    p.add_argument("--paced", type=int, default=3000,
                   help="links opened as first joins at a fixed rate (open loop; 0: skip)")
    p.add_argument("--paced-load", type=float, default=0.5,
                   help="that rate, as a share of the measured first-join rate")
    p.add_argument("--per-class", type=int, default=500, help="students per class (max 2000)")
    p.add_argument("--baseline", type=int, default=20000,
                   help="requests per baseline phase (the valid links, reused in turn)")
    p.add_argument("--garbage", type=int, default=15000)
    p.add_argument("--forged", type=int, default=6000)
    p.add_argument("--banned", type=int, default=6000,
                   help="valid links opened from banned networks (at most --valid)")
    p.add_argument("--sockets", type=int, default=5000, help="waiting sockets held open")
    p.add_argument("--clients", type=int, default=2, help="load generator processes")
    p.add_argument("--per-conn", type=int, default=10,
                   help="requests per connection (and per source address)")
    p.add_argument("--fsync", choices=["always", "everysec", "off"], default="always",
                   help="AOF fsync policy of the redis-server started here")
    p.add_argument("--redis-url", help="use this Redis (a unique key prefix, removed after)")
    p.add_argument("--py-spy", type=Path, metavar="OUT",
                   help="profile the gateway during the first joins (.svg: flame graph, "
                        "else collapsed stacks, summarised on stdout)")
    p.add_argument("--py-spy-phase", default="first joins",
                   choices=["first joins", "paced first joins", "garbage token",
                            "forged signature", "banned source"],
                   help="the phase --py-spy profiles")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--baseline-server", nargs=3, metavar=("PORT", "JWKS", "ISSUER"),
                   help=argparse.SUPPRESS)
    p.add_argument("--driver", choices=["wrk", "python"], default="wrk",
                   help="load generator (default wrk)")
    p.add_argument("--paced-seconds", type=float, default=10.0,
                   help="wrk: length of each open-loop phase")
    p.add_argument("--connections", type=int, default=CONNECTIONS,
                   help="wrk: connections of the closed-loop phases")
    p.add_argument("--paced-connections", type=int, default=256,
                   help="wrk: connections of the open-loop phases (enough to keep the "
                        "schedule: rate x latency in flight)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--xff-pool", type=int, default=65536,
                   help="wrk: X-Forwarded-For addresses, each in its own /24")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                   help="wrk: worker counts to measure first joins with, in order")
    args = p.parse_args()
    if args.baseline_server:
        port_s, jwks_file, issuer = args.baseline_server
        serve_baseline(int(port_s), jwks_file, issuer)
        return 0
    if not 1 <= args.per_class <= 2000:
        p.error("--per-class must be 1..2000 (the roster limit)")
    if args.driver == "wrk":
        return wrk_main(args)

    nofile = raise_nofile(2 * args.sockets + 4096)
    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="cg-join-bench-"))
    print(f"join benchmark {run_id}: {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, RLIMIT_NOFILE {nofile[0]}, {CONNECTIONS} connections "
          f"from {args.clients} load processes, {args.per_conn} requests per source address",
          flush=True)
    redis = None
    baseline: subprocess.Popen[bytes] | None = None
    gw = None
    prefix = f"cgbench{run_id}:"
    if args.redis_url:
        redis_url = args.redis_url
    else:
        redis = start_redis(work / "redis", appendfsync=args.fsync)
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
    try:
        import redis as redis_lib

        rc = redis_lib.Redis.from_url(redis_url)
        rinfo = rc.info("server")
        rcfg = rc.config_get("append*")
        rc.close()
        print(f"redis {rinfo['redis_version']} at {redis_url} appendonly={rcfg.get('appendonly')}"
              f" appendfsync={rcfg.get('appendfsync')} prefix {prefix}", flush=True)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = gateway_env(work / "gw", redis_url=redis_url, redis_prefix=prefix,
                          public_url=base, node_id="bench-gw")
        # The students connect directly: the peer address is theirs (no proxy trusted).
        env["CLASSGUARD_TRUSTED_PROXIES"] = ""
        run_cli(["init"], env)
        teacher = make_teacher(env, "bench.teacher", "bench-org")
        gw = start_gateway(env, port, work / "gateway.log")

        import urllib.request

        with urllib.request.urlopen(f"{base}/.well-known/jwks.json", timeout=10) as r:  # noqa: S310
            jwks = r.read()
        (work / "jwks.json").write_bytes(jwks)
        bport = free_port()
        baseline = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(bport),
                                     str(work / "jwks.json"), base])
        deadline = time.monotonic() + 20
        while not port_open(bport):
            if time.monotonic() > deadline or baseline.poll() is not None:
                raise RuntimeError("the baseline server did not start")
            time.sleep(0.05)

        t = time.monotonic()
        std = asyncio.run(create_classes(base, teacher, "standard",
                                         args.valid + args.warmup, args.per_class))
        paced_cls = asyncio.run(create_classes(base, teacher, "standard", args.paced,
                                               args.per_class)) if args.paced else []
        strict = asyncio.run(create_classes(base, teacher, "strict", args.sockets,
                                            args.per_class)) if args.sockets else []
        print(f"setup: {len(std) + len(paced_cls)} standard classes "
              f"({args.valid + args.warmup + args.paced} links), "
              f"{len(strict)} strict classes ({args.sockets} links) in "
              f"{time.monotonic() - t:.1f} s", flush=True)
        hosts = Hosts(base, teacher, [cid for cid, _ in std + paced_cls + strict])

        tokens = interleave(std)
        warm, valid = tokens[:args.warmup], tokens[args.warmup:]
        src = Sources()
        watch = {"gateway": [gw.pid], "baseline": [baseline.pid], "hosts": [hosts.proc.pid or 0]}
        if redis is not None:
            watch["redis"] = [redis.pid]
        phases: list[Phase] = []

        def phase(name: str, target: str, jobs: list[tuple[str, str]], *,
                  distinct: bool = True, keep: bool = False, quiet: bool = False,
                  sources: list[str] | None = None, rate: float = 0.0) -> Phase:
            srcs = sources if sources is not None else (
                src.take(len(jobs) // args.per_conn + 2 * CONNECTIONS) if distinct else [])
            spy = None
            spied = name == args.py_spy_phase or (
                args.py_spy_phase == "paced first joins" and name.startswith("first joins at"))
            if args.py_spy and spied and target == "gateway" and not quiet:
                fmt = "flamegraph" if args.py_spy.suffix == ".svg" else "raw"
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(gw.pid), "--rate",
                                        "200", "--format", fmt, "--output", str(args.py_spy)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            ph = run_phase(name, target, bport if target == "baseline" else port, jobs,
                           clients=args.clients, sources=srcs, per_conn=args.per_conn,
                           watch=watch, keep=keep, rate=rate)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            if not quiet:
                phases.append(ph)
                print(f"  {name}: {ph.n} requests in {ph.seconds:.1f} s, {ph.rate():.0f}/s, "
                      f"p99 {pct(ph.lat, 99) * 1000:.1f} ms {dict(ph.outcomes)}", flush=True)
            return ph

        jobs_valid = [(f"/j/{t}", "") for t in valid]
        # The baseline keeps no state, so links can be reused: enough requests for a
        # phase of a few seconds.
        jobs_base = [jobs_valid[i % len(jobs_valid)] for i in range(args.baseline)]
        phase("warm-up", "baseline", [(f"/j/{t}", "") for t in warm], quiet=True)
        phase("warm-up", "gateway", [(f"/j/{t}", "") for t in warm], quiet=True)
        base1 = phase("valid token, 302", "baseline", jobs_base)
        first = phase("first joins", "gateway", jobs_valid, keep=True)
        readmit_jobs = [(path, cookie) for path, (cookie, body) in first.kept.items()
                        if '"admitted"' in body and cookie]
        first.kept = {}
        readmit = phase("readmits (same device)", "gateway", readmit_jobs)
        base2 = phase("valid token, 302 (again)", "baseline", jobs_base)
        # Latency below saturation: the same offered rate (a share of the first-join
        # rate just measured) to the gateway, with links not opened before, and to the
        # baseline; the k-th request is due at k / rate whatever the answers before it.
        paced: tuple[Phase, Phase] | None = None
        if args.paced:
            offered = max(1.0, args.paced_load * first.rate("200 admitted"))
            paced_jobs = [(f"/j/{t}", "") for t in interleave(paced_cls)]
            paced = (phase(f"first joins at {offered:.0f}/s", "gateway", paced_jobs,
                           rate=offered),
                     phase(f"valid token at {offered:.0f}/s", "baseline", paced_jobs,
                           rate=offered))

        def forged() -> str:
            head = valid[0].split(".")[0]
            now = int(time.time())
            claims = {"iss": base, "aud": "classguard:join", "sub": "s" + secrets.token_hex(6),
                      "cls": "c" + secrets.token_hex(6), "jti": secrets.token_urlsafe(12),
                      "iat": now, "nbf": now, "exp": now + 86400}
            body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
            sig = base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode()
            return f"{head}.{body}.{sig}"

        garbage_jobs = [(f"/j/{secrets.token_urlsafe(96)}", "") for _ in range(args.garbage)]
        garbage = phase("garbage token", "gateway", garbage_jobs)
        forged_ph = phase("forged signature", "gateway",
                          [(f"/j/{forged()}", "") for _ in range(args.forged)])
        one_ip = phase("garbage, all from 127.0.0.1", "gateway", garbage_jobs, distinct=False)
        base_garbage = phase("garbage token, 403", "baseline", garbage_jobs)

        # Banned sources: genuine links opened from networks an IT account banned
        # org-wide (the /16s this phase's addresses come from); refused on the ban,
        # which is read in the first round trip, before any signature check.
        banned_jobs = jobs_valid[:args.banned]
        src.next_16()
        banned_srcs = src.take(len(banned_jobs) // args.per_conn + 2 * CONNECTIONS)
        run_cli(["user", "add", "bench.it", "--role", "it", "--org", "bench-org",
                 "--password-stdin"], env, stdin="a long enough password for the bench\n")
        it_token = run_cli(["user", "token", "bench.it"], env).split()[-1]
        nets = sorted({".".join(a.split(".")[:2]) + ".0.0/16" for a in banned_srcs})
        asyncio.run(ban_networks(base, it_token, "bench-org", nets))
        banned = phase("banned source", "gateway", banned_jobs, sources=banned_srcs)
        src.next_16()

        mem = None
        if args.sockets:
            knock = phase("strict: knock (waits)", "gateway",
                          [(f"/j/{t}", "") for t in interleave(strict)], keep=True)
            socks = []
            for cookie, body in knock.kept.values():
                if cookie and '"waiting"' in body:
                    socks.append((json.loads(body)["ws"], cookie))
            knock.kept = {}
            addrs = src.take(len(socks) // SOCKETS_PER_ADDRESS + 1)
            print(f"  opening {len(socks)} waiting sockets from {len(addrs)} addresses",
                  flush=True)
            mem = measure_sockets(port, gw.pid, [
                (path, cookie, addrs[i // SOCKETS_PER_ADDRESS])
                for i, (path, cookie) in enumerate(socks)], args.clients)
        seen = hosts.stop()
        gc_seen = gc_pauses(base)
        gw_log_tail = gw.text()[-2000:]
    finally:
        if baseline is not None and baseline.poll() is None:
            baseline.terminate()
            baseline.wait(timeout=20)
        if gw is not None:
            gw.stop()
        if redis is not None:
            redis.stop()
        elif args.redis_url:
            import redis as redis_lib

            rc = redis_lib.Redis.from_url(args.redis_url)
            n = 0
            for key in rc.scan_iter(match=f"{prefix}*", count=1000):
                n += rc.delete(key)
            rc.close()
            print(f"removed {n} keys under {prefix}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")

    report(phases, base1, base2, first, readmit, garbage, forged_ph, one_ip, base_garbage,
           banned, paced, mem, seen, args)
    print(f"  gateway garbage collector over the whole run: {gc_seen}")
    if args.py_spy and args.py_spy.suffix != ".svg" and args.py_spy.exists():
        print(f"\nprofile of the gateway during {args.py_spy_phase} ({args.py_spy}):")
        profile_summary(args.py_spy)
    if "Traceback" in gw_log_tail:
        print(f"\ngateway log ends with:\n{gw_log_tail}")
    if args.json:
        args.json.write_text(json.dumps({
            "phases": [{"name": ph.name, "target": ph.target, "n": ph.n,
                        "seconds": ph.seconds, "rate": ph.rate(),
                        "p50_ms": pct(ph.lat, 50) * 1000, "p99_ms": pct(ph.lat, 99) * 1000,
                        "outcomes": dict(ph.outcomes), "cpu": ph.cpu} for ph in phases],
            "sockets": mem, "control_messages": seen,
        }, indent=2, ensure_ascii=False) + "\n")
    return 0


# --- wrk ---------------------------------------------------------------------------------


def start_group(env: dict[str, str], port: int, log: Path, workers: int) -> Any:
    """``classguard serve --workers N`` on ``port``, once every process serves."""
    from tests.deploy.cluster import Proc

    fh = log.open("w")
    popen = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--host",
                              "127.0.0.1", "--port", str(port), "--workers", str(workers)],
                             env=env, stdout=fh, stderr=subprocess.STDOUT, text=True,
                             cwd=Path(__file__).resolve().parents[2])
    proc = Proc(f"gateway x{workers}", popen, log, fh, port)
    deadline = time.monotonic() + 300
    while "ClassGuard listening on" not in proc.text():
        if popen.poll() is not None or time.monotonic() > deadline:
            proc.stop(kill=True)
            raise RuntimeError(f"the gateway did not start:\n{proc.text()}")
        time.sleep(0.2)
    return proc


def wrk_main(args: argparse.Namespace) -> int:
    from tests.bench.wrkdrive import (
        WrkResult,
        group_pids,
        run_wrk,
        summary_json,
        write_links,
        write_script,
    )

    # SIGTERM (a timeout, kill): clean up the servers started here as on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="cg-join-wrk-"))
    print(f"join benchmark (wrk) {run_id}: {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {args.threads} wrk threads, "
          f"{args.connections} connections closed loop, {args.paced_connections} open loop, "
          f"X-Forwarded-For pool {args.xff_pool}", flush=True)
    prefix = f"cgbench{run_id}:"
    redis = start_redis(work / "redis", appendfsync=args.fsync)
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    baseline: subprocess.Popen[bytes] | None = None
    gw = None
    hosts: list[Hosts] = []
    results: list[WrkResult] = []
    script = write_script(work)
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = gateway_env(work / "gw", redis_url=redis_url, redis_prefix=prefix,
                          public_url=base, node_id="bench-gw")
        run_cli(["init"], env)
        teacher = make_teacher(env, "bench.teacher", "bench-org")
        first_workers = args.workers[0]
        gw = start_group(env, port, work / "gateway-1.log", first_workers)
        import urllib.request

        with urllib.request.urlopen(f"{base}/.well-known/jwks.json", timeout=10) as r:  # noqa: S310
            (work / "jwks.json").write_bytes(r.read())
        bport = free_port()
        baseline = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(bport),
                                     str(work / "jwks.json"), base])
        deadline = time.monotonic() + 30
        while not port_open(bport):
            if time.monotonic() > deadline or baseline.poll() is not None:
                raise RuntimeError("the baseline server did not start")
            time.sleep(0.05)

        t = time.monotonic()
        sets = [asyncio.run(create_classes(base, teacher, "standard", args.warmup,
                                           args.per_class))]
        for _ in args.workers:
            sets.append(asyncio.run(create_classes(base, teacher, "standard", args.valid,
                                                   args.per_class)))
        print(f"setup: {sum(len(x) for x in sets)} classes, "
              f"{args.warmup + args.valid * len(args.workers)} links in "
              f"{time.monotonic() - t:.1f} s", flush=True)

        def links(name: str, tokens: list[str]) -> Path:
            return write_links(work / f"{name}.txt", [f"/j/{tok}" for tok in tokens])

        def watch() -> dict[str, list[int]]:
            w = {"gateway": [gw.pid], "redis": [redis.pid], "baseline": [baseline.pid],
                 "hosts": [h.proc.pid or 0 for h in hosts]}
            return w

        def phase(name: str, target_port: int, f: Path, *, rate: float = 0.0,
                  quiet: bool = False) -> WrkResult:
            spy = None
            if args.py_spy and not quiet and target_port == port and \
                    name.startswith(args.py_spy_phase):
                # the serving worker (the youngest process of the group), not the supervisor
                pid = group_pids(gw.pid)[-1]
                fmt = "flamegraph" if args.py_spy.suffix == ".svg" else "raw"
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate",
                                        "200", "--format", fmt, "--output", str(args.py_spy)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            res = run_wrk(name, f"http://127.0.0.1:{target_port}", f, script,
                          threads=args.threads,
                          connections=args.paced_connections if rate else args.connections,
                          duration_s=600, rate=rate, pool=args.xff_pool, watch=watch())
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
                if args.py_spy.suffix != ".svg":
                    profile_summary(args.py_spy)
            if not quiet:
                results.append(res)
                print("  " + res.line(), flush=True)
            return res

        hosts.append(Hosts(base, teacher, [cid for cid, _ in sets[0] + sets[1]]))
        warm = links("warm", interleave(sets[0]))
        phase("warm-up", bport, warm, quiet=True)
        phase("warm-up", port, warm, quiet=True)
        first_tokens = interleave(sets[1])
        base1 = phase("baseline: verify + 302", bport, links("base1", first_tokens))
        firsts = [phase(f"first joins, --workers {first_workers}", port,
                        links("first-1", first_tokens))]
        base2 = phase("baseline again", bport, links("base2", first_tokens))
        capacity = firsts[0].rate()
        paced: list[WrkResult] = []
        for share in (0.5, 0.8):
            rate = share * capacity
            n = int(rate * args.paced_seconds)
            cls = asyncio.run(create_classes(base, teacher, "standard", n, args.per_class))
            hosts.append(Hosts(base, teacher, [cid for cid, _ in cls]))
            paced.append(phase(f"open loop at {share:.0%} ({rate:.0f}/s), --workers "
                               f"{first_workers}", port, links(f"paced-{share}",
                                                              interleave(cls)), rate=rate))
        for i, w in enumerate(args.workers[1:], start=2):
            for h in hosts:
                h.stop()
            hosts.clear()
            gw.stop()
            gw = start_group(env, port, work / f"gateway-{i}.log", w)
            hosts.append(Hosts(base, teacher, [cid for cid, _ in sets[i]]))
            firsts.append(phase(f"first joins, --workers {w}", port,
                                links(f"first-{i}", interleave(sets[i]))))
        gc_seen = gc_pauses(base)
        gw_log = gw.text()
    finally:
        for h in hosts:
            with contextlib.suppress(Exception):
                h.stop()
        if baseline is not None and baseline.poll() is None:
            baseline.terminate()
            baseline.wait(timeout=20)
        if gw is not None:
            gw.stop()
        redis.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")

    best = max(base1.rate("302"), base2.rate("302"))
    print("\nsummary (wrk)")
    print(f"  baseline 302/s: {base1.rate('302'):.0f} before, {base2.rate('302'):.0f} after; "
          f"the higher is the reference")
    for f in firsts:
        per_join = f.cpu.get("gateway", 0.0) / max(1, f.counts["admitted"]) * 1e3
        print(f"  {f.name}: {f.rate():.0f} admitted/s, ratio to the baseline "
              f"{f.rate() / best:.2f} (target >= 0.65 for one worker); p50 {f.p50_ms:.1f} ms "
              f"p99 {f.p99_ms:.1f} ms; gateway CPU {per_join:.2f} ms per join; refused "
              f"{f.counts['429'] + f.counts['403']}")
    if len(firsts) > 1:
        print(f"  --workers {args.workers[1]} / --workers {args.workers[0]}: "
              f"{firsts[1].rate() / firsts[0].rate():.2f}")
    for pr in paced:
        print(f"  {pr.name}: {pr.rate():.0f} admitted/s; latency p50 {pr.p50_ms:.1f} ms, "
              f"p99 {pr.p99_ms:.1f} ms, max {pr.max_ms:.1f} ms; schedule slip p99 "
              f"{pr.slip_p99_ms:.1f} ms (target p99 <= 300 ms at 80 %)")
    print(f"  gateway garbage collector: {gc_seen}")
    if "Traceback" in gw_log:
        print(f"\ngateway log ends with:\n{gw_log[-2000:]}")
    if args.json:
        args.json.write_text(json.dumps(summary_json(results), indent=2) + "\n")
    return 0


def gc_pauses(base: str) -> str:
    """The gateway's collector pauses so far, from /metrics: per generation, how many
    and the bucket of the longest (an event-loop stall each)."""
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:  # noqa: S310
        text = r.read().decode()
    buckets: dict[str, list[tuple[float, float]]] = {}
    frozen = "?"
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("classguard_gc_pause_seconds_bucket{"):
            labels, _, value = line.partition("} ")
            gen = labels.split('generation="', 1)[1].split('"', 1)[0]
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            buckets.setdefault(gen, []).append((float(le), float(value)))
        elif line.startswith("classguard_gc_pause_seconds_sum{"):
            labels, _, value = line.partition("} ")
            sums[labels.split('generation="', 1)[1].split('"', 1)[0]] = float(value)
        elif line.startswith("classguard_gc_frozen_objects "):
            frozen = line.split()[1]
    out = []
    for gen, bs in sorted(buckets.items()):
        total = bs[-1][1]
        longest = next((le for le, c in bs if c == total), float("inf"))
        bound = "> 250 ms" if longest == float("inf") else f"<= {longest * 1000:g} ms"
        out.append(f"generation {gen}: {total:.0f} in {sums.get(gen, 0) * 1000:.0f} ms "
                   f"(longest {bound})" if total
                   else f"generation {gen}: 0")
    return "; ".join(out) + f"; {float(frozen):.0f} objects frozen at start"


async def ban_networks(base: str, token: str, org: str, networks: list[str]) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        for net in networks:
            r = await http.post(f"{base}/api/v1/orgs/{org}/bans", headers=auth,
                                json={"cidr": net, "reason": "benchmark: banned sources"})
            if r.status != 201:
                raise RuntimeError(f"ban {net}: {r.status} {await r.text()}")


def report(phases: list[Phase], base1: Phase, base2: Phase, first: Phase, readmit: Phase,
           garbage: Phase, forged: Phase, one_ip: Phase, base_garbage: Phase, banned: Phase,
           paced: tuple[Phase, Phase] | None, mem: dict[str, Any] | None,
           seen: dict[str, int], args: argparse.Namespace) -> None:
    cols = ["gateway", "redis", "baseline", "load generator", "hosts", "others"]
    print(f"\n{'phase':<34} {'target':<8} {'requests':>8} {'s':>5} {'req/s':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  CPU % gw/redis/base/load/hosts/others")
    for ph in phases:
        cpu = "/".join(f"{ph.cpu.get(c, 0) * 100:.0f}" for c in cols)
        print(f"{ph.name:<34} {ph.target:<8} {ph.n:>8} {ph.seconds:>5.1f} {ph.rate():>7.0f} "
              f"{pct(ph.lat, 50) * 1000:>7.1f} {pct(ph.lat, 99) * 1000:>7.1f} "
              f"{max(ph.lat) * 1000 if ph.lat else float('nan'):>7.1f}  {cpu}")
    print("\noutcomes:")
    for ph in phases:
        print(f"  {ph.name} [{ph.target}]: {dict(ph.outcomes)}")
    best_base = max(base1.rate("302"), base2.rate("302"))
    admitted = first.rate("200 admitted")
    readmitted = readmit.rate("200 admitted")
    print("\nsummary")
    print(f"  baseline valid 302/s: {base1.rate('302'):.0f} (before), {base2.rate('302'):.0f} "
          f"(after); the higher one is used below")
    print(f"  first joins admitted/s {admitted:.0f}: ratio gateway/baseline "
          f"{admitted / best_base:.2f} (target >= 0.65); p50 {pct(first.lat, 50) * 1000:.1f} ms,"
          f" p99 {pct(first.lat, 99) * 1000:.1f} ms (target <= 50 ms at {CONNECTIONS})")
    print(f"  (closed loop: mean latency = {CONNECTIONS} / rate, so p99 <= 50 ms at "
          f"{CONNECTIONS} connections needs well over {CONNECTIONS / 0.05:.0f} joins/s)")
    if paced is not None:
        gwp, bp = paced
        print(f"  open loop, the same {CONNECTIONS} connections at {args.paced_load:.0%} of the "
              f"first-join rate ({gwp.n / gwp.seconds:.0f}/s offered, latency from when "
              f"each request was due): first joins p50 {pct(gwp.lat, 50) * 1000:.1f} ms, "
              f"p99 {pct(gwp.lat, 99) * 1000:.1f} ms ({gwp.rate('200 admitted'):.0f}/s "
              f"admitted); baseline p50 {pct(bp.lat, 50) * 1000:.1f} ms, "
              f"p99 {pct(bp.lat, 99) * 1000:.1f} ms")
    print(f"  readmits admitted/s {readmitted:.0f}: ratio {readmitted / best_base:.2f}; "
          f"p50 {pct(readmit.lat, 50) * 1000:.1f} ms, p99 {pct(readmit.lat, 99) * 1000:.1f} ms")
    print(f"  garbage refused/s {garbage.rate('403'):.0f} from distinct /24s = "
          f"{garbage.rate('403') / admitted:.1f}x the first-join rate (target >= 3x); "
          f"forged signatures {forged.rate('403'):.0f}/s = "
          f"{forged.rate('403') / admitted:.1f}x")
    print(f"  garbage from one address: {one_ip.rate():.0f}/s answered "
          f"({one_ip.rate('429'):.0f}/s rate-limited 429, {one_ip.rate('403'):.0f}/s 403); "
          f"baseline refuses garbage at {base_garbage.rate('403'):.0f}/s")
    print(f"  banned sources refused/s {banned.rate('403'):.0f} (valid links, org-wide "
          f"network bans) = {banned.rate('403') / admitted:.1f}x the first-join rate")
    if mem is not None:
        mib = 2**20
        print(f"  waiting sockets: {mem['open']}/{mem['requested']} open "
              f"(first message {mem['first_messages']}) in {mem['open_s']:.1f} s; gateway RSS "
              f"{mem['rss_before'] / mib:.1f} -> {mem['rss_after'] / mib:.1f} MiB "
              f"({mem['rss_after_close'] / mib:.1f} after closing), fds {mem['fds_before']} -> "
              f"{mem['fds_after']}: {mem['per_socket'] / 1024:.1f} KiB per waiting socket")
    print(f"  control sockets received: {seen}")


if __name__ == "__main__":
    raise SystemExit(main())
