"""Google Meet: settings, the JWT grant, retries, and the adapter against a local
implementation of the documented Meet REST API v2 (tests/fakes/meet_server.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
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
from meeting_adapters.egress import EgressPolicy, guarded_session
from meeting_adapters.meet import (
    DIRECTORY_SCOPES,
    MEET_SCOPES,
    MeetAdapter,
    MeetPool,
    jwt_assertion,
    parse_participant,
    retry_delay,
    space_body,
)
from tests.fakes.meet_server import DIRECTORY_SCOPE, FakeMeet, new_service_account

LOCAL_PLATFORMS = EgressPolicy.from_settings(["127.0.0.1/32"])
ORGANIZER = "giaovien@school.example"
KEY, PUBLIC = new_service_account()
AN = Participant(student_id="s23456789abcd", display_name="Nguyễn Văn An", role="student",
                 ticket="t1")


def settings(fake: FakeMeet | None = None, **extra: Any) -> dict[str, Any]:
    base = fake.base if fake is not None else "https://x.example"
    return {"kind": "google_meet", "service_account_key": json.dumps(KEY),
            "organizer": ORGANIZER, "api_url": f"{base}/v2/", "token_url": f"{base}/token",
            "directory_url": f"{base}/directory/v1/", **extra}


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class Sleeps:
    """Records the pauses asked for (the time itself is not the subject here)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, s: float) -> None:
        self.delays.append(s)


# --- pure ------------------------------------------------------------------------------------


def test_space_body() -> None:
    assert space_body(True) == {"config": {"accessType": "RESTRICTED",
                                           "entryPointAccess": "CREATOR_APP_ONLY"}}
    assert space_body(False)["config"] == {"accessType": "RESTRICTED",
                                           "entryPointAccess": "ALL"}


def test_jwt_assertion_claims() -> None:
    now = 1_795_392_000.0
    token = jwt_assertion(KEY, ORGANIZER, MEET_SCOPES, "https://oauth2.googleapis.com/token",
                          now)
    claims = jwt.decode(token, PUBLIC, algorithms=["RS256"],
                        audience="https://oauth2.googleapis.com/token",
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == KEY["client_email"] and claims["sub"] == ORGANIZER
    assert claims["scope"].split() == list(MEET_SCOPES)
    assert claims["iat"] == int(now) - 30 and claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT",
                                                "kid": KEY["private_key_id"]}


def test_retry_delay() -> None:
    assert [retry_delay(n, None) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(5, None) == 8.0 and retry_delay(6, None) is None
    assert retry_delay(1, "3") == 3.0
    assert retry_delay(1, "30") is None  # longer than we wait: fail closed
    assert retry_delay(2, "Wed, 21 Oct 2026 07:28:00 GMT") == 1.0


def test_parse_participant() -> None:
    p = parse_participant({"name": "conferenceRecords/a/participants/b",
                           "signedinUser": {"user": "users/123", "displayName": "An"},
                           "earliestStartTime": "2026-12-04T10:00:00.5Z"})
    assert p is not None and p.kind == "signedin" and p.user == "users/123"
    assert p.joined_at == datetime(2026, 12, 4, 10, 0, 0, 500000, tzinfo=UTC)
    anon = parse_participant({"name": "x", "anonymousUser": {"displayName": "Khách"}})
    assert anon is not None and anon.kind == "anonymous" and anon.user == ""
    phone = parse_participant({"name": "y", "phoneUser": {"displayName": "+84 *** 12"}})
    assert phone is not None and phone.kind == "phone"
    assert parse_participant({"signedinUser": {}}) is None


def test_accounts_identify_students_names_do_not() -> None:
    from gateway.presence import find_intruders, identify_accounts
    from meeting_adapters import Present

    people = [Present("p1", "An", None, None, account="an@school.example"),
              Present("p2", "Bình", None, None),  # a name alone
              Present("p3", "Cường", None, None, account="AN@school.example")]
    ids = identify_accounts(people, {"an@school.example": "sA", "binh@school.example": "sB"})
    assert ids == {"p1": "sA", "p3": "sA"}
    # the same account twice: both match the roster line (Meet lists one row per
    # participant; a second device of an admitted student is not a stranger)
    assert [p.upstream_id for p in find_intruders(people, ["sA", "sB"], ids)] == ["p2"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"service_account_key": None}, "platform.service_account_key"),
        ({"service_account_key": "{not json"}, "platform.service_account_key"),
        ({"service_account_key": json.dumps({**KEY, "type": "authorized_user"})},
         "platform.service_account_key"),
        ({"service_account_key": json.dumps({**KEY, "private_key": "-----BEGIN nothing"})},
         "platform.service_account_key"),
        ({"organizer": "not-an-address"}, "platform.organizer"),
        ({"uses_meet_sdk": "yes"}, "platform.uses_meet_sdk"),
        ({"api_url": "ftp://meet.example/"}, "platform.api_url"),
        ({"meeting_code": "abc"}, "platform.meeting_code"),
    ],
)
def test_settings_errors_name_the_field(patch: dict[str, Any], field: str) -> None:
    raw = {k: v for k, v in {**settings(), **patch}.items() if v is not None}
    with pytest.raises(InvalidSettings) as info:
        MeetAdapter.validate_settings(raw)
    assert info.value.field == field
    assert KEY["private_key"] not in str(info.value)


