"""Microsoft Teams: the meeting body, settings, and the adapter against a local
implementation of the documented Graph endpoints (tests/fakes/graph_server.py), then a
class on Teams through the real gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from meeting_adapters.base import (
    AdapterError,
    Capability,
    Feature,
    InvalidSettings,
    MeetingAdapter,
    Participant,
    RoomSpec,
    RosterName,
    Unsupported,
    UpstreamUnavailable,
)
from meeting_adapters.egress import EgressPolicy, guarded_session
from meeting_adapters.teams import (
    LOCKED,
    TOKEN_SKEW_S,
    TeamsAdapter,
    TeamsPool,
    drift,
    meeting_body,
    retry_after_s,
)
from tests.fakes.graph_server import FakeGraph
from tests.gateway.helpers import open_link, running_gateway

from .gateway_flow import action, alerts, create_class, enter

# The local Graph listens on loopback: allowed explicitly.
LOCAL_PLATFORMS = EgressPolicy.from_settings(["127.0.0.1/32"])
TENANT = "2f6c1a0e-5d7b-4c39-9e0a-1b2c3d4e5f60"
CLIENT = "8a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
SECRET = "client-secret~0123456789"
ORGANIZER = "5b7e9c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e"
NOW = datetime(2026, 12, 4, 1, 0, tzinfo=UTC)
AN = Participant(student_id="s23456789abcd", display_name="Nguyễn Văn An", role="student",
                 ticket="t1")


# --- pure ------------------------------------------------------------------------------------


def test_meeting_body_keeps_everyone_but_the_organizer_in_the_lobby() -> None:
    body = meeting_body("Toán 10A1", NOW, 45)
    assert body["lobbyBypassSettings"] == {"scope": "organizer", "isDialInBypassEnabled": False}
    assert body["allowedPresenters"] == "organizer" and body["allowMeetingChat"] == "limited"
    assert body["allowParticipantsToChangeName"] is False
    assert body["recordAutomatically"] is False
    assert body["startDateTime"] == "2026-12-04T01:00:00.0000000Z"
    assert body["endDateTime"] == "2026-12-04T01:45:00.0000000Z"
    assert "allowParticipantsToChangeName" not in meeting_body("x", NOW, 1,
                                                               rename_setting=False)


def test_drift_names_what_teams_changed() -> None:
    kept = dict(LOCKED)
    assert drift(kept) == {}
    opened = {**kept, "lobbyBypassSettings": {"scope": "everyone",
                                              "isDialInBypassEnabled": False},
              "allowMeetingChat": "enabled"}
    assert drift(opened) == {"lobbyBypassSettings": LOCKED["lobbyBypassSettings"],
                             "allowMeetingChat": "limited"}
    dial_in = {**kept, "lobbyBypassSettings": {"scope": "organizer",
                                               "isDialInBypassEnabled": True}}
    assert "lobbyBypassSettings" in drift(dial_in)
    no_rename = {k: v for k, v in kept.items() if k != "allowParticipantsToChangeName"}
    assert drift(no_rename) == {"allowParticipantsToChangeName": False}
    assert drift(no_rename, rename_setting=False) == {}


def test_retry_after_forms() -> None:
    assert retry_after_s("7", NOW) == 7.0
    assert retry_after_s(None, NOW) is None and retry_after_s("soon", NOW) is None
    assert retry_after_s("Fri, 04 Dec 2026 01:00:30 GMT", NOW) == 30.0
    assert retry_after_s("Fri, 04 Dec 2026 00:59:00 GMT", NOW) == 0.0


def settings(fake: FakeGraph | None = None, **extra: Any) -> dict[str, Any]:
    base = fake.base if fake is not None else "https://graph.example"
    return {"kind": "teams", "tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
            "organizer_id": ORGANIZER, "graph_url": f"{base}/v1.0/",
            "login_url": f"{base}/", **extra}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"tenant_id": None}, "platform.tenant_id"),
        ({"tenant_id": "../../evil"}, "platform.tenant_id"),
        ({"client_id": "my-app"}, "platform.client_id"),
        ({"client_secret": "short"}, "platform.client_secret"),
        ({"organizer_id": "teacher@school.edu.vn"}, "platform.organizer_id"),
        ({"graph_url": "http://graph.example/v1.0/"}, "platform.graph_url"),
        ({"duration_minutes": 0}, "platform.duration_minutes"),
        ({"meeting_url": "https://teams.microsoft.com/l/x"}, "platform.meeting_url"),
    ],
)
def test_settings_errors_name_the_field(patch: dict[str, Any], field: str) -> None:
    raw = {k: v for k, v in {**settings(), **patch}.items() if v is not None}
    with pytest.raises(InvalidSettings) as info:
        TeamsAdapter.validate_settings(raw)
    assert info.value.field == field


def test_settings_defaults_redact_and_declarations() -> None:
    s = TeamsAdapter.validate_settings({"kind": "teams", "tenant_id": "truong.onmicrosoft.com",
                                        "client_id": CLIENT.upper(), "client_secret": SECRET,
                                        "organizer_id": ORGANIZER})
    assert s["graph_url"] == "https://graph.microsoft.com/v1.0/"
    assert s["login_url"] == "https://login.microsoftonline.com/"
    assert s["client_id"] == CLIENT and s["duration_minutes"] == 90
    assert TeamsAdapter.redact(s)["client_secret"] == "***"
    # Teams' lobby is its own and Graph cannot remove, mute, lock, end nor list live
    # participants: nothing is claimed.
    assert TeamsAdapter.capabilities == frozenset()
    assert TeamsAdapter.features == {Feature.POOL, Feature.ATTENDANCE}
    assert isinstance(TeamsAdapter(), MeetingAdapter)


# --- against the local Graph -------------------------------------------------------------------


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    fake = FakeGraph(TENANT, CLIENT, SECRET, ORGANIZER)
    await fake.start()
    yield fake
    await fake.stop()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_meeting_settings_link_and_restore(graph: FakeGraph) -> None:
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = TeamsAdapter(http_session=http, pool=TeamsPool())
        room = await adapter.provision(RoomSpec(class_id="c1", title="Toán 10A1",
                                                settings=settings(graph)))
        meeting = graph.meetings[room.upstream_id]
        for name, value in LOCKED.items():
            assert meeting.body[name] == value, name
        assert meeting.body["subject"] == "Toán 10A1"
        assert room.data["rename_locked"] is True

        link = await adapter.join_url(room, AN)
        assert link == room.data["join_url"] and link.startswith(f"{graph.base}/l/meetup-join/")
        r = await http.get(link)
        assert "let you in" in await r.text()  # the lobby, not the meeting

        # Someone opened the lobby in Teams: the next handout sets it back first.
        meeting.body["lobbyBypassSettings"] = {"scope": "everyone",
                                               "isDialInBypassEnabled": True}
        meeting.body["allowMeetingChat"] = "enabled"
        fresh = TeamsAdapter(http_session=http)  # no pool: no cached verification
        assert await fresh.join_url(room, AN) == link
        assert meeting.body["lobbyBypassSettings"] == LOCKED["lobbyBypassSettings"]
        assert meeting.body["allowMeetingChat"] == "limited"
        assert ("PATCH", f"/v1.0/users/{ORGANIZER}/onlineMeetings/{room.upstream_id}") in [
            (m, p) for m, p, _, _ in graph.calls]

        for call, cap in ((adapter.remove(room, AN), Capability.REMOVE),
                          (adapter.mute(room), Capability.MUTE),
                          (adapter.lock(room), Capability.LOCK),
                          (adapter.end(room), Capability.END),
                          (adapter.participants(room), Capability.PRESENCE)):
            with pytest.raises(Unsupported) as info:
                await call
            assert info.value.capability is cap


async def test_tenant_without_the_rename_setting(graph: FakeGraph) -> None:
    graph.rename_supported = False
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = TeamsAdapter(http_session=http)
        room = await adapter.provision(RoomSpec(class_id="c1", title="t",
                                                settings=settings(graph)))
        meeting = graph.meetings[room.upstream_id]
        assert "allowParticipantsToChangeName" not in meeting.body
        assert meeting.body["lobbyBypassSettings"]["scope"] == "organizer"
        assert room.data["rename_locked"] is False
        meeting.body["allowedPresenters"] = "everyone"
        await adapter.join_url(room, AN)  # restored without the setting it cannot have
        assert meeting.body["allowedPresenters"] == "organizer"


async def test_token_refresh_before_expiry_and_after_401(graph: FakeGraph) -> None:
    clock = Clock()
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = TeamsAdapter(http_session=http, pool=TeamsPool(), clock=clock)
        room = await adapter.provision(RoomSpec(class_id="c1", title="t",
                                                settings=settings(graph)))
        assert graph.token_requests == 1
        # (each step is over a minute later: the meeting is read back each time)
        clock.now += timedelta(seconds=graph.token_lifetime_s - TOKEN_SKEW_S - 5)
        await adapter.join_url(room, AN)
        assert graph.token_requests == 1  # still well before expiry
        clock.now += timedelta(seconds=TOKEN_SKEW_S - 60)  # in the skew margin: renewed
        await adapter.join_url(room, AN)
        assert graph.token_requests == 2
        # Revoked early: the 401 (with WWW-Authenticate) gets one fresh token.
        graph.revoke_tokens()
        clock.now += timedelta(seconds=61)
        await adapter.join_url(room, AN)
        assert graph.token_requests == 3
        assert len([c for c in graph.calls if c[3] == 401]) == 1
        # A wrong secret fails clearly, without the secret in the message.
        with pytest.raises(AdapterError) as info:
            await adapter.provision(RoomSpec(class_id="c2", title="t", settings=settings(
                graph, client_secret="wrong-secret-123")))
        assert info.value.code == "teams_unauthorized"
        assert "wrong-secret-123" not in str(info.value)


async def test_throttling_honours_retry_after(graph: FakeGraph) -> None:
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = TeamsAdapter(http_session=http)
        room = await adapter.provision(RoomSpec(class_id="c1", title="t",
                                                settings=settings(graph)))
        graph.calls.clear()
        graph.fail_next(429, retry_after="1")
        assert await adapter.join_url(room, AN) == room.data["join_url"]
        (_, _, t1, s1), (_, _, t2, s2) = graph.calls
        assert (s1, s2) == (429, 200) and t2 - t1 >= 1.0
        # 503 and 504 are retried the same way
        graph.fail_next(503, retry_after="0")
        graph.fail_next(504, retry_after="0")
        assert await adapter.join_url(room, AN) == room.data["join_url"]
        # a wait longer than a student can be kept waiting fails closed at once
        graph.calls.clear()
        graph.fail_next(429, retry_after="120")
        with pytest.raises(UpstreamUnavailable):
            await adapter.join_url(room, AN)
        assert len(graph.calls) == 1
        # still refused after the last attempt: fails closed
        graph.fail_next(503, retry_after="0", count=3)
        with pytest.raises(UpstreamUnavailable):
            await adapter.join_url(room, AN)
        # the waits of one call are bounded in all, not each
        patient = TeamsAdapter(http_session=http, max_wait_s=1.5)
        graph.calls.clear()
        graph.fail_next(429, retry_after="1", count=2)
        with pytest.raises(UpstreamUnavailable):
            await patient.join_url(room, AN)
        assert [c[3] for c in graph.calls] == [429, 429]
        graph.fail_next(500)  # not a temporary refusal: no retry
        with pytest.raises(UpstreamUnavailable):
            await adapter.join_url(room, AN)


async def test_forbidden_and_not_found_are_clear(graph: FakeGraph) -> None:
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = TeamsAdapter(http_session=http)
        graph.policy_users.clear()  # no application access policy for the organizer
        with pytest.raises(AdapterError) as info:
            await adapter.provision(RoomSpec(class_id="c1", title="t", settings=settings(graph)))
        assert info.value.code == "teams_unauthorized"
        assert "application access policy" in info.value.message
        graph.policy_users.add(ORGANIZER)
        room = await adapter.provision(RoomSpec(class_id="c1", title="t",
                                                settings=settings(graph)))
        del graph.meetings[room.upstream_id]  # deleted in Teams
        with pytest.raises(AdapterError) as info:
            await adapter.join_url(room, AN)
        assert info.value.code == "teams_not_found"


async def test_attendance_reports_with_paging(graph: FakeGraph) -> None:
    roster = [RosterName("s00000000000a", "Nguyễn Văn An", "an.nv@school.example"),
              RosterName("s00000000000b", "Trần Thị Bình", None)]
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = TeamsAdapter(http_session=http)
        room = await adapter.provision(RoomSpec(class_id="c1", title="t",
                                                settings=settings(graph)))
        assert await adapter.attendance(room, roster, set()) == []
        rid = graph.add_report(room.upstream_id, [
            {"name": "An (điện thoại)", "email": "AN.NV@school.example", "tenant": TENANT},
            {"name": "trần  thị bình"},
            {"name": "Người lạ"},
            {"name": "Khách"},
        ])
        graph.calls.clear()
        reports = await adapter.attendance(room, roster, set())
        assert [r.report_id for r in reports] == [rid]
        found = {p.display_name: p.student_id for p in reports[0].present}
        assert found == {"An (điện thoại)": "s00000000000a", "trần  thị bình": "s00000000000b",
                         "Người lạ": None, "Khách": None}  # the organizer is left out
        pages = [p for m, p, _, _ in graph.calls if p.endswith("/attendanceRecords")]
        assert len(pages) == 3  # five records, two a page: followed @odata.nextLink
        assert await adapter.attendance(room, roster, {rid}) == []
        graph.artifacts_granted = False
        with pytest.raises(Unsupported):
            await adapter.attendance(room, roster, set())


# --- through the gateway ------------------------------------------------------------------


async def test_teams_class_through_the_gate(tmp_path: Path, redis_url: str, redis_prefix: str,
                                           graph: FakeGraph) -> None:
    platform = settings(graph)
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=["127.0.0.1/32"]) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        klass, links = await create_class(gw, api, platform)
        cid = klass["id"]
        assert klass["platform"] == {"kind": "teams", "capabilities": []}
        assert SECRET not in json.dumps(klass)
        meeting = next(iter(graph.meetings.values()))
        assert meeting.body["lobbyBypassSettings"] == LOCKED["lobbyBypassSettings"]
        join = f"{graph.base}/l/meetup-join/"

        # A student not (yet) admitted never sees the meeting's link.
        waiting = gw.client()
        r = await waiting.get(f"/j/{links[2]['url'].rsplit('/', 1)[1]}",
                              headers={"Accept": "application/json"}, allow_redirects=False)
        assert r.status == 200 and join not in await r.text()
        r = await waiting.get(f"/j/{links[2]['url'].rsplit('/', 1)[1]}", allow_redirects=False)
        assert join not in await r.text()

        # Admitted students get it, one at a time, through /go.
        for link in links[:2]:
            _, go = await enter(gw, api, cid, link)
            assert go.status == 302 and go.headers["Location"].startswith(join)

        # The platform cannot do these: said so, never a silent no-op.
        res = await action(api, cid, action="remove", student_id=links[0]["student_id"])
        assert res["upstream"] == "unsupported"
        res = await action(api, cid, action="mute_all")
        assert res["_status"] == 409 and res["error"]["code"] == "unsupported_by_platform"

        # A session is over: its attendance report names a stranger.
        graph.add_report(meeting.id, [{"name": links[0]["name"]}, {"name": "Người lạ"}])
        info = await gw.svc.store.get_class(cid)  # type: ignore[union-attr]
        assert info is not None
        unknown = await gw.svc.reconciler.attendance(info)
        assert [p.display_name for p in unknown or []] == ["Người lạ"]
        found = await alerts(api, cid, "intruder_in_room")
        assert [(a["name"], a["source"]) for a in found] == [("Người lạ", "attendance_report")]
        assert await gw.svc.reconciler.attendance(info) == []  # each report is read once

        res = await action(api, cid, action="end")
        assert res["upstream"] == "unsupported"
        # The last session's report comes after the class ended: still read.
        ended = await gw.svc.store.get_class(cid)  # type: ignore[union-attr]
        assert ended is not None and ended.ended
        graph.add_report(meeting.id, [{"name": "Kẻ lạ"}])
        gw.svc.reconciler.attendance_every_s = 0
        await gw.svc.reconciler.sweep()
        names = [a["name"] for a in await alerts(api, cid, "intruder_in_room")]
        assert sorted(names) == ["Kẻ lạ", "Người lạ"]


async def test_teams_failure_fails_closed_with_the_page(tmp_path: Path, redis_url: str,
                                                       redis_prefix: str,
                                                       graph: FakeGraph) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=["127.0.0.1/32"]) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        klass, links = await create_class(gw, api, settings(graph))
        cid = klass["id"]
        graph.fail_next(500)
        _, go = await enter(gw, api, cid, links[0])
        assert go.status == 503
        assert (await go.json())["error"]["code"] == "platform_unreachable"
        # the page a phone sees: the translated message, never the meeting's link
        phone = gw.client()
        status, body = await open_link(phone, links[1])
        await action(api, cid, action="admit", ticket=body["ticket"])
        status, body = await open_link(phone, links[1])
        assert body["status"] == "admitted"
        graph.fail_next(503, retry_after="0", count=3)
        r = await phone.get(body["redirect"], allow_redirects=False,
                            headers={"Accept": "text/html", "Accept-Language": "en"})
        text = await r.text()
        assert r.status == 503 and "cannot be reached" in text
        assert f"{graph.base}/l/" not in text


async def test_teams_token_of_one_school_stays_there(graph: FakeGraph) -> None:
    """Tenant and client ids are not secrets: a class naming them with another secret or
    its own Graph URL never gets the cached token of the school that owns them."""
    other = FakeGraph(TENANT, CLIENT, SECRET, ORGANIZER)
    await other.start()
    try:
        async with guarded_session(LOCAL_PLATFORMS) as http:
            pool = TeamsPool()
            adapter = TeamsAdapter(http_session=http, pool=pool)
            await adapter.provision(RoomSpec(class_id="c1", title="t", settings=settings(graph)))
            assert graph.token_requests == 1
            school_token = graph.bearers[0]
            with pytest.raises(AdapterError) as info:
                await adapter.provision(RoomSpec(class_id="c2", title="t", settings=settings(
                    graph, client_secret="guessed-secret-1")))
            assert info.value.code == "teams_unauthorized"
            # the right ids, secret and login, but another Graph: never the cached token
            with pytest.raises(AdapterError):
                await adapter.provision(RoomSpec(class_id="c3", title="t", settings=settings(
                    graph, graph_url=f"{other.base}/v1.0/")))
            assert other.bearers and school_token not in other.bearers
            assert graph.token_requests == 3  # its own token, and one fresh after the 401
    finally:
        await other.stop()
