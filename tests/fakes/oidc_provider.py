"""A real OpenID provider for the sign-in tests: panva's ``oidc-provider`` (npm, OpenID
Certified) under Debian's ``node``, on loopback, configured by the test.

The package is pinned in tests/fakes/oidc/package.json and package-lock.json; it is
installed there with ``npm ci`` the first time (``.ci/run`` does it ahead). Without node or
npm the test skips, except under ``CI=true`` where it fails (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from tests.conftest import require_program

HERE = Path(__file__).parent / "oidc"
CLIENT_ID = "classguard-test"
CLIENT_SECRET = "test client secret, long enough for HS256 rules"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_installed() -> str:
    """node's path, with the pinned oidc-provider installed in tests/fakes/oidc."""
    node = require_program("node")
    if not (HERE / "node_modules" / "oidc-provider" / "package.json").exists():
        npm = require_program("npm")
        res = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                             cwd=HERE, capture_output=True, text=True, timeout=600,
                             check=False)
        if res.returncode != 0:
            msg = f"npm ci in {HERE} failed: {res.stderr[-2000:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(msg)
            pytest.skip(msg)
    return node


@dataclass
class Provider:
    issuer: str
    key: RSAKey  # the provider's signing key (private), for tokens a test forges
    process: subprocess.Popen[str]


def _spawn(node: str, config: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([node, str(HERE / "provider.js")], cwd=HERE, text=True,
                            env={**os.environ, "OIDC_TEST_CONFIG": json.dumps(config)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@asynccontextmanager
async def running_provider(*, redirect_uris: list[str],
                           accounts: dict[str, dict[str, Any]]) -> AsyncIterator[Provider]:
    """oidc-provider on a loopback port, with one confidential client (``CLIENT_ID``)
    and the given accounts (account id -> claims). Sign in on its pages with the
    account id as the login."""
    node = ensure_installed()
    port = _free_port()
    issuer = f"http://127.0.0.1:{port}"
    key = RSAKey.generate_key(2048, parameters={"kid": "test-1", "use": "sig", "alg": "RS256"},
                              private=True)
    config = {
        "issuer": issuer, "port": port, "accounts": accounts,
        "clients": [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                     "redirect_uris": redirect_uris,
                     "post_logout_redirect_uris": [u.split("/auth/")[0] + "/login"
                                                   for u in redirect_uris],
                     "grant_types": ["authorization_code"], "response_types": ["code"],
                     "token_endpoint_auth_method": "client_secret_basic"}],
        "jwks": {"keys": [key.as_dict(private=True)]},
    }
    proc = _spawn(node, config)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        if not line.startswith("listening"):
            raise AssertionError(f"oidc-provider did not start: {line}"
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        yield Provider(issuer, key, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
