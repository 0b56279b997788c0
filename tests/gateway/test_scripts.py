"""audit/scripts.py against a real Redis: scripts from .lua files, on both transports,
loaded again after the server forgets them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from audit.scripts import Script, ScriptRunner
from gateway.redis_mux import Multiplexed

ECHO = Script("echo", "return {KEYS[1], ARGV[1]}")
BROKEN = Script("broken", "return redis.call('NOT_A_COMMAND')")


@pytest.fixture
async def redis(embedded_redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A server of this session's own (the tests flush its script cache)."""
    r = aioredis.Redis.from_url(embedded_redis_url, decode_responses=True)
    try:
        yield r
    finally:
        await r.aclose()


@pytest.fixture(params=["redis-py", "multiplexed"])
async def runner(request: pytest.FixtureRequest, redis: aioredis.Redis,
                 embedded_redis_url: str) -> AsyncIterator[ScriptRunner]:
    if request.param == "redis-py":
        yield ScriptRunner(redis)
        return
    fast = Multiplexed.from_url(embedded_redis_url)
    assert fast is not None
    try:
        yield ScriptRunner(redis, fast)
    finally:
        await fast.aclose()


async def test_scripts_load_again_after_a_flush(
        runner: ScriptRunner, redis: aioredis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}k"
    await redis.delete(key)
    await redis.script_flush()
    assert await runner.run(ECHO, [key], ["a"]) == [key, "a"]
    assert await redis.script_exists(ECHO.sha) == [True]
    await redis.script_flush()
    res = await runner.pipeline([(ECHO, [key], ["b"]), (ECHO, [key], ["c"])],
                                [("SET", key, "v"), ("GET", key)])
    assert res[:2] == [[key, "b"], [key, "c"]] and res[3] == "v"
    assert await runner.command("GET", key) == "v"
    await redis.delete(key)


async def test_an_error_reply_is_raised(runner: ScriptRunner) -> None:
    with pytest.raises(ResponseError):
        await runner.run(BROKEN)
    with pytest.raises(ResponseError):
        await runner.command("NOT_A_COMMAND")


def test_shared_functions_come_first() -> None:
    """A script composed from files: the shared Lua functions, then the script."""
    gcra = Script.load("gateway.stores", "gcra", libs=("lib_gcra",))
    assert gcra.source.index("local function gcra") < gcra.source.index("return gcra(#KEYS)")
    assert len(gcra.sha) == 40
