"""End to end through the real command line: ``classguard serve`` as a subprocess,
staff accounts made with ``classguard user``, the student driven with the ``websockets``
client library. Once on the external Redis, once on the embedded one."""

from __future__ import annotations

import asyncio
import json
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
import pytest
import websockets

from .helpers import ROSTER, class_body, token_of

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(args: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    res = subprocess.run(CLI + args, env=env, input=stdin, capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, f"{args}: {res.stdout}\n{res.stderr}"
    return res.stdout


class Served:
    def __init__(self, proc: subprocess.Popen[str], base: str, log: Path, fh: Any) -> None:
        self.fh = fh
        self.proc = proc
        self.base = base
        self.log = log


def start_serve(env: dict[str, str], port: int, log: Path, *extra: str) -> Served:
    fh = log.open("w")
    proc = subprocess.Popen(CLI + ["serve", "--port", str(port), *extra], env=env,
                            stdout=fh, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fh.close()
            raise AssertionError(f"serve exited early:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        proc.wait()
        fh.close()
        raise AssertionError(f"serve did not listen:\n{log.read_text()}")
    return Served(proc, base, log, fh)


def stop(s: Served) -> None:
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
        try:
            s.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
    s.fh.close()


@pytest.fixture
def cli_env(tmp_path: Path, redis_prefix: str) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env.update({
        "CLASSGUARD_DATA_DIR": str(tmp_path / "data"),
        "CLASSGUARD_COOKIE_SECURE": "false",
        "CLASSGUARD_REDIS_PREFIX": redis_prefix,
    })
    env.pop("CLASSGUARD_REDIS_URL", None)
    env.pop("REDIS_URL", None)
    yield env


async def _flow(base: str, token: str) -> None:
    """Teacher creates a class; a student knocks; the teacher admits over the control
    socket; the student's socket gets the admission; /go answers 302 once."""
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url=base, headers=auth) as api:
        r = await api.post("/api/v1/classes", json=class_body("strict"))
        assert r.status == 201, await r.text()
        cid = (await r.json())["id"]
        r = await api.put(f"/api/v1/classes/{cid}/roster", json=ROSTER)
        assert r.status == 200
        r = await api.post(f"/api/v1/classes/{cid}/links")
        links = (await r.json())["links"]
    ws_base = base.replace("http://", "ws://")
    async with websockets.connect(f"{ws_base}/api/v1/classes/{cid}/control",
                                  additional_headers=auth) as teacher:
        state = json.loads(await teacher.recv())
        assert state["type"] == "state"
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(base_url=base, cookie_jar=jar) as phone:
            r = await phone.get(f"/j/{token_of(links[0])}",
                                headers={"Accept": "application/json"})
            body = await r.json()
            assert body["status"] == "waiting"
            device = r.cookies["cg_dev"].value
            async with websockets.connect(f"{ws_base}{body['ws']}",
                                          additional_headers={"Cookie": f"cg_dev={device}"}) as stu:
                assert json.loads(await stu.recv())["type"] == "waiting"
                knock: dict[str, Any] = {}
                while knock.get("type") != "knock":
                    knock = json.loads(await asyncio.wait_for(teacher.recv(), 5))
                await teacher.send(json.dumps({"action": "admit", "ticket": knock["ticket"]}))
                msg = json.loads(await asyncio.wait_for(stu.recv(), 5))
                assert msg["type"] == "admitted"
            r = await phone.get(msg["redirect"], allow_redirects=False)
            assert r.status == 302 and r.headers["Location"] == "https://meet.example.org/abc"
            r = await phone.get(msg["redirect"], allow_redirects=False)
            assert r.status == 404


def _make_teacher(env: dict[str, str], extra: list[str]) -> str:
    run_cli(["init", *extra], env)
    out = run_cli(["user", "add", "co.lan", "--role", "teacher", "--org", "school-a",
                   "--parent", "root", "--password-stdin", *extra], env,
                  stdin="a long enough password\n")
    assert "co.lan" in out
    return run_cli(["user", "token", "co.lan", *extra], env).split()[-1]


def test_serve_external_redis(cli_env: dict[str, str], tmp_path: Path, redis_url: str,
                              redis) -> None:
    extra = ["--redis-url", redis_url]
    token = _make_teacher(cli_env, extra)
    served = start_serve(cli_env, free_port(), tmp_path / "serve.log", *extra)
    try:
        asyncio.run(_flow(served.base, token))
        metrics = asyncio.run(_metrics(served.base))
    finally:
        stop(served)
    # The serving process set its start-up heap aside from the collector.
    frozen = re.search(r"^classguard_gc_frozen_objects (\S+)$", metrics, re.M)
    assert frozen is not None and float(frozen.group(1)) > 10_000


async def _metrics(base: str) -> str:
    async with aiohttp.ClientSession() as http:
        return await (await http.get(f"{base}/metrics")).text()


def _redis_pid(data: Path) -> int:
    return int((data / "redis" / "redis.pid").read_text().strip())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_serve_embedded_redis_survives_restart_and_never_orphans(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    port = free_port()
    served = start_serve(cli_env, port, tmp_path / "serve1.log")
    try:
        # the CLI talks to the running gateway's embedded Redis through its socket
        token = _make_teacher(cli_env, [])
        asyncio.run(_flow(served.base, token))
        pid = _redis_pid(data)
        assert _alive(pid)
        served.proc.kill()  # kill -9: no cleanup code runs in the gateway
        served.proc.wait()
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "embedded redis-server outlived the gateway"
    finally:
        stop(served)
    # restart on the same data dir: the account (and its token) survived in the AOF
    served = start_serve(cli_env, port, tmp_path / "serve2.log")
    try:
        async def ready() -> int:
            async with aiohttp.ClientSession() as s:
                for _ in range(50):
                    r = await s.get(f"{served.base}/readyz")
                    if r.status == 200:
                        break
                    await asyncio.sleep(0.1)
                r = await s.get(f"{served.base}/api/v1/classes",
                                headers={"Authorization": f"Bearer {token}"})
                return r.status
        assert asyncio.run(ready()) == 200
    finally:
        stop(served)
    assert (data / "keys" / "join").stat().st_mode & 0o077 == 0
