"""The report model on its own (no Redis): the class's time zone, and who is who."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from audit.evidence import BundleEvent
from gateway.evidence_report import ClassContext, StudentInfo, build_report
from gateway.incidents import Incident, Visitor

AN, CUONG = "s0000000000an", "s00000000cuong"
SHARED_IP = "198.51.100.99"
DEV_AN, DEV_CUONG, DEV_X, DEV_Y = ("a" * 64, "c" * 64, "f" * 64, "e" * 64)
T0 = int(datetime(2026, 12, 4, 1, 0, tzinfo=UTC).timestamp() * 1000)  # 08:00 in Hanoi


def _incident(**kw: Any) -> Incident:
    base: dict[str, Any] = dict(
        id="inc1", org="school", class_id="c1", title="t", description="", since_ms=T0,
        until_ms=T0 + 3_600_000, student_ids=(AN, CUONG), visitors=(Visitor(ip=SHARED_IP),),
        indexes=(), status="open", created_by="co.lan", created_at=T0 / 1000 + 600,
        updated_at=T0 / 1000 + 600)
    base.update(kw)
    return Incident(**base)


def _ctx(tz: str) -> ClassContext:
    return ClassContext(id="c1", title="Toán 10A1", platform="janus", teacher="co.lan",
                        school="Trường THPT Nguyễn Du", org_chain=["Trường THPT Nguyễn Du"],
                        timezone=tz, students=[StudentInfo(AN, "Nguyễn Văn An", "HS1"),
                                               StudentInfo(CUONG, "Lê Hoàng Cường", "HS3")])


def _join(n: int, sid: str | None, device: str | None, reason: str = "awaiting_host",
          action: str = "wait") -> BundleEvent:
    rec = {"type": "join", "ts": T0 + n * 1000, "reason": reason,
           "actor": f"student:{sid}" if sid else "visitor", "facts": {"action": action}}
    if sid:
        rec["subject"] = sid
    personal = {"ip": SHARED_IP, **({"device": device} if device else {}), "ua": "Chrome"}
    return BundleEvent(n, rec, personal, b"salt" * 4)


def _build(inc: Incident, events: list[BundleEvent], tz: str = "Asia/Ho_Chi_Minh",
           fallback: str = "Asia/Ho_Chi_Minh") -> Any:
    return build_report(
        _ctx(tz), inc, events, [], lang="vi",
        student_devices={DEV_AN: AN, DEV_CUONG: CUONG}, withheld=0, exporter="user:thay.hieu",
        exported_at_ms=T0 + 7_200_000, checkpoint_size=10, origin="o", verifier_key="k",
        fingerprint="f", fallback_timezone=fallback)


def test_times_are_in_the_class_zone_with_the_setting_as_fallback() -> None:
    m = _build(_incident(), [_join(1, AN, DEV_AN)])
    assert (m.timezone, m.tz_label, m.window.since_local) == \
        ("Asia/Ho_Chi_Minh", "UTC+7", "2026-12-04 08:00:00")
    m = _build(_incident(), [_join(1, AN, DEV_AN)], tz="Europe/Berlin")
    assert (m.timezone, m.tz_label, m.window.since_local) == \
        ("Europe/Berlin", "UTC+1", "2026-12-04 02:00:00")
    assert m.window.since_utc == "2026-12-04 01:00:00"
    # a zone this machine does not know: the gateway's setting
    m = _build(_incident(), [_join(1, AN, DEV_AN)], tz="Mars/Olympus", fallback="Asia/Kolkata")
    assert (m.timezone, m.tz_label) == ("Asia/Kolkata", "UTC+5:30")


def test_strangers_are_grouped_by_device_never_by_address() -> None:
    events = [
        _join(1, AN, DEV_AN), _join(2, CUONG, DEV_CUONG),
        _join(3, AN, DEV_X, reason="device_mismatch", action="deny"),
        _join(4, CUONG, DEV_Y, reason="device_mismatch", action="deny"),
        _join(5, None, DEV_X, reason="token_invalid", action="deny"),
        _join(6, None, None, reason="rate_limited", action="deny"),
    ]
    m = _build(_incident(), events)
    assert [(s.name, s.ips, s.devices, s.records) for s in m.students] == [
        ("Nguyễn Văn An", [SHARED_IP], [DEV_AN[:12]], 1),
        ("Lê Hoàng Cường", [SHARED_IP], [DEV_CUONG[:12]], 1)]
    assert [(v.n, v.devices, v.ips, v.links, v.records) for v in m.visitors] == [
        (1, [DEV_X[:12]], [SHARED_IP], ["Nguyễn Văn An"], 2),
        (2, [DEV_Y[:12]], [SHARED_IP], ["Lê Hoàng Cường"], 1),
        (3, [], [SHARED_IP], [], 1)]  # no device at all: known by its address only
    assert [r.person for r in m.timeline] == [
        "Nguyễn Văn An", "Lê Hoàng Cường", "Khách 1 → Nguyễn Văn An",
        "Khách 2 → Lê Hoàng Cường", "Khách 1", "Khách 3"]


def test_a_device_the_reporter_named_is_a_stranger_even_on_a_students_link() -> None:
    inc = _incident(visitors=(Visitor(device=DEV_AN),))
    m = _build(inc, [_join(1, AN, DEV_AN), _join(2, CUONG, DEV_CUONG)])
    assert [(v.n, v.devices) for v in m.visitors] == [(1, [DEV_AN[:12]])]
    assert m.timeline[0].person == "Khách 1 → Nguyễn Văn An"
    assert m.students[0].records == 0 and m.students[1].devices == [DEV_CUONG[:12]]
