"""Lua scripts: loaded from ``.lua`` files, run by EVALSHA on either Redis transport.

One runner for every script of the gateway's stores (gateway/stores/) and of the audit
sequencer (audit/sequencer.py, audit/lease.py). It lives here because the gateway may
import ``audit`` and ``audit`` never imports the gateway.

Two transports: a redis-py client, and optionally ``fast``, a client that sends many
commands in one write (gateway/redis_mux.py). Scripts are called by SHA only; when the
server answers NOSCRIPT (a restart, a failover, SCRIPT FLUSH) the script is loaded and
the call made once more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError


class CommandPipeline(Protocol):
    """Sends commands in one round trip; the replies in order, error replies as
    exception objects (gateway.redis_mux.Multiplexed)."""

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]: ...


class Script:
    """One Lua script: its source and SHA1."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    @classmethod
    def load(cls, package: str, name: str, *, libs: Sequence[str] = ()) -> Script:
        """``<package>/lua/<name>.lua``, after the files ``libs`` (shared Lua functions,
        in that order) of the same directory."""
        folder = resources.files(package).joinpath("lua")
        source = "".join(folder.joinpath(f"{part}.lua").read_text(encoding="utf-8")
                         for part in (*libs, name))
        return cls(name, source)

    def __repr__(self) -> str:
        return f"Script({self.name!r}, {self.sha[:8]})"


Call = tuple[Script, Sequence[str], Sequence[Any]]


class ScriptRunner:
    """Runs scripts (and the commands sent with them) through ``fast`` when there is
    one, else through ``redis``."""

    def __init__(self, redis: aioredis.Redis, fast: CommandPipeline | None = None) -> None:
        self.redis = redis
        self.fast = fast

    async def run(self, script: Script, keys: Sequence[str] = (),
                  args: Sequence[Any] = ()) -> Any:
        """One script call; an error reply is raised."""
        (res,) = await self.pipeline([(script, keys, args)])
        return res

    async def pipeline(self, calls: Sequence[Call],
                       commands: Sequence[Sequence[Any]] = ()) -> list[Any]:
        """Scripts (EVALSHA) then plain commands in one pipeline, one round trip; the
        first error reply is raised.

        NOTE: redis-py's pipeline sends SCRIPT EXISTS before every execute that holds a
        script, a second round trip on the hottest path; EVALSHA is queued directly
        instead, and the scripts are loaded only when Redis answers NOSCRIPT, then the
        pipeline runs once more. Callers' scripts only read or are idempotent per call
        (a rate limit charges again on the retry, which errs on the side of refusing)."""
        evals = [("EVALSHA", script.sha, len(keys), *keys, *args)
                 for script, keys, args in calls]
        for attempt in (1, 2):
            res = await self._send([*evals, *commands])
            missing = {s.sha: s for (s, _, _), r in zip(calls, res, strict=False)
                       if isinstance(r, NoScriptError)}
            if not missing or attempt == 2:
                break
            await self._send([("SCRIPT", "LOAD", s.source) for s in missing.values()])
        for r in res:
            if isinstance(r, Exception):
                raise r
        return res

    async def command(self, *command: Any) -> Any:
        """One plain command on the same transport as the scripts; an error reply is
        raised."""
        (res,) = await self._send([command])
        if isinstance(res, Exception):
            raise res
        return res

    async def _send(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        if self.fast is not None:
            return await self.fast.pipeline(commands)
        async with self.redis.pipeline(transaction=False) as p:
            for command in commands:
                p.execute_command(*command)
            return list(await p.execute(raise_on_error=False))


__all__ = ["Call", "CommandPipeline", "Script", "ScriptRunner"]
