"""One shared, pipelined Redis connection for the join path.

redis-py gives every command a pooled connection of its own: taking it from the pool,
checking it, a timeout context and packing in Python cost more CPU than the command
does on the server. On the join path (two scripts per attempt) that was a third of the
gateway's time. Here every coroutine of the process writes onto one connection and
waits for its reply in order (RESP replies come back in the order commands were sent),
so commands issued in the same event-loop turn leave in one write and need no pool.
hiredis packs the commands and parses the replies in C.

Only for a plain server (``redis://``, ``unix://``: the embedded default and a
standalone Redis). TLS and Sentinel deployments keep redis-py for everything (see
``Multiplexed.from_url``). Errors are redis-py's exception classes, so callers (and
the fail-closed 503 of ``gateway.errors``) treat both transports alike.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Replies slower than this fail the request (and drop the connection): a stalled Redis
# must answer "unavailable" (fail closed), not hold every join open.
REPLY_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
# Commands in flight before new ones are refused outright (memory bound under a stall).
MAX_IN_FLIGHT = 20_000

# The replies redis-py turns into exceptions of their own, as it does. LOADING (a server
# still reading its append-only file after a restart) is a connection-level error there:
# the gateway answers 503 "unavailable", never 500.
_ERRORS: dict[str, type[RedisError]] = {"NOSCRIPT": NoScriptError, "READONLY": ReadOnlyError,
                                        "OOM": OutOfMemoryError, "LOADING": BusyLoadingError}


def _error(reply: ResponseError) -> RedisError:
    text = str(reply)
    kind = _ERRORS.get(text.split(" ", 1)[0])
    return kind(text) if kind is not None else reply


class _Protocol(asyncio.Protocol):
    def __init__(self, encoding: str | None) -> None:
        if encoding:
            self.reader = hiredis.Reader(replyError=ResponseError, encoding=encoding)
        else:
            self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiters: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        # Commands packed in this event-loop turn, written together at its end.
        self.outbox: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        while True:
            try:
                reply = self.reader.gets()
            except (hiredis.ProtocolError, UnicodeDecodeError) as exc:
                # The stream cannot be trusted any more: fail everything, reconnect.
                self._fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if reply is False:
                return
            if not waiters:
                # A reply nobody asked for: the stream is out of step. Drop it.
                self._fail(RedisConnectionError("Redis sent an unexpected reply"))
                if self.transport is not None:
                    self.transport.abort()
                return
            fut, _ = waiters.popleft()
            if fut.done():
                continue
            if isinstance(reply, ResponseError):
                fut.set_exception(_error(reply))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        self.lost = self.lost or exc
        while self.waiters:
            fut, _ = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)


def _retrieved(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class Multiplexed:
    """Commands from every coroutine on one connection, replies matched in order."""

    def __init__(self, *, host: str = "localhost", port: int = 6379, path: str | None = None,
                 username: str | None = None, password: str | None = None, db: int = 0,
                 decode: bool = True, reply_timeout_s: float = REPLY_TIMEOUT_S) -> None:
        self.host, self.port, self.path = host, port, path
        self.username, self.password, self.db = username, password, db
        self.encoding = "utf-8" if decode else None
        self.reply_timeout_s = reply_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, decode: bool = True) -> Multiplexed | None:
        """For ``redis://`` and ``unix://`` URLs; None for anything else (``rediss://``
        and unknown query options), which then stays with redis-py."""
        u = urlsplit(url)
        query = dict(p.split("=", 1) for p in u.query.split("&") if "=" in p)
        if set(query) - {"db"}:
            return None
        user = unquote(u.username) if u.username else None
        password = unquote(u.password) if u.password else None
        try:
            db = int(query.get("db") or 0)
            if u.scheme == "redis":
                path_db = u.path.strip("/")
                if path_db:
                    db = int(path_db)
                return cls(host=u.hostname or "localhost", port=u.port or 6379,
                           username=user, password=password, db=db, decode=decode)
            if u.scheme == "unix":
                return cls(path=unquote(u.path), username=user, password=password, db=db,
                           decode=decode)
        except ValueError:
            return None
        return None

    # --- connection -------------------------------------------------------------------

    async def _connected(self) -> _Protocol:
        proto = self._proto
        if proto is not None and proto.lost is None:
            return proto
        if self._closed:
            raise RedisConnectionError("Redis client closed")
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        encoding = self.encoding
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                if self.path is not None:
                    _, proto = await loop.create_unix_connection(
                        lambda: _Protocol(encoding), self.path)
                else:
                    _, proto = await loop.create_connection(
                        lambda: _Protocol(encoding), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        hello: list[tuple[Any, ...]] = []
        if self.password is not None:
            hello.append(("AUTH", self.username, self.password) if self.username
                         else ("AUTH", self.password))
        if self.db:
            hello.append(("SELECT", self.db))
        if hello:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await asyncio.gather(*[self._send(proto, c) for c in hello])
            except ResponseError as exc:
                assert proto.transport is not None
                proto.transport.close()
                raise AuthenticationError(str(exc)) from exc
            except TimeoutError as exc:  # asyncio.timeout's (the builtin)
                assert proto.transport is not None
                proto.transport.abort()
                raise RedisConnectionError("Redis did not answer the handshake") from exc
        self._proto = proto
        return proto

    def _send(self, proto: _Protocol, command: Sequence[Any]) -> asyncio.Future[Any]:
        if proto.lost is not None:
            raise proto.lost
        if len(proto.waiters) >= MAX_IN_FLIGHT:
            raise RedisConnectionError("too many Redis commands in flight")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not proto.outbox:
            loop.call_soon(self._flush, proto)
        proto.outbox.append(hiredis.pack_command(tuple(command)))
        proto.waiters.append((fut, loop.time()))
        if self._watchdog is None:
            self._watchdog = loop.call_later(1.0, self._check_stalls)
        return fut

    @staticmethod
    def _flush(proto: _Protocol) -> None:
        """One write (one system call) for every command of the turn."""
        data, proto.outbox = proto.outbox, []
        if proto.transport is not None and not proto.transport.is_closing():
            proto.transport.write(b"".join(data))

    def _check_stalls(self) -> None:
        """Once a second while replies are awaited: a reply overdue by the timeout fails
        every pending command and drops the connection (the next command reconnects)."""
        self._watchdog = None
        proto = self._proto
        if proto is None or not proto.waiters:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - proto.waiters[0][1] > self.reply_timeout_s:
            proto._fail(RedisTimeoutError(f"no reply from Redis within {self.reply_timeout_s} s"))
            if proto.transport is not None:
                proto.transport.abort()
            return
        self._watchdog = loop.call_later(1.0, self._check_stalls)

    # --- commands ---------------------------------------------------------------------

    async def execute(self, *command: Any) -> Any:
        proto = await self._connected()
        return await self._send(proto, command)

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Every command in one write; the replies in order, an error reply as its
        exception object (as redis-py's ``execute(raise_on_error=False)``). A lost
        connection raises."""
        proto = await self._connected()
        futs = [self._send(proto, c) for c in commands]
        out: list[Any] = []
        try:
            for fut in futs:
                try:
                    out.append(await fut)
                except ResponseError as exc:
                    out.append(exc)
        except BaseException:
            # The first failure is raised; the others (the same lost connection) are
            # marked as seen, or asyncio reports each as never retrieved.
            for fut in futs:
                fut.add_done_callback(_retrieved)
            raise
        return out

    async def aclose(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            proto._fail(RedisConnectionError("Redis client closed"))
