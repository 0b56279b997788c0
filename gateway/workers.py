"""``classguard serve --workers N``: N event-loop processes on one port, one supervisor.

Layout of a supervised gateway (N >= 2)::

    classguard serve --workers N        the supervisor: no HTTP, no event-loop work
    ├── redis-server                    the embedded Redis, when no URL is configured
    ├── worker 0 .. worker N-1          ``gateway.cli serve`` each, every one binding the
    │                                   port with SO_REUSEPORT (the kernel spreads new
    │                                   connections across their listening sockets)
    └── sequencer                       the audit sequencer alone (no HTTP)

Decisions:

* **Workers are fresh interpreters** (``sys.executable -m gateway.cli serve``), not forks:
  the supervisor runs an event loop of its own (the embedded Redis is started on it) and
  a fork of a running loop inherits its selector, its signal wake-up fd and every
  socket. A worker costs one import of the package (about a second, 60-70 MiB).
* **The supervisor owns what is shared**: it starts the embedded Redis and hands its
  socket to the workers as ``CLASSGUARD_REDIS_URL``, and it creates the data dir's keys
  before any worker starts (N workers creating keys at once would race).
* **The audit sequencer gets a process of its own.** It is the one piece of work that
  every join of every worker feeds (hashing, batch commits, checkpoint signatures); in
  a serving worker it competes with that worker's joins on one event loop. The lease in
  Redis still decides who leads across boxes; within one box only this process bids.
* **Restarts with backoff**: a worker (or the sequencer) that exits while the group
  is running is started again after 0.5 s, doubling per consecutive failure of that
  slot up to 30 s; a process that lived ``STABLE_S`` seconds starts the count afresh.
* **Fail at start, loudly**: a process that exits before it reports ready is a start
  failure; after ``MAX_START_FAILURES`` of them in a row with no process becoming ready
  in between, the supervisor stops everything and exits 1 (a port in use, a bad
  setting, Redis unreachable: restarting would not help).
* **SIGTERM or SIGINT stop everything**: SIGTERM to every child, which closes its
  sockets and finishes what it was doing (``serve``'s own clean-up), SIGKILL to what is
  left after ``STOP_GRACE_S``, then the embedded Redis, then exit 0.
* **Children never outlive the supervisor**: each gets ``PR_SET_PDEATHSIG`` (SIGTERM),
  so a supervisor killed with -9 takes its workers along, as it does its Redis.
* **Metrics**: prometheus-client's multiprocess mode. The supervisor makes a fresh
  directory per start (``PROMETHEUS_MULTIPROC_DIR``, under ``<data_dir>/run/``), marks
  each dead child's files
  (``mark_process_dead``) and removes the directory at the end; see gateway/metrics.py
  for how each metric is aggregated.

NOTE: with SO_REUSEPORT each worker has its own accept queue. Connections the kernel had
already queued on a worker that dies are reset (never answered, so never acknowledged);
Linux 5.14+ moves them to a sibling with ``net.ipv4.tcp_migrate_req = 1``. It also means
another process of the same user could bind the port alongside; the embedded Redis's
owner lock keeps two gateways off one data dir, not off one port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .child_process import die_with_parent
from .config import Settings

__all__ = [
    "MAX_START_FAILURES",
    "Supervisor",
    "WorkersError",
    "parse_workers",
    "usable_cpus",
]

log = logging.getLogger("classguard.workers")

MAX_WORKERS: Final = 256
MAX_START_FAILURES: Final = 5
BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
STABLE_S: Final = 30.0
START_TIMEOUT_S: Final = 120.0
STOP_GRACE_S: Final = 20.0
READY_FD_ENV: Final = "CLASSGUARD_WORKER_READY_FD"


class WorkersError(ValueError):
    """A bad ``--workers`` value or a group that cannot start."""

    code: Final = "workers"


# --- pure helpers ---------------------------------------------------------------------


def cgroup_cpu_limit(cpu_max: str | None) -> int | None:
    """The CPUs a cgroup v2 ``cpu.max`` text allows (quota / period, rounded up);
    None when there is no quota ("max") or the text is not understood."""
    if not cpu_max:
        return None
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def usable_cpus(affinity: set[int] | None = None, cpu_max: str | None = None) -> int:
    """The CPUs this process may run on: its affinity mask (``os.sched_getaffinity``,
    as taskset, cpusets and systemd's CPUAffinity= set it), capped by a cgroup v2 CPU
    quota when there is one (a container's ``--cpus``, Kubernetes' CPU limit), which
    the mask does not show."""
    if affinity is None:
        affinity = os.sched_getaffinity(0)
    n = max(1, len(affinity))
    limit = cgroup_cpu_limit(cpu_max)
    return min(n, limit) if limit is not None else n


def _read_cpu_max() -> str | None:
    try:
        return Path("/sys/fs/cgroup/cpu.max").read_text()
    except OSError:
        return None


def parse_workers(value: str | int | None, *, cpus: Callable[[], int] | None = None) -> int:
    """``--workers``: a whole number 1-256 or ``auto`` (:func:`usable_cpus`).

    None (not given) is 1: see docs/operations.md, "Workers", for why the default is
    one process and not ``auto``."""
    if value is None:
        return 1
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        text = str(value).strip().lower()
        if text == "auto":
            count = cpus() if cpus is not None else usable_cpus(cpu_max=_read_cpu_max())
            return max(1, min(MAX_WORKERS, count))
        if not text.isdigit():
            raise WorkersError(f"workers: must be a whole number 1-{MAX_WORKERS} or auto, "
                               f"got {value!r}")
        n = int(text)
    if not 1 <= n <= MAX_WORKERS:
        raise WorkersError(f"workers: must be a whole number 1-{MAX_WORKERS} or auto, "
                           f"got {value!r}")
    return n


def backoff_s(failures: int) -> float:
    """Delay before restarting a slot that failed ``failures`` times in a row."""
    if failures <= 0:
        return 0.0
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (failures - 1)))


# --- the supervisor -------------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    name: str  # "worker 0", "sequencer"
    argv: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    ready: bool = False
    failures: int = 0  # consecutive, for the backoff
    restarts: int = 0
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Runs ``workers`` serving processes and one sequencer process until a signal.

    ``worker_argv`` is the command line of one serving worker (``gateway.cli serve``
    with the user's flags); ``--worker I`` is appended. ``sequencer_argv`` likewise,
    for the sequencer process. ``env`` is the environment every child gets."""

    def __init__(self, settings: Settings, workers: int, *, worker_argv: Sequence[str],
                 sequencer_argv: Sequence[str], env: dict[str, str],
                 max_start_failures: int = MAX_START_FAILURES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.n = workers
        self._worker_argv = list(worker_argv)
        self._sequencer_argv = list(sequencer_argv)
        self._env = dict(env)
        self._max_start_failures = max_start_failures
        self._clock = clock
        self._slots: list[_Slot] = []
        self._stopping = asyncio.Event()
        self._start_failures = 0  # consecutive, over all slots
        self._failed: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.metrics_dir: Path | None = None

    async def run(self) -> int:
        """Start the group, keep it running, stop it; the exit status."""
        from .embedded_redis import EmbeddedRedis, EmbeddedRedisError

        s = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        embedded = None
        self.metrics_dir = await asyncio.to_thread(fresh_metrics_dir, Path(s.data_dir))
        try:
            env = dict(self._env)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
            if s.embedded_redis:
                embedded = EmbeddedRedis(Path(s.data_dir),
                                         maxmemory_bytes=s.embedded_redis_maxmemory_bytes)
                try:
                    env["CLASSGUARD_REDIS_URL"] = await embedded.start()
                except EmbeddedRedisError as exc:
                    sys.stderr.write(f"classguard: error: {exc.message}\n")
                    return 1
            await asyncio.to_thread(prepare_data_dir, s)
            base_id = s.node_id
            for i in range(self.n):
                wenv = dict(env, CLASSGUARD_NODE_ID=f"{base_id}-w{i}")
                self._slots.append(_Slot(f"worker {i}", [*self._worker_argv, "--worker", str(i)],
                                         wenv))
            self._slots.append(_Slot("sequencer", list(self._sequencer_argv),
                                     dict(env, CLASSGUARD_NODE_ID=f"{base_id}-seq")))
            for slot in self._slots:
                self._spawn_later(slot, 0.0)
            await self._stopping.wait()
        finally:
            await self._stop_all()
            if embedded is not None:
                await embedded.stop()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        if self._failed is not None:
            sys.stderr.write(f"classguard: error: {self._failed}\n")
            return 1
        return 0

    # --- children ---

    def _spawn_later(self, slot: _Slot, delay: float) -> None:
        task = asyncio.get_running_loop().create_task(self._run_slot(slot, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_slot(self, slot: _Slot, delay: float) -> None:
        if delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        if self._stopping.is_set():
            return
        read_fd, write_fd = os.pipe()
        env = dict(slot.env, **{READY_FD_ENV: str(write_fd)})
        try:
            proc = await asyncio.create_subprocess_exec(
                *slot.argv, env=env, pass_fds=(write_fd,), stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=die_with_parent())  # noqa: PLW1509 - prctl only
        except OSError as exc:
            os.close(read_fd)
            self._give_up(f"{slot.name} could not start: {exc}")
            return
        finally:
            os.close(write_fd)  # the child has its copy; EOF on read_fd once it exits
        slot.proc, slot.ready, slot.started_at = proc, False, self._clock()
        slot.pids.append(proc.pid)
        log.info("%s started (pid %d)", slot.name, proc.pid)
        ready_task = asyncio.get_running_loop().create_task(self._await_ready(slot, read_fd))
        self._tasks.add(ready_task)
        ready_task.add_done_callback(self._tasks.discard)
        code = await proc.wait()
        ready_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ready_task
        self._mark_dead(proc.pid)
        if self._stopping.is_set():
            return
        lived = self._clock() - slot.started_at
        if not slot.ready:
            self._start_failures += 1
            slot.failures += 1
            log.error("%s (pid %d) exited with %s before it was ready (%d start failures "
                      "in a row)", slot.name, proc.pid, _status(code), self._start_failures)
            if self._start_failures >= self._max_start_failures:
                self._give_up(f"workers keep dying at start ({self._start_failures} in a row, "
                              f"the last: {slot.name} exited with {_status(code)}); "
                              "see the log above")
                return
        else:
            slot.failures = 1 if lived >= STABLE_S else slot.failures + 1
            log.error("%s (pid %d) exited with %s after %.1f s; restarting", slot.name,
                      proc.pid, _status(code), lived)
        slot.restarts += 1
        self._spawn_later(slot, backoff_s(slot.failures))

    async def _await_ready(self, slot: _Slot, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
        try:
            line = await asyncio.wait_for(reader.readline(), START_TIMEOUT_S)
        except TimeoutError:
            log.error("%s did not report ready within %.0f s; stopping it", slot.name,
                      START_TIMEOUT_S)
            if slot.proc is not None and slot.proc.returncode is None:
                slot.proc.kill()
            return
        finally:
            transport.close()
        if line.strip() == b"ready":
            slot.ready = True
            self._start_failures = 0
            if all(s.ready for s in self._slots):
                print(f"ClassGuard listening on {self.settings.public_url} "
                      f"({self.n} workers and a sequencer, pids "
                      f"{' '.join(str(s.proc.pid) for s in self._slots if s.proc)})",
                      flush=True)

    def _mark_dead(self, pid: int) -> None:
        if self.metrics_dir is None:
            return
        from prometheus_client import multiprocess

        # Removes the dead process's live* gauge files; its counters and histograms
        # stay (what it counted happened).
        multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    def _give_up(self, why: str) -> None:
        if self._failed is None:
            self._failed = why
        self._stopping.set()

    async def _stop_all(self) -> None:
        self._stopping.set()
        procs = [s.proc for s in self._slots if s.proc is not None and s.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if procs:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs],
                               timeout=STOP_GRACE_S)
            for p in procs:
                if p.returncode is None:
                    log.error("pid %d did not stop within %.0f s; killing it", p.pid,
                              STOP_GRACE_S)
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            for p in procs:
                await p.wait()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def pids(self) -> dict[str, int]:
        """Live children by slot name (for logs and tests)."""
        return {s.name: s.proc.pid for s in self._slots
                if s.proc is not None and s.proc.returncode is None}


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def fresh_metrics_dir(data_dir: Path) -> Path:
    """A new, empty ``<data_dir>/run/metrics-<host>-<pid>-*`` for this supervisor's
    group, after removing this host's that belong to supervisors that are gone (killed
    with -9). In the data dir, not /tmp: it is the one place the gateway may always
    write (a read-only root filesystem in a container, PrivateTmp under systemd).
    NOTE: the host name keeps containers that share a data volume (and may reuse pids
    in their own namespaces) off each other's directories."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    root = data_dir / "run"
    root.mkdir(mode=0o700, exist_ok=True)
    for old in root.glob(f"metrics-{host}-*"):
        pid_text = old.name[len(f"metrics-{host}-"):].split("-")[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"metrics-{host}-{os.getpid()}-", dir=root))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_data_dir(s: Settings) -> None:
    """Create the data dir and its keys once, before any worker reads them."""
    from audit import AuditSigningKey

    from .keys import JoinKeyring
    from .secretbox import SecretBox

    data = Path(s.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    keys_dir = data / "keys"
    JoinKeyring.load_or_create(keys_dir / "join", clock=time.time)
    SecretBox.load_or_create(keys_dir / "secretbox.key")
    AuditSigningKey.load_or_create(keys_dir / "audit.key", s.audit_origin)


def report_ready() -> None:
    """Tell the supervisor (if any) that this process serves; a no-op otherwise."""
    fd_text = os.environ.pop(READY_FD_ENV, None)
    if not fd_text or not fd_text.isdigit():
        return
    fd = int(fd_text)
    try:
        os.write(fd, b"ready\n")
    except OSError:
        return
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


async def run_sequencer_process(settings: Settings) -> int:
    """The sequencer process of a supervised group: the audit sequencer and nothing
    else, until SIGTERM/SIGINT. Exits 1 if the sequencer stops on its own (the
    supervisor then starts it again)."""
    from audit import AuditSigningKey, Sequencer

    from .metrics import sequencer_leader_gauge
    from .redis_mux import Multiplexed
    from .services import redis_clients

    s = settings
    url = s.redis_url
    clients = redis_clients(s, url)
    await clients.text.aclose()  # the sequencer reads and writes bytes only
    raw = clients.raw
    fast = Multiplexed.from_url(url, decode=False) if url and not s.redis_sentinels else None
    key = await asyncio.to_thread(AuditSigningKey.load_or_create,
                                  Path(s.data_dir) / "keys" / "audit.key", s.audit_origin)
    seq = Sequencer(raw, prefix=s.redis_prefix, signer=key, origin=s.audit_origin,
                    clock=lambda: int(time.time() * 1000), node_id=s.node_id, fast=fast)
    leader = sequencer_leader_gauge()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = loop.create_task(seq.run())
    report_ready()
    log.info("audit sequencer %s running", s.node_id)
    status = 0
    try:
        while not stop.is_set():
            leader.set(1 if seq.is_leader else 0)
            if task.done():
                exc = None if task.cancelled() else task.exception()
                log.error("the audit sequencer stopped: %r", exc)
                status = 1
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await clients.aclose()
        if fast is not None:
            await fast.aclose()
    return status