def test_settings_keep_only_the_key_parts_and_redact() -> None:
    s = MeetAdapter.validate_settings({**settings(), "organizer": "GiaoVien@School.Example",
                                       "service_account_key": KEY})
    kept = json.loads(s["service_account_key"])
    assert set(kept) == {"type", "client_email", "private_key", "private_key_id", "client_id"}
    assert MeetAdapter.validate_settings(s) == s  # stored settings validate again
    assert s["organizer"] == ORGANIZER and s["uses_meet_sdk"] is False
    assert MeetAdapter.redact(s)["service_account_key"] == "***"
    assert MeetAdapter.capabilities == {Capability.END, Capability.PRESENCE}
    assert isinstance(MeetAdapter(), MeetingAdapter)
    defaults = MeetAdapter.validate_settings({"kind": "google_meet", "organizer": ORGANIZER,
                                              "service_account_key": KEY})
    assert defaults["api_url"] == "https://meet.googleapis.com/v2/"
    assert defaults["token_url"] == "https://oauth2.googleapis.com/token"


# --- against the local Meet -----------------------------------------------------------------


@pytest.fixture
async def meet() -> AsyncIterator[FakeMeet]:
    fake = FakeMeet(KEY, PUBLIC, delegated={ORGANIZER: {*MEET_SCOPES, DIRECTORY_SCOPE}},
                    directory={"111": "an@school.example", "999": ORGANIZER})
    await fake.start()
    yield fake
    await fake.stop()


async def test_space_config_link_end(meet: FakeMeet) -> None:
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = MeetAdapter(http_session=http, pool=MeetPool())
        room = await adapter.provision(RoomSpec("c1", "Toán", settings(meet,
                                                                       uses_meet_sdk=True)))
        space = meet.spaces[room.upstream_id]
        assert space["config"] == {"accessType": "RESTRICTED",
                                   "entryPointAccess": "CREATOR_APP_ONLY"}
        assert await adapter.join_url(room, AN) == space["meetingUri"]
        # loosened in Meet: tightened again before the link is handed out
        space["config"]["accessType"] = "OPEN"
        assert await adapter.join_url(room, AN) == space["meetingUri"]
        assert space["config"]["accessType"] == "RESTRICTED"
        assert meet.token_requests == 1  # one token, reused
        claims = meet.assertions[0]
        assert claims["sub"] == ORGANIZER and set(claims["scope"].split()) == set(MEET_SCOPES)

        meet.start_conference(room.upstream_id)
        await adapter.end(room)
        assert "activeConference" not in space
        await adapter.end(room)  # nothing running: not an error
        for call in (adapter.remove(room, AN), adapter.mute(room), adapter.lock(room)):
            with pytest.raises(Unsupported):
                await call


