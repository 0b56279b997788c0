"""Load from ``wrk`` (Debian's package) for the join benchmarks.

Why wrk: a C load generator spends a small share of the CPU that a Python client would
(on a 2-core machine the generator shares the CPU with the server under test), so what
is measured is the gateway, not the client.

The Lua script (``LUA`` below, written next to the links file):

* **every request opens a link not opened before**: the links file holds one path per
  line; thread ``t`` of ``T`` takes lines ``t, t + T, t + 2T, ...`` and never reuses
  one. A thread out of links lets its connections idle and stops
  (``wrk.thread:stop()``) once every link it sent is answered, so nothing in flight is
  cut off; the driver then ends wrk (SIGINT) instead of waiting out ``-d`` (or 12 s
  after the last link was sent, when some answer never came: wrk counts it as an
  error);
* **X-Forwarded-For from a configurable pool**: address ``i`` of a pool of ``P`` is
  ``10.(i/256 % 256).(i % 256).(7 + i/65536)``, so up to 65,536 addresses each in
  its own /24 (``spread``), or ``100.64.0.(1 + i % 250)``-style addresses packed in as
  few /24s as possible (``packed``: carrier-grade NAT). Request ``k`` of thread ``t``
  uses address ``(k * T + t) % P``. The gateway trusts the header from 127.0.0.1 only
  (``trusted_proxies``), as it would from its reverse proxy;
* **outcomes** are counted per thread in ``response()`` (200 admitted, 200 waiting,
  302, 403, 429, other) and summed in ``done()``;
* **open loop** (``rate`` > 0): plain wrk sends a connection's next request when the
  previous answer arrives (closed loop: a slow server lowers the offered load and
  hides its own latency). Here ``delay()``, which wrk calls before each request of a
  connection, returns the time left until that request's slot on the thread's fixed
  schedule (the k-th request of a thread is due at ``start + k / rate``), so requests
  leave at the offered rate whatever the answers. wrk's latency runs from when a
  request is written; a request written after its slot (every connection of the
  thread was busy) is late by ``now - due``, recorded in ``request()`` as the
  *schedule slip*. The figure to read is latency p99 plus slip p99: with enough
  connections (Little's law: rate x latency in flight) the slip stays 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WRK = "/usr/bin/wrk"

LUA = r"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } cg_ts;
           int clock_gettime(int, cg_ts *); ]]
local ts = ffi.new("cg_ts")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

-- Main state: the thread objects, read back in done(). wrk's thread:get reads a global
-- of that thread's own Lua state, so each thread keeps its figures in globals (cg_*).
local threads = {}
local nthreads = 0
function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
  table.insert(threads, thread)
end

local links, pos, skip = {}, 0, 0
local pool, spread, rate, accept, T, t, marker
cg_counts = {admitted = 0, waiting = 0, s302 = 0, s403 = 0, s429 = 0, other = 0, spare = 0}
cg_sent, cg_first_us, cg_last_us = 0, 0, 0
cg_slips = {}
local start_us, slot = 0, 0
local dues, due_head, due_tail = {}, 1, 0
local exhausted = false

function init(args)
  local file = args[1]
  T = tonumber(args[2]); pool = tonumber(args[3]); spread = args[4] == "spread"
  rate = tonumber(args[5]); accept = args[6]; marker = args[7]
  t = tonumber(tid)
  local i = 0
  for line in io.lines(file) do
    if i % T == t then links[#links + 1] = line end
    i = i + 1
  end
  -- wrk calls request() once in thread 0's state before the run (to check the request,
  -- script_verify_request) and never sends it: that call takes this placeholder.
  if t == 0 then table.insert(links, 1, "/healthz"); skip = 1 end
end

local function xff(k)
  local i = (k * T + t) % pool
  if spread then
    return string.format("10.%d.%d.%d", math.floor(i / 256) % 256, i % 256,
                         7 + math.floor(i / 65536))
  end
  return string.format("100.%d.%d.%d", 64 + math.floor(i / 62500),
                       math.floor(i / 250) % 250, 1 + i % 250)
end

function delay()
  -- Out of links: this connection idles until the thread stops.
  if pos >= #links then return 600000 end
  if rate <= 0 then return 0 end
  local now = now_us()
  if start_us == 0 then start_us = now end
  local due = start_us + slot * 1000000 / rate
  slot = slot + 1
  due_tail = due_tail + 1
  dues[due_tail] = due
  local wait = (due - now) / 1000
  if wait < 0 then return 0 end
  return math.floor(wait)
end

function request()
  local now = now_us()
  if pos < skip then
    pos = pos + 1
    return wrk.format("GET", links[pos])
  end
  if cg_first_us == 0 then cg_first_us = now end
  if rate > 0 and due_head <= due_tail then
    local slip = now - dues[due_head]
    dues[due_head] = nil
    due_head = due_head + 1
    if slip < 0 then slip = 0 end
    cg_slips[#cg_slips + 1] = slip
  end
  pos = pos + 1
  local path = links[pos]
  if path == nil then
    return wrk.format("GET", "/healthz")
  end
  if pos == #links then
    -- All sent: the driver ends wrk 12 s later at most (wrk's --timeout is 10 s: a
    -- request unanswered by then is an error, and response() never hears of it).
    local f = io.open(marker, "a"); f:write("s" .. t .. "\n"); f:close()
  end
  cg_sent = cg_sent + 1
  local h = {["X-Forwarded-For"] = xff(pos), ["User-Agent"] =
             "Mozilla/5.0 (Linux; Android 13; Mobile) Chrome/120"}
  if accept == "json" then h["Accept"] = "application/json" end
  return wrk.format("GET", path, h)
end

local answered = 0
function response(status, headers, body)
  -- A connection wrk opened again sends without delay(): past the links, /healthz,
  -- whose answer is counted apart and not as a link's.
  if status == 200 and body:find('"status": "ok"', 1, true) then
    cg_counts.spare = cg_counts.spare + 1
    return
  end
  cg_last_us = now_us()
  answered = answered + 1
  if answered >= #links - skip and not exhausted then
    exhausted = true
    local f = io.open(marker, "a"); f:write("d" .. t .. "\n"); f:close()
    wrk.thread:stop()
  end
  local c = cg_counts
  if status == 200 then
    if body:find('"admitted"', 1, true) then c.admitted = c.admitted + 1
    elseif body:find('"waiting"', 1, true) then c.waiting = c.waiting + 1
    else c.other = c.other + 1 end
  elseif status == 302 then c.s302 = c.s302 + 1
  elseif status == 403 then c.s403 = c.s403 + 1
  elseif status == 429 then c.s429 = c.s429 + 1
  else c.other = c.other + 1 end
end

function done(summary, latency, requests)
  local slips, parts = {}, {}
  for _, thread in ipairs(threads) do
    local c = thread:get("cg_counts")
    for _, s in ipairs(thread:get("cg_slips")) do slips[#slips + 1] = s end
    parts[#parts + 1] = string.format(
      '{"admitted":%d,"waiting":%d,"302":%d,"403":%d,"429":%d,"other":%d,"spare":%d,' ..
      '"sent":%d,"first_us":%.0f,"last_us":%.0f}', c.admitted, c.waiting, c.s302, c.s403,
      c.s429, c.other, c.spare, thread:get("cg_sent"), thread:get("cg_first_us"),
      thread:get("cg_last_us"))
  end
  table.sort(slips)
  local function q(p)
    if #slips == 0 then return 0 end
    return slips[math.max(1, math.ceil(#slips * p))]
  end
  local late = 0
  for _, s in ipairs(slips) do if s > 1000 then late = late + 1 end end
  io.write("CG_THREADS " .. table.concat(parts, "|") .. "\n")
  io.write(string.format("CG_SLIP %.0f %.0f %.0f %d\n", q(0.5), q(0.99), q(1.0), late))
  io.write(string.format("CG_LATENCY %.0f %.0f %.0f %.0f %d %d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout))
end
"""


