"""Reads through the gateway's text client (``decode_responses=True``), typed: redis-py's
types cannot know that the client decodes its replies."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis


async def get(r: aioredis.Redis, key: str) -> str | None:
    return cast(str | None, await r.get(key))


async def hget(r: aioredis.Redis, key: str, field: str) -> str | None:
    return cast(str | None, await r.hget(key, field))


async def hgetall(r: aioredis.Redis, key: str) -> dict[str, str]:
    return cast(dict[str, str], await r.hgetall(key))


async def smembers(r: aioredis.Redis, key: str) -> set[str]:
    return cast(set[str], await r.smembers(key))
