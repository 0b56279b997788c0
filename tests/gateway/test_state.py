"""gateway/state.py against a real Redis: behaviour the join flow relies on."""

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
            store = gw.svc.store
            assert store is not None
            assert await r.script_exists(store._snapshot.sha, store._gcra.sha) == [True, True]
        finally:
            await r.aclose()
