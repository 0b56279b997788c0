"""Outbox entries: what a writer is refused at once, and what the drain rebuilds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import InvalidEventError
from audit.outbox import pack_entry, unpack_entry
from audit.records import MAX_RECORD_BYTES, SALT_SIZE, prepare_event

BASE: dict[str, Any] = {"type": "join", "actor": "student:s1", "class_id": "c1"}


def _prepared_ok(event: dict[str, Any], personal: dict[str, Any] | None) -> bool:
    try:
        prepare_event(event, personal, ts_ms=1, node="n", event_id="0" * 16,
                      salt=b"\0" * SALT_SIZE if personal else None)
    except InvalidEventError:
        return False
    return True


def _packed_ok(event: dict[str, Any], personal: dict[str, Any] | None) -> bool:
    try:
        pack_entry(event, personal, ts_ms=1, node="n", event_id="0" * 16)
    except InvalidEventError:
        return False
    return True


@pytest.mark.parametrize("event,personal", [
    ({**BASE}, None),
    ({**BASE, "facts": {"n": 3, "ok": True, "none": None}}, {"ip": "203.0.113.9"}),
    ({**BASE, "facts": {"ratio": 0.5}}, None),  # a float: canonicalised by RFC 8785
    ({**BASE, "facts": {"bad": "\ud800"}}, None),  # a lone surrogate
    ({**BASE, "facts": {"set": {1, 2}}}, None),  # not JSON
    ({**BASE, "facts": {"big": 2**60}}, None),  # beyond I-JSON's safe integers
    ({**BASE, "ip": "203.0.113.9"}, None),  # personal data outside "personal"
    ({**BASE, "id": "x"}, None),  # reserved for the log
    ({"actor": "system"}, None),  # no type
    ({**BASE, "facts": {"t": "x" * (MAX_RECORD_BYTES - 200)}}, None),  # near the limit
    ({**BASE, "facts": {"t": "x" * MAX_RECORD_BYTES}}, None),  # over it
    ({**BASE, "facts": {"ключ": "значение"}}, None),  # non-ASCII member names
])
def test_writer_is_refused_exactly_what_the_record_refuses(
        event: dict[str, Any], personal: dict[str, Any] | None) -> None:
    assert _packed_ok(event, personal) == _prepared_ok(event, personal)


_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**60, 2**60), st.text(max_size=20),
              st.floats(allow_nan=True, allow_infinity=True)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _VALUES, max_size=4),
       st.one_of(st.none(), st.dictionaries(st.sampled_from(["ip", "ua"]), _VALUES,
                                            max_size=2)))
def test_writer_and_record_agree_on_arbitrary_events(facts: dict[str, Any],
                                                     personal: dict[str, Any] | None) -> None:
    event = {**BASE, "facts": facts}
    ok = _packed_ok(event, personal)
    assert ok == _prepared_ok(event, personal)
    if ok:  # and what was accepted is rebuilt by the drain
        value = pack_entry(event, personal, ts_ms=1, node="n", event_id="0" * 16)
        item = unpack_entry({b"d": value.encode()})
        assert json.loads(item.record)["type"] == "join"
