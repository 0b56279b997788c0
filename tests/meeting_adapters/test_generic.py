"""The plain-link platform: URL validation, honest capabilities, Unsupported controls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from meeting_adapters.base import (
    Capability,
    InvalidSettings,
    MeetingAdapter,
    Participant,
    Room,
    RoomSpec,
    Unsupported,
)
from meeting_adapters.generic import MAX_URL_LENGTH, GenericAdapter, parse_meeting_url, redact_url

STUDENT = Participant(student_id="s1", display_name="Nguyễn Văn An", role="student", ticket="t1")


def fixed_clock() -> datetime:
    return datetime(2026, 11, 23, 0, 30, tzinfo=UTC)


def adapter() -> MeetingAdapter:
    # Typed as the protocol: mypy checks that GenericAdapter really implements it.
    return GenericAdapter(clock=fixed_clock)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://meet.example.org/abc", "https://meet.example.org/abc"),
        ("  HTTPS://Meet.Example.ORG/Abc?x=1#frag ", "https://meet.example.org/Abc?x=1#frag"),
        ("https://meet.example.org", "https://meet.example.org/"),
        ("https://meet.example.org:8443/r", "https://meet.example.org:8443/r"),
        ("http://localhost:8000/room", "http://localhost:8000/room"),
        ("http://127.0.0.1/room", "http://127.0.0.1/room"),
        ("http://[::1]:9/room", "http://[::1]:9/room"),
        ("https://họp.example.vn/lớp", "https://xn--hp-68s.example.vn/l%E1%BB%9Bp"),
        ("https://meet.example.org/a%20b", "https://meet.example.org/a%20b"),
    ],
)
def test_valid_urls_are_canonicalised(url: str, expected: str) -> None:
    assert parse_meeting_url(url) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "required"),
        (None, "URL string"),
        (42, "URL string"),
        ("javascript:alert(1)", "https://"),
        ("ftp://meet.example.org/x", "https://"),
        ("meet.example.org/abc", "https://"),
        ("http://meet.example.org/abc", "only for localhost"),
        ("http://10.0.0.5/abc", "only for localhost"),
        ("https://user:pass@meet.example.org/", "user name or password"),
        ("https://user@meet.example.org/", "user name or password"),
        ("https://meet.example.org\\@evil.example/", "'\\'"),
        ("https://meet.example.org/a b", "spaces"),
        ("https://meet.example.org/\x00", "control"),
        ("https:///nohost", "host"),
        ("https://meet.example.org:99999/", "not a valid URL"),
        ("https://bad_host!.example/", "invalid host"),
        ("http://127.1/room", "invalid IP address"),
        ("https://0x7f.1/room", "invalid IP address"),
        ("https://999.1.1.1/room", "invalid IP address"),
        ("https://meet.example.org/" + "a" * MAX_URL_LENGTH, "at most"),
    ],
)
def test_invalid_urls_name_the_field(url: object, fragment: str) -> None:
    with pytest.raises(InvalidSettings) as info:
        GenericAdapter.validate_settings({"kind": "generic", "url": url})
    assert info.value.field == "platform.url"
    assert info.value.code == "invalid_platform"
    assert fragment in info.value.message


def test_settings_fields_are_named() -> None:
    with pytest.raises(InvalidSettings) as info:
        GenericAdapter.validate_settings({"kind": "generic"})
    assert info.value.field == "platform.url"
    with pytest.raises(InvalidSettings) as info:
        GenericAdapter.validate_settings({"kind": "generic", "url": "https://x.org", "pw": "1"})
    assert info.value.field == "platform.pw"
    with pytest.raises(InvalidSettings) as info:
        GenericAdapter.validate_settings({"kind": "janus", "url": "https://x.org"})
    assert info.value.field == "platform.kind"


def test_validate_settings_returns_clean_copy() -> None:
    raw = {"kind": "generic", "url": " https://Meet.example.org/abc "}
    assert GenericAdapter.validate_settings(raw) == {
        "kind": "generic",
        "url": "https://meet.example.org/abc",
    }


def test_redact_hides_the_link_itself() -> None:
    settings = {"kind": "generic", "url": "https://zoom.example/j/123?pwd=secret"}
    red = GenericAdapter.redact(settings)
    assert red == {"kind": "generic", "url": "https://zoom.example/***"}
    assert "secret" not in str(red) and "123" not in str(red)
    assert redact_url("https://meet.example.org/") == "https://meet.example.org"


def test_capabilities_are_honestly_empty() -> None:
    assert GenericAdapter.kind == "generic"
    assert GenericAdapter.capabilities == frozenset()
    assert isinstance(adapter(), MeetingAdapter)


async def test_provision_and_join_url_return_the_stored_link() -> None:
    a = adapter()
    spec = RoomSpec(
        class_id="c1",
        title="Toán 10A1",
        settings={"kind": "generic", "url": "https://meet.example.org/abc"},
    )
    room = await a.provision(spec)
    assert room.kind == "generic" and room.class_id == "c1"
    assert "meet.example.org" not in room.upstream_id  # a fingerprint, not the link
    assert await a.join_url(room, STUDENT) == "https://meet.example.org/abc"
    # Round trip through the stored form.
    assert Room.from_dict(room.to_dict()) == room


async def test_join_url_fails_closed_on_bad_stored_data() -> None:
    a = adapter()
    room = Room(class_id="c1", kind="generic", upstream_id="x", data={"url": "javascript:x"})
    with pytest.raises(InvalidSettings) as info:
        await a.join_url(room, STUDENT)
    assert info.value.field == "room.data.url"
    room = Room(class_id="c1", kind="generic", upstream_id="x", data={})
    with pytest.raises(InvalidSettings):
        await a.join_url(room, STUDENT)


@pytest.mark.parametrize(
    ("action", "capability"),
    [
        ("remove", Capability.REMOVE),
        ("mute", Capability.MUTE),
        ("mute_all", Capability.MUTE),
        ("lock", Capability.LOCK),
        ("unlock", Capability.LOCK),
        ("end", Capability.END),
        ("participants", Capability.PRESENCE),
    ],
)
async def test_control_actions_are_unsupported(action: str, capability: Capability) -> None:
    a = adapter()
    room = Room(class_id="c1", kind="generic", upstream_id="x", data={"url": "https://x.org/"})
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "remove": lambda: a.remove(room, STUDENT),
        "mute": lambda: a.mute(room, STUDENT),
        "mute_all": lambda: a.mute(room),
        "lock": lambda: a.lock(room),
        "unlock": lambda: a.lock(room, False),
        "end": lambda: a.end(room),
        "participants": lambda: a.participants(room),
    }
    with pytest.raises(Unsupported) as info:
        await calls[action]()
    assert info.value.code == "unsupported_by_platform"
    assert info.value.capability is capability
    assert info.value.kind == "generic"
    assert capability.value in info.value.message
