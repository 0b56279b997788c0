"""Cross-process events over Redis pub/sub.

A knock on one gateway process must reach the teacher connected to another, and an
admission must reach the student wherever their socket is. Every process publishes
class events on one channel and keeps a *local* registry of its own open sockets
(connections are process-local by nature; no decision is taken from this registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

log = logging.getLogger("classguard.bus")

Listener = Callable[[dict[str, Any]], Awaitable[None]]
# A class listener (the teacher's control socket) gets the events of its class that
# arrived in one event-loop turn together, in order (see Bus._dispatch).
BatchListener = Callable[[list[dict[str, Any]]], Awaitable[None]]


class Bus:
    def __init__(self, redis: aioredis.Redis, channel: str, revoke_channel: str) -> None:
        self.r = redis
        self.channel = channel
        self.revoke_channel = revoke_channel
        self._class_listeners: dict[str, set[BatchListener]] = defaultdict(set)
        # The class events of this event-loop turn, per class listener (in order), and
        # the callback that hands them over at the start of the next turn.
        self._batches: dict[BatchListener, list[dict[str, Any]]] = {}
        self._flush_handle: asyncio.Handle | None = None
        # A waiting student's socket hears only what concerns them (see listen_student):
        # class id -> "t:<ticket>" / "s:<student id>" -> listeners, and class id -> all.
        self._student_index: dict[str, dict[str, set[Listener]]] = {}
        self._students: dict[str, set[Listener]] = {}
        self._revoke_listeners: set[Listener] = set()
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def message(self, class_id: str, message: dict[str, Any]) -> tuple[str, str]:
        """(channel, payload) of an event, for a Redis script to publish itself."""
        payload = dict(message)
        payload["class_id"] = class_id
        return self.channel, json.dumps(payload, ensure_ascii=False)

    async def publish(self, class_id: str, message: dict[str, Any]) -> None:
        await self.r.publish(*self.message(class_id, message))

    def listen_class(self, class_id: str, listener: BatchListener) -> Callable[[], None]:
        """Every event of the class. The events that reach this process in one event-loop
        turn are handed over in one call, in the order they were published."""
        self._class_listeners[class_id].add(listener)

        def _off() -> None:
            s = self._class_listeners.get(class_id)
            if s is not None:
                s.discard(listener)
                if not s:
                    self._class_listeners.pop(class_id, None)

        return _off

    def listen_student(self, class_id: str, ticket: str, student_id: str,
                       listener: Listener) -> Callable[[], None]:
        """Events of the class that name this ticket or this student, and those that
        name neither (the class ended, ...).

        NOTE: a waiting-room socket used to hear every event of its class and drop
        what was not its own: each knock and each admission of a class woke every
        socket waiting in it (60 waiting, 60 knocking: 3,600 deliveries). Routed here,
        an event reaches the one or two sockets it concerns."""
        index = self._student_index.setdefault(class_id, {})
        keys = (f"t:{ticket}", f"s:{student_id}")
        for k in keys:
            index.setdefault(k, set()).add(listener)
        self._students.setdefault(class_id, set()).add(listener)

        def _off() -> None:
            idx = self._student_index.get(class_id)
            if idx is not None:
                for k in keys:
                    group = idx.get(k)
                    if group is not None:
                        group.discard(listener)
                        if not group:
                            del idx[k]
                if not idx:
                    self._student_index.pop(class_id, None)
            everyone = self._students.get(class_id)
            if everyone is not None:
                everyone.discard(listener)
                if not everyone:
                    self._students.pop(class_id, None)

        return _off

    def listen_revocations(self, listener: Listener) -> Callable[[], None]:
        self._revoke_listeners.add(listener)
        return lambda: self._revoke_listeners.discard(listener)

    async def wait_ready(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - seconds
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def run(self) -> None:
        """Subscribe and dispatch until cancelled; reconnects after Redis errors."""
        backoff = 0.2
        while True:
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, self.revoke_channel)
                self._ready.set()
                backoff = 0.2
                async for msg in pubsub.listen():
                    if msg.get("type") != "message":
                        continue
                    await self._dispatch(msg["channel"], msg["data"])
            except asyncio.CancelledError:
                if self._flush_handle is not None:
                    self._flush_handle.cancel()
                    self._flush_handle = None
                for task in list(self._tasks):
                    task.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - keep the bus alive across outages
                self._ready.clear()
                log.warning("pub/sub connection lost (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _dispatch(self, channel: Any, data: Any) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode()
        try:
            msg = orjson.loads(data)
        except (TypeError, ValueError, RecursionError):
            return
        if not isinstance(msg, dict):
            return
        loop = asyncio.get_running_loop()
        targets: list[Listener]
        if channel == self.revoke_channel:
            targets = list(self._revoke_listeners)
        else:
            cid = str(msg.get("class_id"))
            teachers = self._class_listeners.get(cid)
            if teachers:
                # NOTE: a morning bell brings hundreds of admissions a second to one
                # process, several per class in one turn: each socket gets one frame (a
                # list) per turn instead of one write per event, and one delivery task.
                for teacher in teachers:
                    self._batches.setdefault(teacher, []).append(msg)
                if self._flush_handle is None:
                    self._flush_handle = loop.call_soon(self._flush_batches)
            targets = []
            index = self._student_index.get(cid)
            if index is not None:
                ticket, student = msg.get("ticket"), msg.get("student_id")
                if ticket is None and student is None:
                    targets += self._students.get(cid, ())
                else:
                    chosen = set(index.get(f"t:{ticket}", ())) if ticket is not None else set()
                    if student is not None:
                        chosen |= index.get(f"s:{student}", set())
                    targets += chosen
        # NOTE: every delivery runs in a task of its own. Awaited here, one teacher's
        # stalled socket (a phone in a tunnel: its send waits for the buffer to drain)
        # held up every event of the process, every class's admissions included.
        # Deliveries to one socket keep their order: each socket's listener writes
        # under a FIFO lock taken first thing, and tasks start in the order made.
        for listener in targets:
            task = loop.create_task(self._deliver(listener, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _flush_batches(self) -> None:
        self._flush_handle = None
        batches, self._batches = self._batches, {}
        loop = asyncio.get_running_loop()
        for listener, msgs in batches.items():
            # (the listener may have left since: its socket is closed, and its send
            # drops the batch)
            task = loop.create_task(self._deliver(listener, msgs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _deliver(listener: Callable[[Any], Awaitable[None]], msg: Any) -> None:
        try:
            await listener(msg)
        except ConnectionResetError:
            # the socket closed while the event was on its way (a student leaving the
            # waiting room as they are admitted): nothing to deliver to, not a fault
            log.debug("bus listener's socket closed before delivery")
        except Exception:  # noqa: BLE001 - one broken socket must not stop the others
            log.exception("bus listener failed")
