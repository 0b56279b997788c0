"""gateway/stores/ against a real Redis: behaviour the join flow relies on."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from .helpers import make_class, open_link, running_gateway


async def test_snapshot_survives_a_flushed_script_cache(
        tmp_path: Path, embedded_redis_url: str, redis_prefix: str) -> None:
    """The snapshot queues EVALSHA without asking SCRIPT EXISTS first; after a Redis
    restart or failover (an empty script cache) it loads the scripts and goes on."""
    async with running_gateway(tmp_path, embedded_redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        _, links = await make_class(gw, api)
        phone = gw.client()
        status, body = await open_link(phone, links[0])
        assert (status, body["status"]) == (200, "waiting")
        r = aioredis.Redis.from_url(embedded_redis_url)
        try:
            await r.script_flush()
            status, body = await open_link(phone, links[0])
            assert (status, body["status"], body["reason"]) == (200, "waiting", "awaiting_host")
            from gateway.stores.join import SNAPSHOT
            from gateway.stores.limits import GCRA

            assert await r.script_exists(SNAPSHOT.sha, GCRA.sha) == [True, True]
        finally:
            await r.aclose()


async def test_code_attempt_charges_wrong_codes_only_and_refuses_unseen(
        redis: aioredis.Redis, redis_prefix: str) -> None:
    """``ClassStore.code_attempt``: a correct code is charged to its link only, a wrong
    (or malformed) one to every failure budget; once one of those is drained every code
    is refused before the lookup, so the answer says nothing about the code."""
    from gateway.joinflow import CODE_LINK_LIMIT
    from gateway.stores import ClassStore, Limit

    now = [1_000_000.0]
    store = ClassStore(redis, redis_prefix, clock=lambda: now[0])
    await redis.set(store.keys.code("right"), "c1|j1")
    budgets = (Limit("ip:203.0.113.9", per_second=1, burst=3), Limit("code:space", 10, 100))
    for _ in range(20):  # correct codes never touch the failure budgets
        status, _, _, found = await store.code_attempt("right", budgets, CODE_LINK_LIMIT)
        if status == "link_limited":
            break
        assert (status, found) == ("found", "c1|j1")
    assert status == "link_limited"  # the link's own budget: burst 10
    assert await redis.get(store.keys.ratelimit("ip:203.0.113.9")) is None
    assert await redis.get(store.keys.ratelimit("code:space")) is None
    assert [(await store.code_attempt(h, budgets, CODE_LINK_LIMIT))[0]
            for h in ("wrong1", None, "wrong2")] == ["wrong"] * 3
    status, wait, limit, found = await store.code_attempt("right", budgets, CODE_LINK_LIMIT)
    assert (status, limit, found) == ("limited", budgets[0], None) and wait > 0
    now[0] += 1.0  # one more failure allowed: a wrong code takes it, the right one waits
    assert (await store.code_attempt("wrong3", budgets, CODE_LINK_LIMIT))[0] == "wrong"
    assert (await store.code_attempt("right", budgets, CODE_LINK_LIMIT))[0] == "limited"
