"""The gateway's side of the audit seam: every decision and host action becomes one
event with the fields of docs/audit.md, personal fields kept apart (committed, not written
into the tree)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from audit.outbox import pack_entry

log = logging.getLogger("classguard.audit")


def milestone(n: int) -> bool:
    """1, 10, 100, 1000, ...: the counts at which an aggregated event is recorded."""
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


class AppendOnlyLog(Protocol):
    async def append(
        self, event: Mapping[str, Any], personal: Mapping[str, Any] | None = None
    ) -> str: ...


class BatchLog(Protocol):
    async def append_many(
        self, items: list[tuple[Mapping[str, Any], Mapping[str, Any] | None]]
    ) -> list[str]: ...


class BatchingAppender:
    """Appends made by concurrent requests in the same event-loop turn go to Redis in
    one round trip. Every caller still waits until its own event is durable."""

    def __init__(self, log_: BatchLog, max_batch: int = 500) -> None:
        self._log = log_
        self._max = max_batch
        self._pending: list[tuple[Mapping[str, Any], Mapping[str, Any] | None,
                                  asyncio.Future[str]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def append(
        self, event: Mapping[str, Any], personal: Mapping[str, Any] | None = None
    ) -> str:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        self._pending.append((event, personal, fut))
        if len(self._pending) >= self._max:
            self._flush_now()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush_now)
        return await fut

    def _flush_now(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._write(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[tuple[Mapping[str, Any], Mapping[str, Any] | None,
                                             asyncio.Future[str]]]) -> None:
        try:
            ids = await self._log.append_many([(e, p) for e, p, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - every waiter learns of the failure
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else
                                      RuntimeError("audit append cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, fut), event_id in zip(batch, ids, strict=True):
            if not fut.done():
                fut.set_result(event_id)


@dataclass(slots=True)
class Outcome:
    """What an action that was announced by an intent turned out to be: filled in by
    the action, recorded when it ends (see Auditor.intended)."""

    subject: str | None = None
    reason: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    personal: dict[str, Any] | None = None


def event_of(
    type_: str,
    *,
    actor: str,
    org: str | None = None,
    class_id: str | None = None,
    subject: str | None = None,
    reason: str | None = None,
    ip: str | None = None,
    device: str | None = None,
    user_agent: str | None = None,
    name: str | None = None,
    facts: Mapping[str, Any] | None = None,
    personal: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The event and its personal data, as the log records them."""
    event: dict[str, Any] = {"type": type_, "actor": actor}
    if reason is not None:
        event["reason"] = reason
    if org is not None:
        event["org"] = org
    if class_id is not None:
        event["class"] = class_id
    if subject is not None:
        event["subject"] = subject
    if facts:
        event["facts"] = {k: v for k, v in facts.items() if v is not None}
    p: dict[str, Any] = dict(personal or {})
    if ip is not None:
        p["ip"] = ip
    if device is not None:
        p["device"] = device
    if user_agent:
        p["ua"] = user_agent[:512]
    if name is not None:
        p["name"] = name
    return event, p or None


class Auditor:
    def __init__(self, log_: AppendOnlyLog, *, node: str = "gateway",
                 clock_ms: Callable[[], int] | None = None) -> None:
        self._log = log_
        self._node = node
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    def entry(self, type_: str, **kw: Any) -> str:
        """The event as an outbox entry (audit.outbox), for a script that makes the
        change and writes its record in one atomic step."""
        event, personal = event_of(type_, **kw)
        return pack_entry(event, personal, ts_ms=self._clock_ms(), node=self._node)

    @asynccontextmanager
    async def intended(self, type_: str, *, actor: str, org: str | None = None,
                       class_id: str | None = None, subject: str | None = None,
                       facts: Mapping[str, Any] | None = None,
                       personal: Mapping[str, Any] | None = None) -> AsyncIterator[Outcome]:
        """Record an ``intent`` before an action's effects, then its outcome.

        The ``intent`` record (``facts.action``: ``type_``, ``facts.intent``: its id) is
        durable before the body runs, so no effect of the action can be seen without a
        record. When the body ends, ``type_`` is recorded with what it filled into the
        :class:`Outcome` and ``facts.intent``; when it raises, ``intent.failed`` with
        the error's code. An intent with neither (the process died meanwhile) tells the
        reader the action may have been partly done; the class state shows how far.
        """
        intent_id = secrets.token_hex(8)
        await self.record("intent", actor=actor, org=org, class_id=class_id, subject=subject,
                          facts={"action": type_, "intent": intent_id, **(facts or {})},
                          personal=personal)
        out = Outcome(subject=subject, facts=dict(facts or {}),
                      personal=dict(personal) if personal else None)
        try:
            yield out
        except BaseException as exc:
            code = getattr(exc, "code", None)
            await asyncio.shield(self.record(
                "intent.failed", actor=actor, org=org, class_id=class_id,
                subject=out.subject,
                reason=code if isinstance(code, str) else type(exc).__name__,
                facts={"action": type_, "intent": intent_id,
                       "status": getattr(exc, "status", None)}))
            raise
        await self.record(type_, actor=actor, org=org, class_id=class_id,
                          subject=out.subject, reason=out.reason,
                          facts={**out.facts, "intent": intent_id}, personal=out.personal)

    async def record(
        self,
        type_: str,
        *,
        actor: str,
        org: str | None = None,
        class_id: str | None = None,
        subject: str | None = None,
        reason: str | None = None,
        ip: str | None = None,
        device: str | None = None,
        user_agent: str | None = None,
        name: str | None = None,
        facts: Mapping[str, Any] | None = None,
        personal: Mapping[str, Any] | None = None,
    ) -> str:
        """Append one event; returns once it is durable (the caller may rely on it)."""
        event, p = event_of(type_, actor=actor, org=org, class_id=class_id, subject=subject,
                            reason=reason, ip=ip, device=device, user_agent=user_agent,
                            name=name, facts=facts, personal=personal)
        return await self._log.append(event, p)