async def test_presence_pages_and_accounts(meet: FakeMeet) -> None:
    meet.page_size_cap = 2  # the server pages at two rows, whatever the client asks
    async with guarded_session(LOCAL_PLATFORMS) as http:
        pool = MeetPool()
        adapter = MeetAdapter(http_session=http, pool=pool)
        room = await adapter.provision(RoomSpec("c1", "Toán", settings(meet)))
        assert await adapter.participants(room) == []  # no conference yet
        for _ in range(3):  # older, ended conferences of the same space
            meet.start_conference(room.upstream_id).end = "2026-01-01T00:00:00Z"
        conf = meet.start_conference(room.upstream_id)
        meet.join(conf, signed_in=("999", "Cô giáo"))
        meet.join(conf, signed_in=("111", "An"))
        meet.join(conf, anonymous="Khách")
        meet.join(conf, phone="+84 *** *** 12")
        gone = meet.join(conf, anonymous="Đã ra")
        meet.leave(gone)
        meet.join(conf, signed_in=("555", "Người ngoài"))
        present = await adapter.participants(room)
        assert [(p.display_name, p.account) for p in present] == [
            ("An", "an@school.example"), ("Khách", None), ("+84 *** *** 12", None),
            ("Người ngoài", None)]
        assert all(p.student_id is None and p.joined_at is not None for p in present)
        pages = [q for m, q in meet.calls if "/participants" in q]
        assert len(pages) == 3 and "pageToken=2" in pages[1] and "pageToken=4" in pages[2]
        # the directory answers are cached: a second sweep asks only Meet
        before = len([q for _, q in meet.calls if "/directory/" in q])
        await adapter.participants(room)
        assert len([q for _, q in meet.calls if "/directory/" in q]) == before
        scopes = {c["scope"] for c in meet.assertions}
        assert scopes == {" ".join(MEET_SCOPES), " ".join(DIRECTORY_SCOPES)}


async def test_directory_not_granted_leaves_participants_unknown(meet: FakeMeet) -> None:
    meet.delegated[ORGANIZER] = set(MEET_SCOPES)
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = MeetAdapter(http_session=http, pool=MeetPool())
        room = await adapter.provision(RoomSpec("c1", "Toán", settings(meet)))
        conf = meet.start_conference(room.upstream_id)
        meet.join(conf, signed_in=("111", "An"))
        meet.join(conf, anonymous="Khách")
        # the directory token itself is refused: Meet still answers, nobody is named
        present = await adapter.participants(room)
        assert [(p.display_name, p.account) for p in present] == [("An", None),
                                                                  ("Khách", None)]
        asked = meet.token_requests
        await adapter.participants(room)  # the refusal is remembered
        assert meet.token_requests == asked


async def test_token_refresh_on_expiry_and_on_401(meet: FakeMeet) -> None:
    clock = Clock()
    meet.now = lambda: clock.now.timestamp()  # one clock for both sides
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = MeetAdapter(http_session=http, pool=MeetPool(), clock=clock)
        room = await adapter.provision(RoomSpec("c1", "Toán", settings(meet)))
        assert meet.token_requests == 1
        clock.now += timedelta(seconds=3599 - 180)
        await adapter.join_url(room, AN)
        assert meet.token_requests == 1  # still well before expiry
        clock.now += timedelta(seconds=100)  # inside the refresh margin
        await adapter.join_url(room, AN)
        assert meet.token_requests == 2
        meet.expire_tokens()  # revoked early: 401 with WWW-Authenticate, one new token
        await adapter.join_url(room, AN)
        assert meet.token_requests == 3
        # a wrong key never gets a token
        other, _ = new_service_account(KEY["client_email"])
        bad = {**room.data, "service_account_key": json.dumps(
            {k: other[k] for k in ("client_email", "private_key", "private_key_id")})}
        with pytest.raises(AdapterError) as info:
            await adapter.join_url(type(room)(room.class_id, room.kind, room.upstream_id,
                                              bad), AN)
        assert info.value.code == "google_meet_failed"  # invalid_grant: bad signature
        assert "BEGIN" not in str(info.value)


