"""Jitsi: room tokens against the documented claim set (jitsi-meet-tokens), HS256 and
RS256 with kid, honest capabilities, and kicking through a configured endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from meeting_adapters.base import (
    Capability,
    InvalidSettings,
    MeetingAdapter,
    Participant,
    RoomSpec,
    Unsupported,
)
from meeting_adapters.egress import EgressPolicy, guarded_session
from meeting_adapters.jitsi import JitsiAdapter

# The fakes and the Janus of these tests listen on loopback: allowed explicitly.
LOCAL_PLATFORMS = EgressPolicy.from_settings(["127.0.0.1/32"])

APP_SECRET = "a-long-shared-app-secret-of-32-chars!!"
NOW = datetime(2025, 9, 8, 0, 30, tzinfo=UTC)  # in the past: the token has expired
AN = Participant(student_id="s23456789abcd", display_name="Nguyễn Văn An", role="student",
                 ticket="t1")
TEACHER = Participant(student_id="host:co.lan", display_name="Cô Lan", role="host", ticket="")


def hs_settings(**extra: Any) -> dict[str, Any]:
    return {"kind": "jitsi", "base_url": "https://meet.example.org", "app_id": "classguard",
            "app_secret": APP_SECRET, **extra}


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["jwt"][0]


async def test_student_token_claims_hs256() -> None:
    adapter = JitsiAdapter(clock=lambda: NOW)
    room = await adapter.provision(RoomSpec(class_id="cAbc", title="t", settings=hs_settings()))
    url = await adapter.join_url(room, AN)
    assert url.startswith(f"https://meet.example.org/{room.upstream_id}?jwt=")
    assert room.upstream_id.startswith("cgcabc") and room.upstream_id == room.upstream_id.lower()
    token = token_of(url)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, APP_SECRET, algorithms=["HS256"], audience="classguard",
                        issuer="classguard", options={"verify_exp": False})
    assert claims == {
        "aud": "classguard", "iss": "classguard", "sub": "meet.example.org",
        "room": room.upstream_id, "iat": int(NOW.timestamp()),
        "nbf": int(NOW.timestamp()) - 5, "exp": int(NOW.timestamp()) + 60,
        "moderator": False,
        "context": {"user": {"id": AN.student_id, "name": AN.display_name,
                             "moderator": False}},
    }
    # a copied link is useless a minute later
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, APP_SECRET, algorithms=["HS256"], audience="classguard")


async def test_teacher_token_is_moderator() -> None:
    adapter = JitsiAdapter(clock=lambda: datetime.now(UTC))
    room = await adapter.provision(RoomSpec(class_id="c1", title="t", settings=hs_settings()))
    claims = jwt.decode(token_of(await adapter.join_url(room, TEACHER)), APP_SECRET,
                        algorithms=["HS256"], audience="classguard")
    assert claims["moderator"] is True and claims["context"]["user"]["moderator"] is True


async def test_rs256_with_kid() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    s = {"kind": "jitsi", "base_url": "https://meet.example.org/", "app_id": "classguard",
         "audience": "jitsi", "sub": "meet.example.org", "algorithm": "RS256",
         "private_key": pem, "kid": "classguard/2026"}
    adapter = JitsiAdapter(clock=lambda: datetime.now(UTC))
    room = await adapter.provision(RoomSpec(class_id="c1", title="t", settings=s))
    token = token_of(await adapter.join_url(room, AN))
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": "classguard/2026",
                                                "typ": "JWT"}
    claims = jwt.decode(token, key.public_key(), algorithms=["RS256"], audience="jitsi")
    assert claims["room"] == room.upstream_id and claims["exp"] - claims["iat"] == 60
    assert JitsiAdapter.redact(s)["private_key"] == "***"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"base_url": "http://meet.example.org"}, "platform.base_url"),
        ({"app_id": None}, "platform.app_id"),
        ({"app_secret": "too-short"}, "platform.app_secret"),
        ({"algorithm": "none"}, "platform.algorithm"),
        ({"algorithm": "RS256"}, "platform.app_secret"),
        ({"algorithm": "RS256", "app_secret": None, "private_key": "x" * 80},
         "platform.private_key"),
        ({"token_lifetime_s": 3600}, "platform.token_lifetime_s"),
        ({"kick_url": "ftp://x"}, "platform.kick_url"),
        ({"lobby": True}, "platform.lobby"),
    ],
)
def test_settings_errors_name_the_field(patch: dict[str, Any], field: str) -> None:
    raw = hs_settings(**patch)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(InvalidSettings) as info:
        JitsiAdapter.validate_settings(raw)
    assert info.value.field == field
    assert APP_SECRET not in info.value.message


async def test_capabilities_and_unsupported() -> None:
    assert JitsiAdapter.capabilities == {Capability.ENFORCED_ENTRY,
                                         Capability.SINGLE_USE_CREDENTIAL}
    adapter = JitsiAdapter()
    assert isinstance(adapter, MeetingAdapter)
    room = await adapter.provision(RoomSpec(class_id="c1", title="t", settings=hs_settings()))
    assert Capability.REMOVE not in adapter.room_capabilities(room)
    for call in (adapter.remove(room, AN), adapter.mute(room), adapter.lock(room),
                 adapter.end(room), adapter.participants(room)):
        with pytest.raises(Unsupported):
            await call
    assert JitsiAdapter.redact(hs_settings())["app_secret"] == "***"


@pytest.fixture
async def kick_endpoint() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    async def kick(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        claims = jwt.decode(auth.removeprefix("Bearer "), APP_SECRET, algorithms=["HS256"],
                            audience="classguard")
        if not claims["moderator"]:
            return web.Response(status=403)
        got.append({"claims": claims, "body": await request.json()})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/kick", kick)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/kick", got
    await runner.cleanup()


async def test_kick_through_configured_endpoint(
        kick_endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = kick_endpoint
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = JitsiAdapter(http_session=http, clock=lambda: datetime.now(UTC))
        room = await adapter.provision(RoomSpec(class_id="c1", title="t",
                                                settings=hs_settings(kick_url=url)))
        assert Capability.REMOVE in adapter.room_capabilities(room)
        await adapter.remove(room, AN)
    assert got[0]["body"] == {"room": room.upstream_id, "participant": AN.student_id}
    assert got[0]["claims"]["room"] == room.upstream_id
    assert datetime.fromtimestamp(got[0]["claims"]["exp"], UTC) - datetime.now(UTC) < \
        timedelta(seconds=61)
