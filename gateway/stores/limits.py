"""Rate limits (GCRA), refusal counters and the short-code lookup they guard."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from audit.scripts import Script, ScriptRunner

from .keys import Keys

Clock = Callable[[], float]

GCRA = Script.load("gateway.stores", "gcra", libs=("lib_gcra",))
_COUNT_REFUSALS = Script.load("gateway.stores", "count_refusals", libs=("lib_count_refusal",))
_GCRA_COUNT = Script.load("gateway.stores", "gcra_count",
                          libs=("lib_gcra", "lib_count_refusal"))
_CODE_ATTEMPT = Script.load("gateway.stores", "code_attempt")

# Limit keys of the form "<bucket>:<value>"; others ("global", "code:space") are whole.
_VALUED_BUCKETS = ("report:jti", "report:ticket", "code:ip", "code:net", "ws:ticket", "ip",
                   "net", "jti", "class")


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


def gcra_args(limits: Sequence[Limit], now: float) -> list[Any]:
    args: list[Any] = [int(now * 1000)]
    for lim in limits:
        args += lim.gcra
    return args


def gcra_result(res: Sequence[Any], limits: Sequence[Limit]) -> tuple[float, Limit | None]:
    if int(res[0]) == 1:
        return 0.0, None
    which = int(res[2]) - 1 if len(res) > 2 else -1
    return float(res[1]) / 1000.0, limits[which] if 0 <= which < len(limits) else None


class Limits:
    """Budgets shared by every process: one script call checks and charges them all."""

    def __init__(self, keys: Keys, scripts: ScriptRunner, *, clock: Clock) -> None:
        self.k = keys
        self.scripts = scripts
        self.clock = clock

    def gcra_call(self, limits: Sequence[Limit], now: float
                  ) -> tuple[Script, list[str], list[Any]]:
        """The script call that checks and charges ``limits`` (to run in a pipeline)."""
        return GCRA, [self.k.ratelimit(lim.key) for lim in limits], gcra_args(limits, now)

    async def rate_limit(self, limits: Sequence[Limit]) -> float:
        """0.0 when allowed, else seconds to wait. One round trip for all limits."""
        return (await self.rate_limit_check(limits))[0]

    async def rate_limit_check(self, limits: Sequence[Limit]) -> tuple[float, Limit | None]:
        """(0.0, None) when allowed, else (seconds to wait, the limit that refused)."""
        if not limits:
            return 0.0, None
        res = await self.scripts.run(*self.gcra_call(limits, self.clock()))
        return gcra_result(res, limits)

    async def count_refusals(self, name: str, window_s: int, *,
                             class_id: str | None = None) -> tuple[int, float]:
        """Count one refusal in a window that starts with the first one (across every
        process); returns (count so far, when the window started). ``class_id`` keeps
        the counter in the class's hash slot."""
        key = self.k.refusals(name, class_id)
        n, first = await self.scripts.run(_COUNT_REFUSALS, [key],
                                          [window_s, repr(self.clock())])
        return int(n), float(first)

    async def charge_and_count(self, limits: Sequence[Limit], name: str, window_s: int
                               ) -> tuple[float, Limit | None, int, float]:
        """``rate_limit_check`` and ``count_refusals`` in one round trip, for an attempt
        that is refused whatever the limits say (a link not shaped like ours):
        (wait, limit that refused, refusals counted in the window, when it started)."""
        res = await self.scripts.run(
            _GCRA_COUNT,
            [*(self.k.ratelimit(lim.key) for lim in limits), self.k.refusals(name)],
            [*gcra_args(limits, self.clock()), window_s, repr(self.clock())])
        wait, limit = gcra_result(res[:3], limits)
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
        res = await self.scripts.run(
            _CODE_ATTEMPT,
            [*(self.k.ratelimit(lim.key) for lim in failure),
             self.k.code(code_hash or "-")],
            [*gcra_args(failure, self.clock()), "1" if code_hash else "0",
             self.k.ratelimit(link.key), interval, burst])
        status = str(res[0])
        wait = float(res[1]) / 1000.0
        if status == "limited":
            which = int(res[2]) - 1
            return status, wait, failure[which] if 0 <= which < len(failure) else None, None
        if status in ("found", "link_limited"):
            return status, wait, None, str(res[2])
        return status, 0.0, None, None
