"""A local stand-in for a Janus server that a teacher runs themselves: the JSON API over a
WebSocket (subprotocol ``janus-protocol``) with the VideoRoom requests ClassGuard sends.

It follows the documented message shapes (``create``/``attach``/``message``/``keepalive``,
answers ``success`` with ``plugindata``) and keeps rooms and their ``allowed`` lists, but
it answers ``create`` with whatever room number it is told to: a server the teacher
controls can do exactly that, which is what the room-hijack attack needs.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve


class FakeJanus:
    def __init__(self, room_number: int | None = None) -> None:
        self.room_number = room_number  # None: a fresh random number per room
        self.rooms: dict[int, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self._server: Server | None = None
        self.ws_url = ""

    async def start(self) -> str:
        self._server = await serve(self._conn, "127.0.0.1", 0,
                                   subprotocols=["janus-protocol"])  # type: ignore[list-item]
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.ws_url = f"ws://127.0.0.1:{port}"
        return self.ws_url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _conn(self, ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            await ws.send(json.dumps(self._answer(msg)))

    def _answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        tx = msg.get("transaction")
        kind = msg.get("janus")
        if kind in ("create", "attach"):
            return {"janus": "success", "transaction": tx,
                    "data": {"id": secrets.randbelow(2**52) + 1}}
        if kind in ("keepalive", "detach", "destroy"):
            return {"janus": "ack" if kind == "keepalive" else "success", "transaction": tx}
        if kind != "message":
            return {"janus": "error", "transaction": tx,
                    "error": {"code": 453, "reason": "unknown request"}}
        body = msg.get("body") or {}
        self.requests.append(body)
        return {"janus": "success", "transaction": tx, "sender": msg.get("handle_id"),
                "plugindata": {"plugin": "janus.plugin.videoroom", "data": self._video(body)}}

    def _video(self, body: dict[str, Any]) -> dict[str, Any]:
        request = body.get("request")
        if request == "create":
            number = self.room_number or secrets.randbelow(2**31) + 1
            self.rooms[number] = {"secret": body.get("secret"), "allowed": []}
            return {"videoroom": "created", "room": number, "permanent": False}
        room = self.rooms.get(int(body.get("room") or 0))
        if room is None:
            return {"videoroom": "event", "error_code": 426, "error": "No such room"}
        if request == "allowed":
            tokens = [str(t) for t in body.get("allowed") or []]
            if body.get("action") == "add":
                room["allowed"] += [t for t in tokens if t not in room["allowed"]]
            elif body.get("action") == "remove":
                room["allowed"] = [t for t in room["allowed"] if t not in tokens]
            return {"videoroom": "success", "room": body["room"], "allowed": room["allowed"]}
        if request == "listparticipants":
            return {"videoroom": "participants", "room": body["room"], "participants": []}
        if request == "kick":
            return {"videoroom": "event", "error_code": 428, "error": "No such user"}
        if request == "destroy":
            del self.rooms[int(body["room"])]
            return {"videoroom": "destroyed", "room": body["room"]}
        return {"videoroom": "success"}