async def test_429_backs_off_then_succeeds(meet: FakeMeet) -> None:
    sleeps = Sleeps()
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = MeetAdapter(http_session=http, pool=MeetPool(), sleep=sleeps)
        room = await adapter.provision(RoomSpec("c1", "Toán", settings(meet)))
        meet.fail_next = [(429, {}), (429, {"Retry-After": "3"}), (503, {})]
        assert await adapter.join_url(room, AN) == meet.spaces[room.upstream_id]["meetingUri"]
        assert len(sleeps.delays) == 3
        assert 0.5 <= sleeps.delays[0] < 0.7 and sleeps.delays[1] == 3.0
        assert 2.0 <= sleeps.delays[2] < 2.2
        # a Retry-After beyond what we wait for: fail closed at once
        meet.fail_next = [(429, {"Retry-After": "120"})]
        with pytest.raises(UpstreamUnavailable):
            await adapter.join_url(room, AN)


async def test_5xx_fails_closed_after_bounded_retries(meet: FakeMeet) -> None:
    sleeps = Sleeps()
    async with guarded_session(LOCAL_PLATFORMS) as http:
        adapter = MeetAdapter(http_session=http, pool=MeetPool(), sleep=sleeps)
        room = await adapter.provision(RoomSpec("c1", "Toán", settings(meet)))
        meet.fail_next = [(503, {})] * 10
        with pytest.raises(UpstreamUnavailable):
            await adapter.join_url(room, AN)
        assert len(sleeps.delays) == 3  # three retries, then closed
        meet.fail_next = [(403, {})]
        with pytest.raises(AdapterError) as info:
            await adapter.join_url(room, AN)
        assert info.value.code == "google_meet_forbidden"
        meet.fail_next = []
        gone = type(room)(room.class_id, room.kind, "spaces/nope",
                          {**room.data, "space": "spaces/nope"})
        with pytest.raises(AdapterError) as info:
            await adapter.join_url(gone, AN)
        assert info.value.code == "google_meet_not_found"


# --- through the real gateway ----------------------------------------------------------------


ROSTER_WITH_ACCOUNTS = [
    {"name": "Nguyễn Văn An", "external_id": "HS001", "email": "An@School.Example"},
    {"name": "Trần Thị Bình", "external_id": "HS002", "email": "binh@school.example"},
    {"name": "Lê Hoàng Cường", "external_id": "HS003"},
]


