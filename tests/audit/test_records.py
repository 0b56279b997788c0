"""Event records: validation, the personal-data commitment, format versions."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import FormatError, InvalidEventError, UnsupportedVersionError
from audit.records import (
    canonical,
    check_personal,
    decode_personal,
    decode_record,
    personal_commitment,
    prepare_event,
)

SALT = bytes(range(16))
EVENT = {"type": "join", "actor": "student:s1", "org": "o1", "class": "c1", "subject": "s1"}


def test_record_is_canonical_and_commits_to_personal_data() -> None:
    personal = {"name": "Nguyễn Văn A", "ip": "203.0.113.9"}
    ev = prepare_event(EVENT, personal, ts_ms=1700000000123, node="gw-1", event_id="e1", salt=SALT)
    rec = json.loads(ev.record)
    assert ev.record == rfc8785.dumps(rec)
    assert rec["v"] == 1 and rec["ts"] == 1700000000123 and rec["node"] == "gw-1"
    expected = base64.b64encode(hashlib.sha256(SALT + rfc8785.dumps(personal)).digest()).decode()
    assert rec["pd"] == expected == personal_commitment(personal, SALT)
    assert b"203.0.113.9" not in ev.record and "Nguyễn".encode() not in ev.record
    assert ev.personal_blob is not None
    p, salt = decode_personal(ev.personal_blob)
    assert (p, salt) == (personal, SALT)
    assert check_personal(rec, p, salt)
    assert not check_personal(rec, {**p, "ip": "198.51.100.1"}, salt)


@pytest.mark.parametrize("field", ["v", "ts", "node", "pd", "id", "index"])
def test_reserved_fields_are_refused(field: str) -> None:
    with pytest.raises(InvalidEventError, match="set by the audit log"):
        prepare_event({**EVENT, field: 1}, None, ts_ms=1, node="n", event_id="e", salt=None)


@pytest.mark.parametrize("field", ["ip", "name", "user_agent", "device_id", "Email"])
def test_personal_fields_in_the_record_are_refused(field: str) -> None:
    with pytest.raises(InvalidEventError, match="personal data"):
        prepare_event({**EVENT, field: "x"}, None, ts_ms=1, node="n", event_id="e", salt=None)


def test_type_and_actor_are_required_and_values_must_be_json() -> None:
    with pytest.raises(InvalidEventError, match="type"):
        prepare_event({"actor": "system"}, None, ts_ms=1, node="n", event_id="e", salt=None)
    with pytest.raises(InvalidEventError, match="actor"):
        prepare_event({"type": "x"}, None, ts_ms=1, node="n", event_id="e", salt=None)
    with pytest.raises(InvalidEventError):
        prepare_event({**EVENT, "n": 2**60}, None, ts_ms=1, node="n", event_id="e", salt=None)
    with pytest.raises(InvalidEventError):
        prepare_event({**EVENT, "x": object()}, None, ts_ms=1, node="n", event_id="e", salt=None)


def test_future_versions_are_rejected_clearly() -> None:
    with pytest.raises(UnsupportedVersionError, match="v2 is newer"):
        decode_record(b'{"type":"x","v":2}')
    with pytest.raises(FormatError):
        decode_record(b'{"type":"x"}')
    with pytest.raises(FormatError):
        decode_record(b"[1]")
    assert decode_record(b'{"v":1}') == {"v": 1}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400)
@given(json_values)
def test_canonical_fast_path_equals_rfc8785(value: object) -> None:
    try:
        expected = rfc8785.dumps(value)
    except Exception:  # noqa: BLE001 - whatever rfc8785 rejects, we must reject too
        with pytest.raises(InvalidEventError):
            canonical(value)
        return
    assert canonical(value) == expected


@pytest.mark.parametrize(
    "value",
    [{"\ue000": 1, "\U0001f600": 2}, {"a": '\u2028\x7f\x00\x1f/\\"é'}, [2**53 - 1, -(2**53) + 1]],
)
def test_canonical_edge_cases(value: object) -> None:
    assert canonical(value) == rfc8785.dumps(value)
