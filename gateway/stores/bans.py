"""Bans of a device or an address, per class or for a whole organisation
(what a ban is and how it matches: gateway/bans.py)."""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from ..bans import Ban, encode_ban, parse_bans
from . import reads
from .keys import Keys

Clock = Callable[[], float]


class Bans:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, clock: Clock) -> None:
        self.r = redis
        self.k = keys
        self.clock = clock

    def _target(self, class_id: str | None, org: str | None) -> str:
        return self.k.bans(class_id) if class_id else self.k.org_bans(str(org))

    async def add_ban(
        self, *, class_id: str | None, org: str | None, key: str, reason: str, by: str,
        until: float | None, only_new: bool = False, student_id: str | None = None,
    ) -> bool:
        """A class ban (class_id) or an org-wide ban (org); ``key`` from bans.make_key.
        With ``only_new``, a ban already on that key stays as it is; returns whether
        the ban was written."""
        target = self._target(class_id, org)
        value = encode_ban(reason, by, self.clock(), until, student_id)
        if only_new:
            return bool(await self.r.hsetnx(target, key, value))
        await self.r.hset(target, key, value)
        return True

    async def bans(self, *, class_id: str | None = None, org: str | None = None) -> list[Ban]:
        """Live bans of a class or an org; expired ones are pruned on the way."""
        target = self._target(class_id, org)
        found = parse_bans(await reads.hgetall(self.r, target), "class" if class_id else "org",
                           str(class_id or org))
        now = self.clock()
        dead = [b.key for b in found if not b.live(now)]
        if dead:
            await self.r.hdel(target, *dead)
        return [b for b in found if b.live(now)]

    async def lift_ban(self, key: str, *, class_id: str | None = None,
                       org: str | None = None) -> bool:
        return bool(await self.r.hdel(self._target(class_id, org), key))