async def gateway_class(gw: Any, api: Any, meet: FakeMeet, **extra: Any
                        ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from .gateway_flow import class_with

    r = await api.post("/api/v1/classes", json=class_with(settings(meet, **extra)))
    assert r.status == 201, await r.text()
    klass: dict[str, Any] = await r.json()
    r = await api.put(f"/api/v1/classes/{klass['id']}/roster", json=ROSTER_WITH_ACCOUNTS)
    assert r.status == 200, await r.text()
    stored = {s["name"]: s["email"] for s in (await r.json())["students"]}
    assert stored["Nguyễn Văn An"] == "an@school.example" and stored["Lê Hoàng Cường"] is None
    r = await api.post(f"/api/v1/classes/{klass['id']}/links", json={})
    assert r.status == 200, await r.text()
    return klass, (await r.json())["links"]


async def test_meet_class_link_through_the_gate_and_intruders(
        tmp_path: Any, redis_url: str, redis_prefix: str, meet: FakeMeet) -> None:
    from tests.gateway.helpers import audit_events, open_link, running_gateway

    from .gateway_flow import alerts, enter

    meet.directory.update({"222": "binh@school.example", "333": "cuong@school.example"})
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=["127.0.0.1/32"]) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        klass, links = await gateway_class(gw, api, meet)
        cid = klass["id"]
        assert klass["platform"]["capabilities"] == ["end", "presence"]
        assert KEY["private_key"][40:80] not in json.dumps(klass)
        (space,) = meet.spaces.values()
        assert space["config"] == {"accessType": "RESTRICTED", "entryPointAccess": "ALL"}
        # the class page warns that any entry point may be used (no Meet SDK app)
        page = await api.get(f"/classes/{cid}", headers={"Accept-Language": "en"})
        assert "meet.google.com" in await page.text()
        roster_page = await (await api.get(f"/classes/{cid}/roster")).text()
        assert "an@school.example" in roster_page  # the teacher sees the accounts on file
        # the class form has the Meet fields
        form = await (await api.get("/classes/new", headers={"Accept-Language": "vi"})).text()
        assert '<textarea id="pf-google_meet-service_account_key"' in form
        assert 'name="platform.uses_meet_sdk" data-field="platform.uses_meet_sdk" ' \
            'type="checkbox"' in form

        by_name = {link["name"]: link for link in links}
        # An is admitted through the gate: /go hands out the real link
        _, go = await enter(gw, api, cid, by_name["Nguyễn Văn An"])
        assert go.status == 302 and go.headers["Location"] == space["meetingUri"]
        # the link is a one-time step: used again, it gives nothing
        again = await gw.client().get(go.url.path, allow_redirects=False)
        assert again.status in (403, 404) and space["meetingUri"] not in await again.text()
        # Bình only waits: nothing she sees carries the meeting link
        phone = gw.client()
        status, body = await open_link(phone, by_name["Trần Thị Bình"])
        assert status == 200 and body["status"] == "waiting"
        assert space["meetingUri"] not in json.dumps(body)
        assert "redirect" not in body

        # the room: the organizer, An, and people the gate did not admit
        conf = meet.start_conference(space["name"])
        meet.join(conf, signed_in=("999", "Cô Lan"))
        meet.join(conf, signed_in=("111", "Nguyễn Văn An"))
        meet.join(conf, signed_in=("222", "Trần Thị Bình"))  # on the roster, not admitted
        meet.join(conf, signed_in=("333", "Lê Hoàng Cường"))  # no school account on file
        meet.join(conf, anonymous="Nguyễn Văn An")  # a name proves nothing
        meet.join(conf, signed_in=("555", "Người ngoài"))  # outside the directory
        info = await gw.svc.store.get_class(cid)  # type: ignore[union-attr]
        assert info is not None
        intruders = await gw.svc.reconciler.reconcile(info)
        assert intruders is not None
        assert sorted(p.display_name for p in intruders) == sorted(
            ["Trần Thị Bình", "Lê Hoàng Cường", "Nguyễn Văn An", "Người ngoài"])
        assert [p.account for p in intruders if p.display_name == "Nguyễn Văn An"] == [None]
        found = await alerts(api, cid, "intruder_in_room")
        assert len(found) == 4 and {a["action"] for a in found} == {"flagged"}
        it = gw.api(await gw.staff_user("it.hung", role="it"))
        recorded = await audit_events(it, at_least=4,
                                      **{"class": cid, "type": "presence.intruder"})
        assert len(recorded) == 4
        assert "@" not in json.dumps(found)  # accounts stay out of alerts

        # end: the conference ends upstream
        r = await api.post(f"/api/v1/classes/{cid}/actions", json={"action": "end"})
        assert (await r.json())["upstream"] == "done"
        assert conf.end is not None


async def test_meet_down_fails_closed_at_the_gate(
        tmp_path: Any, redis_url: str, redis_prefix: str, meet: FakeMeet) -> None:
    from tests.gateway.helpers import running_gateway

    from .gateway_flow import enter

    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=["127.0.0.1/32"]) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        klass, links = await gateway_class(gw, api, meet, uses_meet_sdk=True)
        (space,) = meet.spaces.values()
        assert space["config"]["entryPointAccess"] == "CREATOR_APP_ONLY"
        page = await api.get(f"/classes/{klass['id']}", headers={"Accept-Language": "en"})
        assert page.status == 200 and "meet.google.com" not in await page.text()
        meet.fail_next = [(503, {})] * 10
        _, go = await enter(gw, api, klass["id"], links[0])
        assert go.status == 503
        body = await go.json()
        assert body["error"]["code"] == "platform_unreachable"
        assert space["meetingUri"] not in json.dumps(body)
        # an organizer the delegation does not cover gets no token: refused at creation
        meet.fail_next = []
        from .gateway_flow import class_with

        r = await api.post("/api/v1/classes", json=class_with(settings(
            meet, organizer="hieutruong@school.example")))
        assert r.status == 502 and (await r.json())["error"]["code"] == "platform_refused"
