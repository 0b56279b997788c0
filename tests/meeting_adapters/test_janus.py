"""Janus: settings, pure helpers, and the adapter against a real Janus VideoRoom."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from meeting_adapters.base import (
    Capability,
    InvalidSettings,
    MeetingAdapter,
    Participant,
    Present,
    RoomSpec,
    UpstreamUnavailable,
)
from meeting_adapters.egress import EgressPolicy
from meeting_adapters.janus import (
    JanusAdapter,
    JanusError,
    JanusPool,
    audio_mids,
    participant_id,
    render_client_url,
    token_owner,
)

from .conftest import RunningJanus
from .janus_peer import Peer

# The fakes and the Janus of these tests listen on loopback: allowed explicitly.
LOCAL_PLATFORMS = EgressPolicy.from_settings(["127.0.0.1/32"])

CLIENT = "https://meet.example.org/room?r={room}&id={id}&t={token}&n={display}"
AN = Participant(student_id="s23456789abcd", display_name="Nguyễn Văn An", role="student",
                 ticket="t1")
BINH = Participant(student_id="s3456789abcde", display_name="Trần Thị Bình", role="student",
                   ticket="t2")


def settings(janus: RunningJanus, **extra: Any) -> dict[str, Any]:
    return {"kind": "janus", "ws_url": janus.ws_url, "client_url": CLIENT,
            "admin_key": janus.admin_key, **extra}


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# --- pure -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "field", "fragment"),
    [
        ({"ws_url": None}, "platform.ws_url", "required"),
        ({"ws_url": "http://127.0.0.1:8188"}, "platform.ws_url", "wss://"),
        ({"ws_url": "ws://janus.example.org/ws"}, "platform.ws_url", "localhost"),
        ({"ws_url": "wss://user:pw@janus.example.org/"}, "platform.ws_url", "password"),
        ({"client_url": None}, "platform.client_url", "required"),
        ({"client_url": "https://m.example.org/?r={room}&t={token}"}, "platform.client_url",
         "{id}"),
        ({"client_url": "https://m.example.org/?r={room}&id={id}"}, "platform.client_url",
         "{token}"),
        ({"client_url": "https://m.example.org/?r={room}&id={id}&t={token}&x={evil}"},
         "platform.client_url", "knows only"),
        ({"client_url": "javascript:{room}{id}{token}"}, "platform.client_url", "https://"),
        ({"admin_key": 5}, "platform.admin_key", "string"),
        ({"publishers": 0}, "platform.publishers", "integer"),
        ({"room_pin": "1"}, "platform.room_pin", "not a setting"),
    ],
)
def test_settings_errors_name_the_field(patch: dict[str, Any], field: str,
                                        fragment: str) -> None:
    raw = {"kind": "janus", "ws_url": "wss://janus.example.org/ws", "client_url": CLIENT}
    raw.update(patch)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(InvalidSettings) as info:
        JanusAdapter.validate_settings(raw)
    assert info.value.field == field
    assert fragment in info.value.message


def test_settings_ok_and_redacted() -> None:
    clean = JanusAdapter.validate_settings({
        "kind": "janus", "ws_url": "WSS://Janus.example.org/ws", "client_url": CLIENT,
        "admin_key": "plugin-admin-key", "api_secret": "core-api-secret"})
    assert clean["ws_url"] == "wss://janus.example.org/ws"
    assert clean["publishers"] == 30
    red = JanusAdapter.redact(clean)
    assert red["admin_key"] == "***" and red["api_secret"] == "***"
    assert "plugin-admin-key" not in str(red) and "core-api-secret" not in str(red)


def test_client_url_values_are_encoded() -> None:
    url = render_client_url(CLIENT, room=7, pid=9, token="9-a&b", display="Lê Hoàng & <Cường>")
    q = query(url)
    assert q == {"r": "7", "id": "9", "t": "9-a&b", "n": "Lê Hoàng & <Cường>"}
    assert "<" not in url and " " not in url


def test_participant_ids_are_stable_js_safe_and_keyed() -> None:
    a = participant_id("key-1", "s23456789abcd")
    assert a == participant_id("key-1", "s23456789abcd")
    assert a != participant_id("key-2", "s23456789abcd")
    assert 0 < a < 2**53
    assert token_owner(f"{a}-abc") == a
    assert token_owner("no-dash-number") is None and token_owner("12") is None


def test_audio_mids_from_subscriber_answer() -> None:
    attached = {"streams": [{"type": "audio", "feed_mid": "0"}, {"type": "video",
                                                                  "feed_mid": "1"}]}
    assert audio_mids(attached) == ["0"]


def test_capabilities_are_complete() -> None:
    assert JanusAdapter.capabilities == frozenset(Capability)
    assert isinstance(JanusAdapter(), MeetingAdapter)


# --- against a real Janus ---------------------------------------------------------------


async def test_only_gateway_tokens_enter_and_each_works_once(janus: RunningJanus) -> None:
    adapter = JanusAdapter(egress=LOCAL_PLATFORMS)
    room = await adapter.provision(RoomSpec(class_id="c1", title="Toán", settings=settings(janus)))
    room_id = int(room.upstream_id)
    url = await adapter.join_url(room, AN)
    q = query(url)
    assert q["r"] == str(room_id) and q["n"] == AN.display_name
    pid, token = int(q["id"]), q["t"]
    assert pid == adapter.participant_id(room, AN.student_id)

    # Janus itself refuses a client without our token, or with a made-up one.
    async with Peer(janus.ws_url) as intruder:
        for bad in (None, "guess", f"{pid}-forged"):
            answer = await intruder.join(room_id, None, bad)
            assert answer.get("error_code") == 433, answer
    async with Peer(janus.ws_url) as student:
        joined = await student.join(room_id, pid, token, AN.display_name)
        assert joined["videoroom"] == "joined" and joined["id"] == pid
        present = await adapter.participants(room)
        assert [(p.upstream_id, p.display_name) for p in present] == [(str(pid), AN.display_name)]
        assert adapter.identify(room, [AN.student_id, BINH.student_id]) == {
            str(pid): AN.student_id,
            str(adapter.participant_id(room, BINH.student_id)): BINH.student_id,
        }
        # single use: once the join is seen the token is gone
        assert await adapter.consume(room, [str(pid)]) == 1
        async with Peer(janus.ws_url) as copycat:
            again = await copycat.join(room_id, pid + 1, token)
            assert again.get("error_code") == 433
    await adapter.end(room)


async def test_readmission_replaces_the_token(janus: RunningJanus) -> None:
    adapter = JanusAdapter(egress=LOCAL_PLATFORMS)
    room = await adapter.provision(RoomSpec(class_id="c2", title="t", settings=settings(janus)))
    first = query(await adapter.join_url(room, AN))["t"]
    second = query(await adapter.join_url(room, AN))["t"]
    assert first != second
    async with Peer(janus.ws_url) as p:
        assert (await p.join(int(room.upstream_id), None, first)).get("error_code") == 433
        pid = adapter.participant_id(room, AN.student_id)
        assert (await p.join(int(room.upstream_id), pid, second))["videoroom"] == "joined"
    await adapter.end(room)


async def test_remove_kicks_and_revokes(janus: RunningJanus) -> None:
    adapter = JanusAdapter(egress=LOCAL_PLATFORMS)
    room = await adapter.provision(RoomSpec(class_id="c3", title="t", settings=settings(janus)))
    rid = int(room.upstream_id)
    q = query(await adapter.join_url(room, AN))
    async with Peer(janus.ws_url) as student:
        assert (await student.join(rid, int(q["id"]), q["t"]))["videoroom"] == "joined"
        await adapter.remove(room, AN)
        pushed = await student.next_push()
        assert pushed["plugindata"]["data"].get("reason") == "kicked"
        assert await adapter.participants(room) == []
    # the token died with the removal
    async with Peer(janus.ws_url) as p:
        assert (await p.join(rid, int(q["id"]), q["t"])).get("error_code") == 433
    # removing someone not in the room is not an error
    await adapter.remove(room, BINH)
    await adapter.end(room)


async def test_evict_lock_mute_end(janus: RunningJanus) -> None:
    adapter = JanusAdapter(egress=LOCAL_PLATFORMS)
    room = await adapter.provision(RoomSpec(class_id="c4", title="t", settings=settings(janus)))
    rid = int(room.upstream_id)
    q = query(await adapter.join_url(room, AN))
    pending = query(await adapter.join_url(room, BINH))
    async with Peer(janus.ws_url) as p:
        assert (await p.join(rid, 777, q["t"]))["videoroom"] == "joined"  # wrong id: suspicious
        await adapter.mute(room)  # nobody publishes media: nothing to mute, no error
        await adapter.evict(room, Present(upstream_id="777", display_name="x", student_id=None,
                                          joined_at=None))
        assert (await p.next_push())["plugindata"]["data"].get("reason") == "kicked"
    await adapter.lock(room)
    async with Peer(janus.ws_url) as p:
        assert (await p.join(rid, int(pending["id"]), pending["t"])).get("error_code") == 433
    await adapter.end(room)
    await adapter.end(room)  # idempotent
    async with Peer(janus.ws_url) as p:
        assert (await p.join(rid, 1, "x")).get("error_code") == 426  # no such room


async def test_pool_keeps_one_session(janus: RunningJanus) -> None:
    pool = JanusPool(LOCAL_PLATFORMS)
    try:
        adapter = JanusAdapter(pool=pool)
        room = await adapter.provision(RoomSpec(class_id="c5", title="t",
                                                settings=settings(janus)))
        client = await pool.get(janus.ws_url, None)
        await adapter.join_url(room, AN)
        assert await pool.get(janus.ws_url, None) is client
        await adapter.end(room)
    finally:
        await pool.aclose()


async def test_wrong_admin_key_and_unreachable(janus: RunningJanus) -> None:
    adapter = JanusAdapter(egress=LOCAL_PLATFORMS)
    with pytest.raises(JanusError) as info:
        await adapter.provision(RoomSpec(class_id="c6", title="t",
                                         settings=settings(janus, admin_key="wrong-key")))
    assert info.value.number == 433
    from gateway.janus_runner import free_port

    closed = {"kind": "janus", "ws_url": f"ws://127.0.0.1:{free_port()}", "client_url": CLIENT}
    with pytest.raises(UpstreamUnavailable):
        await asyncio.wait_for(adapter.provision(RoomSpec(class_id="c7", title="t",
                                                          settings=closed)), 15)
