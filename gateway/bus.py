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

import redis.asyncio as aioredis

log = logging.getLogger("classguard.bus")

Listener = Callable[[dict[str, Any]], Awaitable[None]]


class Bus:
    def __init__(self, redis: aioredis.Redis, channel: str, revoke_channel: str) -> None:
        self.r = redis
        self.channel = channel
        self.revoke_channel = revoke_channel
        self._class_listeners: dict[str, set[Listener]] = defaultdict(set)
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

    def listen_class(self, class_id: str, listener: Listener) -> Callable[[], None]:
        self._class_listeners[class_id].add(listener)

        def _off() -> None:
            s = self._class_listeners.get(class_id)
            if s is not None:
                s.discard(listener)
                if not s:
                    self._class_listeners.pop(class_id, None)

        return _off

    def listen_revocations(self, listener: Listener) -> Callable[[], None]:
        self._revoke_listeners.add(listener)
        return lambda: self._revoke_listeners.discard(listener)

    async def wait_ready(self, timeout: float = 5.0) -> None:
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
            msg = json.loads(data)
        except (TypeError, ValueError, RecursionError):
            return
        if not isinstance(msg, dict):
            return
        if channel == self.revoke_channel:
            targets = list(self._revoke_listeners)
        else:
            targets = list(self._class_listeners.get(str(msg.get("class_id")), ()))
        # NOTE: every delivery runs in a task of its own. Awaited here, one teacher's
        # stalled socket (a phone in a tunnel: its send waits for the buffer to drain)
        # held up every event of the process, every class's admissions included.
        # Deliveries to one socket keep their order: each socket's listener writes
        # under a FIFO lock taken first thing, and tasks start in the order made.
        loop = asyncio.get_running_loop()
        for listener in targets:
            task = loop.create_task(self._deliver(listener, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _deliver(listener: Listener, msg: dict[str, Any]) -> None:
        try:
            await listener(msg)
        except ConnectionResetError:
            # the socket closed while the event was on its way (a student leaving the
            # waiting room as they are admitted): nothing to deliver to, not a fault
            log.debug("bus listener's socket closed before delivery")
        except Exception:  # noqa: BLE001 - one broken socket must not stop the others
            log.exception("bus listener failed")
