"""Class, roster, link and join state in Redis.

All keys of one class share the hash tag ``{c:<class_id>}`` so the multi-key Lua
scripts below also run on Redis Cluster. Every step that must be atomic (bind a
device, admit, consume a ``/go`` nonce, rate-limit) is one script; nothing here reads a
value in Python and writes a decision back.

Nothing in this module is authoritative in process memory: any number of gateway
processes can share one Redis.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from audit.errors import NotDurableError
from audit.store import AuditKeys
from policies.model import ClassId, ClassState, Jti, Schedule, StudentId, TokenFacts

from .bans import Ban, encode_ban, parse_bans
from .bans import match as match_bans
from .redis_mux import Multiplexed

Clock = Callable[[], float]

_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def new_id(kind: str, n: int = 12) -> str:
    """A random identifier such as ``c7k2...``: no personal data, URL safe."""
    return kind + "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))


def new_secret(nbytes: int = 16) -> str:
    return secrets.token_urlsafe(nbytes)


def device_hash(device_cookie: str) -> str:
    """Redis stores only the hash of the device cookie."""
    return hashlib.sha256(device_cookie.encode()).hexdigest()


def valid_class_id(value: str) -> bool:
    return (
        len(value) == 13 and value[0] == "c" and all(ch in _ID_ALPHABET for ch in value[1:])
    )


def valid_student_id(value: str) -> bool:
    return (
        len(value) == 13 and value[0] == "s" and all(ch in _ID_ALPHABET for ch in value[1:])
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


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
        timezone=d.get("timezone") or "Asia/Ho_Chi_Minh",
        term_ends_at=datetime.fromisoformat(d["term_ends_at"]) if d.get("term_ends_at") else None,
        weekly=tuple(d.get("weekly") or ()),
    )


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


# Devices released from a revoked link's binding are remembered at least this long
# (a reissue keeps them for the new link's lifetime).
RELEASED_TTL_S = 180 * 86400

# Alerts: the newest of each kind the host is shown, and how long they are kept.
ALERTS_PER_KIND = 20
ALERT_TTL_S = 7 * 86400
# A waiting-room socket marks itself live every WAIT_SOCKET_REFRESH_S; one not marked
# for WAIT_SOCKET_STALE_S (its process died) no longer keeps its student present.
WAIT_SOCKET_REFRESH_S = 20.0
WAIT_SOCKET_STALE_S = 60.0


@dataclass(frozen=True, slots=True)
class Ticket:
    id: str  # the public ticket string "<class_id>.<random>"
    class_id: ClassId
    student_id: StudentId
    device: str
    status: str  # waiting | admitted | denied | removed
    reason: str
    created: float
    device_hint: str
    jti: str = ""  # the link the ticket was issued for ("" on tickets of older versions)
    ip: str = ""  # the address it was issued to (for a ban from the waiting room)


@dataclass(slots=True)
class Snapshot:
    """The class as seen for one attempt: the policy input plus what the gateway
    needs to act on the decision."""

    info: ClassInfo | None
    state: ClassState | None
    link: LinkRecord | None
    student: Student | None
    extra: dict[str, Any] = field(default_factory=dict)


class Keys:
    """Key names. One place, so nothing else builds key strings by hand."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def c(self, class_id: str, suffix: str) -> str:
        return f"{self.p}{{c:{class_id}}}:{suffix}"

    def meta(self, cid: str) -> str:
        return self.c(cid, "meta")

    def roster(self, cid: str) -> str:
        return self.c(cid, "roster")

    def links(self, cid: str) -> str:  # student -> current jti
        return self.c(cid, "links")

    def jtis(self, cid: str) -> str:  # jti -> link record json
        return self.c(cid, "jtis")

    def revoked(self, cid: str) -> str:  # set of revoked jtis
        return self.c(cid, "revoked")

    def bind(self, cid: str) -> str:
        return self.c(cid, "bind")

    def rebinds(self, cid: str) -> str:
        return self.c(cid, "rebinds")

    def released(self, cid: str) -> str:  # student -> devices bound to their revoked links
        return self.c(cid, "released")

    def device_resets(self, cid: str) -> str:  # student -> when the host reset their device
        return self.c(cid, "device_resets")

    def waiting(self, cid: str) -> str:
        return self.c(cid, "waiting")

    def admitted(self, cid: str) -> str:
        return self.c(cid, "admitted")

    def removed(self, cid: str) -> str:
        return self.c(cid, "removed")

    def denied(self, cid: str) -> str:
        return self.c(cid, "denied")

    def tickets_by_student(self, cid: str) -> str:
        return self.c(cid, "tk_by")

    def ticket(self, cid: str, rand: str) -> str:
        return self.c(cid, f"t:{rand}")

    def nonce(self, cid: str, rand: str) -> str:
        return self.c(cid, f"go:{rand}")

    def ticket_sockets(self, cid: str, rand: str) -> str:  # socket id -> opened at
        return self.c(cid, f"ws:{rand}")

    def bans(self, cid: str) -> str:
        return self.c(cid, "bans")

    def org_bans(self, org: str) -> str:
        return f"{self.p}bans:org:{org}"

    def hosts(self, cid: str) -> str:
        return self.c(cid, "hosts")

    def alerts(self, cid: str) -> str:  # id -> alert json, "<id>:n" count, "<id>:last"
        return self.c(cid, "al:items")

    def alert_order(self, cid: str) -> str:  # id -> time of the latest occurrence
        return self.c(cid, "al:order")

    def alert_kind(self, cid: str, kind: str) -> str:  # the same, for one kind
        return self.c(cid, f"al:k:{kind}")

    def code(self, code_hash: str) -> str:
        return f"{self.p}code:{code_hash}"

    def owner_classes(self, username: str) -> str:
        return f"{self.p}classes:owner:{username}"

    def org_classes(self, org: str) -> str:
        return f"{self.p}classes:org:{org}"

    def refusals(self, name: str, cid: str | None = None) -> str:
        """A window of counted refusals (in the class's hash slot when it names one)."""
        return self.c(cid, f"rla:{name}") if cid else f"{self.p}rla:{name}"

    def ratelimit(self, name: str) -> str:
        return f"{self.p}rl:{name}"

    def bus(self) -> str:
        return f"{self.p}bus"

    def outbox(self, cid: str) -> str:  # audit records written with the change (audit.outbox)
        return self.c(cid, "audit:outbox")


# --- Lua scripts -----------------------------------------------------------------

# Bind a link to a device: first device wins; rebinding only when the policy allows it.
_BIND = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 'bound'
end
if cur == ARGV[2] then return 'same' end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  return 'rebound'
end
return 'conflict'
"""

# Put a student in the waiting room (or reuse their ticket for the same device).
# KEYS: waiting, tk_by, ticket_key(new), ARGV: student, device, rand, ticket_json,
# waiting_json, ttl_s, ticket_prefix
_KNOCK = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  local okey = ARGV[7] .. old
  local odev = redis.call('HGET', okey, 'device')
  local ost = redis.call('HGET', okey, 'status')
  if odev == ARGV[2] and ost == 'waiting' then
    redis.call('EXPIRE', okey, ARGV[6])
    return {0, old}
  end
  if ost == 'waiting' then
    redis.call('HDEL', KEYS[1], old)
    redis.call('HSET', okey, 'status', 'replaced')
  end
end
local t = cjson.decode(ARGV[4])
for k, v in pairs(t) do redis.call('HSET', KEYS[3], k, v) end
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('HSET', KEYS[1], ARGV[3], ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return {1, ARGV[3]}
"""