@dataclass
class WrkResult:
    name: str
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # first request written -> last answer, over all threads
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    slip_p99_ms: float = 0.0
    slip_max_ms: float = 0.0
    late: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per part
    offered: float = 0.0
    # the share of the machine's CPU time the hypervisor gave to others during the phase
    # (/proc/stat "steal"): on a virtual machine, what moves rates between runs
    steal: float = 0.0

    def rate(self, key: str = "admitted") -> float:
        return self.counts.get(key, 0) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        counts = {k: v for k, v in self.counts.items() if v and k != "sent"}
        extra = (f", slip p99 {self.slip_p99_ms:.1f} ms max {self.slip_max_ms:.1f} ms "
                 f"({self.late} late > 1 ms)" if self.offered else "")
        return (f"{self.name}: {self.requests} answers in {self.seconds:.2f} s, "
                f"p50 {self.p50_ms:.1f} ms p90 {self.p90_ms:.1f} ms p99 {self.p99_ms:.1f} ms "
                f"max {self.max_ms:.1f} ms{extra}; {counts}; errors {self.errors}; CPU s "
                + ", ".join(f"{k} {v:.1f}" for k, v in self.cpu.items())
                + f"; host steal {self.steal:.1%}")


def write_links(path: Path, paths: Sequence[str]) -> Path:
    path.write_text("".join(p + "\n" for p in paths))
    return path


