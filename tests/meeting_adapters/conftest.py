"""Fixtures of the adapter tests: a real Janus on loopback, started once per session."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.janus_runner import JanusConfig, free_port, write_config
from tests.conftest import require_program


class RunningJanus:
    def __init__(self, cfg: JanusConfig, folder: Path) -> None:
        self.cfg = cfg
        self.folder = folder

    @property
    def ws_url(self) -> str:
        return self.cfg.ws_url

    @property
    def admin_key(self) -> str:
        return self.cfg.admin_key


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"janus exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("janus did not open its WebSocket port")


def start_janus(folder: Path, cfg: JanusConfig) -> subprocess.Popen[bytes]:
    binary = require_program("janus")
    write_config(folder, cfg)
    log = folder / "janus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-F", str(folder), "-C", str(folder / "janus.jcfg"), "-o"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    _wait_port(cfg.ws_port, proc, log)
    return proc


def stop_janus(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def janus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningJanus]:
    """A real Janus (Debian package) with the VideoRoom plugin, no event handler."""
    folder = tmp_path_factory.mktemp("janus")
    base = free_port() % 1000
    cfg = JanusConfig(ws_port=free_port(), rtp_min=41000 + base * 20, rtp_max=41019 + base * 20)
    proc = start_janus(folder, cfg)
    yield RunningJanus(cfg, folder)
    stop_janus(proc)
