"""BigBlueButton, Zoom and Jitsi end to end through a real gateway: class creation ->
admission -> /go -> the student's personal upstream credential, then the platform's
callbacks and presence, against the local servers in tests/fakes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import aiohttp
import jwt
import pytest

from tests.fakes.bbb import FakeBigBlueButton
from tests.fakes.zoom import FakeZoom
from tests.gateway.helpers import running_gateway

from .gateway_flow import action, alerts, create_class, enter

# The fakes and Janus of these tests listen on loopback: the operator setting allows it.
LOCAL_PLATFORMS = ["127.0.0.1/32"]

BBB_SECRET = "0123456789abcdef0123456789abcdef"
ZOOM_SECRET = "zoom-webhook-secret-token"
JITSI_SECRET = "a-long-shared-app-secret-of-32-chars!!"


@pytest.fixture
async def bbb() -> AsyncIterator[FakeBigBlueButton]:
    fake = FakeBigBlueButton(BBB_SECRET)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def zoom() -> AsyncIterator[FakeZoom]:
    fake = FakeZoom("acc-1", "client-1", "client-secret-1", ZOOM_SECRET)
    await fake.start()
    yield fake
    await fake.stop()


async def wait_for_alert(api: aiohttp.ClientSession, cid: str, kind: str) -> list[dict[str, Any]]:
    for _ in range(100):
        found = await alerts(api, cid, kind)
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {kind} alert")


# --- BigBlueButton -------------------------------------------------------------------------


async def test_bbb_class_to_signed_join(tmp_path: Path, redis_url: str, redis_prefix: str,
                                        bbb: FakeBigBlueButton) -> None:
    platform = {"kind": "bigbluebutton", "api_url": bbb.base + "/bigbluebutton/api",
                "secret": BBB_SECRET}
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=LOCAL_PLATFORMS) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        klass, links = await create_class(gw, api, platform)
        cid = klass["id"]
        assert klass["platform"]["capabilities"] == ["end", "enforced_entry", "presence"]
        assert BBB_SECRET not in json.dumps(klass)
        phone, go = await enter(gw, api, cid, links[0])
        assert go.status == 302
        location = go.headers["Location"]
        q = dict(parse_qsl(urlsplit(location).query))
        assert q["fullName"] == links[0]["name"] and q["userID"] == links[0]["student_id"]
        assert q["role"] == "VIEWER"
        async with aiohttp.ClientSession() as browser:
            r = await browser.get(location, allow_redirects=False)
            assert r.status == 302  # BBB accepted the signed join

        # the teacher enters as moderator
        r = await api.post(f"/api/v1/classes/{cid}/host_join")
        assert r.status == 200
        assert dict(parse_qsl(urlsplit((await r.json())["url"]).query))["role"] == "MODERATOR"

        # the platform cannot do these: a clear 409, never a silent no-op
        res = await action(api, cid, action="mute_all")
        assert res["_status"] == 409 and res["error"]["code"] == "unsupported_by_platform"
        res = await action(api, cid, action="lock")
        assert res["upstream"] == "unsupported"

        # presence: a viewer nobody admitted is flagged
        meeting = next(iter(bbb.meetings.values()))
        meeting.attendees["stranger"] = {"fullName": "Người lạ", "role": "VIEWER",
                                         "internal": "w_x"}
        info = await gw.svc.store.get_class(cid)  # type: ignore[union-attr]
        assert info is not None
        intruders = await gw.svc.reconciler.reconcile(info)
        assert [p.display_name for p in intruders] == ["Người lạ"]
        found = await alerts(api, cid, "intruder_in_room")
        assert found[0]["action"] == "flagged" and found[0]["name"] == "Người lạ"
        # the hook was registered for this class's callback URL
        assert any(h["callbackURL"].endswith(f"/hooks/bbb/{cid}") for h in bbb.hooks.values())

        # a signed callback is accepted; a forged one is refused
        url = f"http://classguard.test/hooks/bbb/{cid}"
        event = json.dumps([{"data": {"type": "event", "id": "user-joined", "attributes": {
            "user": {"external-user-id": "w_evil", "name": "Kẻ lạ", "role": "VIEWER"}}}}])
        form = {"event": event, "timestamp": "1795392000000"}
        body = urlencode(form)
        sig = hashlib.sha1((url + "&".join(f"{k}={v}" for k, v in form.items()) + BBB_SECRET)
                           .encode()).hexdigest()
        hdr = {"Content-Type": "application/x-www-form-urlencoded"}
        anon = gw.client()
        r = await anon.post(f"/hooks/bbb/{cid}?checksum={'0' * 40}", data=body, headers=hdr)
        assert r.status == 401
        r = await anon.post(f"/hooks/bbb/{cid}?checksum={sig}", data=body, headers=hdr)
        assert r.status == 200
        await wait_for_alert(api, cid, "intruder_in_room")
        for _ in range(100):
            if any(a["name"] == "Kẻ lạ" for a in await alerts(api, cid, "intruder_in_room")):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the webhook did not raise an alert")

        res = await action(api, cid, action="end")
        assert res["upstream"] == "done" and not bbb.meetings


async def test_platform_down_fails_closed(tmp_path: Path, redis_url: str, redis_prefix: str,
                                          bbb: FakeBigBlueButton) -> None:
    platform = {"kind": "bigbluebutton", "api_url": bbb.base + "/bigbluebutton/api",
                "secret": BBB_SECRET}
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=LOCAL_PLATFORMS) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        klass, links = await create_class(gw, api, platform)
        await bbb.stop()
        _, go = await enter(gw, api, klass["id"], links[0])
        assert go.status == 503
        assert (await go.json())["error"]["code"] == "platform_unreachable"
        metrics = await (await gw.client().get("/metrics")).text()
        assert 'classguard_upstream_errors_total{kind="bigbluebutton"}' in metrics
        # the reconciler retries with backoff, then tells the control room
        rec = gw.svc.reconciler
        rec.retry_base_s = 0.01
        info = await gw.svc.store.get_class(klass["id"])  # type: ignore[union-attr]
        assert await rec.reconcile(info) is None
        assert await rec.reconcile(info) is None
        assert await alerts(api, klass["id"], "platform_unreachable")
        # a bad setting is refused at creation, naming the field
        r = await api.post("/api/v1/classes", json={**(await _body(platform)),
                                                    "platform": {**platform, "secret": "x"}})
        assert r.status == 400 and (await r.json())["error"]["field"] == "platform.secret"


async def _body(platform: dict[str, Any]) -> dict[str, Any]:
    from .gateway_flow import class_with

    return class_with(platform)


# --- Zoom ------------------------------------------------------------------------------------


async def test_zoom_class_to_registrant_link(tmp_path: Path, redis_url: str, redis_prefix: str,
                                             zoom: FakeZoom) -> None:
    platform = {"kind": "zoom", "account_id": zoom.account_id, "client_id": zoom.client_id,
                "client_secret": zoom.client_secret, "host_user": zoom.host_user,
                "registrant_email_domain": "students.example",
                "webhook_secret_token": ZOOM_SECRET, "api_url": f"{zoom.base}/v2/",
                "oauth_url": f"{zoom.base}/oauth/token"}
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=LOCAL_PLATFORMS) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        klass, links = await create_class(gw, api, platform)
        cid = klass["id"]
        assert klass["platform"]["capabilities"] == ["end", "enforced_entry"]
        assert "client-secret-1" not in json.dumps(klass)
        _, go = await enter(gw, api, cid, links[0])
        assert go.status == 302
        personal = go.headers["Location"]
        async with aiohttp.ClientSession() as browser:
            r = await browser.get(personal)
            assert r.status == 200 and links[0]["name"] in await r.text()

            # the Zoom webhook: URL validation, signatures, presence
            mid = next(iter(zoom.meetings))
            status, answer = await zoom.post(gw.url(f"/hooks/zoom/{cid}"), {
                "event": "endpoint.url_validation", "payload": {"plainToken": "abc"}})
            assert status == 200 and answer["plainToken"] == "abc"
            stranger = zoom.participant_event(mid, email="x@gmail.com", name="Người lạ",
                                              event="participant_joined_waiting_room")
            body, headers = zoom.signed(stranger)
            headers["x-zm-signature"] = "v0=" + "0" * 64
            r = await browser.post(gw.url(f"/hooks/zoom/{cid}"), data=body, headers=headers)
            assert r.status == 401
            old = {**zoom.signed(stranger, ts=1_000_000)[1]}
            r = await browser.post(gw.url(f"/hooks/zoom/{cid}"), data=body, headers=old)
            assert r.status == 401  # stale timestamp
            status, _ = await zoom.post(gw.url(f"/hooks/zoom/{cid}"), stranger)
            assert status == 200
            found = await wait_for_alert(api, cid, "intruder_in_room")
            assert found[0]["name"] == "Người lạ"
            student = zoom.participant_event(
                mid, email=f"{links[0]['student_id']}@students.example", name=links[0]["name"])
            status, _ = await zoom.post(gw.url(f"/hooks/zoom/{cid}"), student)
            assert status == 200

            # remove: Zoom cancels the registration but cannot kick: said so, not hidden
            res = await action(api, cid, action="remove", student_id=links[0]["student_id"])
            assert res["upstream"] == "unsupported"
            assert (await browser.get(personal)).status == 403
        await asyncio.sleep(0.05)
        names = [a["name"] for a in await alerts(api, cid, "intruder_in_room")]
        assert links[0]["name"] not in names


# --- Jitsi -----------------------------------------------------------------------------------


async def test_jitsi_class_to_room_token(tmp_path: Path, redis_url: str,
                                         redis_prefix: str) -> None:
    platform = {"kind": "jitsi", "base_url": "https://meet.example.org/", "app_id": "classguard",
                "app_secret": JITSI_SECRET}
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=LOCAL_PLATFORMS) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        klass, links = await create_class(gw, api, platform)
        cid = klass["id"]
        assert klass["platform"]["capabilities"] == ["enforced_entry", "single_use_credential"]
        _, go = await enter(gw, api, cid, links[0])
        assert go.status == 302
        loc = urlsplit(go.headers["Location"])
        token = parse_qs(loc.query)["jwt"][0]
        claims = jwt.decode(token, JITSI_SECRET, algorithms=["HS256"], audience="classguard")
        assert claims["room"] == loc.path.strip("/")
        assert claims["context"]["user"] == {"id": links[0]["student_id"],
                                             "name": links[0]["name"], "moderator": False}
        assert claims["exp"] - claims["iat"] == 60
        r = await api.post(f"/api/v1/classes/{cid}/host_join")
        host = jwt.decode(parse_qs(urlsplit((await r.json())["url"]).query)["jwt"][0],
                          JITSI_SECRET, algorithms=["HS256"], audience="classguard")
        assert host["moderator"] is True
        res = await action(api, cid, action="remove", student_id=links[0]["student_id"])
        assert res["upstream"] == "unsupported"  # no kick endpoint configured