# Admit directly (by policy): record the admission and a ticket in 'admitted' state.
# KEYS: admitted, removed, denied, tk_by, ticket_key, waiting
# ARGV: student, admission_json, ticket_json, ttl, rand
_ADMIT_DIRECT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
local old = redis.call('HGET', KEYS[4], ARGV[1])
if old then redis.call('HDEL', KEYS[6], old) end
local t = cjson.decode(ARGV[3])
for k, v in pairs(t) do redis.call('HSET', KEYS[5], k, v) end
redis.call('EXPIRE', KEYS[5], ARGV[4])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
return 1
"""

# The host admits a waiting ticket. KEYS: waiting, admitted, removed, denied, ticket,
# audit outbox. ARGV: rand, now, by, audit entry ('' for none; see audit.outbox)
_ADMIT_TICKET = """
local w = redis.call('HGET', KEYS[1], ARGV[1])
if not w then return false end
local st = redis.call('HGET', KEYS[5], 'status')
if not st then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return false
end
redis.call('HDEL', KEYS[1], ARGV[1])
local sid = redis.call('HGET', KEYS[5], 'student_id')
local dev = redis.call('HGET', KEYS[5], 'device')
redis.call('HSET', KEYS[2], sid,
  cjson.encode({ticket=ARGV[1], device=dev, at=tonumber(ARGV[2]), by=ARGV[3]}))
redis.call('SREM', KEYS[3], sid)
redis.call('SREM', KEYS[4], sid)
redis.call('HSET', KEYS[5], 'status', 'admitted', 'reason', 'admitted_by_host')
if ARGV[4] and ARGV[4] ~= '' then redis.call('XADD', KEYS[6], '*', 'd', ARGV[4]) end
return w
"""

# The host denies a waiting ticket. KEYS: waiting, denied, ticket. ARGV: rand
_DENY_TICKET = """
local w = redis.call('HGET', KEYS[1], ARGV[1])
if not w then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local sid = redis.call('HGET', KEYS[3], 'student_id')
if sid then
  redis.call('SADD', KEYS[2], sid)
  redis.call('HSET', KEYS[3], 'status', 'denied', 'reason', 'denied_by_host')
end
return w
"""

# Remove a student: KEYS: admitted, waiting, removed, tk_by. ARGV: student, ticket_prefix,
# status, reason. Returns the student's ticket (or false).
_REMOVE_STUDENT = """
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] == 'removed' then redis.call('SADD', KEYS[3], ARGV[1]) end
local tk = redis.call('HGET', KEYS[4], ARGV[1])
if tk then
  redis.call('HDEL', KEYS[2], tk)
  if redis.call('EXISTS', ARGV[2] .. tk) == 1 then
    redis.call('HSET', ARGV[2] .. tk, 'status', ARGV[3], 'reason', ARGV[4])
  end
  return tk
end
return false
"""

# Consume a /go nonce: only on the device it was minted for, only while still admitted
# and while the link it was minted for is still the student's current link.
# KEYS: nonce, admitted, links. ARGV: device
_CONSUME_NONCE = """
local v = redis.call('GET', KEYS[1])
if not v then return {0} end
local d = cjson.decode(v)
if d.device ~= ARGV[1] then return {2} end
redis.call('DEL', KEYS[1])
local a = redis.call('HGET', KEYS[2], d.student_id)
if not a then return {3} end
if type(d.jti) == 'string' and d.jti ~= '' and
   redis.call('HGET', KEYS[3], d.student_id) ~= d.jti then
  return {3}
end
return {1, v}
"""

# Mint a /go nonce for a waiting-room socket: only for the device of the current
# admission, and only while the ticket's link is the student's current link.
# KEYS: admitted, links, ticket, nonce. ARGV: student, device, ticket id, ttl s
_MINT_NONCE = """
local a = redis.call('HGET', KEYS[1], ARGV[1])
if not a or cjson.decode(a).device ~= ARGV[2] then return 0 end
local jti = redis.call('HGET', KEYS[3], 'jti')
if jti and jti ~= '' and redis.call('HGET', KEYS[2], ARGV[1]) ~= jti then return 0 end
redis.call('SET', KEYS[4], cjson.encode({student_id=ARGV[1], device=ARGV[2],
           ticket=ARGV[3], jti=jti or ''}), 'EX', ARGV[4])
return 1
"""

# Make a new link current (or revoke the current one) and retire everything the old
# link held, in one step: the old jti is revoked; the device binding is dropped and the
# device remembered as released (it never takes the new binding by opening it first);
# the student's waiting ticket leaves the waiting room and their admission ends.
# KEYS: 1 links, 2 revoked, 3 jtis, 4 bind, 5 rebinds, 6 released, 7 waiting,
#       8 admitted, 9 tk_by
# ARGV: 1 student, 2 new jti ('' to revoke only), 3 new link record json,
#       4 ticket key prefix, 5 released ttl s, 6 reason for the ticket
# Returns {old jti or false, old record json or false, ticket or false, admission ended}
_RETIRE_LINK = """
local sid, new = ARGV[1], ARGV[2]
local old = redis.call('HGET', KEYS[1], sid)
if new ~= '' then
  redis.call('HSET', KEYS[3], new, ARGV[3])
  redis.call('HSET', KEYS[1], sid, new)
else
  redis.call('HDEL', KEYS[1], sid)
end
local old_body = false
if old and old ~= new then
  redis.call('SADD', KEYS[2], old)
  old_body = redis.call('HGET', KEYS[3], old)
end
local dev = redis.call('HGET', KEYS[4], sid)
if dev then
  local list = {}
  local cur = redis.call('HGET', KEYS[6], sid)
  if cur then
    for _, d in ipairs(cjson.decode(cur)) do
      if d ~= dev then table.insert(list, d) end
    end
  end
  table.insert(list, dev)
  while #list > 8 do table.remove(list, 1) end
  redis.call('HSET', KEYS[6], sid, cjson.encode(list))
  redis.call('EXPIRE', KEYS[6], ARGV[5])
  redis.call('HDEL', KEYS[4], sid)
  redis.call('HDEL', KEYS[5], sid)
end
local tk = redis.call('HGET', KEYS[9], sid)
if tk then
  redis.call('HDEL', KEYS[7], tk)
  local tkey = ARGV[4] .. tk
  local st = redis.call('HGET', tkey, 'status')
  if st == 'waiting' or st == 'admitted' then
    redis.call('HSET', tkey, 'status', 'removed', 'reason', ARGV[6])
  end
end
local ended = redis.call('HDEL', KEYS[8], sid)
return {old or false, old_body, tk or false, ended}
"""

# Several fixed-window counters at once. KEYS: counters. ARGV: window s per counter.
_COUNT_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, ARGV[i]) end
  out[i] = n
end
return out
"""

# Raise an alert, or count it again when the same one (same id) is already shown; keep
# the newest ARGV[4] of its kind, so a flood of one kind cannot push the others out.
# KEYS: items, order, kind order. ARGV: id, alert json, now, keep per kind, ttl s, and
# optionally a pub/sub channel and message published when the alert is new.
# Returns {1 if new, count}
_ADD_ALERT = """
local new = 0
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  new = 1
end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':n', 1)
redis.call('HSET', KEYS[1], ARGV[1] .. ':last', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
local function drop(id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[1], id, id .. ':n', id .. ':last')
end
local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[4])
if extra > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, extra - 1)) do drop(id) end
end
local stale = tonumber(ARGV[3]) - tonumber(ARGV[5])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', stale)) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[1], id, id .. ':n', id .. ':last')
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
if new == 1 and ARGV[6] then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
return {new, n}
"""

# A waiting-room socket opens on a ticket: the newest ARGV[3] stay, older ones are
# returned to be closed. The ticket is marked as having had a page open ('ws'), so an
# empty socket set later means the student left. KEYS: the ticket's sockets, the
# ticket. ARGV: socket id, now, keep, ttl s, stale before.
# Returns {came back (1 when the page had left), old socket ids...}
_SOCKET_OPEN = """
local back = 0
if redis.call('HGET', KEYS[2], 'ws') == '1' and
   redis.call('ZCOUNT', KEYS[1], ARGV[5], '+inf') == 0 then back = 1 end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'ws', '1') end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local out = {back}
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if extra <= 0 then return out end
local old = redis.call('ZRANGE', KEYS[1], 0, extra - 1)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[1], id)
  out[#out + 1] = id
end
return out
"""

