"""Soak: mixed traffic for a long time on the embedded default, watching for leaks.

Run from the repository root:

    python tests/bench/soak.py                       # 30 minutes, a sample every minute
    python tests/bench/soak.py --duration 120 --interval 10

One ``classguard serve`` process on the embedded Redis (no ``CLASSGUARD_REDIS_URL``: the
default a new user gets), eight classes of 50 students with their teachers' control
sockets open, half on the ``standard`` policy (roster students admitted at once), half on
``strict`` (everyone waits for the teacher). The traffic, at a steady rate:

* joins: a student opens their link on their own device (admitted, or waiting);
* refusals: a link that is not ours, a link opened on a second device (device mismatch);
* host actions through the API: admit the waiting, remove a student, lock and unlock,
  reset a device;
* waiting sockets: a waiting student opens the waiting-room socket, keeps it a few
  seconds and closes it, or is admitted on it;
* audit reads: an administrator's ``GET /api/v1/audit/events`` for a class.

An error is an answer the service should never give (a 5xx, a status or body of the
wrong shape, a dropped connection, a timeout); a refusal the policy decides (removed,
locked, device mismatch) is counted by reason instead. At every interval it prints the
gateway's RSS and open file descriptors, the embedded
Redis's memory and key count, the event-loop lag (``classguard_event_loop_lag_seconds``
from ``/metrics``), request counts and every error (an answer other than the expected
one, or an exception), each with what was asked. At the end: RSS growth after the
warm-up (a fifth of the run), fd growth, the error total, and whether the targets (RSS
flat within 5 %, fds flat, 0 errors) were met; the exit status says the same.

Not collected by pytest (tests/bench is in norecursedirs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp  # noqa: E402 - path set up above for running as a script
import redis.asyncio as aioredis  # noqa: E402

from tests.deploy.cluster import (  # noqa: E402
    free_port,
    gateway_env,
    make_teacher,
    rss_bytes,
    run_cli,
    start_gateway,
)

CLASSES = 8
STUDENTS = 50
SHARED_FROM = 40  # students 40-49 have their links opened on a second device too
UA = "Mozilla/5.0 (Linux; Android 13; Mobile) Chrome/120"


def class_body(i: int, preset: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "title": f"Lớp soak {i}",
        "platform": {"kind": "generic", "url": f"https://meet.example.org/soak-{i}"},
        "schedule": {"starts_at": (now - timedelta(minutes=5)).isoformat(),
                     "ends_at": (now + timedelta(hours=12)).isoformat(),
                     "term_ends_at": (now + timedelta(days=60)).isoformat()},
        # late join stays open for the whole run (the standard preset closes it at 15 min)
        "policy": {"preset": preset, "late_join_cutoff_minutes": None},
    }


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Soak:
    def __init__(self, base: str, teacher: str, admin: str, sock: Path,
                 rng: random.Random) -> None:
        self.base = base
        self.ws_base = base.replace("http://", "ws://")
        self.teacher = {"Authorization": f"Bearer {teacher}"}
        self.admin = {"Authorization": f"Bearer {admin}"}
        self.sock = sock
        self.rng = rng
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.error_log: list[str] = []
        self.classes: list[tuple[str, str, list[str]]] = []  # (id, preset, link tokens)
        self.devices: dict[str, str] = {}  # link token -> device cookie
        self.tasks: set[asyncio.Task[None]] = set()
        self._ids: dict[tuple[str, str], str] = {}  # (class, external id) -> student id

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_log) < 200:
            self.error_log.append(f"{datetime.now(UTC):%H:%M:%S} {kind}: {detail[:300]}")
        print(f"  ERROR {kind}: {detail[:300]}", flush=True)

    # --- set-up ---

    async def setup(self, http: aiohttp.ClientSession) -> None:
        for i in range(CLASSES):
            preset = "standard" if i % 2 == 0 else "strict"
            r = await http.post(f"{self.base}/api/v1/classes", json=class_body(i, preset),
                                headers=self.teacher)
            assert r.status == 201, await r.text()
            cid = (await r.json())["id"]
            roster = [{"name": f"Học sinh {i}-{j:02d}", "external_id": f"S{i}{j:02d}"}
                      for j in range(STUDENTS)]
            r = await http.put(f"{self.base}/api/v1/classes/{cid}/roster", json=roster,
                               headers=self.teacher)
            assert r.status == 200, await r.text()
            r = await http.post(f"{self.base}/api/v1/classes/{cid}/links", json={},
                                headers=self.teacher)
            assert r.status == 200, await r.text()
            toks = [str(link["url"]).rsplit("/j/", 1)[1] for link in (await r.json())["links"]]
            self.classes.append((cid, preset, toks))
            r = await http.get(f"{self.base}/api/v1/classes/{cid}/roster", headers=self.teacher)
            for st in (await r.json())["students"]:
                self._ids[(cid, str(st.get("external_id")))] = str(st["id"])

    async def control(self, http: aiohttp.ClientSession, cid: str) -> None:
        """The teacher's control socket, kept open (reopened if it drops)."""
        while True:
            try:
                async with http.ws_connect(f"{self.ws_base}/api/v1/classes/{cid}/control",
                                           headers=self.teacher, heartbeat=20) as ws:
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self.counts["teacher_events"] += 1
                self.error("control_closed", cid)
            except (aiohttp.ClientError, OSError) as exc:
                self.error("control_failed", f"{cid}: {exc!r}")
            await asyncio.sleep(1)

    # --- traffic ---

    def headers(self, ci: int, si: int, device: str | None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": UA,
             "X-Forwarded-For": f"10.77.{ci}.{si + 1}"}
        if device:
            h["Cookie"] = f"cg_dev={device}"
        return h

    async def join(self, http: aiohttp.ClientSession) -> None:
        ci = self.rng.randrange(CLASSES)
        cid, preset, toks = self.classes[ci]
        si = self.rng.randrange(STUDENTS)
        tok = toks[si]
        r = await http.get(f"{self.base}/j/{tok}", headers=self.headers(ci, si,
                           self.devices.get(tok)), allow_redirects=False)
        body = await r.json(content_type=None)
        if "cg_dev" in r.cookies:
            self.devices[tok] = r.cookies["cg_dev"].value
        status = body.get("status") if isinstance(body, dict) else None
        self.counts[f"join_{status}"] += 1
        if (r.status, status) not in ((200, "admitted"), (200, "waiting"), (403, "denied")):
            self.error("join", f"{r.status} {body}")
            return
        if status == "denied":
            # a decision of the policy (removed, locked, a device the teacher reset and
            # another phone took, ...): counted by reason, not an error of the service
            self.counts[f"refused_{body.get('reason')}"] += 1
        if status == "waiting":
            task = asyncio.create_task(self.wait_socket(http, ci, si, tok, body["ws"]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def wait_socket(self, http: aiohttp.ClientSession, ci: int, si: int, tok: str,
                          path: str) -> None:
        keep = self.rng.uniform(1, 8)
        try:
            async with http.ws_connect(f"{self.ws_base}{path}",
                                       headers=self.headers(ci, si, self.devices.get(tok)),
                                       heartbeat=None) as ws:
                self.counts["waiting_sockets"] += 1
                try:
                    async with asyncio.timeout(keep):
                        async for msg in ws:
                            if msg.type != aiohttp.WSMsgType.TEXT:
                                break
                            kind = json.loads(msg.data).get("type")
                            self.counts[f"ws_{kind}"] += 1
                            if kind in ("admitted", "denied", "removed", "ended"):
                                break
                except TimeoutError:
                    pass  # the student gives up and closes the page
        except (aiohttp.ClientError, OSError) as exc:
            self.error("waiting_socket", repr(exc))

    async def refusal(self, http: aiohttp.ClientSession) -> None:
        ci = self.rng.randrange(CLASSES)
        if self.rng.random() < 0.5:
            r = await http.get(f"{self.base}/j/not-a-link-{self.rng.randrange(10**6)}",
                               headers=self.headers(ci, 200, None), allow_redirects=False)
            await r.read()
            self.counts["refused_malformed"] += 1
            if r.status not in (400, 401, 403, 404):
                self.error("refusal_malformed", str(r.status))
            return
        # the same link on a second device: refused as shared (once a device is bound).
        # Only students whose device the teacher never resets: after a reset, whichever
        # device comes first is the student's, and the owner's phone is then refused.
        cid, _preset, toks = self.classes[ci]
        si = self.rng.randrange(SHARED_FROM, STUDENTS)
        if toks[si] not in self.devices:
            return
        r = await http.get(f"{self.base}/j/{toks[si]}", headers=self.headers(ci, 100 + si, None),
                           allow_redirects=False)
        body = await r.json(content_type=None)
        self.counts["refused_second_device"] += 1
        status = body.get("status") if isinstance(body, dict) else None
        if (r.status, status) not in ((200, "admitted"), (200, "waiting"), (403, "denied")):
            self.error("refusal_second_device", f"{r.status} {body}")
        elif status == "denied":
            self.counts[f"refused_{body.get('reason')}"] += 1
        else:
            # the owner's device was not bound yet, or a strict class holds it for
            # the teacher: that device is the student's from now on
            self.counts["second_device_" + str(status)] += 1
            if "cg_dev" in r.cookies:
                self.devices[toks[si]] = r.cookies["cg_dev"].value

    async def host_action(self, http: aiohttp.ClientSession) -> None:
        ci = self.rng.randrange(CLASSES)
        cid, _preset, _toks = self.classes[ci]
        student = f"S{ci}{self.rng.randrange(STUDENTS):02d}"
        reset_student = f"S{ci}{self.rng.randrange(SHARED_FROM):02d}"
        sid = await self.student_id(http, cid, student)
        choice = self.rng.random()
        if choice < 0.45:
            body: dict[str, Any] = {"action": "admit_all"}
        elif choice < 0.65:
            body = {"action": "remove", "student_id": sid}
        elif choice < 0.8:
            body = {"action": "admit", "student_id": sid}
        elif choice < 0.9:
            body = {"action": "reset_device",
                    "student_id": await self.student_id(http, cid, reset_student)}
        else:
            body = {"action": "lock"}
        r = await http.post(f"{self.base}/api/v1/classes/{cid}/actions", json=body,
                            headers=self.teacher)
        text = await r.text()
        self.counts[f"host_{body['action']}"] += 1
        if r.status != 200 and not (r.status == 409 and body["action"] == "remove"):
            self.error("host_action", f"{body} -> {r.status} {text}")
        if body["action"] == "lock":
            await asyncio.sleep(0.5)
            r = await http.post(f"{self.base}/api/v1/classes/{cid}/actions",
                                json={"action": "unlock"}, headers=self.teacher)
            self.counts["host_unlock"] += 1
            if r.status != 200:
                self.error("host_action", f"unlock -> {r.status} {await r.text()}")

    async def student_id(self, http: aiohttp.ClientSession, cid: str, external: str) -> str:
        return self._ids[(cid, external)]

    async def audit_read(self, http: aiohttp.ClientSession) -> None:
        cid = self.classes[self.rng.randrange(CLASSES)][0]
        r = await http.get(f"{self.base}/api/v1/audit/events",
                           params={"class": cid, "limit": "50"}, headers=self.admin)
        body = await r.text()
        self.counts["audit_reads"] += 1
        if r.status != 200:
            self.error("audit_read", f"{r.status} {body}")

    async def step(self, http: aiohttp.ClientSession) -> None:
        x = self.rng.random()
        try:
            if x < 0.55:
                await self.join(http)
            elif x < 0.75:
                await self.refusal(http)
            elif x < 0.9:
                await self.host_action(http)
            else:
                await self.audit_read(http)
        except Exception as exc:  # noqa: BLE001 - every failure is a counted error
            self.error("request", repr(exc))

    # --- observation ---

    async def sample(self, http: aiohttp.ClientSession, pid: int, redis: aioredis.Redis
                     ) -> dict[str, Any]:
        rss, _ = rss_bytes(pid)
        lag = float("nan")
        try:
            r = await http.get(f"{self.base}/metrics")
            for line in (await r.text()).splitlines():
                if line.startswith("classguard_event_loop_lag_seconds "):
                    lag = float(line.split()[1])
        except (aiohttp.ClientError, OSError) as exc:
            self.error("metrics", repr(exc))
        info = await redis.info("memory")
        keys = await redis.dbsize()
        return {"t": time.monotonic(), "rss": rss, "fds": open_fds(pid),
                "redis_mem": int(info["used_memory"]), "redis_keys": int(keys),
                "loop_lag_s": lag, "errors": sum(self.errors.values()),
                "counts": dict(self.counts)}


async def drive(args: argparse.Namespace, base: str, pid: int, sock: Path, teacher: str,
                admin: str) -> int:
    rng = random.Random(args.seed)
    soak = Soak(base, teacher, admin, sock, rng)
    timeout = aiohttp.ClientTimeout(total=30)
    redis = aioredis.Redis(unix_socket_path=str(sock))
    samples: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=timeout,
                                     cookie_jar=aiohttp.DummyCookieJar()) as http, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                  cookie_jar=aiohttp.DummyCookieJar()) as sockets:
        await soak.setup(http)
        controls = [asyncio.create_task(soak.control(sockets, cid))
                    for cid, _p, _t in soak.classes]
        await asyncio.sleep(1)
        start = time.monotonic()
        end = start + args.duration
        next_sample = start
        interval = 1.0 / args.rate
        inflight: set[asyncio.Task[None]] = set()
        print(f"soak: {args.duration:.0f} s at {args.rate:.0f} operations/s, sample every "
              f"{args.interval:.0f} s; gateway pid {pid}", flush=True)
        print(f"{'min':>6} {'rss MB':>8} {'fds':>5} {'redis MB':>9} {'keys':>6} "
              f"{'lag ms':>7} {'ops':>7} {'errors':>6}", flush=True)
        ops = 0
        tick = time.monotonic()
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                s = await soak.sample(http, pid, redis)
                samples.append(s)
                print(f"{(s['t'] - start) / 60:6.1f} {s['rss'] / 2**20:8.1f} {s['fds']:5d} "
                      f"{s['redis_mem'] / 2**20:9.1f} {s['redis_keys']:6d} "
                      f"{s['loop_lag_s'] * 1000:7.1f} {ops:7d} {s['errors']:6d}", flush=True)
                next_sample += args.interval
            if len(inflight) < 32:
                task = asyncio.create_task(soak.step(http))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                ops += 1
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        await asyncio.gather(*inflight, return_exceptions=True)
        await asyncio.sleep(9)  # let waiting sockets end on their own
        s = await soak.sample(http, pid, redis)
        samples.append(s)
        print(f"{(s['t'] - start) / 60:6.1f} {s['rss'] / 2**20:8.1f} {s['fds']:5d} "
              f"{s['redis_mem'] / 2**20:9.1f} {s['redis_keys']:6d} "
              f"{s['loop_lag_s'] * 1000:7.1f} {ops:7d} {s['errors']:6d}", flush=True)
        for t in controls:
            t.cancel()
        await asyncio.gather(*controls, return_exceptions=True)
    await redis.aclose()
    warm = [s for s in samples if s["t"] - start >= args.duration / 5] or samples
    base_s, last = warm[0], samples[-1]
    rss_growth = (last["rss"] - base_s["rss"]) / base_s["rss"] * 100
    fd_growth = last["fds"] - base_s["fds"]
    errors = sum(soak.errors.values())
    print("\nrequests:", json.dumps(dict(sorted(soak.counts.items())), ensure_ascii=False))
    print(f"RSS after warm-up {base_s['rss'] / 2**20:.1f} MB -> end {last['rss'] / 2**20:.1f} "
          f"MB ({rss_growth:+.1f} %); peak {max(s['rss'] for s in warm) / 2**20:.1f} MB")
    print(f"fds after warm-up {base_s['fds']} -> end {last['fds']} ({fd_growth:+d}); "
          f"range {min(s['fds'] for s in warm)}-{max(s['fds'] for s in warm)}")
    print(f"Redis memory {samples[0]['redis_mem'] / 2**20:.1f} -> "
          f"{last['redis_mem'] / 2**20:.1f} MB, keys {samples[0]['redis_keys']} -> "
          f"{last['redis_keys']}")
    lags = [s["loop_lag_s"] for s in samples if s["loop_lag_s"] == s["loop_lag_s"]]
    if lags:
        median = sorted(lags)[len(lags) // 2]
        print(f"event-loop lag (worst per 10 s window): median {median * 1000:.1f} ms, "
              f"max {max(lags) * 1000:.1f} ms")
    print(f"errors: {errors} {dict(soak.errors)}")
    for line in soak.error_log:
        print("  ", line)
    ok = rss_growth <= 5.0 and fd_growth <= 5 and errors == 0
    print("targets (RSS <= +5 % after warm-up, fds flat, 0 errors):", "met" if ok else "MISSED")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds (default 1800)")
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--rate", type=float, default=20.0, help="operations per second")
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cg-soak-"))
    port = free_port()
    env = gateway_env(work / "data", redis_url="", redis_prefix="soak:",
                      public_url=f"http://127.0.0.1:{port}")
    env.pop("CLASSGUARD_REDIS_URL")  # the embedded default
    run_cli(["init"], env)
    teacher = make_teacher(env, "soak.teacher", "school-a")
    run_cli(["user", "add", "soak.admin", "--role", "admin", "--org", "school-a",
             "--password-stdin"], env, stdin="a long enough password for tests\n")
    admin = run_cli(["user", "token", "soak.admin"], env).split()[-1]
    gw = start_gateway(env, port, work / "gateway.log")
    try:
        return asyncio.run(drive(args, f"http://127.0.0.1:{port}", gw.pid,
                                 work / "data" / "redis" / "redis.sock", teacher, admin))
    finally:
        gw.stop()
        log = gw.text()
        tracebacks = log.count("Traceback")
        print(f"gateway log: {work / 'gateway.log'} ({tracebacks} tracebacks)")


if __name__ == "__main__":
    sys.exit(main())
