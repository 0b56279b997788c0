"""A bare Janus VideoRoom participant over the WebSocket API, as a browser client would be.

It sends exactly what the ClassGuard client page sends (``join`` with the id and token of
the URL) and records what Janus pushes, so tests can see refusals and kicks.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import websockets


class Peer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: Any = None
        self.session = 0
        self.handle = 0
        self.pushed: list[dict[str, Any]] = []

    async def __aenter__(self) -> Peer:
        self.ws = await websockets.connect(self.url, subprotocols=["janus-protocol"])
        self.session = (await self.call({"janus": "create"}))["data"]["id"]
        self.handle = (await self.call({"janus": "attach", "session_id": self.session,
                                        "plugin": "janus.plugin.videoroom"}))["data"]["id"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        tx = secrets.token_hex(6)
        await self.ws.send(json.dumps({**msg, "transaction": tx}))
        while True:
            m = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
            if m.get("transaction") == tx and m.get("janus") != "ack":
                return m
            if m.get("janus") != "ack":
                self.pushed.append(m)

    async def join(self, room: int, pid: int | None, token: str | None,
                   display: str = "someone") -> dict[str, Any]:
        body: dict[str, Any] = {"request": "join", "ptype": "publisher", "room": room,
                                "display": display}
        if pid is not None:
            body["id"] = pid
        if token is not None:
            body["token"] = token
        m = await self.call({"janus": "message", "session_id": self.session,
                             "handle_id": self.handle, "body": body})
        data: dict[str, Any] = m["plugindata"]["data"]
        return data

    async def next_push(self, wait_s: float = 3.0) -> dict[str, Any]:
        if self.pushed:
            return self.pushed.pop(0)
        while True:
            m = json.loads(await asyncio.wait_for(self.ws.recv(), wait_s))
            if m.get("janus") != "ack":
                return dict(m)