# A window of refusals that starts with the first one: the count and when it started.
# KEYS: counter hash. ARGV: window s, now. Returns {count, first (string)}
_COUNT_FN = """
local function count_refusal(key, window, now)
  local n = redis.call('HINCRBY', key, 'n', 1)
  if n == 1 then
    redis.call('HSET', key, 'first', now)
    redis.call('EXPIRE', key, window)
  end
  return {n, redis.call('HGET', key, 'first') or now}
end
"""
_COUNT_REFUSALS = _COUNT_FN + "return count_refusal(KEYS[1], ARGV[1], ARGV[2])\n"

# GCRA over several limits at once; nothing is updated unless every limit allows.
# gcra(n): KEYS[1..n], one per limit. ARGV: now_ms, then (interval_ms, burst) per key.
# Returns {1, 0} | {0, wait ms, index of the limit with the longest wait}
_GCRA_FN = """
local function gcra(n)
  local now = tonumber(ARGV[1])
  local worst, which = 0, 0
  local new = {}
  for i = 1, n do
    local interval = tonumber(ARGV[2 * i])
    local burst = tonumber(ARGV[2 * i + 1])
    local tau = interval * (burst - 1)
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    if tat - now > tau then
      local wait = tat - now - tau
      if wait > worst then worst, which = wait, i end
    end
    new[i] = tat + interval
  end
  if worst > 0 then return {0, worst, which} end
  for i = 1, n do
    redis.call('SET', KEYS[i], new[i], 'PX', math.ceil(new[i] - now) + 1000)
  end
  return {1, 0}
end
"""
_GCRA = _GCRA_FN + "return gcra(#KEYS)\n"

# GCRA (as above, every key but the last) and one more refusal counted in the last key
# (as _COUNT_REFUSALS), for an attempt refused whatever the limits say.
# ARGV: as _GCRA, then the counter's window s and now.
# Returns {allowed 1/0, wait ms, index of the limit, count, first (string)}
_GCRA_COUNT = _GCRA_FN + _COUNT_FN + """
local c = count_refusal(KEYS[#KEYS], ARGV[2 * #KEYS], ARGV[2 * #KEYS + 1])
local r = gcra(#KEYS - 1)
return {r[1], r[2], r[3] or 0, c[1], c[2]}
"""

# A short code typed: refused unseen while any of the failure budgets is drained (the
# answer must not depend on the code, or a throttled guesser would still learn which
# guess was right); otherwise looked up, and then a correct code is charged to its link
# only, a wrong one to every failure budget. KEYS: the n failure budgets, then the code.
# ARGV: now_ms, (interval_ms, burst) per budget, lookup (1/0: 0 for a code not even
# well-formed), link budget key prefix, link interval_ms, link burst.
# Returns {'limited', wait ms, index of the budget} | {'wrong', 0, 0} |
#         {'found', 0, "cid|jti"} | {'link_limited', wait ms, "cid|jti"}
_CODE_ATTEMPT = """
local n = #KEYS - 1
local now = tonumber(ARGV[1])
local worst, which = 0, 0
local new = {}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local wait = tat - now - interval * (tonumber(ARGV[2 * i + 1]) - 1)
  if wait > worst then worst, which = wait, i end
  new[i] = tat + interval
end
if worst > 0 then return {'limited', worst, which} end
local found = false
if ARGV[2 * n + 2] == '1' then found = redis.call('GET', KEYS[n + 1]) end
if found and string.find(found, '|', 1, true) then
  local jti = string.sub(found, string.find(found, '|', 1, true) + 1)
  local key = ARGV[2 * n + 3] .. jti
  local interval = tonumber(ARGV[2 * n + 4])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local wait = tat - now - interval * (tonumber(ARGV[2 * n + 5]) - 1)
  if wait > 0 then return {'link_limited', wait, found} end
  redis.call('SET', key, tat + interval, 'PX', math.ceil(tat + interval - now) + 1000)
  return {'found', 0, found}
end
for i = 1, n do
  redis.call('SET', KEYS[i], new[i], 'PX', math.ceil(new[i] - now) + 1000)
end
return {'wrong', 0, 0}
"""

# Everything one join attempt needs from the class, in one call.
# KEYS: meta, links, revoked, roster, bind, rebinds, admitted, removed, denied, bans, hosts, jtis,
#       released
# ARGV: student id, jti
_SNAPSHOT = """
local sid, jti = ARGV[1], ARGV[2]
return {
  redis.call('HGETALL', KEYS[1]),
  redis.call('HGET', KEYS[2], sid),
  redis.call('SISMEMBER', KEYS[3], jti),
  redis.call('HGET', KEYS[4], sid),
  redis.call('HGET', KEYS[5], sid),
  redis.call('HGET', KEYS[6], sid),
  redis.call('HGET', KEYS[7], sid),
  redis.call('SISMEMBER', KEYS[8], sid),
  redis.call('SISMEMBER', KEYS[9], sid),
  redis.call('HGETALL', KEYS[10]),
  redis.call('HLEN', KEYS[7]),
  redis.call('ZRANGE', KEYS[11], 0, -1, 'WITHSCORES'),
  redis.call('HGET', KEYS[12], jti),
  redis.call('HGET', KEYS[13], sid)
}
"""

# Act on an admit or wait decision in one step: the class's flood budget, the device
# binding, the admission or the knock, the /go nonce, and the event for every process.
# KEYS: 1 class budget, 2 bind, 3 rebinds, 4 admitted, 5 removed, 6 denied, 7 tk_by,
#       8 waiting, 9 new ticket, 10 last_ip, 11 new nonce
# ARGV: 1 mode (admit|readmit|wait), 2 sid, 3 device, 4 bind (none|bind|rebind),
#       5 now_ms, 6 budget interval ms, 7 budget burst, 8 ticket random, 9 ticket json,
#       10 entry json (admission or waiting), 11 ticket ttl s, 12 ip, 13 nonce random,
#       14 nonce ttl s, 15 ticket key prefix, 16 bus channel, 17 event json, 18 class id,
#       19 jti of the link used, 20 window s of the class's attempt counter (KEYS[12]),
#       21 audit entry (audit.outbox) written to KEYS[13], the class's outbox, with the
#       ticket, whenever the admission or the knock is made
# Returns {'ok', ticket random, new(0/1), attempts} | {'limited', wait ms, attempts} |
# {'conflict', attempts}; attempts: the class's verified attempts in the current window
_APPLY = """
local attempts = redis.call('INCR', KEYS[12])
if attempts == 1 then redis.call('EXPIRE', KEYS[12], ARGV[20]) end
local now = tonumber(ARGV[5])
local interval, burst = tonumber(ARGV[6]), tonumber(ARGV[7])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > interval * (burst - 1) then
  return {'limited', tostring(tat - now - interval * (burst - 1)), attempts}
end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil(tat + interval - now) + 1000)
local sid, dev = ARGV[2], ARGV[3]
if ARGV[4] ~= 'none' then
  local cur = redis.call('HGET', KEYS[2], sid)
  if not cur then
    redis.call('HSET', KEYS[2], sid, dev)
  elseif cur ~= dev then
    if ARGV[4] ~= 'rebind' then return {'conflict', attempts} end
    redis.call('HSET', KEYS[2], sid, dev)
    redis.call('HINCRBY', KEYS[3], sid, 1)
  end
end
redis.call('HSET', KEYS[10], sid, ARGV[12])
redis.call('EXPIRE', KEYS[10], 86400)
local mode, rand, is_new = ARGV[1], ARGV[8], 1
if mode == 'readmit' then
  local cur = redis.call('HGET', KEYS[7], sid)
  if cur and redis.call('EXISTS', ARGV[15] .. cur) == 1 then
    rand, is_new = cur, 0
  else
    mode = 'admit'
  end
end
if mode == 'wait' then
  local old = redis.call('HGET', KEYS[7], sid)
  if old then
    local okey = ARGV[15] .. old
    local ost = redis.call('HGET', okey, 'status')
    if ost == 'waiting' and redis.call('HGET', okey, 'device') == dev then
      redis.call('EXPIRE', okey, ARGV[11])
      rand, is_new = old, 0
    elseif ost == 'waiting' then
      redis.call('HDEL', KEYS[8], old)
      redis.call('HSET', okey, 'status', 'replaced')
    end
  end
  if is_new == 1 then
    local t = cjson.decode(ARGV[9])
    for k, v in pairs(t) do redis.call('HSET', KEYS[9], k, v) end
    redis.call('EXPIRE', KEYS[9], ARGV[11])
    redis.call('HSET', KEYS[8], rand, ARGV[10])
    redis.call('HSET', KEYS[7], sid, rand)
  end
elseif mode == 'admit' then
  redis.call('HSET', KEYS[4], sid, ARGV[10])
  redis.call('SREM', KEYS[5], sid)
  redis.call('SREM', KEYS[6], sid)
  local old = redis.call('HGET', KEYS[7], sid)
  if old then redis.call('HDEL', KEYS[8], old) end
  local t = cjson.decode(ARGV[9])
  for k, v in pairs(t) do redis.call('HSET', KEYS[9], k, v) end
  redis.call('EXPIRE', KEYS[9], ARGV[11])
  redis.call('HSET', KEYS[7], sid, rand)
end
if mode ~= 'wait' then
  redis.call('SET', KEYS[11], cjson.encode({student_id=sid, device=dev,
             ticket=ARGV[18] .. '.' .. rand, jti=ARGV[19]}), 'EX', ARGV[14])
end
if is_new == 1 then
  local ev = cjson.decode(ARGV[17])
  ev['ticket'] = ARGV[18] .. '.' .. rand
  redis.call('PUBLISH', ARGV[16], cjson.encode(ev))
end
redis.call('XADD', KEYS[13], '*', 'd', ARGV[21], 't', ARGV[18] .. '.' .. rand)
return {'ok', rand, is_new, attempts}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    key: str
    per_second: float
    burst: int

    @property
    def gcra(self) -> tuple[int, int]:
        """(emission interval in ms, burst): the script's arguments for this limit."""
        return max(1, int(1000 / self.per_second)), max(1, self.burst)

    @property
    def bucket(self) -> str:
        """The kind of budget, without the address, link or class it is for
        (``ip``, ``net``, ``jti``, ``code:ip``, ``code:net``, ``code:space``, ``class``,
        ...)."""
        for prefix in _VALUED_BUCKETS:
            if self.key.startswith(prefix + ":"):
                return prefix
        return self.key


