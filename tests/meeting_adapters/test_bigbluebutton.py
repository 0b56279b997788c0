"""BigBlueButton: the documented checksum, settings, and the adapter against a local
server that checks checksums like a real BBB (tests/fakes/bbb.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from meeting_adapters.base import (
    AdapterError,
    Capability,
    InvalidSettings,
    MeetingAdapter,
    Participant,
    RoomSpec,
    Unsupported,
    UpstreamUnavailable,
)
from meeting_adapters.bigbluebutton import (
    BigBlueButtonAdapter,
    api_url,
    callback_checksum_ok,
    checksum,
)
from meeting_adapters.egress import EgressPolicy, guarded_session
from tests.fakes.bbb import FakeBigBlueButton

# The fakes and the Janus of these tests listen on loopback: allowed explicitly.
LOCAL_PLATFORMS = EgressPolicy.from_settings(["127.0.0.1/32"])

SECRET = "8cd8ef52e8e101574e400365b55e11a6"
AN = Participant(student_id="s23456789abcd", display_name="Nguyễn Văn An", role="student",
                 ticket="t1")
TEACHER = Participant(student_id="host:co.lan", display_name="Cô Lan", role="host", ticket="")


# --- the documented example, exactly ----------------------------------------------------


def test_documented_checksum_example() -> None:
    query = "name=Test+Meeting&meetingID=abc123&attendeePW=111222&moderatorPW=333444"
    secret = "639259d4-9dd8-4b25-bf01-95f9567eaf4b"
    assert checksum("create", query, secret, "sha1") == "1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17"
    url = api_url("https://bbb.example.com/bigbluebutton/api/", "create",
                  {"name": "Test Meeting", "meetingID": "abc123", "attendeePW": "111222",
                   "moderatorPW": "333444"}, secret, "sha1")
    assert url == ("https://bbb.example.com/bigbluebutton/api/create?" + query +
                   "&checksum=1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17")
    # sha256 is the default and is the same construction
    assert checksum("create", query, secret) == hashlib.sha256(
        ("create" + query + secret).encode()).hexdigest()


def test_callback_checksum() -> None:
    url = "https://gw.example.org/hooks/bbb/c1"
    form = {"event": '[{"data":{"id":"user-joined"}}]', "timestamp": "1415900488797"}
    good = hashlib.sha1((url + "event=" + form["event"] + "&timestamp=1415900488797" + SECRET)
                        .encode()).hexdigest()
    assert callback_checksum_ok(url, form, good, SECRET)
    assert not callback_checksum_ok(url, form, good, "another-secret-value")
    assert not callback_checksum_ok(url + "x", form, good, SECRET)
    assert not callback_checksum_ok(url, {**form, "timestamp": "1"}, good, SECRET)
    assert not callback_checksum_ok(url, form, "", SECRET)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"api_url": None}, "platform.api_url"),
        ({"api_url": "http://bbb.example.org/bigbluebutton/api"}, "platform.api_url"),
        ({"secret": None}, "platform.secret"),
        ({"secret": "short"}, "platform.secret"),
        ({"checksum_algorithm": "md5"}, "platform.checksum_algorithm"),
        ({"guest_policy": "ALWAYS_MAYBE"}, "platform.guest_policy"),
        ({"webhooks": "yes"}, "platform.webhooks"),
        ({"moderatorPW": "x"}, "platform.moderatorPW"),
    ],
)
def test_settings_errors_name_the_field(patch: dict[str, Any], field: str) -> None:
    raw: dict[str, Any] = {"kind": "bigbluebutton",
                           "api_url": "https://bbb.example.org/bigbluebutton", "secret": SECRET}
    raw.update(patch)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(InvalidSettings) as info:
        BigBlueButtonAdapter.validate_settings(raw)
    assert info.value.field == field
    assert SECRET not in info.value.message


def test_settings_defaults_and_redaction() -> None:
    s = BigBlueButtonAdapter.validate_settings({
        "kind": "bigbluebutton", "api_url": "https://bbb.example.org/bigbluebutton",
        "secret": SECRET})
    assert s["api_url"] == "https://bbb.example.org/bigbluebutton/api/"
    assert s["checksum_algorithm"] == "sha256" and s["guest_policy"] == "ALWAYS_DENY"
    assert BigBlueButtonAdapter.redact(s)["secret"] == "***"
    assert SECRET not in str(BigBlueButtonAdapter.redact(s))


def test_capabilities_are_honest() -> None:
    caps = BigBlueButtonAdapter.capabilities
    assert caps == {Capability.ENFORCED_ENTRY, Capability.END, Capability.PRESENCE}
    assert isinstance(BigBlueButtonAdapter(), MeetingAdapter)


# --- against the local BBB ----------------------------------------------------------------


@pytest.fixture
async def bbb() -> AsyncIterator[tuple[FakeBigBlueButton, str]]:
    fake = FakeBigBlueButton(SECRET)
    url = await fake.start()
    yield fake, url
    await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with guarded_session(LOCAL_PLATFORMS) as s:
        yield s


def settings(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "bigbluebutton", "api_url": url, "secret": SECRET, **extra}


async def test_provision_join_presence_end(bbb: tuple[FakeBigBlueButton, str],
                                           http: aiohttp.ClientSession) -> None:
    fake, url = bbb
    adapter = BigBlueButtonAdapter(http_session=http)
    room = await adapter.provision(RoomSpec(class_id="c1", title="Toán 10A1",
                                            settings=settings(url)))
    meeting = fake.meetings[room.upstream_id]
    p = meeting.params
    assert p["guestPolicy"] == "ALWAYS_DENY" and p["meetingKeepEvents"] == "true"
    assert p["meta_classguard-class"] == "c1" and p["lockSettingsDisablePrivateChat"] == "true"
    assert p["name"] == "Toán 10A1"

    join = await adapter.join_url(room, AN)
    q = dict(parse_qsl(urlsplit(join).query))
    assert q["fullName"] == AN.display_name and q["userID"] == AN.student_id
    assert q["role"] == "VIEWER" and q["createTime"] == meeting.create_time
    assert len(q["checksum"]) == 64  # sha256

    # a visitor who edits the name or the role is refused by the server itself
    for field, value in (("fullName", "Hacker"), ("role", "MODERATOR")):
        forged_q = {**q, field: value}
        sig = forged_q.pop("checksum")
        r = await http.get(url + "join", params={**forged_q, "checksum": sig},
                           allow_redirects=False)
        assert "checksumError" in await r.text(), field
    r = await http.get(join, allow_redirects=False)
    assert r.status == 302
    present = await adapter.participants(room)
    assert [(x.student_id, x.display_name) for x in present] == [(AN.student_id,
                                                                  AN.display_name)]
    # teacher: moderator, not listed among the students
    teacher = dict(parse_qsl(urlsplit(await adapter.join_url(room, TEACHER)).query))
    assert teacher["role"] == "MODERATOR"

    await adapter.end(room)
    assert room.upstream_id not in fake.meetings
    r = await http.get(join, allow_redirects=False)  # the old link died with the session
    assert r.status == 200 and "invalidMeetingIdentifier" in await r.text()
    assert await adapter.participants(room) == []
    await adapter.end(room)  # idempotent


async def test_expired_meeting_is_recreated_and_old_links_die(
        bbb: tuple[FakeBigBlueButton, str], http: aiohttp.ClientSession) -> None:
    fake, url = bbb
    adapter = BigBlueButtonAdapter(http_session=http)
    room = await adapter.provision(RoomSpec(class_id="c2", title="t", settings=settings(url)))
    first = await adapter.join_url(room, AN)
    fake.expire(room.upstream_id)
    await asyncio.sleep(0.002)  # a new session gets a new createTime
    second = await adapter.join_url(room, AN)
    assert (await http.get(second, allow_redirects=False)).status == 302
    r = await http.get(first, allow_redirects=False)
    assert "mismatchCreateTimeParam" in await r.text()


async def test_sha1_servers_and_wrong_secret(bbb: tuple[FakeBigBlueButton, str],
                                            http: aiohttp.ClientSession) -> None:
    fake, url = bbb
    adapter = BigBlueButtonAdapter(http_session=http)
    room = await adapter.provision(RoomSpec(class_id="c3", title="t",
                                            settings=settings(url, checksum_algorithm="sha1")))
    join = await adapter.join_url(room, AN)
    assert len(dict(parse_qsl(urlsplit(join).query))["checksum"]) == 40
    with pytest.raises(AdapterError) as info:
        await adapter.provision(RoomSpec(class_id="c4", title="t", settings={
            **settings(url), "secret": "not-the-server-secret"}))
    assert info.value.code == "bbb_checksumError"
    assert "not-the-server-secret" not in str(info.value)


async def test_unsupported_controls_and_unreachable(http: aiohttp.ClientSession) -> None:
    adapter = BigBlueButtonAdapter(http_session=http)
    from gateway.janus_runner import free_port

    with pytest.raises(UpstreamUnavailable):
        await adapter.provision(RoomSpec(class_id="c5", title="t", settings=settings(
            f"http://127.0.0.1:{free_port()}/bigbluebutton/api/")))
    fake = FakeBigBlueButton(SECRET)
    url = await fake.start()
    try:
        room = await adapter.provision(RoomSpec(class_id="c6", title="t",
                                                settings=settings(url)))
        for call in (adapter.remove(room, AN), adapter.mute(room), adapter.lock(room)):
            with pytest.raises(Unsupported):
                await call
    finally:
        await fake.stop()


async def test_hooks_register_and_callbacks_verify(bbb: tuple[FakeBigBlueButton, str],
                                                   http: aiohttp.ClientSession) -> None:
    from aiohttp import web

    fake, url = bbb
    got: list[tuple[str, dict[str, str], str]] = []

    async def catch(request: web.Request) -> web.Response:
        form = dict(await request.post())
        got.append((str(request.url.with_query(None)), {k: str(v) for k, v in form.items()},
                    request.query.get("checksum", "")))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hooks/bbb/c7", catch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    callback = f"http://127.0.0.1:{port}/hooks/bbb/c7"
    try:
        adapter = BigBlueButtonAdapter(http_session=http)
        room = await adapter.provision(RoomSpec(class_id="c7", title="t", settings=settings(url)))
        assert await adapter.register_hook(room, callback) == "1"
        assert await adapter.register_hook(room, callback) == "1"  # idempotent
        await http.get(await adapter.join_url(room, AN), allow_redirects=False)
        assert len(got) == 1
        seen_url, form, sig = got[0]
        assert seen_url == callback
        assert adapter.verify_callback(room, callback, form, sig)
        assert not adapter.verify_callback(room, callback, {**form, "event": "[]"}, sig)
    finally:
        await runner.cleanup()
