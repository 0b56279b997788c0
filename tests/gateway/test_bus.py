"""Cross-process events (gateway.bus) on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
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
        redis: aioredis.Redis, redis_prefix: str) -> None:
    """A waiting student's listener gets the events that name its ticket or its student
    and those that name neither; the teacher's gets everything. Another student's
    knock or admission does not wake it."""
    bus = Bus(redis, f"{redis_prefix}bus", f"{redis_prefix}revoke")
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
        redis: aioredis.Redis, redis_prefix: str) -> None:
    """Events of one class that reach the process together are handed to the teacher's
    listener in one call, in the order published, none lost; another class's listener
    gets only its own; events of a later turn come in a later call."""
    bus = Bus(redis, f"{redis_prefix}bus", f"{redis_prefix}revoke")
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
