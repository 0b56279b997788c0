"""Login regulation shared by every gateway process (Redis + Lua).

Three subjects, each a sliding window of attempts (a sorted set scored by the injected
clock, in ms), the first two with a ban record (a hash: ``until``, ``level``):

* the *pair* (account, source): ``max_failures`` failures from one source at one account
  ban that source from that account, with backoff. This is what one guesser meets;
* the *source* (client IP, IPv6 per /64): ``ip_max_failures`` failures at any accounts
  ban the source, with backoff;
* the *account* across all sources: once its window holds ``account_max_failures``
  attempts (a distributed attack), the account is *slowed*, never locked: from sources
  that have not signed in to it before, one attempt per ``account_slow_s`` goes ahead
  (a gate key with that TTL), the others are answered ``regulated`` with the gate's
  remaining time. Sources the owner signed in from within ``trusted_source_s`` pass the
  gate (they still meet their pair and source limits).

Steps:

* ``begin`` (atomic): refuse when the pair or the source is banned or its window is full,
  or when the slowed account's gate is taken; otherwise record this attempt in all three
  windows *before* the password is checked. Counting up front is what keeps concurrent
  guesses within the limits.
* ``failed`` (atomic): the attempt stays counted; a full pair or source window bans that
  subject for ``ban_s * 2**level`` (capped at ``ban_max_s``) and is cleared. The level
  returns to 0 once a ban has been over for ``decay_s``.
* ``succeeded`` (atomic): the pair is cleared, the source is remembered as one the owner
  uses; from the source's window only the attempts at this account are taken back, and
  from the account's window only this attempt.

NOTE: this is the model of Authelia and Mailu: anyone who knows a username can no longer
lock its owner out. Three wrong passwords from anywhere used to ban the account itself for
five minutes and more; now they ban only the guessing source from that account. The price:
an attacker with many addresses gets ``max_failures`` guesses per address until the account
is slowed, then one guess per ``account_slow_s`` for the whole account (about 8,640 a day
at the default 10 s, against 10^5 and more guesses for a password that passed the
breached-password check). Owners see the failed attempts when they next sign in.

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

from audit.scripts import Script, ScriptRunner

from .stores.keys import StaffKeys

# The three steps of a sign-in attempt (gateway/stores/lua/login_*.lua).
_BEGIN = Script.load("gateway.stores", "login_begin")
_FAILED = Script.load("gateway.stores", "login_failed")
_SUCCEEDED = Script.load("gateway.stores", "login_succeeded")


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

    keys: tuple[str, ...]  # pair f/b, source f/b, account f/gate/trusted
    member: str
    source: str  # digest of the source's bucket (the trusted-source field)
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
        account_max_failures: int = 10,
        account_slow_s: float = 10,
        trusted_source_s: float = 30 * 86400,
    ) -> None:
        if min(max_failures, ip_max_failures, account_max_failures) < 1:
            raise ValueError("login failure limits must be at least 1")
        if min(window_s, ban_s, decay_s, account_slow_s, trusted_source_s) <= 0 \
                or ban_max_s < ban_s:
            raise ValueError("login window/ban/decay must be positive and ban_max_s >= ban_s")
        self._redis = redis
        self._key_names = StaffKeys(prefix)
        self._clock = clock
        self._max = max_failures
        self._ip_max = ip_max_failures
        self._account_max = account_max_failures
        self._slow_ms = math.ceil(account_slow_s * 1000)
        self._trust_ms = math.ceil(trusted_source_s * 1000)
        self._window_ms = math.ceil(window_s * 1000)
        self._ban_ms = math.ceil(ban_s * 1000)
        self._ban_max_ms = math.ceil(ban_max_s * 1000)
        self._decay_ms = math.ceil(decay_s * 1000)
        self._scripts = ScriptRunner(redis)

    @staticmethod
    def _digest(kind: str, value: str) -> str:
        # Hashed so attacker-chosen usernames and client IPs never appear in key names.
        return hashlib.sha256(f"{kind}\0{value}".encode()).hexdigest()[:32]

    def _base(self, kind: str, value: str) -> str:
        return self._key_names.login(kind, self._digest(kind, value))

    def _subject(self, kind: str, value: str) -> tuple[str, str]:
        base = self._base(kind, value)
        return f"{base}:f", f"{base}:b"

    def _keys(self, account: str, ip: str) -> tuple[str, ...]:
        bucket = ip_bucket(ip)
        acct = self._base("a", account)
        return (*self._subject("p", f"{account}\0{bucket}"), *self._subject("i", bucket),
                f"{acct}:f", f"{acct}:g", f"{acct}:t")

    def _now_ms(self) -> int:
        return math.floor(self._clock() * 1000)

    async def begin(self, *, account: str, ip: str) -> Attempt:
        keys = self._keys(account, ip)
        source = self._digest("i", ip_bucket(ip))
        # The account tag lets a success take back this account's attempts from the IP.
        member = f"{self._digest('a', account)[:16]}:{secrets.token_hex(8)}"
        wait_ms: Any = await self._scripts.run(
            _BEGIN, list(keys),
            [self._now_ms(), member, self._window_ms, self._max, self._ip_max,
             self._account_max, self._slow_ms, source],
        )
        return Attempt(keys, member, source, math.ceil(int(wait_ms) / 1000))

    async def failed(self, attempt: Attempt) -> int:
        """Keep the attempt counted; returns the ban (seconds) this failure started, or 0."""
        banned_ms: Any = await self._scripts.run(
            _FAILED, list(attempt.keys[:4]),
            [
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
        # NOTE: a success clears the pair completely but takes back from the IP's window
        # only the attempts at this account, so an attacker cannot reset the per-IP
        # counter by logging in to an account of their own between guesses at other
        # people's; a teacher's own typos behind a shared NAT are forgiven. The account's
        # window keeps the other sources' failures: the owner signing in does not lift
        # the slow-down a distributed attack earned.
        tag = attempt.member.partition(":")[0] + ":"
        k = attempt.keys
        await self._scripts.run(_SUCCEEDED, [k[0], k[1], k[2], k[4], k[6]],
                                [tag, attempt.member, self._now_ms(), attempt.source,
                                 self._trust_ms])

    async def reset(self, *, account: str | None = None, ip: str | None = None) -> None:
        """Lift a ban and forget the failures (an administrator's unlock): of the account
        (its slow-down), of the source, and of the pair when both are named."""
        keys: list[str] = []
        if account is not None:
            acct = self._base("a", account)
            keys.extend((f"{acct}:f", f"{acct}:g"))
        if ip is not None:
            keys.extend(self._subject("i", ip_bucket(ip)))
        if account is not None and ip is not None:
            keys.extend(self._subject("p", f"{account}\0{ip_bucket(ip)}"))
        if keys:
            await self._redis.delete(*keys)
