"""The platform registry and the shared values of meeting_adapters.base."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from meeting_adapters import (
    ADAPTERS,
    AdapterError,
    Capability,
    InvalidSettings,
    MeetingAdapter,
    Room,
    RoomSpec,
    Unsupported,
    UpstreamUnavailable,
    capability_matrix,
    create_adapter,
    redact_platform,
    validate_platform,
)
from meeting_adapters.generic import GenericAdapter


def test_registry_lists_generic() -> None:
    assert ADAPTERS["generic"] is GenericAdapter
    with pytest.raises(TypeError):
        ADAPTERS["evil"] = GenericAdapter  # type: ignore[index]


def test_capability_values_are_lower_snake_case() -> None:
    assert [c.value for c in Capability] == [
        "enforced_entry",
        "single_use_credential",
        "remove",
        "mute",
        "lock",
        "end",
        "presence",
    ]


def test_capability_matrix() -> None:
    matrix = capability_matrix()
    assert matrix["generic"] == []
    assert set(matrix) == set(ADAPTERS)
    for kind, caps in matrix.items():
        assert caps == sorted(caps), kind
        assert set(caps) <= {c.value for c in Capability}


def test_create_adapter() -> None:
    adapter = create_adapter("generic")
    assert isinstance(adapter, GenericAdapter)
    assert isinstance(adapter, MeetingAdapter)
    with pytest.raises(InvalidSettings) as info:
        create_adapter("skype")
    assert info.value.field == "platform.kind"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"url": "https://x.org"}, "platform.kind"),
        ({"kind": "nope", "url": "https://x.org"}, "platform.kind"),
        ({"kind": 3}, "platform.kind"),
        ({"kind": "generic"}, "platform.url"),
        ({"kind": "generic", "url": "http://x.org"}, "platform.url"),
        ("https://x.org", "platform"),
    ],
)
def test_validate_platform_names_the_field(data: Any, field: str) -> None:
    with pytest.raises(InvalidSettings) as info:
        validate_platform(data)
    assert info.value.field == field
    assert info.value.code == "invalid_platform"
    assert str(info.value).startswith(f"{field}: ")


def test_validate_platform_ok() -> None:
    assert validate_platform({"kind": "generic", "url": "https://x.org/a"}) == {
        "kind": "generic",
        "url": "https://x.org/a",
    }


def test_unknown_kind_message_lists_available() -> None:
    with pytest.raises(InvalidSettings, match="available: .*generic") as info:
        validate_platform({"kind": "webex"})
    assert "janus" in info.value.message


def test_redact_platform() -> None:
    assert redact_platform({"kind": "generic", "url": "https://x.org/secret-room"}) == {
        "kind": "generic",
        "url": "https://x.org/***",
    }
    assert redact_platform({"kind": "unknown", "secret": "s"}) == {"kind": "unknown"}


def test_error_codes() -> None:
    assert Unsupported("generic", Capability.END).code == "unsupported_by_platform"
    err = UpstreamUnavailable("janus", "connection refused")
    assert err.code == "platform_unreachable" and isinstance(err, AdapterError)
    assert str(AdapterError("x", "msg")) == "msg"


def test_values_are_frozen_and_copy_their_mappings() -> None:
    settings: dict[str, Any] = {"kind": "generic", "url": "https://x.org/"}
    spec = RoomSpec(class_id="c", title="t", settings=settings)
    settings["url"] = "https://changed.example/"
    assert spec.settings["url"] == "https://x.org/"
    with pytest.raises(TypeError):
        spec.settings["url"] = "x"  # type: ignore[index]
    room = Room(class_id="c", kind="generic", upstream_id="u", data={"a": 1})
    assert isinstance(room.data, Mapping)


@pytest.mark.parametrize(
    "raw",
    [
        {"class_id": "c", "kind": "generic", "upstream_id": "u", "data": {}},  # no v
        {"v": 2, "class_id": "c", "kind": "generic", "upstream_id": "u", "data": {}},
        {"v": 1, "kind": "generic", "upstream_id": "u", "data": {}},
        {"v": 1, "class_id": 5, "kind": "generic", "upstream_id": "u", "data": {}},
    ],
)
def test_room_from_dict_rejects_unknown_or_broken_records(raw: dict[str, Any]) -> None:
    with pytest.raises(AdapterError) as info:
        Room.from_dict(raw)
    assert info.value.code == "invalid_room"


def test_readme_capability_matrix_is_generated() -> None:
    from pathlib import Path

    from meeting_adapters.matrix import main, replace_table
    from meeting_adapters.registry import capability_table

    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert replace_table(text, capability_table()) == text, (
        "README.md capability matrix is stale: python -m meeting_adapters.matrix --write README.md")
    assert main(["--check", str(readme)]) == 0
    table = capability_table().splitlines()
    assert len(table) == 2 + len(ADAPTERS)
    assert table[3].startswith("| `janus` |") and "—" not in table[3]
