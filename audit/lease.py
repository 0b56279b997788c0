"""A fenced leader lease in Redis: one holder at a time, known by its token.

Taken with SET PX only when the key is free (or already holds this token, so a holder
that missed a reply does not wait for its own lease to expire); renewed and released
only while the key still holds the token, each in one script, so a process whose lease
expired can never extend or delete its successor's. Scripts that write on the leader's
behalf check the same key and token (the fence; see audit/lua/commit_batch.lua).

Used by the audit sequencer (audit/sequencer.py) and the gateway's presence reconciler
(gateway/presence.py). It lives in ``audit`` because the gateway may import ``audit``
and ``audit`` never imports the gateway.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from audit.scripts import Script, ScriptRunner

_ACQUIRE = Script.load("audit", "lease_acquire")
_RENEW = Script.load("audit", "lease_renew")
_RELEASE = Script.load("audit", "lease_release")


class Lease:
    """The lease on ``key`` for the holder ``token``, ``ttl_ms`` long once taken or
    renewed. Every call is one round trip on ``redis`` (never the multiplexed
    connection: a lease must not queue behind a stalled batch of other work)."""

    def __init__(self, redis: aioredis.Redis, key: str, *, token: str | bytes,
                 ttl_ms: int) -> None:
        self._scripts = ScriptRunner(redis)
        self.key = key
        self.token = token
        self.ttl_ms = ttl_ms

    async def acquire(self) -> bool:
        """Take the lease if it is free or ours already; True when we hold it."""
        return bool(int(await self._scripts.run(_ACQUIRE, [self.key],
                                                [self.token, self.ttl_ms])))

    async def renew(self) -> bool:
        """Extend the lease; False when another holder has it (or nobody does)."""
        return bool(int(await self._scripts.run(_RENEW, [self.key],
                                                [self.token, self.ttl_ms])))

    async def release(self) -> bool:
        """Give the lease up now so another process takes over at once; False when we
        did not hold it."""
        return bool(int(await self._scripts.run(_RELEASE, [self.key], [self.token])))


__all__ = ["Lease"]
