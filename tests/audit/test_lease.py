"""audit/lease.py against a real Redis: one holder at a time, fenced by its token."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from audit.lease import Lease


async def test_one_holder_and_only_the_holder_renews_or_releases(
        redis: aioredis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}lease"
    a = Lease(redis, key, token="a", ttl_ms=5000)
    b = Lease(redis, key, token="b", ttl_ms=5000)
    assert await a.acquire() is True
    assert await b.acquire() is False
    assert await b.renew() is False
    assert await b.release() is False
    assert await redis.get(key) == "a"
    # the holder taking it again (a reply it missed) keeps it and extends it
    await redis.pexpire(key, 100)
    assert await a.acquire() is True
    assert await redis.pttl(key) > 1000
    assert await a.renew() is True
    assert await a.release() is True
    assert await redis.get(key) is None
    assert await a.renew() is False  # nothing to renew once released
    assert await b.acquire() is True
    assert await redis.get(key) == "b"


async def test_an_expired_holder_cannot_touch_its_successor(
        redis: aioredis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}lease"
    old = Lease(redis, key, token="old", ttl_ms=50)
    new = Lease(redis, key, token="new", ttl_ms=5000)
    assert await old.acquire() is True
    await asyncio.sleep(0.15)
    assert await new.acquire() is True
    assert await old.renew() is False
    assert await old.release() is False
    assert await redis.get(key) == "new"


async def test_bytes_tokens_on_a_bytes_client(
        redis_bytes: aioredis.Redis, redis_prefix: str) -> None:
    """The audit sequencer's client and token are bytes."""
    key = f"{redis_prefix}lease"
    a = Lease(redis_bytes, key, token=b"node:1", ttl_ms=5000)
    assert await a.acquire() is True
    assert await Lease(redis_bytes, key, token=b"node:2", ttl_ms=5000).acquire() is False
    assert await redis_bytes.get(key) == b"node:1"
    assert await a.release() is True