# Limit keys of the form "<bucket>:<value>"; others ("global", "code:space") are whole.
_VALUED_BUCKETS = ("code:ip", "code:net", "ws:ticket", "ip", "net", "jti", "class")


class ClassStore:
    """Classes, rosters, links and join state for every gateway process."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *, clock: Clock = time.time,
                 fast: Multiplexed | None = None, audit_replicas: int = 0,
                 audit_wait_ms: int = 1000) -> None:
        self.r = redis
        # Audit records written by the scripts themselves go to the class's outbox; the
        # same round trip marks it for the sequencer and, with replicas, WAITs for them.
        self.audit_keys = AuditKeys(prefix)
        self.audit_replicas = audit_replicas
        self.audit_wait_ms = audit_wait_ms
        self._outboxes: set[str] = set()
        # The join path's scripts go through ``fast`` when there is one (a plain server):
        # see gateway.redis_mux. Everything else uses redis-py.
        self.fast = fast
        self.k = Keys(prefix)
        self.clock = clock
        self._bind = redis.register_script(_BIND)
        self._knock = redis.register_script(_KNOCK)
        self._admit_direct = redis.register_script(_ADMIT_DIRECT)
        self._admit_ticket = redis.register_script(_ADMIT_TICKET)
        self._deny_ticket = redis.register_script(_DENY_TICKET)
        self._remove = redis.register_script(_REMOVE_STUDENT)
        self._consume = redis.register_script(_CONSUME_NONCE)
        self._mint = redis.register_script(_MINT_NONCE)
        self._retire = redis.register_script(_RETIRE_LINK)
        self._gcra = redis.register_script(_GCRA)
        self._gcra_count = redis.register_script(_GCRA_COUNT)
        self._count_refusals = redis.register_script(_COUNT_REFUSALS)
        self._count_many = redis.register_script(_COUNT_MANY)
        self._add_alert = redis.register_script(_ADD_ALERT)
        self._socket_open = redis.register_script(_SOCKET_OPEN)
        self._code_attempt = redis.register_script(_CODE_ATTEMPT)
        self._snapshot = redis.register_script(_SNAPSHOT)
        self._apply = redis.register_script(_APPLY)
        # A class's org chain never changes after creation: a read-through cache of
        # immutable data (not state), so the ban lookup joins the snapshot round trip.
        self._chains: dict[str, list[str]] = {}

    # --- classes ----------------------------------------------------------------

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
        m = await self.r.hgetall(self.k.meta(cid))
        return _class_from_meta(m) if m else None

    async def classes_of_owner(self, owner: str) -> list[ClassInfo]:
        ids = await self.r.smembers(self.k.owner_classes(owner))
        return await self._load_many(ids)

    async def classes_of_orgs(self, orgs: Iterable[str]) -> list[ClassInfo]:
        ids: set[str] = set()
        for org in orgs:
            ids |= set(await self.r.smembers(self.k.org_classes(org)))
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
        raw = await self.r.hgetall(self.k.roster(cid))
        students = [_student_from_json(sid, v) for sid, v in raw.items()]
        students.sort(key=lambda s: (s.name.casefold(), s.id))
        return students

    async def student(self, cid: str, sid: str) -> Student | None:
        v = await self.r.hget(self.k.roster(cid), sid)
        return _student_from_json(sid, v) if v else None

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
            await self.revoke_student_links(cid, s.id)
        return sorted(keep.values(), key=lambda s: (s.name.casefold(), s.id)), removed

    # --- links --------------------------------------------------------------------

    async def store_link(self, rec: LinkRecord, code_hash: str, code_ttl_s: int) -> Retired:
        """Make ``rec`` the student's current link, retiring the one it replaces (see
        ``_RETIRE_LINK``): what ``Retired.jti`` names was revoked in the same step."""
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
        res = await self._retire(
            keys=[self.k.links(cid), self.k.revoked(cid), self.k.jtis(cid), self.k.bind(cid),
                  self.k.rebinds(cid), self.k.released(cid), self.k.waiting(cid),
                  self.k.admitted(cid), self.k.tickets_by_student(cid)],
            args=[sid, new_jti, body, self.k.ticket(cid, ""), max(3600, int(ttl_s)),
                  "token_revoked"],
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
        raw = await self.r.hget(self.k.jtis(cid), jti)
        if not raw:
            return None
        d = json.loads(raw)
        return LinkRecord(
            jti=Jti(d["jti"]),
            student_id=StudentId(d["student_id"]),
            class_id=ClassId(cid),
            iat=int(d["iat"]),
            nbf=int(d["nbf"]),
            exp=int(d["exp"]),
            code=d.get("code", ""),
        )

    async def current_links(self, cid: str) -> dict[str, LinkRecord]:
        cur = await self.r.hgetall(self.k.links(cid))
        out: dict[str, LinkRecord] = {}
        for sid, jti in cur.items():
            rec = await self.link_record(cid, jti)
            if rec is not None:
                out[sid] = rec
        return out

    async def resolve_code(self, code_hash: str) -> tuple[str, str] | None:
        v = await self.r.get(self.k.code(code_hash))
        if not v or "|" not in v:
            return None
        cid, jti = v.split("|", 1)
        return cid, jti

    # --- join snapshot ------------------------------------------------------------

    def _snapshot_keys(self, cid: str) -> list[str]:
        k = self.k
        return [k.meta(cid), k.links(cid), k.revoked(cid), k.roster(cid), k.bind(cid),
                k.rebinds(cid), k.admitted(cid), k.removed(cid), k.denied(cid), k.bans(cid),
                k.hosts(cid), k.jtis(cid), k.released(cid)]

    async def _pipelined_scripts(
        self, calls: Sequence[tuple[AsyncScript, Sequence[str], Sequence[Any]]],
        commands: Sequence[tuple[str, ...]] = (),
    ) -> list[Any]:
        """Scripts (EVALSHA) then plain commands in one pipeline, one round trip.

        NOTE: redis-py's pipeline sends SCRIPT EXISTS before every execute that holds a
        script, a second round trip on the hottest path; EVALSHA is queued directly
        instead, and the scripts are loaded only when Redis answers NOSCRIPT (a restart,
        a failover, SCRIPT FLUSH), then the pipeline runs once more. The scripts only
        read or are idempotent per attempt (GCRA charges again on the retry, which errs
        on the side of refusing)."""
        for attempt in (1, 2):
            if self.fast is not None:
                res = await self.fast.pipeline(
                    [("EVALSHA", script.sha, len(keys), *keys, *args)
                     for script, keys, args in calls] + list(commands))
            else:
                async with self.r.pipeline(transaction=False) as p:
                    for script, keys, args in calls:
                        p.evalsha(script.sha, len(keys), *keys, *args)
                    for command in commands:
                        p.execute_command(*command)
                    res = await p.execute(raise_on_error=False)
            missing = [s for (s, _, _), r in zip(calls, res, strict=False)
                       if isinstance(r, NoScriptError)]
            if not missing or attempt == 2:
                break
            for script in missing:
                await self.r.script_load(script.script)
        for r in res:
            if isinstance(r, Exception):
                raise r
        return list(res)

    async def _with_record(self, cid: str, script: AsyncScript, keys: Sequence[str],
                           args: Sequence[Any]) -> Any:
        """Run a script that writes an audit record to the class's outbox, then mark the
        outbox for the sequencer (and WAIT for the replicas) in the same round trip.

        The outbox is listed (``audit:outboxes``) before this process first writes to
        it, so a crash right after the script still leaves its records to be found."""
        box = self.k.outbox(cid)
        if box not in self._outboxes:
            await self.r.sadd(self.audit_keys.outboxes, box)
            if len(self._outboxes) >= 65536:
                self._outboxes.clear()
            self._outboxes.add(box)
        commands: list[tuple[Any, ...]] = [("SADD", self.audit_keys.outbox_dirty, box)]
        if self.audit_replicas > 0:
            commands.append(("WAIT", self.audit_replicas, self.audit_wait_ms))
        res = await self._pipelined_scripts([(script, keys, args)], commands)
        if self.audit_replicas > 0 and int(res[-1]) < self.audit_replicas:
            raise NotDurableError(
                f"expected {self.audit_replicas} replicas to confirm the change and its "
                f"record within {self.audit_wait_ms} ms, found {int(res[-1])}")
        return res[0]

    async def _script(self, script: AsyncScript, keys: Sequence[str] = (),
                      args: Sequence[Any] = ()) -> Any:
        """One script call (EVALSHA, loading the script on NOSCRIPT)."""
        if self.fast is None:
            return await script(keys=keys, args=args)
        try:
            return await self.fast.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.fast.execute("SCRIPT", "LOAD", script.script)
            return await self.fast.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def snapshot(
        self, cid: str, facts: TokenFacts, *, device: str | None, ip: str,
        limits: Sequence[Limit] = (),
    ) -> Snapshot:
        """Everything the policy needs for one attempt, in one round trip; with
        ``limits``, the rate limiter runs in the same round trip and its answer is in
        ``extra["wait"]`` (seconds, 0.0 when allowed)."""
        sid = facts.student_id or ""
        jti = facts.jti or ""
        now = self.clock()
        chain = self._chains.get(cid)
        calls: list[tuple[AsyncScript, list[str], list[Any]]] = []
        if limits:
            calls.append((self._gcra, [self.k.ratelimit(lim.key) for lim in limits],
                          _gcra_args(limits, now)))
        calls.append((self._snapshot, self._snapshot_keys(cid), [sid, jti]))
        res = await self._pipelined_scripts(
            calls, [("HGETALL", self.k.org_bans(org)) for org in chain or ()])
        wait = 0.0
        limited_by: Limit | None = None
        if limits:
            gcra, res = res[0], res[1:]
            wait, limited_by = _gcra_result(gcra, limits)
        snap_raw, org_raw = res[0], res[1:]
        (meta_flat, cur_jti, is_revoked, roster_v, bound, rebinds, admitted_v, removed, denied,
         bans_flat, admitted_count, hosts_flat, jti_raw, released_raw) = snap_raw
        meta = _pairs(meta_flat)
        bans = _pairs(bans_flat)
        hosts = [(hosts_flat[i], float(hosts_flat[i + 1])) for i in range(0, len(hosts_flat), 2)]
        if not meta:
            return Snapshot(None, None, None, None, {"wait": wait, "limited_by": limited_by})
        info = _class_from_flat(tuple(meta_flat))
        all_bans = parse_bans(bans, "class", cid)
        if chain is None:
            # First attempt for this class in this process: learn the chain once.
            chain = json.loads(meta.get("org_chain") or "[]") or [info.org]
            if len(self._chains) > 50_000:
                self._chains.clear()
            self._chains[cid] = chain
            org_raw = await self._pipelined_scripts(
                [], [("HGETALL", self.k.org_bans(org)) for org in chain])
        for org, raw in zip(chain, org_raw, strict=True):
            # (a dict through redis-py, the flat reply through the multiplexed client)
            all_bans += parse_bans(raw if isinstance(raw, dict) else _pairs(raw), "org", org)
        dev_b, ip_b = match_bans(all_bans, device=device, ip=ip, now=now)
        student = _student_from_json(sid, roster_v) if roster_v else None
        link = None
        if jti_raw:
            d = json.loads(jti_raw)
            link = LinkRecord(Jti(d["jti"]), StudentId(d["student_id"]), ClassId(cid),
                              int(d["iat"]), int(d["nbf"]), int(d["exp"]), d.get("code", ""))
        live_hosts = [s for _, s in hosts if s > now]
        host_present = bool(live_hosts)
        host_left_at: datetime | None = None
        if not host_present:
            left = meta.get("host_left_at")
            if hosts:
                left_ts = max(s for _, s in hosts) - HOST_TTL_S
                left = repr(max(float(left or 0), left_ts))
            if left:
                host_left_at = datetime.fromtimestamp(float(left), UTC)
        admitted = json.loads(admitted_v) if admitted_v else None
        revoked = bool(is_revoked) or (cur_jti is None) or (cur_jti != jti)
        released = False
        if released_raw and device is not None and device != bound:
            try:
                released = device in json.loads(released_raw)
            except ValueError:
                released = True  # NOTE: a corrupt entry holds the device for the host

        state = ClassState(
            class_id=ClassId(cid),
            schedule=info.schedule,
            locked=info.locked,
            ended=info.ended,
            host_present=host_present,
            host_left_at=host_left_at,
            revoked=revoked,
            on_roster=student is not None,
            bound_device=bound,
            rebinds_used=int(rebinds or 0),
            device_released=released,
            student_admitted=admitted is not None,
            admitted_device=admitted.get("device") if admitted else None,
            removed=bool(removed),
            denied=bool(denied),
            banned_device=dev_b is not None,
            banned_ip=ip_b is not None,
            ban_reason=(dev_b or ip_b).reason if (dev_b or ip_b) else None,
            admitted_count=int(admitted_count),
        )
        ban = dev_b or ip_b
        return Snapshot(info, state, link, student,
                        {"admitted": admitted, "wait": wait, "limited_by": limited_by,
                         "ban_key": ban.key if ban else None})

    # --- join actions ---------------------------------------------------------------

    async def bind_device(self, cid: str, sid: str, device: str, *, rebind: bool) -> str:
        res = await self._bind(
            keys=[self.k.bind(cid), self.k.rebinds(cid)], args=[sid, device, "1" if rebind else "0"]
        )
        return str(res)

    async def knock(
        self,
        cid: str,
        sid: str,
        device: str,
        *,
        reason: str,
        device_hint: str,
        ttl_s: int = 12 * 3600,
    ) -> tuple[str, bool]:
        """Put the student in the waiting room; returns (ticket, is_new)."""
        rand = new_secret(16)
        now = self.clock()
        ticket = {
            "student_id": sid,
            "device": device,
            "status": "waiting",
            "reason": reason,
            "created": repr(now),
            "device_hint": device_hint,
        }
        waiting = {"student_id": sid, "since": now, "device_hint": device_hint, "reason": reason}
        res = await self._knock(
            keys=[self.k.waiting(cid), self.k.tickets_by_student(cid), self.k.ticket(cid, rand)],
            args=[sid, device, rand, json.dumps(ticket), json.dumps(waiting), ttl_s,
                  self.k.ticket(cid, "")],
        )
        is_new, rnd = int(res[0]), str(res[1])
        return f"{cid}.{rnd}", bool(is_new)

    async def admit_direct(
        self, cid: str, sid: str, device: str, *, reason: str, device_hint: str,
        ttl_s: int = 12 * 3600,
    ) -> str:
        rand = new_secret(16)
        now = self.clock()
        admission = json.dumps({"ticket": rand, "device": device, "at": now, "by": "policy"})
        ticket = {
            "student_id": sid,
            "device": device,
            "status": "admitted",
            "reason": reason,
            "created": repr(now),
            "device_hint": device_hint,
        }
        await self._admit_direct(
            keys=[self.k.admitted(cid), self.k.removed(cid), self.k.denied(cid),
                  self.k.tickets_by_student(cid), self.k.ticket(cid, rand), self.k.waiting(cid)],
            args=[sid, admission, json.dumps(ticket), ttl_s, rand],
        )
        return f"{cid}.{rand}"

    async def ticket(self, ticket: str) -> Ticket | None:
        parsed = split_ticket(ticket)
        if parsed is None:
            return None
        cid, rand = parsed
        d = await self.r.hgetall(self.k.ticket(cid, rand))
        if not d:
            return None
        return Ticket(
            id=ticket,
            class_id=ClassId(cid),
            student_id=StudentId(d["student_id"]),
            device=d["device"],
            status=d.get("status", "waiting"),
            reason=d.get("reason", ""),
            created=float(d.get("created", 0)),
            device_hint=d.get("device_hint", ""),
            jti=d.get("jti", ""),
            ip=d.get("ip", ""),
        )

    async def current_ticket_of(self, cid: str, sid: str) -> str | None:
        rand = await self.r.hget(self.k.tickets_by_student(cid), sid)
        return f"{cid}.{rand}" if rand else None

    async def admit_ticket(self, ticket: str, *, by: str,
                           record: str | None = None) -> dict[str, Any] | None:
        """Admit a waiting ticket; ``record`` (an outbox entry) is written with it."""
        parsed = split_ticket(ticket)
        if parsed is None:
            return None
        cid, rand = parsed
        keys = [self.k.waiting(cid), self.k.admitted(cid), self.k.removed(cid),
                self.k.denied(cid), self.k.ticket(cid, rand), self.k.outbox(cid)]
        args = [rand, repr(self.clock()), by, record or ""]
        if record is not None:
            res = await self._with_record(cid, self._admit_ticket, keys, args)
        else:
            res = await self._admit_ticket(keys=keys, args=args)
        return cast(dict[str, Any], json.loads(res)) if res else None

    async def deny_ticket(self, ticket: str) -> dict[str, Any] | None:
        parsed = split_ticket(ticket)
        if parsed is None:
            return None
        cid, rand = parsed
        res = await self._deny_ticket(
            keys=[self.k.waiting(cid), self.k.denied(cid), self.k.ticket(cid, rand)],
            args=[rand],
        )
        return cast(dict[str, Any], json.loads(res)) if res else None

    async def admit_student(self, cid: str, sid: str, *, by: str) -> str | None:
        """Admit by student id: their waiting ticket if any; else clear a previous
        deny/remove so their next attempt is decided afresh."""
        tk = await self.current_ticket_of(cid, sid)
        if tk is not None and await self.admit_ticket(tk, by=by) is not None:
            return tk
        async with self.r.pipeline(transaction=True) as p:
            p.srem(self.k.removed(cid), sid)
            p.srem(self.k.denied(cid), sid)
            await p.execute()
        return None

    async def remove_student(self, cid: str, sid: str, *, status: str, reason: str) -> str | None:
        res = await self._remove(
            keys=[self.k.admitted(cid), self.k.waiting(cid), self.k.removed(cid),
                  self.k.tickets_by_student(cid)],
            args=[sid, self.k.ticket(cid, ""), status, reason],
        )
        return f"{cid}.{res}" if res else None

    async def waiting(self, cid: str) -> dict[str, dict[str, Any]]:
        raw = await self.r.hgetall(self.k.waiting(cid))
        return {f"{cid}.{k}": json.loads(v) for k, v in raw.items()}

    async def admitted(self, cid: str) -> dict[str, dict[str, Any]]:
        raw = await self.r.hgetall(self.k.admitted(cid))
        return {k: json.loads(v) for k, v in raw.items()}

    async def clear_room(self, cid: str) -> tuple[list[str], list[str]]:
        """End of class: everyone waiting or admitted is let go. Returns their tickets."""
        w = await self.waiting(cid)
        a = await self.admitted(cid)
        async with self.r.pipeline(transaction=True) as p:
            p.delete(self.k.waiting(cid), self.k.admitted(cid))
            for tk in w:
                p.hset(self.k.ticket(cid, tk.split(".", 1)[1]),
                       mapping={"status": "denied", "reason": "class_ended"})
            await p.execute()
        return list(w), [f"{cid}.{v['ticket']}" for v in a.values()]

    async def reset_device(self, cid: str, sid: str) -> None:
        """Forget the student's device; the next device they join from is remembered
        for the host's alert (take_device_reset)."""
        async with self.r.pipeline(transaction=True) as p:
            p.hdel(self.k.bind(cid), sid)
            p.hdel(self.k.rebinds(cid), sid)
            p.hset(self.k.device_resets(cid), sid, repr(self.clock()))
            p.expire(self.k.device_resets(cid), RELEASED_TTL_S)
            await p.execute()

    async def take_device_reset(self, cid: str, sid: str) -> bool:
        """True once after the student's device was reset (see reset_device)."""
        return bool(await self.r.hdel(self.k.device_resets(cid), sid))

    # --- waiting-room sockets -------------------------------------------------------

    async def socket_opened(self, ticket: str, socket_id: str, *, keep: int,
                            ttl_s: int = 12 * 3600) -> tuple[list[str], bool]:
        """Register a socket on ``ticket`` (across every process); returns the ids of
        the older sockets beyond the newest ``keep``, which their processes close, and
        whether the student's page had left and is back."""
        parsed = split_ticket(ticket)
        if parsed is None:
            return [], False
        cid, rand = parsed
        now = self.clock()
        res = await self._socket_open(
            keys=[self.k.ticket_sockets(cid, rand), self.k.ticket(cid, rand)],
            args=[socket_id, repr(now), keep, ttl_s, repr(now - WAIT_SOCKET_STALE_S)])
        return [str(x) for x in res[1:]], bool(int(res[0]))

    async def socket_seen(self, ticket: str, socket_id: str) -> None:
        """A live socket's periodic mark: sockets of a process that died without
        closing them go stale after WAIT_SOCKET_STALE_S."""
        parsed = split_ticket(ticket)
        if parsed is not None:
            await self.r.zadd(self.k.ticket_sockets(*parsed), {socket_id: self.clock()},
                              xx=True)

    async def socket_closed(self, ticket: str, socket_id: str) -> int:
        """Unregister a socket; returns how many live sockets the ticket still has."""
        parsed = split_ticket(ticket)
        if parsed is None:
            return 0
        key = self.k.ticket_sockets(*parsed)
        async with self.r.pipeline(transaction=True) as p:
            p.zrem(key, socket_id)
            p.zcount(key, self.clock() - WAIT_SOCKET_STALE_S, "+inf")
            _, left = await p.execute()
        return int(left)

    async def gone_tickets(self, tickets: Iterable[str]) -> set[str]:
        """The waiting tickets whose page was open and no longer is (closed, or its
        socket silent for WAIT_SOCKET_STALE_S). A ticket that never had a page open
        (an API client, or a page still loading) is not gone."""
        parsed = [(tk, split_ticket(tk)) for tk in tickets]
        valid = [(tk, pr) for tk, pr in parsed if pr is not None]
        if not valid:
            return set()
        stale = self.clock() - WAIT_SOCKET_STALE_S
        async with self.r.pipeline(transaction=False) as p:
            for _, (cid, rand) in valid:
                p.hget(self.k.ticket(cid, rand), "ws")
                p.zcount(self.k.ticket_sockets(cid, rand), stale, "+inf")
            res = await p.execute()
        return {tk for i, (tk, _) in enumerate(valid)
                if res[2 * i] == "1" and int(res[2 * i + 1]) == 0}

    # --- /go nonces ---------------------------------------------------------------

    async def mint_nonce(self, t: Ticket, ttl_s: int) -> str | None:
        """A ``/go`` nonce for the ticket's device, or None when the student is not
        admitted on that device or the ticket's link is no longer current."""
        parsed = split_ticket(t.id)
        if parsed is None:
            return None
        cid, trand = parsed
        rand = new_secret(24)
        ok = await self._script(self._mint,
            [self.k.admitted(cid), self.k.links(cid), self.k.ticket(cid, trand),
                  self.k.nonce(cid, rand)],
            [t.student_id, t.device, t.id, ttl_s],
        )
        return f"{cid}.{rand}" if int(ok) == 1 else None

    async def consume_nonce(self, nonce: str, device: str) -> tuple[str, dict[str, Any] | None]:
        """('ok', data) | ('unknown', None) | ('wrong_device', None) | ('not_admitted', None)"""
        parsed = split_ticket(nonce)
        if parsed is None:
            return "unknown", None
        cid, rand = parsed
        res = await self._script(self._consume,
            [self.k.nonce(cid, rand), self.k.admitted(cid), self.k.links(cid)], [device])
        code = int(res[0])
        if code == 1:
            d = json.loads(res[1])
            d["class_id"] = cid
            return "ok", d
        return {0: "unknown", 2: "wrong_device", 3: "not_admitted"}[code], None

    # --- bans -----------------------------------------------------------------------

    async def add_ban(
        self, *, class_id: str | None, org: str | None, key: str, reason: str, by: str,
        until: float | None, only_new: bool = False, student_id: str | None = None,
    ) -> bool:
        """A class ban (class_id) or an org-wide ban (org); ``key`` from bans.make_key.
        With ``only_new``, a ban already on that key stays as it is; returns whether
        the ban was written."""
        target = self.k.bans(class_id) if class_id else self.k.org_bans(str(org))
        value = encode_ban(reason, by, self.clock(), until, student_id)
        if only_new:
            return bool(await self.r.hsetnx(target, key, value))
        await self.r.hset(target, key, value)
        return True

    async def bans(self, *, class_id: str | None = None, org: str | None = None) -> list[Ban]:
        """Live bans of a class or an org; expired ones are pruned on the way."""
        target = self.k.bans(class_id) if class_id else self.k.org_bans(str(org))
        found = parse_bans(await self.r.hgetall(target), "class" if class_id else "org",
                           str(class_id or org))
        now = self.clock()
        dead = [b.key for b in found if not b.live(now)]
        if dead:
            await self.r.hdel(target, *dead)
        return [b for b in found if b.live(now)]

    async def lift_ban(self, key: str, *, class_id: str | None = None,
                       org: str | None = None) -> bool:
        target = self.k.bans(class_id) if class_id else self.k.org_bans(str(org))
        return bool(await self.r.hdel(target, key))

    # --- host presence -------------------------------------------------------------

    async def host_heartbeat(self, cid: str, conn_id: str) -> None:
        now = self.clock()
        async with self.r.pipeline(transaction=True) as p:
            p.zadd(self.k.hosts(cid), {conn_id: now + HOST_TTL_S})
            p.zremrangebyscore(self.k.hosts(cid), "-inf", now - 3600)
            p.hdel(self.k.meta(cid), "host_left_at")
            p.expire(self.k.hosts(cid), 86400)
            await p.execute()

    async def host_gone(self, cid: str, conn_id: str) -> bool:
        """Returns True when no host is left."""
        now = self.clock()
        async with self.r.pipeline(transaction=True) as p:
            p.zrem(self.k.hosts(cid), conn_id)
            p.zcount(self.k.hosts(cid), now, "+inf")
            _, remaining = await p.execute()
        if int(remaining) == 0:
            await self.r.hset(self.k.meta(cid), "host_left_at", repr(now))
            return True
        return False

    async def host_present(self, cid: str) -> bool:
        return int(await self.r.zcount(self.k.hosts(cid), self.clock(), "+inf")) > 0

    async def note_ip(self, cid: str, sid: str, ip: str) -> None:
        """The student's last address, kept for a day so the host can ban it."""
        key = self.k.c(cid, "last_ip")
        async with self.r.pipeline(transaction=False) as p:
            p.hset(key, sid, ip)
            p.expire(key, 86400)
            await p.execute()

    async def once(self, cid: str, name: str, ttl_s: int) -> bool:
        """True for the first caller in ``ttl_s`` seconds (across all processes)."""
        key = self.k.c(cid, f"once:{name}")
        if self.fast is not None:
            return await self.fast.execute("SET", key, "1", "NX", "EX", ttl_s) is not None
        return bool(await self.r.set(key, "1", nx=True, ex=ttl_s))

    # --- alerts ---------------------------------------------------------------------

    def _alert_call(self, cid: str, alert: Mapping[str, Any], keep_per_kind: int
                    ) -> tuple[AsyncScript, list[str], list[Any]]:
        aid, kind = str(alert["id"]), str(alert["kind"])
        return (self._add_alert,
                [self.k.alerts(cid), self.k.alert_order(cid), self.k.alert_kind(cid, kind)],
                [aid, json.dumps(dict(alert), ensure_ascii=False), repr(self.clock()),
                 keep_per_kind, ALERT_TTL_S])

    async def add_alert(self, cid: str, alert: Mapping[str, Any], *,
                        keep_per_kind: int = ALERTS_PER_KIND) -> tuple[bool, int]:
        """Raise ``alert`` (it carries ``id`` and ``kind``), or count it once more when
        an alert with that id is shown already; returns (new, count)."""
        script, keys, args = self._alert_call(cid, alert, keep_per_kind)
        new, n = await self._script(script, keys, args)
        return bool(int(new)), int(n)

    async def note_refusal(self, cid: str, alert: Mapping[str, Any] | None,
                           counters: Sequence[tuple[str, int]], *,
                           publish: tuple[str, str] | None = None
                           ) -> tuple[bool, list[int]]:
        """``add_alert`` (when ``alert`` is given) and ``count_recent_many`` in one round
        trip: a refusal's bookkeeping costs no more than the refusal's snapshot did.
        ``publish`` (channel, message): sent by the script when the alert is new.
        Returns (whether the alert is new, the counters)."""
        calls = []
        if alert is not None:
            script, keys, args = self._alert_call(cid, alert, ALERTS_PER_KIND)
            calls.append((script, keys, args + list(publish or ())))
        calls.append((self._count_many, [self.k.c(cid, f"n:{name}") for name, _ in counters],
                      [w for _, w in counters]))
        res = await self._pipelined_scripts(calls)
        new = alert is not None and bool(int(res[0][0]))
        return new, [int(n) for n in res[-1]]

    async def alerts(self, cid: str, n: int | None = None) -> list[dict[str, Any]]:
        """The alerts shown to the host, newest occurrence first, each with ``count``
        and ``last_at``; at most ALERTS_PER_KIND of each kind (``n``: the first n)."""
        ids = await self.r.zrevrange(self.k.alert_order(cid), 0, -1 if n is None else n - 1)
        if not ids:
            return []
        fields = [f for aid in ids for f in (aid, f"{aid}:n", f"{aid}:last")]
        raw = await self.r.hmget(self.k.alerts(cid), fields)
        out = []
        for i in range(0, len(raw), 3):
            body, count, last = raw[i], raw[i + 1], raw[i + 2]
            if body is None:
                continue
            alert = json.loads(body)
            alert["count"] = int(count or 1)
            alert["last_at"] = float(last) if last else alert.get("at")
            out.append(alert)
        return out

    # --- rate limits ----------------------------------------------------------------

    async def rate_limit(self, limits: Sequence[Limit]) -> float:
        """0.0 when allowed, else seconds to wait. One round trip for all limits."""
        return (await self.rate_limit_check(limits))[0]

    async def rate_limit_check(self, limits: Sequence[Limit]) -> tuple[float, Limit | None]:
        """(0.0, None) when allowed, else (seconds to wait, the limit that refused)."""
        if not limits:
            return 0.0, None
        res = await self._script(self._gcra, [self.k.ratelimit(lim.key) for lim in limits],
                                 _gcra_args(limits, self.clock()))
        return _gcra_result(res, limits)

    async def count_refusals(self, name: str, window_s: int, *,
                             class_id: str | None = None) -> tuple[int, float]:
        """Count one refusal in a window that starts with the first one (across every
        process); returns (count so far, when the window started). ``class_id`` keeps
        the counter in the class's hash slot."""
        key = self.k.refusals(name, class_id)
        n, first = await self._script(self._count_refusals, [key],
                                      [window_s, repr(self.clock())])
        return int(n), float(first)

    async def charge_and_count(self, limits: Sequence[Limit], name: str, window_s: int
                               ) -> tuple[float, Limit | None, int, float]:
        """``rate_limit_check`` and ``count_refusals`` in one round trip, for an attempt
        that is refused whatever the limits say (a link not shaped like ours):
        (wait, limit that refused, refusals counted in the window, when it started)."""
        res = await self._script(
            self._gcra_count,
            [*(self.k.ratelimit(lim.key) for lim in limits), self.k.refusals(name)],
            [*_gcra_args(limits, self.clock()), window_s, repr(self.clock())])
        wait, limit = _gcra_result(res[:3], limits)
        return wait, limit, int(res[3]), float(res[4])

    async def code_attempt(self, code_hash: str | None, failure: Sequence[Limit],
                           link: Limit) -> tuple[str, float, Limit | None, str | None]:
        """A short code typed, checked against ``failure`` (the budgets wrong codes are
        charged to) and looked up in one atomic step; ``link`` is the budget a correct
        code is charged to (its key without the jti, e.g. ``"jti:"``).

        Returns (status, wait s, the failure budget that refused, ``"cid|jti"``):
        ``limited`` (refused before the lookup: nothing was charged and the answer says
        nothing about the code), ``wrong`` (charged to every failure budget),
        ``found`` (charged to the link only) or ``link_limited`` (a correct code whose
        link's budget refused it). ``code_hash`` None: a code not even well-formed,
        charged as a wrong one."""
        interval, burst = link.gcra
        res = await self._script(
            self._code_attempt,
            [*(self.k.ratelimit(lim.key) for lim in failure),
             self.k.code(code_hash or "-")],
            [*_gcra_args(failure, self.clock()), "1" if code_hash else "0",
             self.k.ratelimit(link.key), interval, burst])
        status = str(res[0])
        wait = float(res[1]) / 1000.0
        if status == "limited":
            which = int(res[2]) - 1
            return status, wait, failure[which] if 0 <= which < len(failure) else None, None
        if status in ("found", "link_limited"):
            return status, wait, None, str(res[2])
        return status, 0.0, None, None

    async def apply_entry(
        self, cid: str, sid: str, device: str, *, mode: str, bind: str, ip: str,
        ticket_fields: Mapping[str, Any], entry: Mapping[str, Any], event: Mapping[str, Any],
        budget: Limit, bus_channel: str, nonce_ttl_s: int, jti: str = "",
        ticket_ttl_s: int = 12 * 3600, attempts: tuple[str, int] = ("attempts", 10),
        record: str,
    ) -> tuple[str, str | None, str | None, bool, int]:
        """Admit (``admit``/``readmit``) or knock (``wait``) in one atomic step.

        Returns (status, ticket, nonce, is_new, attempts): status ``ok``, ``limited``
        (ticket holds the wait in seconds) or ``conflict`` (another device bound the link
        first); ``attempts`` is the class's counter ``attempts`` (name, window s, as
        ``count_recent``) after counting this attempt, whatever the status. ``record``
        (an outbox entry, audit.outbox) is written in the same step when the status is
        ``ok``, with the ticket in ``facts.ticket``."""
        rand = new_secret(16)
        nonce = new_secret(24)
        now_ms = int(self.clock() * 1000)
        res = await self._with_record(
            cid, self._apply,
            [self.k.ratelimit(budget.key), self.k.bind(cid), self.k.rebinds(cid),
                  self.k.admitted(cid), self.k.removed(cid), self.k.denied(cid),
                  self.k.tickets_by_student(cid), self.k.waiting(cid), self.k.ticket(cid, rand),
                  self.k.c(cid, "last_ip"), self.k.nonce(cid, nonce),
                  self.k.c(cid, f"n:{attempts[0]}"), self.k.outbox(cid)],
            [mode, sid, device, bind, now_ms, max(1, int(1000 / budget.per_second)),
                  max(1, budget.burst), rand, json.dumps(dict(ticket_fields)),
                  json.dumps(dict(entry)), ticket_ttl_s, ip, nonce, nonce_ttl_s,
                  self.k.ticket(cid, ""), bus_channel, json.dumps(dict(event), ensure_ascii=False),
                  cid, jti, attempts[1], record],
        )
        status = str(res[0])
        counted = int(res[-1])
        if status == "limited":
            return status, str(float(res[1]) / 1000.0), None, False, counted
        if status != "ok":
            return status, None, None, False, counted
        ticket = f"{cid}.{res[1]}"
        minted = f"{cid}.{nonce}" if mode != "wait" else None
        return status, ticket, minted, bool(int(res[2])), counted


