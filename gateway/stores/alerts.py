"""Alerts shown to the host, and the class counters a refusal is counted in."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis

from audit.scripts import Call, Script, ScriptRunner

from .keys import Keys

Clock = Callable[[], float]

# The newest of each kind the host is shown, and how long they are kept.
ALERTS_PER_KIND = 20
ALERT_TTL_S = 7 * 86400

_ADD_ALERT = Script.load("gateway.stores", "add_alert")
_COUNT_MANY = Script.load("gateway.stores", "count_many")


class Alerts:
    def __init__(self, redis: aioredis.Redis, keys: Keys, scripts: ScriptRunner, *,
                 clock: Clock) -> None:
        self.r = redis
        self.k = keys
        self.scripts = scripts
        self.clock = clock

    def _alert_call(self, cid: str, alert: Mapping[str, Any], keep_per_kind: int
                    ) -> tuple[Script, list[str], list[Any]]:
        aid, kind = str(alert["id"]), str(alert["kind"])
        return (_ADD_ALERT,
                [self.k.alerts(cid), self.k.alert_order(cid), self.k.alert_kind(cid, kind)],
                [aid, json.dumps(dict(alert), ensure_ascii=False), repr(self.clock()),
                 keep_per_kind, ALERT_TTL_S])

    async def add_alert(self, cid: str, alert: Mapping[str, Any], *,
                        keep_per_kind: int = ALERTS_PER_KIND) -> tuple[bool, int]:
        """Raise ``alert`` (it carries ``id`` and ``kind``), or count it once more when
        an alert with that id is shown already; returns (new, count)."""
        new, n = await self.scripts.run(*self._alert_call(cid, alert, keep_per_kind))
        return bool(int(new)), int(n)

    async def note_refusal(self, cid: str, alert: Mapping[str, Any] | None,
                           counters: Sequence[tuple[str, int]], *,
                           publish: tuple[str, str] | None = None
                           ) -> tuple[bool, list[int]]:
        """``add_alert`` (when ``alert`` is given) and the class's fixed-window
        ``counters`` (name, window s) in one round trip: a refusal's bookkeeping costs no
        more than the refusal's snapshot did. ``publish`` (channel, message): sent by
        the script when the alert is new. Returns (whether the alert is new, the
        counters)."""
        calls: list[Call] = []
        if alert is not None:
            script, keys, args = self._alert_call(cid, alert, ALERTS_PER_KIND)
            calls.append((script, keys, args + list(publish or ())))
        calls.append((_COUNT_MANY, [self.k.counter(cid, name) for name, _ in counters],
                      [w for _, w in counters]))
        res = await self.scripts.pipeline(calls)
        new = alert is not None and bool(int(res[0][0]))
        return new, [int(n) for n in res[-1]]

    async def alerts(self, cid: str, n: int | None = None) -> list[dict[str, Any]]:
        """The alerts shown to the host, newest occurrence first, each with ``count``
        and ``last_at``; at most ALERTS_PER_KIND of each kind (``n``: the first n)."""
        stop = -1 if n is None else n - 1
        ids = cast(list[str], await self.r.zrevrange(self.k.alert_order(cid), 0, stop))
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
