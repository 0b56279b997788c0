"""Problems reported by students and parents, queued for the school.

A report belongs to a class and a time window (the minutes before it was made, up to
then). It waits in the class's and the org's queues until a teacher or an administrator
turns it into an incident or dismisses it; the decision is claimed once (``HSETNX``), so
two people deciding at the same moment cannot both act on one report. Reports expire
after ``REPORT_TTL_S``; what was decided about them stays in the audit log.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from .ids import new_id
from .keys import ReportKeys

Clock = Callable[[], float]

CATEGORIES = ("stranger", "offensive", "bullying", "link_misuse", "other")
ROLES = ("student", "parent")
MAX_TEXT = 1000
WINDOW_BEFORE_S = 600  # a report covers the ten minutes before it was made
REPORT_TTL_S = 30 * 86400
DECISIONS = ("incident", "dismissed")


@dataclass(frozen=True, slots=True)
class Report:
    id: str
    org: str
    class_id: str
    student_id: str
    category: str
    role: str
    text: str
    at: float  # when it was made (seconds)
    since: float
    until: float
    status: str = "open"  # open | incident | dismissed
    decided_by: str = ""
    decided_at: float = 0.0
    incident: str = ""  # the incident it became
    reason: str = ""  # why it was dismissed

    def to_json(self) -> dict[str, Any]:
        """What staff see (the API, the control room): no ticket, no device."""
        return asdict(self)


def valid_report_id(value: str) -> bool:
    return len(value) == 13 and value[0] == "r" and value[1:].isalnum() and value.islower()


class Reports:
    def __init__(self, redis: aioredis.Redis, prefix: str, *, clock: Clock) -> None:
        self.r = redis
        self.k = ReportKeys(prefix)
        self.clock = clock

    async def create(self, *, org: str, class_id: str, student_id: str, category: str,
                     role: str, text: str) -> Report:
        now = self.clock()
        rep = Report(id=new_id("r"), org=org, class_id=class_id, student_id=student_id,
                     category=category, role=role, text=text, at=now,
                     since=now - WINDOW_BEFORE_S, until=now)
        body = json.dumps(rep.to_json(), ensure_ascii=False)
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.k.item(rep.id), "body", body)
        pipe.expire(self.k.item(rep.id), REPORT_TTL_S)
        for key in (self.k.of_org(org), self.k.of_class(class_id)):
            pipe.zadd(key, {rep.id: now})
            pipe.zremrangebyscore(key, "-inf", now - REPORT_TTL_S)
            pipe.expire(key, REPORT_TTL_S)
        await pipe.execute()
        return rep

    async def get(self, rid: str) -> Report | None:
        if not valid_report_id(rid):
            return None
        raw = cast(dict[str, str], await self.r.hgetall(self.k.item(rid)))
        if "body" not in raw:
            return None
        d = json.loads(raw["body"])
        if "decision" in raw:
            d.update(json.loads(raw["decision"]))
        return Report(**d)

    async def claim(self, rid: str, who: str) -> bool:
        """Take the decision on a report (True once, for the first caller)."""
        return bool(await self.r.hsetnx(self.k.item(rid), "decided", who))

    async def release(self, rid: str) -> None:
        """Give a claim back (the decision failed before anything was changed)."""
        await self.r.hdel(self.k.item(rid), "decided")

    async def decide(self, rep: Report, *, status: str, by: str, incident: str = "",
                     reason: str = "") -> Report:
        decision = {"status": status, "decided_by": by, "decided_at": self.clock(),
                    "incident": incident, "reason": reason}
        await self.r.hset(self.k.item(rep.id), "decision",
                          json.dumps(decision, ensure_ascii=False))
        d = rep.to_json()
        d.update(decision)
        return Report(**d)

    async def _of(self, keys: Sequence[str], limit: int) -> list[Report]:
        ids: dict[str, float] = {}
        for key in keys:
            pairs = cast(list[tuple[str, float]],
                         await self.r.zrevrange(key, 0, limit - 1, withscores=True))
            for rid, score in pairs:
                ids[str(rid)] = float(score)
        out = []
        for rid in sorted(ids, key=lambda i: ids[i], reverse=True)[:limit]:
            rep = await self.get(rid)
            if rep is not None:
                out.append(rep)
        return out

    async def of_orgs(self, orgs: Sequence[str], limit: int = 200) -> list[Report]:
        """The newest reports of these orgs, newest first."""
        return await self._of([self.k.of_org(o) for o in orgs], limit)

    async def of_classes(self, cids: Sequence[str], limit: int = 200) -> list[Report]:
        return await self._of([self.k.of_class(c) for c in cids], limit)
