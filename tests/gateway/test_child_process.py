"""gateway/child_process.py: a child started with ``die_with_parent`` goes when its parent
is killed with SIGKILL (no clean-up code runs), as Janus, Redis, roster parsers and
workers do; a child started without it outlives the parent (the test can fail)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .test_cli_e2e import _alive

PARENT = """
import asyncio, sys
from gateway.child_process import die_with_parent

async def main():
    hook = die_with_parent() if sys.argv[1] == "tied" else None
    proc = await asyncio.create_subprocess_exec("sleep", "300", preexec_fn=hook)
    print(proc.pid, flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


def _child_after_sigkill(mode: str, within_s: float) -> int:
    with subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE,
                          text=True, env=dict(os.environ)) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()
    deadline = time.monotonic() + within_s
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_child_dies_with_a_killed_parent() -> None:
    assert not _alive(_child_after_sigkill("tied", 10))
    loose = _child_after_sigkill("loose", 1)
    try:
        assert _alive(loose)  # without the hook the kernel leaves it running
    finally:
        os.kill(loose, signal.SIGKILL)


def test_every_program_the_gateway_starts_is_tied_to_it() -> None:
    """Each place that starts a child process passes ``die_with_parent``."""
    from pathlib import Path

    gateway = Path(__file__).resolve().parents[2] / "gateway"
    for name in ("janus_runner.py", "embedded_redis.py", "roster_worker.py", "workers.py"):
        text = (gateway / name).read_text()
        spawns = text.count("create_subprocess_exec(")
        assert spawns and text.count("die_with_parent()") >= spawns, name
