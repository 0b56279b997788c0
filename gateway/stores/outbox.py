"""Scripts that write an audit record with the change they make (audit/outbox.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from audit.errors import NotDurableError
from audit.scripts import Script, ScriptRunner

from .keys import AuditKeys, Keys


class RecordedWrites:
    """Runs a script that appends an audit record to the class's outbox, then marks the
    outbox for the sequencer (and WAITs for the replicas) in the same round trip."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, scripts: ScriptRunner, *,
                 audit_keys: AuditKeys, replicas: int = 0, wait_ms: int = 1000) -> None:
        self.r = redis
        self.k = keys
        self.scripts = scripts
        self.audit_keys = audit_keys
        self.replicas = replicas
        self.wait_ms = wait_ms
        self._outboxes: set[str] = set()

    async def run(self, cid: str, script: Script, keys: Sequence[str],
                  args: Sequence[Any]) -> Any:
        """The script's reply. The outbox is listed (``audit:outboxes``) before this
        process first writes to it, so a crash right after the script still leaves its
        records to be found."""
        box = self.k.outbox(cid)
        if box not in self._outboxes:
            await self.r.sadd(self.audit_keys.outboxes, box)
            if len(self._outboxes) >= 65536:
                self._outboxes.clear()
            self._outboxes.add(box)
        commands: list[tuple[Any, ...]] = [("SADD", self.audit_keys.outbox_dirty, box)]
        if self.replicas > 0:
            commands.append(("WAIT", self.replicas, self.wait_ms))
        res = await self.scripts.pipeline([(script, keys, args)], commands)
        if self.replicas > 0 and int(res[-1]) < self.replicas:
            raise NotDurableError(
                f"expected {self.replicas} replicas to confirm the change and its "
                f"record within {self.wait_ms} ms, found {int(res[-1])}")
        return res[0]
