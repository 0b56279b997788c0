"""`classguard janus-hook`: the event handler settings of one Janus server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.routes.platform_hooks import hook_secret_path
from meeting_adapters.janus import hook_credentials

CLI = [sys.executable, "-m", "gateway.cli", "janus-hook"]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CLASSGUARD_DATA_DIR=str(tmp_path / "data"),
               CLASSGUARD_PUBLIC_URL="https://classguard.truong.edu.vn")
    return subprocess.run(CLI + list(args), env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_prints_per_server_credentials(tmp_path: Path) -> None:
    a = _run(tmp_path, "--ws-url", "wss://janus-a.truong.edu.vn/ws")
    b = _run(tmp_path, "--ws-url", "wss://janus-b.truong.edu.vn/ws")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    secret = hook_secret_path(tmp_path / "data", "janus").read_text().strip()
    user, password = hook_credentials(secret, "wss://janus-a.truong.edu.vn/ws")
    assert a.stdout.splitlines() == [
        'backend = "https://classguard.truong.edu.vn/hooks/janus"',
        f'backend_user = "{user}"', f'backend_pwd = "{password}"']
    assert user not in b.stdout and password not in b.stdout
    assert secret not in a.stdout  # the shared secret itself is never printed


def test_bad_url_is_one_line(tmp_path: Path) -> None:
    res = _run(tmp_path, "--ws-url", "https://janus.example.org/")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "classguard: error: --ws-url must start with wss://\n"
