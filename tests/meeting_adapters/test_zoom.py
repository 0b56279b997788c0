"""Zoom: webhook signatures from the documented algorithm, settings, and the adapter
against a local server implementing the documented endpoints (tests/fakes/zoom.py)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from meeting_adapters.base import (
    AdapterError,
    Capability,
    InvalidSettings,
    MeetingAdapter,
    Participant,
    RoomSpec,
    Unsupported,
)
from meeting_adapters.egress import EgressPolicy, guarded_session
from meeting_adapters.zoom import (
    ZoomAdapter,
    ZoomTokens,
    meeting_body,
    url_validation_answer,
    verify_webhook,
    webhook_signature,
)
from tests.fakes.zoom import FakeZoom

# The fakes and the Janus of these tests listen on loopback: allowed explicitly.
LOCAL_PLATFORMS = EgressPolicy.from_settings(["127.0.0.1/32"])

SECRET = "whsec-0123456789abcdef"
AN = Participant(student_id="s23456789abcd", display_name="Nguyễn Văn An", role="student",
                 ticket="t1")
NOW = datetime(2026, 11, 23, 0, 30, tzinfo=UTC)


# --- pure: signatures ----------------------------------------------------------------------


def test_signature_vector() -> None:
    body = b'{"event":"meeting.participant_joined","payload":{"object":{"id":1}}}'
    ts = "1795392000000"
    expected = "v0=" + hmac.new(SECRET.encode(), b"v0:" + ts.encode() + b":" + body,
                                hashlib.sha256).hexdigest()
    assert webhook_signature(SECRET, ts, body) == expected
    # A fixed vector, computed once from the documented construction.
    assert webhook_signature("secret", "1", b"{}") == (
        "v0=" + hmac.new(b"secret", b"v0:1:{}", hashlib.sha256).hexdigest())


@pytest.mark.parametrize(
    ("ts", "sig", "body", "why"),
    [
        (None, "v0=x", b"{}", "missing"),
        ("abc", "v0=x", b"{}", "malformed"),
        (str(int(NOW.timestamp()) - 301), None, b"{}", "missing"),
        (str(int(NOW.timestamp()) - 301), "sig", b"{}", "stale"),
        (str(int(NOW.timestamp() * 1000) + 400_000), "sig", b"{}", "stale"),
        (str(int(NOW.timestamp())), "v0=deadbeef", b"{}", "bad signature"),
    ],
)
def test_webhook_refusals(ts: str | None, sig: str | None, body: bytes, why: str) -> None:
    if sig == "sig":
        sig = webhook_signature(SECRET, str(ts), body)
    result = verify_webhook(SECRET, ts, sig, body, NOW)
    assert result is not None and why in result


def test_webhook_accepts_fresh_signed_events_in_ms_and_s() -> None:
    for ts in (str(int(NOW.timestamp())), str(int(NOW.timestamp() * 1000) - 1000)):
        sig = webhook_signature(SECRET, ts, b'{"a":1}')
        assert verify_webhook(SECRET, ts, sig, b'{"a":1}', NOW) is None
        assert verify_webhook(SECRET, ts, sig, b'{"a":2}', NOW) == "bad signature"


def test_url_validation_answer() -> None:
    ans = url_validation_answer(SECRET, "qgg8vlvZRS6UYooatFL8Aw")
    assert ans == {"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": hmac.new(
        SECRET.encode(), b"qgg8vlvZRS6UYooatFL8Aw", hashlib.sha256).hexdigest()}


def test_meeting_body_locks_the_door() -> None:
    body = meeting_body("Toán", NOW, 90)
    s = body["settings"]
    assert body["type"] == 2 and body["start_time"] == "2026-11-23T00:30:00Z"
    assert s["waiting_room"] is True and s["approval_type"] == 1
    assert s["registrants_restrict_number"] == 1 and s["join_before_host"] is False


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"account_id": None}, "platform.account_id"),
        ({"client_secret": "x"}, "platform.client_secret"),
        ({"host_user": ""}, "platform.host_user"),
        ({"registrant_email_domain": "a@b.c"}, "platform.registrant_email_domain"),
        ({"registrant_email_domain": "nodot"}, "platform.registrant_email_domain"),
        ({"api_url": "http://api.zoom.example/v2/"}, "platform.api_url"),
        ({"duration_minutes": 0}, "platform.duration_minutes"),
        ({"webhook_secret_token": "short"}, "platform.webhook_secret_token"),
        ({"password": "1234"}, "platform.password"),
    ],
)
def test_settings_errors_name_the_field(patch: dict[str, Any], field: str) -> None:
    raw: dict[str, Any] = {"kind": "zoom", "account_id": "acc", "client_id": "cid",
                           "client_secret": "client-secret-1", "host_user": "t@s.example",
                           "registrant_email_domain": "students.example"}
    raw.update(patch)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(InvalidSettings) as info:
        ZoomAdapter.validate_settings(raw)
    assert info.value.field == field


def test_redact_and_capabilities() -> None:
    s = ZoomAdapter.validate_settings({
        "kind": "zoom", "account_id": "acc", "client_id": "cid",
        "client_secret": "client-secret-1", "host_user": "t@s.example",
        "registrant_email_domain": "Students.Example", "webhook_secret_token": SECRET})
    red = ZoomAdapter.redact(s)
    assert red["client_secret"] == "***" and red["webhook_secret_token"] == "***"
    assert s["registrant_email_domain"] == "students.example"
    assert ZoomAdapter.capabilities == {Capability.ENFORCED_ENTRY, Capability.END}
    assert isinstance(ZoomAdapter(), MeetingAdapter)


# --- against the local Zoom --------------------------------------------------------------


@pytest.fixture
async def zoom() -> AsyncIterator[FakeZoom]:
    fake = FakeZoom("acc-1", "client-1", "client-secret-1", SECRET)
    await fake.start()
    yield fake
    await fake.stop()


def settings(fake: FakeZoom, **extra: Any) -> dict[str, Any]:
    return {"kind": "zoom", "account_id": fake.account_id, "client_id": fake.client_id,
            "client_secret": fake.client_secret, "host_user": fake.host_user,
            "registrant_email_domain": "students.example", "webhook_secret_token": SECRET,
            "api_url": f"{fake.base}/v2/", "oauth_url": f"{fake.base}/oauth/token", **extra}


async def test_registrant_links_remove_and_end(zoom: FakeZoom) -> None:
    async with guarded_session(LOCAL_PLATFORMS) as http:
        tokens = ZoomTokens()
        adapter = ZoomAdapter(http_session=http, pool=tokens, clock=lambda: NOW)
        room = await adapter.provision(RoomSpec(class_id="c1", title="Toán 10A1",
                                                settings=settings(zoom)))
        meeting = zoom.meetings[room.upstream_id]
        assert meeting["body"]["settings"]["waiting_room"] is True
        assert "start_url" not in str(room.data)

        link = await adapter.join_url(room, AN)
        r = await http.get(link)
        assert r.status == 200 and "Nguyễn Văn An" in await r.text()
        reg = meeting["registrants"]["s23456789abcd@students.example"]
        assert reg["first_name"] == "Nguyễn" and reg["last_name"] == "Văn An"
        # the bare meeting link is not enough
        assert (await http.get(f"{zoom.base}/w/{room.upstream_id}")).status == 403

        with pytest.raises(Unsupported) as info:
            await adapter.remove(room, AN)
        assert "cannot remove someone who is already in" in info.value.message
        assert (await http.get(link)).status == 403  # registration cancelled
        again = await adapter.join_url(room, AN)  # re-admission approves again
        assert (await http.get(again)).status == 200
        assert zoom.token_requests == 1  # one OAuth token reused

        await adapter.end(room)
        assert (await http.get(again)).status == 404
        for call in (adapter.mute(room), adapter.lock(room), adapter.participants(room)):
            with pytest.raises(Unsupported):
                await call


async def test_wrong_credentials_and_webhook_helpers(zoom: FakeZoom) -> None:
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = ZoomAdapter(http_session=http, clock=lambda: datetime.now(UTC))
        with pytest.raises(AdapterError) as info:
            await adapter.provision(RoomSpec(class_id="c2", title="t", settings=settings(
                zoom, client_secret="wrong-secret-1")))
        assert "wrong-secret-1" not in str(info.value)
        room = await adapter.provision(RoomSpec(class_id="c3", title="t", settings=settings(zoom)))
        event = zoom.participant_event(room.upstream_id, email="s23456789abcd@students.example",
                                       name="Nguyễn Văn An")
        body, headers = zoom.signed(event)
        assert adapter.verify_webhook(room, headers, body) is None
        assert adapter.verify_webhook(room, headers, body + b" ") == "bad signature"
        present = adapter.webhook_present(room, event)
        assert present is not None and present.student_id == "s23456789abcd"
        stranger = zoom.participant_event(room.upstream_id, email="x@gmail.com", name="An")
        p2 = adapter.webhook_present(room, stranger)
        assert p2 is not None and p2.student_id is None
        other = zoom.participant_event("1", email="x@gmail.com", name="x")
        assert adapter.webhook_present(room, other) is None