def write_script(workdir: Path) -> Path:
    p = workdir / "links.lua"
    p.write_text(LUA)
    return p


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # utime and stime of the process itself (its descendants are counted one by one)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (a supervised gateway's workers)."""
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out += group_pids(int(k))
    return out


def stat_ticks() -> list[int]:
    """The machine's CPU jiffies by kind (user, nice, system, idle, iowait, irq, softirq,
    steal, ...), from /proc/stat."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    fields = stat_ticks()
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _cpu(watch: dict[str, list[int]]) -> dict[str, float]:
    return {k: sum(cpu_seconds(p) for pid in pids for p in group_pids(pid))
            for k, pids in watch.items()}


def run_wrk(name: str, url: str, links_file: Path, script: Path, *, threads: int = 2,
            connections: int = 64, duration_s: float = 10.0, rate: float = 0.0,
            pool: int = 65536, spread: bool = True, accept_json: bool = True,
            watch: dict[str, list[int]] | None = None) -> WrkResult:
    """One wrk run over the links of ``links_file`` (each opened once) that ends when
    they are all opened or after ``duration_s``; ``rate`` > 0: open loop at that many
    requests per second in all. ``watch``: CPU seconds to report, by name (each pid
    with its descendants).

    NOTE: the CPU of a worker that exits meanwhile is not counted."""
    watch = watch or {}
    before = _cpu(watch)
    stat0 = stat_ticks()
    per_thread = rate / threads if rate else 0.0
    marker = links_file.with_suffix(".done")
    marker.unlink(missing_ok=True)
    cmd = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{duration_s:.0f}s",
           "--timeout", "10s", "-s", str(script), url, "--", str(links_file), str(threads),
           str(pool), "spread" if spread else "packed", f"{per_thread:.3f}",
           "json" if accept_json else "html", str(marker)]
    t0 = time.monotonic()
    c0 = os.times()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Every thread out of links: stop wrk now rather than at the end of -d (SIGINT
        # ends its wait early and it still prints its figures).
        all_sent_at = None
        while proc.poll() is None:
            try:
                lines = marker.read_text().split()
            except OSError:
                lines = []
            if all_sent_at is None and sum(x.startswith("s") for x in lines) >= threads:
                all_sent_at = time.monotonic()
            if sum(x.startswith("d") for x in lines) >= threads or (
                    all_sent_at is not None and time.monotonic() - all_sent_at > 12):
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.2)
        stdout, stderr = proc.communicate(timeout=duration_s + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - t0
    c1 = os.times()
    after = _cpu(watch)
    stat1 = stat_ticks()
    total = sum(stat1) - sum(stat0)
    out = WrkResult(name, offered=rate)
    out.steal = (stat1[7] - stat0[7]) / total if total > 0 and len(stat1) > 7 else 0.0
    out.cpu = {k: after[k] - before[k] for k in watch}
    out.cpu["wrk"] = (c1.children_user + c1.children_system) - (c0.children_user
                                                                + c0.children_system)
    m = re.search(r"^CG_THREADS (.*)$", stdout, re.M)
    lat = re.search(r"^CG_LATENCY (\S+) (\S+) (\S+) (\S+) (\d+) (\d+)$", stdout, re.M)
    slip = re.search(r"^CG_SLIP (\S+) (\S+) (\S+) (\d+)$", stdout, re.M)
    if m is None or lat is None or slip is None:
        raise RuntimeError(f"wrk gave no figures ({proc.returncode}):\n{stdout}\n{stderr}")
    states = [json.loads(x) for x in m.group(1).split("|") if x]
    for st in states:
        for k in ("admitted", "waiting", "302", "403", "429", "other", "spare", "sent"):
            out.counts[k] = out.counts.get(k, 0) + int(st[k])
    firsts = [st["first_us"] for st in states if st["first_us"]]
    lasts = [st["last_us"] for st in states if st["last_us"]]
    out.seconds = (max(lasts) - min(firsts)) / 1e6 if firsts and lasts else wall
    out.p50_ms, out.p90_ms, out.p99_ms, out.max_ms = (float(lat.group(i)) / 1000
                                                      for i in range(1, 5))
    out.requests, out.errors = int(lat.group(5)), int(lat.group(6))
    out.slip_p99_ms = float(slip.group(2)) / 1000
    out.slip_max_ms = float(slip.group(3)) / 1000
    out.late = int(slip.group(4))
    return out


def summary_json(results: Sequence[WrkResult]) -> list[dict[str, Any]]:
    return [{"name": r.name, "counts": r.counts, "seconds": r.seconds, "rate": r.rate(),
             "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
             "slip_p99_ms": r.slip_p99_ms, "offered": r.offered, "cpu": r.cpu,
             "steal": r.steal}
            for r in results]
