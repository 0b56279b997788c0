"""Cross-process events (gateway.bus) on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis

from gateway.bus import Bus


async def test_a_stalled_socket_does_not_hold_up_other_classes(
        redis: aioredis.Redis, redis_prefix: str) -> None:
    """One teacher's socket stops draining (its listener never returns): events for
    every other class, and later events, are still delivered at once; the events of
    one socket keep their order."""
    bus = Bus(redis, f"{redis_prefix}bus", f"{redis_prefix}revoke")
    runner = asyncio.create_task(bus.run())
    stalled = asyncio.Event()
    got: list[tuple[str, Any]] = []
    order: list[int] = []
    lock = asyncio.Lock()

    async def stuck(msg: dict[str, Any]) -> None:
        stalled.set()
        await asyncio.Event().wait()  # a send that never drains

    async def other(msg: dict[str, Any]) -> None:
        got.append(("other", msg["n"]))

    async def ordered(msg: dict[str, Any]) -> None:
        async with lock:  # as the control socket's send does
            if msg["n"] % 2 == 0:
                await asyncio.sleep(0.01)  # a slow write now and then
            order.append(msg["n"])

    try:
        await bus.wait_ready(5)
        bus.listen_class("c-stuck", stuck)
        bus.listen_class("c-other", other)
        bus.listen_class("c-ordered", ordered)
        await bus.publish("c-stuck", {"type": "knock", "n": 0})
        await asyncio.wait_for(stalled.wait(), 5)
        for n in range(1, 4):
            await bus.publish("c-other", {"type": "knock", "n": n})
        for n in range(20):
            await bus.publish("c-ordered", {"type": "knock", "n": n})
        for _ in range(100):
            if len(got) == 3 and len(order) == 20:
                break
            await asyncio.sleep(0.05)
        assert got == [("other", 1), ("other", 2), ("other", 3)]
        assert order == list(range(20))
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
