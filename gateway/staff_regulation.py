"""Login regulation shared by every gateway process (Redis + Lua).

Per account and per client IP, a sliding window of attempts (a sorted set scored by the
injected clock, in ms) and a ban record (a hash: ``until``, ``level``):

* ``begin`` (atomic): refuse when either subject is banned, or when its window already
  holds ``max_failures`` attempts; otherwise record this attempt in both windows *before*
  the password is checked. Counting up front is what keeps concurrent guesses within the
  limit: of 20 simultaneous attempts at most ``max_failures`` reach the KDF.
* ``failed`` (atomic): the attempt stays counted; when the window is full the subject is
  banned for ``ban_s * 2**level`` (capped at ``ban_max_s``) and the window is cleared. The
  level returns to 0 once a ban has been over for ``decay_s``.
* ``succeeded`` (atomic): the account's window and ban record are cleared; from the IP's
  window only the attempts at this same account are taken back.

NOTE: banning per account lets anyone who knows a username lock that person out for up
to ``ban_max_s``. That is the accepted price of stopping online guessing at one account
from many addresses. An administrator can lift a ban at once (``reset``).

All keys share the hash tag ``{login}`` so the scripts also run on Redis Cluster. Key TTLs
are garbage collection only; decisions use the timestamps the scripts are given.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

_BEGIN = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
local limits = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local wait = 0
for i = 0, 1 do
  local z, h = KEYS[i * 2 + 1], KEYS[i * 2 + 2]
  local banned_until = tonumber(redis.call('HGET', h, 'until') or 0)
  if banned_until > now then
    wait = math.max(wait, banned_until - now)
  else
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
    if redis.call('ZCARD', z) >= limits[i + 1] then
      local oldest = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
      wait = math.max(wait, tonumber(oldest[2]) + window - now)
    end
  end
end
if wait > 0 then
  return wait
end
for i = 0, 1 do
  local z = KEYS[i * 2 + 1]
  redis.call('ZADD', z, now, ARGV[2])
  redis.call('PEXPIRE', z, window)
end
return 0
"""

_FAILED = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
local limits = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local ban, ban_max, decay = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local longest = 0
for i = 0, 1 do
  local z, h = KEYS[i * 2 + 1], KEYS[i * 2 + 2]
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
  -- an attempt whose window was already cleared by a ban must not ban again
  if redis.call('ZSCORE', z, ARGV[2]) and redis.call('ZCARD', z) >= limits[i + 1] then
    local level = tonumber(redis.call('HGET', h, 'level') or 0)
    local previous = tonumber(redis.call('HGET', h, 'until') or 0)
    if now - previous >= decay then
      level = 0
    end
    local duration = ban
    for _ = 1, level do
      if duration >= ban_max then break end
      duration = duration * 2
    end
    if duration > ban_max then duration = ban_max end
    redis.call('HSET', h, 'until', now + duration, 'level', level + 1)
    redis.call('PEXPIRE', h, duration + decay)
    redis.call('DEL', z)
    longest = math.max(longest, duration)
  end
end
return longest
"""

_SUCCEEDED = """
redis.call('DEL', KEYS[1], KEYS[2])
local tag = ARGV[1]
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if string.sub(member, 1, string.len(tag)) == tag then
    redis.call('ZREM', KEYS[3], member)
  end
end
return 0
"""


def ip_bucket(ip: str) -> str:
    """The unit an IP is regulated by.

    NOTE: IPv6 clients are regulated per /64, not per address: anyone with IPv6 can use a
    fresh address from their /64 for every guess. IPv4-mapped addresses count as IPv4.
    Unparseable values (a unix-socket peer, a missing header) share one bucket per value,
    which fails closed rather than open.
    """
    text = ip.strip()
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return "raw:" + text[:128]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        net = ipaddress.IPv6Network((int(addr) >> 64 << 64, 64))
        return str(net)
    return str(addr)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One login attempt that ``begin`` let through (``retry_after == 0``) or refused."""

    keys: tuple[str, str, str, str]
    member: str
    retry_after: int  # whole seconds; 0 when the attempt may go ahead


class LoginRegulator:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        clock: Callable[[], float],
        max_failures: int,
        ip_max_failures: int,
        window_s: float,
        ban_s: float,
        ban_max_s: float,
        decay_s: float,
    ) -> None:
        if min(max_failures, ip_max_failures) < 1:
            raise ValueError("login failure limits must be at least 1")
        if min(window_s, ban_s, decay_s) <= 0 or ban_max_s < ban_s:
            raise ValueError("login window/ban/decay must be positive and ban_max_s >= ban_s")
        self._redis = redis
        self._prefix = prefix
        self._clock = clock
        self._max = max_failures
        self._ip_max = ip_max_failures
        self._window_ms = math.ceil(window_s * 1000)
        self._ban_ms = math.ceil(ban_s * 1000)
        self._ban_max_ms = math.ceil(ban_max_s * 1000)
        self._decay_ms = math.ceil(decay_s * 1000)
        self._begin = redis.register_script(_BEGIN)
        self._failed = redis.register_script(_FAILED)
        self._succeeded = redis.register_script(_SUCCEEDED)

    @staticmethod
    def _digest(kind: str, value: str) -> str:
        # Hashed so attacker-chosen usernames and client IPs never appear in key names.
        return hashlib.sha256(f"{kind}\0{value}".encode()).hexdigest()[:32]

    def _subject(self, kind: str, value: str) -> tuple[str, str]:
        base = f"{self._prefix}staff:{{login}}:{kind}:{self._digest(kind, value)}"
        return f"{base}:f", f"{base}:b"

    def _keys(self, account: str, ip: str) -> tuple[str, str, str, str]:
        return (*self._subject("a", account), *self._subject("i", ip_bucket(ip)))

    def _now_ms(self) -> int:
        return math.floor(self._clock() * 1000)

    async def begin(self, *, account: str, ip: str) -> Attempt:
        keys = self._keys(account, ip)
        # The account tag lets a success take back this account's attempts from the IP.
        member = f"{self._digest('a', account)[:16]}:{secrets.token_hex(8)}"
        wait_ms: Any = await self._begin(
            keys=list(keys),
            args=[self._now_ms(), member, self._window_ms, self._max, self._ip_max],
        )
        return Attempt(keys, member, math.ceil(int(wait_ms) / 1000))

    async def failed(self, attempt: Attempt) -> int:
        """Keep the attempt counted; returns the ban (seconds) this failure started, or 0."""
        banned_ms: Any = await self._failed(
            keys=list(attempt.keys),
            args=[
                self._now_ms(),
                attempt.member,
                self._window_ms,
                self._max,
                self._ip_max,
                self._ban_ms,
                self._ban_max_ms,
                self._decay_ms,
            ],
        )
        return math.ceil(int(banned_ms) / 1000)

    async def succeeded(self, attempt: Attempt) -> None:
        # NOTE: a success clears the account completely but takes back from the IP's
        # window only the attempts at this account, so an attacker cannot reset the
        # per-IP counter by logging in to an account of their own between guesses at
        # other people's; a teacher's own typos behind a shared NAT are forgiven.
        tag = attempt.member.partition(":")[0] + ":"
        await self._succeeded(keys=list(attempt.keys[:3]), args=[tag])

    async def reset(self, *, account: str | None = None, ip: str | None = None) -> None:
        """Lift a ban and forget the failures (an administrator's unlock)."""
        keys: list[str] = []
        if account is not None:
            keys.extend(self._subject("a", account))
        if ip is not None:
            keys.extend(self._subject("i", ip_bucket(ip)))
        if keys:
            await self._redis.delete(*keys)
