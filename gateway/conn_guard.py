"""Connection guard for ``classguard serve`` facing clients directly (no proxy).

aiohttp holds a connection whose request head never completes until its keep-alive
timeout (an hour by default), and a request body may stall for as long; a few hundred
such connections (slow-loris) exhaust the process's file descriptors. Behind nginx the
proxy's ``client_header_timeout``/``client_body_timeout`` do this job; here the request
handler does it itself:

* a request head must arrive whole within ``header_read_timeout_s`` of its first byte
  (the first head also of the connection opening);
* while a request body is unread, the client may pause at most ``body_read_timeout_s``
  between two reads (like nginx's ``client_body_timeout``: a slow phone uploading a
  large roster keeps going, a silent one is dropped);
* an idle keep-alive connection is closed after ``IDLE_KEEPALIVE_S`` (aiohttp's own
  default is an hour);
* one address holds at most ``max_connections_per_address`` connections; the next is
  answered 503 and closed. NOTE: a school behind NAT is one address, so the cap is
  generous (4,000 by default: 1,000+ students with a waiting-room socket and a couple of
  keep-alive connections each); it bounds one attacker, not a school.

Upgraded connections (WebSockets) leave both timers: their own heartbeat applies.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("classguard.connections")

# NOTE: longer than nginx's upstream keep-alive (60 s), so a proxy never sends on a
# connection the gateway is closing; as nginx's own keepalive_timeout for clients.
IDLE_KEEPALIVE_S = 75.0



def refusal(text: str) -> bytes:
    """The whole 503 answer written to a connection over the per-address cap."""
    body = text.encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 10\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class ConnectionGuard:
    """Limits shared by every connection of one listening site (process-local)."""

    def __init__(self, *, header_timeout_s: float, body_timeout_s: float,
                 max_per_address: int, refusal_text: str, on_close: Any = None) -> None:
        self.refusal = refusal(refusal_text)
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_per_address = max_per_address
        self.per_address: dict[str, int] = {}
        # called with a reason ("header_timeout", "body_timeout", "per_address") for metrics
        self._on_close = on_close

    def closed(self, reason: str) -> None:
        if self._on_close is not None:
            self._on_close(reason)

    def admit(self, address: str) -> bool:
        n = self.per_address.get(address, 0)
        if n >= self.max_per_address:
            return False
        self.per_address[address] = n + 1
        return True

    def release(self, address: str) -> None:
        n = self.per_address.get(address, 0) - 1
        if n <= 0:
            self.per_address.pop(address, None)
        else:
            self.per_address[address] = n


class GuardedRequestHandler(RequestHandler):
    """aiohttp's request handler with head and body read timeouts and an address cap."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._cg_address: str | None = None
        self._cg_head_timer: asyncio.TimerHandle | None = None
        self._cg_body_timer: asyncio.TimerHandle | None = None
        self._cg_payload: Any = None  # the body stream of the latest request
        self._cg_last_read = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._guard.admit(address):
            self._guard.closed("per_address")
            log.warning("refused a connection: %d already open from one address",
                        self._guard.max_per_address)
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(self._guard.refusal)
            transport.close()
            return
        self._cg_address = address
        super().connection_made(transport)
        self._cg_arm_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cg_cancel()
        if self._cg_address is not None:
            self._guard.release(self._cg_address)
            self._cg_address = None
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._upgraded or self._payload_parser is not None:
            self._cg_cancel()  # a WebSocket: its heartbeat applies
            super().data_received(data)
            return
        loop = self._loop
        payload = self._cg_payload
        in_body = payload is not None and not payload.is_eof()
        before = self._request_count
        super().data_received(data)
        if self._request_count > before:
            # A head completed: its body (if any) is watched from now on.
            self._cg_cancel_head()
            self._cg_payload = self._messages[-1][1] if self._messages else None
            if self._cg_payload is not None and not self._cg_payload.is_eof():
                self._cg_last_read = loop.time()
                self._cg_arm_body()
        elif in_body:
            self._cg_last_read = loop.time()
        elif self._cg_head_timer is None and data:
            self._cg_arm_head()  # the first bytes of the next request's head

    # --- timers ---------------------------------------------------------------------

    def _cg_arm_head(self) -> None:
        self._cg_head_timer = self._loop.call_later(self._guard.header_timeout_s,
                                                    self._cg_head_expired)

    def _cg_head_expired(self) -> None:
        self._cg_head_timer = None
        if self._messages:
            return  # the head did complete and waits for its turn
        if self._request_in_progress:
            self._cg_arm_head()  # a pipelined head: its time runs once the request ends
            return
        self._guard.closed("header_timeout")
        log.info("closed a connection whose request head did not arrive in %g s",
                 self._guard.header_timeout_s)
        self._cg_drop()

    def _cg_arm_body(self) -> None:
        if self._cg_body_timer is None:
            self._cg_body_timer = self._loop.call_at(
                self._cg_last_read + self._guard.body_timeout_s, self._cg_body_check)

    def _cg_body_check(self) -> None:
        self._cg_body_timer = None
        payload = self._cg_payload
        if payload is None or payload.is_eof():
            return
        # Paused by us (the handler is not reading yet) is not the client's stall.
        if self._reading_paused or (
                self._loop.time() - self._cg_last_read < self._guard.body_timeout_s):
            if self._reading_paused:
                self._cg_last_read = self._loop.time()
            self._cg_arm_body()
            return
        self._guard.closed("body_timeout")
        log.info("closed a connection whose request body stalled for %g s",
                 self._guard.body_timeout_s)
        self._cg_drop()

    def _cg_cancel_head(self) -> None:
        if self._cg_head_timer is not None:
            self._cg_head_timer.cancel()
            self._cg_head_timer = None

    def _cg_cancel(self) -> None:
        self._cg_cancel_head()
        if self._cg_body_timer is not None:
            self._cg_body_timer.cancel()
            self._cg_body_timer = None

    def _cg_drop(self) -> None:
        self._cg_cancel()
        transport = self.transport
        if transport is not None:
            transport.close()
        self.force_close()


class GuardedTCPSite(web.TCPSite):
    """``web.TCPSite`` whose connections are served by :class:`GuardedRequestHandler`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *,
                 guard: ConnectionGuard, ssl_context: ssl.SSLContext | None = None,
                 reuse_port: bool | None = None, **handler_args: Any) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port)
        self._guard = guard
        self._handler_args = handler_args

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard, handler_args = self._guard, self._handler_args

        handler_args.setdefault("keepalive_timeout", IDLE_KEEPALIVE_S)

        def factory() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, guard, loop=loop, **handler_args)

        self._server = await loop.create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
