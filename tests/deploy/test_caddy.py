"""deploy/caddy/Caddyfile in front of a real gateway, on loopback: a student's https join
works through Caddy (page, cookie, waiting-room WebSocket), and the gateway records the
student's own address from Caddy's X-Forwarded-For, never one the client forged.

Caddy gets the deploy file unchanged, imported under global options that make it issue
certificates from its own local CA (``local_certs``) instead of Let's Encrypt, keep its
state in a scratch folder and listen on free ports."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import require_program
from tests.gateway.helpers import ROSTER, class_body, token_of
from tests.gateway.test_cli_e2e import _make_teacher, start_serve, stop

from .cluster import CLI, DEPLOY, free_port, port_open

pytestmark = pytest.mark.slow

CADDYFILE = DEPLOY / "caddy" / "Caddyfile"
# The student's machine: another loopback address than Caddy's own (127.0.0.1), so the
# address the gateway records tells the two apart.
STUDENT_IP = "127.0.0.2"
FORGED_IP = "203.0.113.9"


def test_caddyfile_is_valid_for_a_real_domain() -> None:
    caddy = require_program("caddy")
    env = dict(os.environ, CLASSGUARD_DOMAIN="lop.example.edu.vn")
    res = subprocess.run([caddy, "validate", "--config", str(CADDYFILE), "--adapter",
                          "caddyfile"], env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr
    # automatic certificates: no tls directive pins a certificate or the local CA
    text = "\n".join(ln.split("#", 1)[0] for ln in CADDYFILE.read_text().splitlines())
    assert "tls " not in text and "local_certs" not in text


@pytest.fixture
def caddy(tmp_path: Path) -> Iterator[tuple[int, Path, Any]]:
    """(https port, its root CA, a function starting Caddy for an upstream port)."""
    binary = require_program("caddy")
    https_port, http_port = free_port(), free_port()
    home = tmp_path / "caddy"
    home.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []

    def start(upstream: int) -> None:
        config = home / "Caddyfile"
        config.write_text(f"""{{
	local_certs
	skip_install_trust
	admin off
	http_port {http_port}
	https_port {https_port}
	storage file_system {home / "data"}
}}
import {CADDYFILE}
""")
        env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "xdg"),
                   XDG_CONFIG_HOME=str(home / "xdg"), CLASSGUARD_DOMAIN="localhost",
                   CLASSGUARD_UPSTREAM=f"127.0.0.1:{upstream}")
        log = (home / "caddy.log").open("w")
        logs.append(log)
        procs.append(subprocess.Popen([binary, "run", "--config", str(config), "--adapter",
                                       "caddyfile"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 30
        while not port_open(https_port):
            assert procs[-1].poll() is None, (home / "caddy.log").read_text()
            assert time.monotonic() < deadline, (home / "caddy.log").read_text()
            time.sleep(0.1)

    root = home / "data" / "pki" / "authorities" / "local" / "root.crt"
    yield https_port, root, start
    for p in procs:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for fh in logs:
        fh.close()


def _audit_ips(env: dict[str, str], ip: str) -> list[dict[str, Any]]:
    res = subprocess.run(CLI + ["audit", "search", "--ip", ip], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]


def test_https_join_through_caddy(tmp_path: Path, redis_url: str, redis_prefix: str,
                                  caddy: tuple[int, Path, Any]) -> None:
    https_port, root_ca, start_caddy = caddy
    base = f"https://localhost:{https_port}"
    env = dict(os.environ, CLASSGUARD_DATA_DIR=str(tmp_path / "data"),
               CLASSGUARD_REDIS_URL=redis_url, CLASSGUARD_REDIS_PREFIX=redis_prefix,
               CLASSGUARD_TRUSTED_PROXIES="127.0.0.1/32")
    env.pop("CLASSGUARD_COOKIE_SECURE", None)
    token = _make_teacher(env, [])
    port = free_port()
    served = start_serve(env, port, tmp_path / "serve.log", "--public-url", base)
    try:
        start_caddy(port)
        ctx = ssl.create_default_context(cafile=str(root_ca))

        async def flow() -> None:
            auth = {"Authorization": f"Bearer {token}"}
            conn = aiohttp.TCPConnector(ssl=ctx)
            async with aiohttp.ClientSession(base, headers=auth, connector=conn) as api:
                r = await api.post("/api/v1/classes", json=class_body("strict"))
                assert r.status == 201, await r.text()
                cid = (await r.json())["id"]
                assert (await api.put(f"/api/v1/classes/{cid}/roster", json=ROSTER)).status == 200
                links = (await (await api.post(f"/api/v1/classes/{cid}/links")).json())["links"]
            assert links[0]["url"].startswith(base + "/j/")
            # the student, from their own address, with a forged X-Forwarded-For
            student = aiohttp.TCPConnector(ssl=ctx, local_addr=(STUDENT_IP, 0),
                                           family=socket.AF_INET)
            async with aiohttp.ClientSession(base, connector=student) as phone:
                r = await phone.get(f"/j/{token_of(links[0])}", headers={
                    "Accept": "application/json", "X-Forwarded-For": FORGED_IP})
                body = await r.json()
                assert r.status == 200 and body["status"] == "waiting", body
                # Secure cookies are kept over https
                cookie = r.headers.getall("Set-Cookie")
                assert any(c.startswith("cg_dev=") and "Secure" in c for c in cookie), cookie
                assert r.headers.get("Strict-Transport-Security")
                # the waiting room's WebSocket through Caddy
                async with phone.ws_connect(body["ws"]) as ws:
                    msg = await ws.receive_json(timeout=10)
                    assert msg["type"] == "waiting", msg

        asyncio.run(flow())
        # the gateway recorded the student's address as Caddy saw it, not the forged one
        deadline = time.monotonic() + 60
        while not _audit_ips(env, STUDENT_IP):
            assert time.monotonic() < deadline, "no audit record from the student's address"
            time.sleep(0.5)
        assert _audit_ips(env, FORGED_IP) == []
    finally:
        stop(served)


def test_caddy_is_in_the_ci_packages() -> None:
    run = (DEPLOY.parent / ".ci" / "run").read_text()
    packages = next(ln for ln in run.splitlines() if ln.startswith("APT_PACKAGES="))
    assert "caddy" in packages.split('"')[1].split()
    assert shutil.which("caddy") or os.environ.get("CI") != "true"
