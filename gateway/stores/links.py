"""Join links: each student's current link, revoked links and short codes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from audit.scripts import Script, ScriptRunner
from policies.model import ClassId, Jti, StudentId

from . import reads
from .keys import Keys

# Devices released from a revoked link's binding are remembered at least this long
# (a reissue keeps them for the new link's lifetime).
RELEASED_TTL_S = 180 * 86400

_RETIRE = Script.load("gateway.stores", "retire_link")


@dataclass(frozen=True, slots=True)
class LinkRecord:
    jti: Jti
    student_id: StudentId
    class_id: ClassId
    iat: int
    nbf: int
    exp: int
    code: str  # canonical short code (kept so the sheet can be re-printed)


@dataclass(frozen=True, slots=True)
class Retired:
    """What making a new link current (or revoking one) took away from the old link."""

    jti: Jti | None  # the revoked jti, None when there was no other current link
    ticket: str | None  # the student's ticket, no longer waiting or admitted
    admission_ended: bool  # the student was admitted and is not any more


def link_from_json(cid: str, raw: str) -> LinkRecord:
    d = orjson.loads(raw)
    return LinkRecord(Jti(d["jti"]), StudentId(d["student_id"]), ClassId(cid),
                      int(d["iat"]), int(d["nbf"]), int(d["exp"]), d.get("code", ""))


class Links:
    """Which link is each student's current one, and the short codes that lead to it."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, scripts: ScriptRunner) -> None:
        self.r = redis
        self.k = keys
        self.scripts = scripts

    async def store_link(self, rec: LinkRecord, code_hash: str, code_ttl_s: int) -> Retired:
        """Make ``rec`` the student's current link, retiring the one it replaces (see
        lua/retire_link.lua): what ``Retired.jti`` names was revoked in the same step."""
        cid = rec.class_id
        body = json.dumps(
            {
                "jti": rec.jti,
                "student_id": rec.student_id,
                "iat": rec.iat,
                "nbf": rec.nbf,
                "exp": rec.exp,
                "code": rec.code,
                "code_hash": code_hash,
            }
        )
        # The code key lives outside the class's hash slot: it is written first, and it
        # leads nowhere until the script below makes its jti current.
        await self.r.set(self.k.code(code_hash), f"{cid}|{rec.jti}", ex=max(60, code_ttl_s))
        return await self._retire_link(cid, rec.student_id, rec.jti, body, code_ttl_s)

    async def revoke_student_links(self, cid: str, sid: str) -> Retired:
        """Revoke the student's current link (no new one), retiring what it held."""
        return await self._retire_link(cid, sid, "", "", RELEASED_TTL_S)

    async def _retire_link(self, cid: str, sid: str, new_jti: str, body: str,
                           ttl_s: int) -> Retired:
        k = self.k
        res = await self.scripts.run(
            _RETIRE,
            [k.links(cid), k.revoked(cid), k.jtis(cid), k.bind(cid), k.rebinds(cid),
             k.released(cid), k.waiting(cid), k.admitted(cid), k.tickets_by_student(cid)],
            [sid, new_jti, body, k.ticket(cid, ""), max(3600, int(ttl_s)), "token_revoked"],
        )
        old, old_body, ticket, ended = res[0], res[1], res[2], int(res[3])
        if old_body:
            code_hash = json.loads(old_body).get("code_hash")
            if code_hash:
                await self.r.delete(self.k.code(code_hash))
        return Retired(
            jti=Jti(old) if old and old != new_jti else None,
            ticket=f"{cid}.{ticket}" if ticket else None,
            admission_ended=bool(ended),
        )

    async def link_record(self, cid: str, jti: str) -> LinkRecord | None:
        raw = await reads.hget(self.r, self.k.jtis(cid), jti)
        return link_from_json(cid, raw) if raw else None

    async def current_links(self, cid: str) -> dict[str, LinkRecord]:
        cur = await reads.hgetall(self.r, self.k.links(cid))
        out: dict[str, LinkRecord] = {}
        for sid, jti in cur.items():
            rec = await self.link_record(cid, jti)
            if rec is not None:
                out[sid] = rec
        return out

    async def resolve_code(self, code_hash: str) -> tuple[str, str] | None:
        v = await reads.get(self.r, self.k.code(code_hash))
        if not v or "|" not in v:
            return None
        cid, jti = v.split("|", 1)
        return cid, jti
