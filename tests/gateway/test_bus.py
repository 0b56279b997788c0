"""Cross-process events (gateway.bus) on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis.asyncio as aioredis

from gateway.bus import Bus
from gateway.redis_mux import Multiplexed
from tests.conftest import both_redis_servers

# Every test on the machine's Redis (subscribed through the hiredis subscriber of
# gateway.redis_mux), the embedded default's binary, and through redis-py's PubSub alone
# (a URL the multiplexed client does not take, as with TLS or Sentinel).
redis_url = both_redis_servers(transports=True)


def _bus(redis: aioredis.Redis, url: str, prefix: str) -> Bus:
    """The bus as gateway.services builds it for this URL."""
    return Bus(redis, f"{prefix}bus", f"{prefix}revoke", fast=Multiplexed.from_url(url))


async def test_a_stalled_socket_does_not_hold_up_other_classes(
        redis: aioredis.Redis, redis_url: str, redis_prefix: str) -> None:
    """One teacher's socket stops draining (its listener never returns): events for
    every other class, and later events, are still delivered at once; the events of
    one socket keep their order."""
    bus = _bus(redis, redis_url, redis_prefix)
    runner = asyncio.create_task(bus.run())
    stalled = asyncio.Event()
    got: list[tuple[str, Any]] = []
    order: list[int] = []
    lock = asyncio.Lock()

    async def stuck(msgs: list[dict[str, Any]]) -> None:
        stalled.set()
        await asyncio.Event().wait()  # a send that never drains

    async def other(msgs: list[dict[str, Any]]) -> None:
        got.extend(("other", msg["n"]) for msg in msgs)

    async def ordered(msgs: list[dict[str, Any]]) -> None:
        async with lock:  # as the control socket's send does
            if msgs[0]["n"] % 2 == 0:
                await asyncio.sleep(0.01)  # a slow write now and then
            order.extend(msg["n"] for msg in msgs)

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


async def test_a_waiting_socket_hears_only_its_own_events(
        redis: aioredis.Redis, redis_url: str, redis_prefix: str) -> None:
    """A waiting student's listener gets the events that name its ticket or its student
    and those that name neither; the teacher's gets everything. Another student's
    knock or admission does not wake it."""
    bus = _bus(redis, redis_url, redis_prefix)
    runner = asyncio.create_task(bus.run())
    heard: dict[str, list[str]] = {"a": [], "b": [], "teacher": [], "other class": []}

    def recorder(name: str) -> Any:
        async def listen(msg: dict[str, Any]) -> None:
            heard[name].append(msg["type"])
        return listen

    async def teacher(msgs: list[dict[str, Any]]) -> None:
        heard["teacher"].extend(msg["type"] for msg in msgs)

    try:
        await bus.wait_ready(5)
        bus.listen_student("c1", "c1.ta", "sa", recorder("a"))
        off_b = bus.listen_student("c1", "c1.tb", "sb", recorder("b"))
        bus.listen_class("c1", teacher)
        bus.listen_student("c2", "c2.tx", "sa", recorder("other class"))
        await bus.publish("c1", {"type": "knock", "student_id": "sb", "ticket": "c1.tb"})
        await bus.publish("c1", {"type": "admitted", "student_id": "sa", "ticket": "c1.old"})
        await bus.publish("c1", {"type": "socket_replaced", "ticket": "c1.ta",
                                 "sockets": ["x"]})
        await bus.publish("c1", {"type": "ended"})
        for _ in range(200):
            if len(heard["teacher"]) == 4 and len(heard["b"]) == 2:
                break
            await asyncio.sleep(0.01)
        assert heard["teacher"] == ["knock", "admitted", "socket_replaced", "ended"]
        # a: its student's admission (another ticket of theirs), its ticket, the class end
        assert heard["a"] == ["admitted", "socket_replaced", "ended"]
        assert heard["b"] == ["knock", "ended"]
        assert heard["other class"] == []
        off_b()
        await bus.publish("c1", {"type": "ended"})
        for _ in range(200):
            if len(heard["teacher"]) == 5:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert heard["b"] == ["knock", "ended"]  # unsubscribed
        assert heard["a"][-1] == "ended" and len(heard["a"]) == 4
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_a_class_s_events_of_one_turn_reach_its_teacher_in_one_call(
        redis: aioredis.Redis, redis_url: str, redis_prefix: str) -> None:
    """Events of one class that reach the process together are handed to the teacher's
    listener in one call, in the order published, none lost; another class's listener
    gets only its own; events of a later turn come in a later call."""
    bus = _bus(redis, redis_url, redis_prefix)
    runner = asyncio.create_task(bus.run())
    calls: dict[str, list[list[int]]] = {"c1": [], "c2": []}

    def teacher(cid: str) -> Any:
        async def listen(msgs: list[dict[str, Any]]) -> None:
            calls[cid].append([m["n"] for m in msgs])
        return listen

    try:
        await bus.wait_ready(5)
        bus.listen_class("c1", teacher("c1"))
        bus.listen_class("c2", teacher("c2"))
        async with redis.pipeline(transaction=False) as p:
            for n in range(12):
                p.publish(*bus.message("c1" if n != 5 else "c2", {"type": "admitted", "n": n}))
            await p.execute()
        # Everything is in the subscriber's socket before the bus reads it (as when the
        # replies of many joins' scripts come back in one turn).
        time.sleep(0.2)  # noqa: ASYNC251 - holds the event loop on purpose
        for _ in range(200):
            if sum(map(len, calls["c1"])) == 11 and calls["c2"]:
                break
            await asyncio.sleep(0.01)
        assert calls["c1"] == [[0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]]
        assert calls["c2"] == [[5]]
        await bus.publish("c1", {"type": "knock", "n": 12})
        for _ in range(200):
            if len(calls["c1"]) == 2:
                break
            await asyncio.sleep(0.01)
        assert calls["c1"][1:] == [[12]]
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_the_bus_subscribes_again_after_its_connection_is_killed(
        redis: aioredis.Redis, redis_url: str, redis_prefix: str) -> None:
    """Redis closes the subscriber's connection (CLIENT KILL, as a restart or a network
    cut would): the bus reports itself not ready, subscribes again, and events published
    after that reach the teacher; revocations too."""
    async def subscribers() -> set[str]:
        listing = await redis.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
        return {part.split("=", 1)[1] for line in listing.splitlines()
                for part in line.split() if part.startswith("id=")}

    others = await subscribers()  # (the machine's Redis is shared: kill only ours)
    bus = _bus(redis, redis_url, redis_prefix)
    runner = asyncio.create_task(bus.run())
    got: list[int] = []
    revoked: list[str] = []

    async def teacher(msgs: list[dict[str, Any]]) -> None:
        got.extend(m["n"] for m in msgs)

    async def on_revoke(msg: dict[str, Any]) -> None:
        revoked.append(msg["sid_hash"])

    try:
        await bus.wait_ready(5)
        bus.listen_class("c1", teacher)
        bus.listen_revocations(on_revoke)
        await bus.publish("c1", {"type": "knock", "n": 1})
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [1]
        ours = await subscribers() - others
        assert len(ours) == 1
        assert await redis.execute_command("CLIENT", "KILL", "ID", *ours) == 1
        for _ in range(500):
            if not bus._ready.is_set():
                break
            await asyncio.sleep(0.01)
        await bus.wait_ready(10)
        await bus.publish("c1", {"type": "knock", "n": 2})
        await redis.publish(f"{redis_prefix}revoke", '{"sid_hash": "h1"}')
        for _ in range(300):
            if got == [1, 2] and revoked:
                break
            await asyncio.sleep(0.01)
        assert got == [1, 2]
        assert revoked == ["h1"]
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
