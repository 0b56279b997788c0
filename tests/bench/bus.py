"""Live-update fan-out: what one class event costs the process that holds the class's
waiting sockets (gateway/bus.py).

    python tests/bench/bus.py                  # waiting sockets routed by ticket/student
    python tests/bench/bus.py --class-wide     # every socket hears every class event

C classes, each with its teacher's control listener and W waiting students' listeners
(each as the waiting-room socket's: look at the event, act on its own); every student
knocks and is then admitted: 2 x C x W events published to Redis and dispatched by one
Bus. Printed: events, listener calls, CPU seconds of this process per event. Real Redis
(``--redis-url``, default the local one; keys under a unique prefix). Not collected by
pytest (tests/bench is in norecursedirs).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import redis.asyncio as aioredis  # noqa: E402 - path set up above for running as a script

from gateway.bus import Bus  # noqa: E402


async def run(args: argparse.Namespace) -> dict[str, float]:
    r = aioredis.Redis.from_url(args.redis_url, decode_responses=True)
    prefix = f"cgbus{uuid.uuid4().hex[:8]}:"
    bus = Bus(r, f"{prefix}bus", f"{prefix}revoke")
    runner = asyncio.create_task(bus.run())
    calls = 0
    teacher_seen = 0
    total = 2 * args.classes * args.waiting
    done = asyncio.Event()

    def waiting_socket(ticket: str, sid: str) -> Any:
        async def on_event(msg: dict[str, Any]) -> None:
            nonlocal calls
            calls += 1
            mine = msg.get("ticket") == ticket or (
                msg.get("student_id") == sid and msg.get("type") in ("removed", "admitted"))
            if mine and msg.get("type") == "admitted":
                await asyncio.sleep(0)  # where the socket mints its /go nonce and sends
        return on_event

    async def teacher(msgs: list[dict[str, Any]]) -> None:
        # the class's events of one event-loop turn, together
        nonlocal calls, teacher_seen
        calls += 1
        teacher_seen += len(msgs)
        if teacher_seen == total:
            done.set()

    def class_wide(ticket: str, sid: str) -> Any:
        one = waiting_socket(ticket, sid)

        async def on_events(msgs: list[dict[str, Any]]) -> None:
            for msg in msgs:
                await one(msg)
        return on_events

    try:
        await bus.wait_ready(5)
        for c in range(args.classes):
            cid = f"c{c}"
            bus.listen_class(cid, teacher)
            for w in range(args.waiting):
                ticket, sid = f"{cid}.t{w}", f"s{c}-{w}"
                if args.class_wide:
                    bus.listen_class(cid, class_wide(ticket, sid))
                else:
                    bus.listen_student(cid, ticket, sid, waiting_socket(ticket, sid))
        events = []
        for kind in ("knock", "admitted"):
            for w in range(args.waiting):
                for c in range(args.classes):
                    events.append(bus.message(f"c{c}", {"type": kind, "student_id": f"s{c}-{w}",
                                                        "ticket": f"c{c}.t{w}"}))
        cpu0, t0 = time.process_time(), time.monotonic()
        for i in range(0, len(events), 200):
            async with r.pipeline(transaction=False) as p:
                for channel, payload in events[i:i + 200]:
                    p.publish(channel, payload)
                await p.execute()
        await asyncio.wait_for(done.wait(), 600)
        # the last deliveries still running
        await asyncio.gather(*list(bus._tasks), return_exceptions=True)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await r.aclose()
    return {"events": total, "calls": calls, "cpu_s": cpu, "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--waiting", type=int, default=60, help="waiting students per class")
    p.add_argument("--class-wide", action="store_true",
                   help="register the waiting sockets for every event of their class")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = p.parse_args()
    out = asyncio.run(run(args))
    mode = "class-wide" if args.class_wide else "routed by ticket/student"
    print(f"bus fan-out ({mode}): {args.classes} classes x {args.waiting} waiting, "
          f"{out['events']} events, {out['calls']} listener calls "
          f"({out['calls'] / out['events']:.1f} per event), {out['cpu_s']:.2f} s CPU "
          f"({out['cpu_s'] / out['events'] * 1e6:.0f} us per event), {out['wall_s']:.2f} s "
          f"wall; load average {__import__('os').getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