HOST_TTL_S = 30.0


def _gcra_args(limits: Sequence[Limit], now: float) -> list[Any]:
    args: list[Any] = [int(now * 1000)]
    for lim in limits:
        args += lim.gcra
    return args


def _gcra_result(res: Sequence[Any], limits: Sequence[Limit]) -> tuple[float, Limit | None]:
    if int(res[0]) == 1:
        return 0.0, None
    which = int(res[2]) - 1 if len(res) > 2 else -1
    return float(res[1]) / 1000.0, limits[which] if 0 <= which < len(limits) else None


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def split_ticket(value: str) -> tuple[str, str] | None:
    """``<class_id>.<random>`` → (class_id, random), or None when malformed."""
    if len(value) > 80 or value.count(".") != 1:
        return None
    cid, rand = value.split(".", 1)
    if not valid_class_id(cid) or not (16 <= len(rand) <= 48):
        return None
    if not all(ch.isalnum() or ch in "-_" for ch in rand):
        return None
    return cid, rand


def _student_from_json(sid: str, raw: str) -> Student:
    d = json.loads(raw)
    return Student(StudentId(sid), d["name"], d.get("external_id"), d.get("email"))


@lru_cache(maxsize=4096)
def _class_from_flat(flat: tuple[str, ...]) -> ClassInfo:
    """A class's meta hash as HGETALL returned it, parsed once per distinct content.

    NOTE: every join reads the meta hash; parsing its JSON each time was a measurable
    share of a join. ClassInfo is frozen; callers never change its policy dict."""
    return _class_from_meta(_pairs(flat))


def _class_from_meta(m: Mapping[str, str]) -> ClassInfo:
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


__all__ = [
    "HOST_TTL_S",
    "ClassInfo",
    "ClassStore",
    "Keys",
    "Limit",
    "LinkRecord",
    "Retired",
    "Snapshot",
    "Student",
    "Ticket",
    "device_hash",
    "new_id",
    "split_ticket",
    "_iso",
]
