"""A real ``classguard serve`` for the attack suite.

One gateway subprocess per test module (``deployment`` is module-scoped): real Redis with
a key prefix of its own (deleted afterwards), staff accounts made with the real
``classguard user`` command, and nothing shared with the process running the tests but
the data directory (the tests read the join-token key from it to mint genuine tokens
with chosen times, which is what a clock-skewed or long-lived link looks like).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from .kit import Deployment, StaffAccount

CLI = [sys.executable, "-m", "gateway.cli"]
PASSWORD = "attack suite password, long enough"

# username -> (role, org). Everyone is in one root org, so the administrator also sees
# events that belong to no class (refused forgeries, failed code lookups).
ACCOUNTS = {
    "co.lan": ("teacher", "truong-a"),
    "thay.minh": ("teacher", "truong-a"),
    "it.hung": ("it", "truong-a"),
    "qt.hoa": ("admin", "truong-a"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(args: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    res = subprocess.run(CLI + args, env=env, input=stdin, capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, f"classguard {' '.join(args)}: {res.stdout}\n{res.stderr}"
    return res.stdout


def _add_accounts(env: dict[str, str]) -> dict[str, StaffAccount]:
    procs = []
    for name, (role, org) in ACCOUNTS.items():
        p = subprocess.Popen(CLI + ["user", "add", name, "--role", role, "--org", org,
                                    "--password-stdin"], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append((name, p))
    for name, p in procs:
        out, err = p.communicate(PASSWORD + "\n", timeout=60)
        assert p.returncode == 0, f"user add {name}: {out}\n{err}"
    accounts = {}
    for name, (role, org) in ACCOUNTS.items():
        token = _cli(["user", "token", name], env).split()[-1]
        accounts[name] = StaffAccount(name, role, org, token, PASSWORD)
    return accounts


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"classguard serve exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:  # noqa: S310
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError(f"classguard serve never became ready:\n{log.read_text()}")


def _delete_prefix(url: str, prefix: str) -> None:
    client = sync_redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


@pytest.fixture(scope="module")
def deployment(redis_url: str, tmp_path_factory: pytest.TempPathFactory,
               request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """``classguard serve`` on loopback for this module, with four staff accounts."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    tmp = tmp_path_factory.mktemp(f"attack-{name}")
    prefix = f"cga:{uuid.uuid4().hex[:12]}:"
    port = _free_port()
    env = dict(os.environ)
    env.update({
        "CLASSGUARD_DATA_DIR": str(tmp / "data"),
        "CLASSGUARD_REDIS_URL": redis_url,
        "CLASSGUARD_REDIS_PREFIX": prefix,
        "CLASSGUARD_COOKIE_SECURE": "false",
        "CLASSGUARD_LOG_LEVEL": "warning",
    })
    # A module may set more of the gateway's settings (``SERVE_ENV``), e.g. a trusted proxy.
    env.update(getattr(request.module, "SERVE_ENV", {}))
    env.pop("REDIS_URL", None)
    log = tmp / "serve.log"
    try:
        accounts = _add_accounts(env)
        with log.open("wb") as fh:
            proc = subprocess.Popen(CLI + ["serve", "--host", "127.0.0.1", "--port", str(port)],
                                    env=env, stdout=fh, stderr=subprocess.STDOUT)
            try:
                _wait_ready(proc, port, log)
                yield Deployment(base=f"http://127.0.0.1:{port}", data_dir=tmp / "data",
                                 accounts=accounts, log=log)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
    finally:
        _delete_prefix(redis_url, prefix)

