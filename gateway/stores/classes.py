"""Classes and their rosters."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
import redis.asyncio as aioredis

from policies.model import DEFAULT_TIMEZONE, ClassId, Schedule, StudentId

from . import reads
from .ids import new_id, pairs, valid_class_id
from .keys import Keys
from .links import Links

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ClassInfo:
    id: ClassId
    title: str
    owner: str
    org: str
    platform_kind: str
    platform_sealed: str  # platform settings, encrypted at rest (SecretBox)
    schedule: Schedule
    policy: dict[str, Any]
    created_at: float
    locked: bool
    ended: bool
    policy_json: str = ""  # ``policy`` as stored (a cache key for its parsed form)


@dataclass(frozen=True, slots=True)
class Student:
    id: StudentId
    name: str
    external_id: str | None
    # The school account the student signs in with on a platform (lower case), for
    # platforms that report signed-in accounts; never put in a link or token.
    email: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "external_id": self.external_id,
                "email": self.email}


def schedule_to_json(s: Schedule) -> dict[str, Any]:
    return {
        "starts_at": s.starts_at.isoformat(),
        "ends_at": s.ends_at.isoformat(),
        "timezone": s.timezone,
        "term_ends_at": s.term_ends_at.isoformat() if s.term_ends_at else None,
        "weekly": list(s.weekly),
    }


def schedule_from_json(d: Mapping[str, Any]) -> Schedule:
    return Schedule(
        starts_at=datetime.fromisoformat(d["starts_at"]),
        ends_at=datetime.fromisoformat(d["ends_at"]),
        timezone=d.get("timezone") or DEFAULT_TIMEZONE,
        term_ends_at=datetime.fromisoformat(d["term_ends_at"]) if d.get("term_ends_at") else None,
        weekly=tuple(d.get("weekly") or ()),
    )


def student_from_json(sid: str, raw: str) -> Student:
    d = orjson.loads(raw)
    return Student(StudentId(sid), d["name"], d.get("external_id"), d.get("email"))


@lru_cache(maxsize=4096)
def class_from_flat(flat: tuple[str, ...]) -> ClassInfo:
    """A class's meta hash as HGETALL returned it, parsed once per distinct content.

    NOTE: every join reads the meta hash; parsing its JSON each time was a measurable
    share of a join. ClassInfo is frozen; callers never change its policy dict."""
    return class_from_meta(pairs(flat))


def class_from_meta(m: Mapping[str, str]) -> ClassInfo:
    return ClassInfo(
        id=ClassId(m["id"]),
        title=m["title"],
        owner=m["owner"],
        org=m["org"],
        platform_kind=m["platform_kind"],
        platform_sealed=m["platform"],
        schedule=schedule_from_json(json.loads(m["schedule"])),
        policy=json.loads(m["policy"]),
        created_at=float(m["created_at"]),
        locked=m.get("locked") == "1",
        ended=m.get("ended") == "1",
        policy_json=m["policy"],
    )


class Classes:
    """Classes (their settings, owner and organisation) and their rosters."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, links: Links, *,
                 clock: Clock) -> None:
        self.r = redis
        self.k = keys
        self.links = links
        self.clock = clock

    async def create_class(
        self,
        *,
        class_id: ClassId | None = None,
        owner: str,
        org: str,
        org_chain: Sequence[str] = (),
        title: str,
        platform_kind: str,
        platform_sealed: str,
        schedule: Schedule,
        policy: Mapping[str, Any],
    ) -> ClassInfo:
        cid = class_id or ClassId(new_id("c"))
        now = self.clock()
        info = ClassInfo(
            id=cid,
            title=title,
            owner=owner,
            org=org,
            platform_kind=platform_kind,
            platform_sealed=platform_sealed,
            schedule=schedule,
            policy=dict(policy),
            created_at=now,
            locked=False,
            ended=False,
        )
        async with self.r.pipeline(transaction=True) as p:
            p.hset(
                self.k.meta(cid),
                mapping={
                    "v": "1",
                    "id": cid,
                    "title": title,
                    "owner": owner,
                    "org": org,
                    "org_chain": json.dumps(list(org_chain) or [org]),
                    "platform_kind": platform_kind,
                    "platform": platform_sealed,
                    "schedule": json.dumps(schedule_to_json(schedule)),
                    "policy": json.dumps(dict(policy)),
                    "created_at": repr(now),
                    "locked": "0",
                    "ended": "0",
                },
            )
            p.sadd(self.k.owner_classes(owner), cid)
            p.sadd(self.k.org_classes(org), cid)
            await p.execute()
        return info

    async def update_policy(self, cid: str, policy: Mapping[str, Any]) -> None:
        await self.r.hset(self.k.meta(cid), "policy", json.dumps(dict(policy)))

    async def get_class(self, cid: str) -> ClassInfo | None:
        if not valid_class_id(cid):
            return None
        m = await reads.hgetall(self.r, self.k.meta(cid))
        return class_from_meta(m) if m else None

    async def classes_of_owner(self, owner: str) -> list[ClassInfo]:
        ids = await reads.smembers(self.r, self.k.owner_classes(owner))
        return await self._load_many(ids)

    async def classes_of_orgs(self, orgs: Iterable[str]) -> list[ClassInfo]:
        ids: set[str] = set()
        for org in orgs:
            ids |= await reads.smembers(self.r, self.k.org_classes(org))
        return await self._load_many(ids)

    async def _load_many(self, ids: Iterable[str]) -> list[ClassInfo]:
        out = []
        for cid in sorted(ids):
            info = await self.get_class(cid)
            if info is not None:
                out.append(info)
        out.sort(key=lambda c: c.created_at)
        return out

    async def set_flag(self, cid: str, name: str, value: bool) -> None:
        await self.r.hset(self.k.meta(cid), name, "1" if value else "0")

    # --- roster -----------------------------------------------------------------

    async def roster(self, cid: str) -> list[Student]:
        raw = await reads.hgetall(self.r, self.k.roster(cid))
        students = [student_from_json(sid, v) for sid, v in raw.items()]
        students.sort(key=lambda s: (s.name.casefold(), s.id))
        return students

    async def student(self, cid: str, sid: str) -> Student | None:
        v = await reads.hget(self.r, self.k.roster(cid), sid)
        return student_from_json(sid, v) if v else None

    async def replace_roster(
        self, cid: str,
        entries: Sequence[tuple[str, str | None] | tuple[str, str | None, str | None]],
    ) -> tuple[list[Student], list[Student]]:
        """Replace the roster with ``(name, external id[, school e-mail])`` entries.
        Students already on it (same external id, or same name when neither has an id)
        keep their id and link; students no longer listed are removed and their links
        revoked. Returns (roster, removed)."""
        current = await self.roster(cid)
        by_ext = {s.external_id: s for s in current if s.external_id}
        by_name = {s.name.casefold(): s for s in current if not s.external_id}
        keep: dict[str, Student] = {}
        for entry in entries:
            name, ext = entry[0], entry[1]
            email = entry[2] if len(entry) == 3 else None
            old = by_ext.get(ext) if ext else by_name.get(name.casefold())
            if old is not None and old.id not in keep:
                keep[old.id] = Student(old.id, name, ext, email)
            else:
                sid = StudentId(new_id("s"))
                keep[sid] = Student(sid, name, ext, email)
        removed = [s for s in current if s.id not in keep]
        async with self.r.pipeline(transaction=True) as p:
            p.delete(self.k.roster(cid))
            if keep:
                p.hset(
                    self.k.roster(cid),
                    mapping={
                        sid: json.dumps({"name": s.name, "external_id": s.external_id,
                                         **({"email": s.email} if s.email else {})})
                        for sid, s in keep.items()
                    },
                )
            await p.execute()
        for s in removed:
            # A student off the roster is refused (not_on_roster) already; revoking
            # records the jti and retires the binding, ticket and admission too.
            await self.links.revoke_student_links(cid, s.id)
        return sorted(keep.values(), key=lambda s: (s.name.casefold(), s.id)), removed
