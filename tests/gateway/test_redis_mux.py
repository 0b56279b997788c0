"""The multiplexed join-path Redis client (gateway.redis_mux), against real servers."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis_mux import Multiplexed
from tests.conftest import _free_port, _start_redis_server
from tests.gateway.helpers import running_gateway

SCRIPT = """
return {KEYS[1], tonumber(ARGV[1]) + 1, false, {'nested', ARGV[2]}, redis.call('INCR', KEYS[1])}
"""


def test_from_url_takes_plain_servers_only() -> None:
    m = Multiplexed.from_url("redis://:s%40cret@db.example:6380/3")
    assert m is not None and (m.host, m.port, m.password, m.db) == ("db.example", 6380,
                                                                     "s@cret", 3)
    m = Multiplexed.from_url("unix:///run/cg/redis.sock?db=2")
    assert m is not None and (m.path, m.db) == ("/run/cg/redis.sock", 2)
    m = Multiplexed.from_url("redis://user:pw@h")
    assert m is not None and (m.username, m.password, m.port, m.db) == ("user", "pw", 6379, 0)
    # TLS, and options only redis-py understands, stay with redis-py.
    assert Multiplexed.from_url("rediss://h:6379/0") is None
    assert Multiplexed.from_url("redis://h:6379/0?health_check_interval=30") is None
    assert Multiplexed.from_url("redis://h:6379/x") is None


async def test_replies_match_redis_py(redis_url: str, redis_prefix: str,
                                      redis: aioredis.Redis) -> None:
    m = Multiplexed.from_url(redis_url)
    assert m is not None
    key = f"{redis_prefix}n"
    try:
        sha = await redis.script_load(SCRIPT)
        ours = await m.execute("EVALSHA", sha, 1, key, 41, "vi: Nguyễn")
        theirs = await redis.evalsha(sha, 1, key, 41, "vi: Nguyễn")
        assert ours == [key, 42, None, ["nested", "vi: Nguyễn"], 1]
        assert theirs[:4] == ours[:4] and theirs[4] == 2
        # A pipeline keeps its order; error replies come back as exception objects.
        res = await m.pipeline([("SET", f"{redis_prefix}s", "x"), ("HGETALL", key),
                                ("GET", f"{redis_prefix}s"), ("GET", f"{redis_prefix}none")])
        assert res[0] == "OK" and isinstance(res[1], ResponseError)
        assert res[2:] == ["x", None]
        with pytest.raises(NoScriptError):
            await m.execute("EVALSHA", "0" * 40, 0)
        raw = Multiplexed.from_url(redis_url, decode=False)
        assert raw is not None
        assert await raw.execute("GET", f"{redis_prefix}s") == b"x"
        await raw.aclose()
    finally:
        await m.aclose()


async def test_concurrent_callers_get_their_own_replies(redis_url: str, redis_prefix: str,
                                                        redis: aioredis.Redis) -> None:
    m = Multiplexed.from_url(redis_url)
    assert m is not None
    try:
        keys = [f"{redis_prefix}k{i}" for i in range(300)]
        await asyncio.gather(*[m.execute("SET", k, f"v{i}") for i, k in enumerate(keys)])
        got = await asyncio.gather(*[m.execute("GET", k) for k in keys])
        assert got == [f"v{i}" for i in range(300)]
        counts = await asyncio.gather(*[m.execute("INCR", f"{redis_prefix}c")
                                        for _ in range(500)])
        assert sorted(counts) == list(range(1, 501))
    finally:
        await m.aclose()


async def test_a_dropped_connection_fails_pending_and_reconnects(
        redis_url: str, redis_prefix: str, redis: aioredis.Redis) -> None:
    m = Multiplexed.from_url(redis_url)
    assert m is not None
    try:
        await m.execute("CLIENT", "SETNAME", "cg-mux-test")
        # A command blocked on the server is pending when the server drops the client.
        pending = asyncio.ensure_future(m.execute("BLPOP", f"{redis_prefix}never", 30))
        await asyncio.sleep(0.2)
        assert await redis.client_kill_filter(_type="normal", skipme=True) >= 1
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(pending, 5)
        # The next command opens a new connection.
        assert await m.execute("PING") == "PONG"
    finally:
        await m.aclose()


async def test_a_stalled_server_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts and never answers: the command fails (fail closed)."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    m = Multiplexed(host="127.0.0.1", port=port, reply_timeout_s=0.5)
    # With a password, the handshake itself gets no answer.
    monkeypatch.setattr("gateway.redis_mux.CONNECT_TIMEOUT_S", 0.5)
    auth = Multiplexed(host="127.0.0.1", port=port, password="pw")
    try:
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(m.execute("PING"), 10)
        with pytest.raises(RedisConnectionError, match="handshake"):
            await asyncio.wait_for(auth.execute("PING"), 10)
    finally:
        await m.aclose()
        await auth.aclose()
        server.close()
        await server.wait_closed()


async def test_refused_connection_is_a_connection_error() -> None:
    m = Multiplexed(host="127.0.0.1", port=_free_port())
    with pytest.raises(RedisConnectionError):
        await m.execute("PING")
    await m.aclose()


async def test_password_and_database(tmp_path: Path) -> None:
    from gateway.embedded_redis import find_redis_server

    proc, url, tmp = _start_redis_server(find_redis_server())
    try:
        admin = aioredis.Redis.from_url(url)
        await admin.config_set("requirepass", "pw-ø")
        await admin.aclose()
        port = url.rsplit(":", 1)[1].split("/")[0]
        good = Multiplexed.from_url(f"redis://:pw-%C3%B8@127.0.0.1:{port}/5")
        assert good is not None
        await good.execute("SET", "where", "db5")
        check = aioredis.Redis.from_url(f"redis://:pw-%C3%B8@127.0.0.1:{port}/5",
                                        decode_responses=True)
        assert await check.get("where") == "db5"
        await check.aclose()
        await good.aclose()
        bad = Multiplexed.from_url(f"redis://:wrong@127.0.0.1:{port}/0")
        assert bad is not None
        with pytest.raises(RedisConnectionError):  # AuthenticationError is one
            await bad.execute("PING")
        await bad.aclose()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


async def test_the_gateway_picks_its_transport(tmp_path: Path, redis_url: str,
                                               redis_prefix: str) -> None:
    async with running_gateway(tmp_path / "a", redis_url, redis_prefix) as gw:
        assert gw.svc.redis_fast is not None and gw.svc.store.scripts.fast is gw.svc.redis_fast
    pooled = redis_url + ("&" if "?" in redis_url else "?") + "health_check_interval=30"
    async with running_gateway(tmp_path / "b", pooled, redis_prefix) as gw:
        assert gw.svc.redis_fast is None and gw.svc.store.scripts.fast is None


async def test_audit_appends_through_the_shared_connection(
        redis_url: str, redis_prefix: str, redis_bytes: aioredis.Redis) -> None:
    """The audit log's appends (XADD, and WAIT when replicas are required) on the
    bytes connection: the records are the ones redis-py would have written."""
    from audit.errors import NotDurableError
    from audit.log import AuditLog

    fast = Multiplexed.from_url(redis_url, decode=False)
    assert fast is not None
    try:
        log = AuditLog(redis_bytes, prefix=redis_prefix, node_id="gw-mux", clock=lambda: 1000,
                       fast=fast)
        ids = await log.append_many([({"type": "join", "actor": "visitor", "reason": "x"},
                                      None),
                                     ({"type": "join", "actor": "student:s1"},
                                      {"ip": "192.0.2.7"})])
        assert len(ids) == 2 and len(set(ids)) == 2
        entries = await redis_bytes.xrange(log.keys.stream)
        assert len(entries) == 2
        first = entries[0][1][b"d"]
        assert b'"reason":"x"' in first and b"\n" not in first
        assert b"\n" in entries[1][1][b"d"]  # the personal blob after the record
        # WAIT with no replicas to confirm: the append is refused as not durable.
        strict = AuditLog(redis_bytes, prefix=redis_prefix, node_id="gw-mux",
                          clock=lambda: 1000, fast=fast, durability_replicas=1,
                          durability_timeout_ms=50)
        with pytest.raises(NotDurableError):
            await strict.append({"type": "join", "actor": "visitor"})
    finally:
        await fast.aclose()



def test_a_loading_server_is_a_connection_error_as_in_redis_py() -> None:
    """A Redis still loading its append-only file after a restart answers LOADING: the
    join path's transport raises what redis-py raises (a ConnectionError), so the gateway
    answers 503 "unavailable" rather than 500."""
    from redis.exceptions import BusyLoadingError, ConnectionError, ResponseError

    from gateway.redis_mux import _error

    err = _error(ResponseError("LOADING Redis is loading the dataset in memory"))
    assert isinstance(err, BusyLoadingError) and isinstance(err, ConnectionError)
    assert type(_error(ResponseError("ERR unknown command"))) is ResponseError
