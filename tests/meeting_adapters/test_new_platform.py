"""Adding a platform is one module and one registry line: a small platform defined here,
with presence, a webhook, a connection pool, class form fields and a settings warning,
works through the real gateway (class creation, the gate's links, the presence
reconciler, its webhook route, its pool, the new-class form, the class page) without any
change to ``gateway/``.

The platform, "Phòng học" (``phonghoc``), is a local HTTP server: ``POST /rooms``
creates a room, ``GET /rooms/<id>/people`` lists who is inside, and entry links are
signed with the room's secret. It posts ``{"event": "joined", "id", "name"}`` to the
class's webhook, signed with the class's hook secret (``X-Phonghoc-Signature``), and
checks the webhook with a ``{"event": "ping", "challenge": ...}`` first.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, quote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from meeting_adapters import (
    AdapterBase,
    AdapterError,
    Capability,
    Feature,
    FormField,
    HookEvent,
    HookEventKind,
    HookMalformed,
    HookRefused,
    HookRequest,
    HookResult,
    Participant,
    Present,
    Room,
    RoomSpec,
    Unsupported,
    Webhook,
    registry,
)
from meeting_adapters._http import check_keys, fetch, json_bounded, mask, req_secret, req_url
from tests.gateway.helpers import running_gateway

from .gateway_flow import alerts, create_class, enter

if TYPE_CHECKING:
    from meeting_adapters.egress import EgressPolicy

KIND = "phonghoc"
HOOK_SECRET = "phonghoc-hook-secret"
# Not in the catalogue: the page shows the key itself, which is what the test looks for.
WARN_PLAIN_HTTP = "platform.phonghoc.warn_plain_http"
LOCAL_PLATFORMS = ["127.0.0.1/32"]


def sign(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


# --- the platform module (what meeting_adapters/phonghoc.py would hold) ------------------


class PhonghocPool:
    """A process's shared state of the platform (here: how many calls went out)."""

    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


OPENED: list[PhonghocPool] = []


class PhonghocAdapter(AdapterBase):
    kind: ClassVar[str] = KIND
    egress_fields: ClassVar[tuple[str, ...]] = ("api_url",)
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.ENFORCED_ENTRY, Capability.PRESENCE})
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.WEBHOOKS, Feature.POOL})
    webhooks: ClassVar[tuple[Webhook, ...]] = (
        Webhook(name=KIND, path=f"/hooks/{KIND}/{{class_id}}"),)
    form_fields: ClassVar[tuple[FormField, ...]] = (
        FormField("api_url", "url", required=True, placeholder="https://phonghoc.example/api"),
        FormField("hook_secret", "password", required=True),
    )

    def __init__(self, *, http_session: aiohttp.ClientSession | None = None,
                 clock: Any = None, pool: PhonghocPool | None = None) -> None:
        self._http = http_session
        self._pool = pool

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(settings, KIND, ("api_url", "hook_secret"))
        url = req_url(settings, "api_url")
        assert url is not None
        return {"kind": KIND, "api_url": url.rstrip("/"),
                "hook_secret": req_secret(settings, "hook_secret", min_len=16)}

    @classmethod
    def redact(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        return mask(settings, ("hook_secret",))

    @classmethod
    def settings_warnings(cls, settings: Mapping[str, Any]) -> list[str]:
        return [WARN_PLAIN_HTTP] if str(settings.get("api_url", "")).startswith("http:") else []

    @classmethod
    def open_pool(cls, egress: EgressPolicy) -> PhonghocPool:
        OPENED.append(PhonghocPool())
        return OPENED[-1]

    async def _call(self, method: str, url: str, **kw: Any) -> Any:
        if self._pool is not None:
            self._pool.calls += 1
        answer = await fetch(self._http, KIND, method, url, **kw)
        if answer.status != 200:
            raise AdapterError("phonghoc_failed", f"phonghoc answered {answer.status}")
        return answer.json()

    async def provision(self, spec: RoomSpec) -> Room:
        s = self.validate_settings(spec.settings)
        made = await self._call("POST", f"{s['api_url']}/rooms", json={"title": spec.title})
        return Room(class_id=spec.class_id, kind=KIND, upstream_id=str(made["id"]),
                    data={"api_url": s["api_url"], "secret": made["secret"],
                          "hook_secret": s["hook_secret"]})

    async def join_url(self, room: Room, participant: Participant) -> str:
        who = quote(participant.student_id, safe="")
        sig = sign(str(room.data["secret"]), f"{room.upstream_id}:{who}".encode())
        return f"{room.data['api_url']}/rooms/{room.upstream_id}?who={who}&sig={sig}"

    async def participants(self, room: Room) -> list[Present]:
        people = await self._call("GET", f"{room.data['api_url']}/rooms/{room.upstream_id}/people")
        return [Present(upstream_id=p["id"], display_name=p["name"], student_id=p.get("who"),
                        joined_at=None) for p in people]

    async def remove(self, room: Room, participant: Participant) -> None:
        raise Unsupported(KIND, Capability.REMOVE)

    async def mute(self, room: Room, participant: Participant | None = None) -> None:
        raise Unsupported(KIND, Capability.MUTE)

    async def lock(self, room: Room, locked: bool = True) -> None:
        raise Unsupported(KIND, Capability.LOCK)

    async def end(self, room: Room) -> None:
        raise Unsupported(KIND, Capability.END)

    def read_webhook(self, hook: Webhook, request: HookRequest,
                     room: Room | None) -> HookResult:
        assert room is not None  # a per-class hook
        got = request.headers.get("X-Phonghoc-Signature", "")
        if not hmac.compare_digest(sign(str(room.data["hook_secret"]), request.body), got):
            raise HookRefused("bad signature")
        try:
            event = json_bounded(request.body)
        except ValueError:
            raise HookMalformed("expected JSON") from None
        if event.get("event") == "ping":
            return HookResult(reply={"challenge": event.get("challenge")})
        if event.get("event") == "joined":
            p = Present(upstream_id=str(event["id"]), display_name=str(event["name"]),
                        student_id=event.get("who"), joined_at=None)
            return HookResult(events=(HookEvent(HookEventKind.JOINED, p),))
        return HookResult()


# --- the platform's server ----------------------------------------------------------------


class Phonghoc:
    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, Any]] = {}
        self.server: TestServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/rooms", self._create)
        app.router.add_get("/rooms/{id}/people", self._people)
        app.router.add_get("/rooms/{id}", self._enter)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def _create(self, request: web.Request) -> web.Response:
        rid = str(len(self.rooms) + 1)
        self.rooms[rid] = {"secret": secrets.token_hex(16), "people": []}
        return web.json_response({"id": rid, "secret": self.rooms[rid]["secret"]})

    async def _people(self, request: web.Request) -> web.Response:
        return web.json_response(self.rooms[request.match_info["id"]]["people"])

    async def _enter(self, request: web.Request) -> web.Response:
        """A browser following a link: let in when the link is signed for this room."""
        rid = request.match_info["id"]
        room = self.rooms[rid]
        who = request.query.get("who", "")
        expected = sign(room["secret"], f"{rid}:{quote(who, safe='')}".encode())
        if not hmac.compare_digest(expected, request.query.get("sig", "")):
            return web.json_response({"error": "not signed"}, status=403)
        room["people"].append({"id": f"u{len(room['people']) + 1}", "name": who, "who": who})
        return web.json_response({"entered": who})


@pytest.fixture
def phonghoc_registered() -> Iterator[None]:
    registry.register(PhonghocAdapter)  # the one registry line
    try:
        yield
    finally:
        registry.unregister(KIND)


@pytest.fixture
async def upstream() -> AsyncIterator[Phonghoc]:
    fake = Phonghoc()
    await fake.start()
    yield fake
    assert fake.server is not None
    await fake.server.close()


async def wait_for_name(api: aiohttp.ClientSession, cid: str, name: str) -> dict[str, Any]:
    for _ in range(100):
        for a in await alerts(api, cid, "intruder_in_room"):
            if a["name"] == name:
                return a
        await asyncio.sleep(0.02)
    raise AssertionError(f"no intruder alert for {name}")


async def test_a_platform_added_in_one_module(tmp_path: Any, redis_url: str, redis_prefix: str,
                                              phonghoc_registered: None,
                                              upstream: Phonghoc) -> None:
    platform = {"kind": KIND, "api_url": upstream.base, "hook_secret": HOOK_SECRET}
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=LOCAL_PLATFORMS) as gw:
        # the registry opened the platform's pool for this process
        pool = gw.svc.adapter_pools[KIND]
        assert isinstance(pool, PhonghocPool) and pool is OPENED[-1]

        api = gw.api(await gw.staff_user("co.lan"))
        klass, links = await create_class(gw, api, platform)
        cid = klass["id"]
        assert klass["platform"]["capabilities"] == ["enforced_entry", "presence"]
        assert HOOK_SECRET not in json.dumps(klass)
        assert len(upstream.rooms) == 1 and pool.calls == 1

        # the gate hands out the platform's own signed link, and the platform accepts it
        phone, go = await enter(gw, api, cid, links[0])
        assert go.status == 302
        location = go.headers["Location"]
        assert location.startswith(upstream.base + "/rooms/")
        assert dict(parse_qsl(urlsplit(location).query))["who"] == links[0]["student_id"]
        async with aiohttp.ClientSession() as browser:
            r = await browser.get(location)
            assert r.status == 200
            forged = location.replace("sig=", "sig=0")
            assert (await browser.get(forged)).status == 403

        # the reconciler lists the room: the admitted student is fine, a stranger is flagged
        room = next(iter(upstream.rooms.values()))
        room["people"].append({"id": "u99", "name": "Người lạ", "who": None})
        info = await gw.svc.store.get_class(cid)  # type: ignore[union-attr]
        assert info is not None
        intruders = await gw.svc.reconciler.reconcile(info)
        assert [p.display_name for p in intruders] == ["Người lạ"]
        found = await wait_for_name(api, cid, "Người lạ")
        assert found["platform"] == KIND and found["action"] == "flagged"
        assert pool.calls >= 2  # the listing went through the pooled adapter

        # its webhook route: refused unsigned, the challenge answered, a join judged
        anon = gw.client()
        ping = json.dumps({"event": "ping", "challenge": "abc"}).encode()
        r = await anon.post(f"/hooks/{KIND}/{cid}", data=ping,
                            headers={"X-Phonghoc-Signature": "0" * 64})
        assert r.status == 401
        r = await anon.post(f"/hooks/{KIND}/{cid}", data=ping,
                            headers={"X-Phonghoc-Signature": sign(HOOK_SECRET, ping)})
        assert r.status == 200 and await r.json() == {"challenge": "abc"}
        joined = json.dumps({"event": "joined", "id": "u100", "name": "Kẻ lạ"}).encode()
        r = await anon.post(f"/hooks/{KIND}/{cid}", data=joined,
                            headers={"X-Phonghoc-Signature": sign(HOOK_SECRET, joined)})
        assert r.status == 200 and await r.json() == {"ok": True}
        await wait_for_name(api, cid, "Kẻ lạ")
        # signed with this class's secret, posted to the hook of a class with another: refused
        other, _ = await create_class(gw, api, {**platform, "hook_secret": "x" * 20})
        r = await anon.post(f"/hooks/{KIND}/{other['id']}", data=joined,
                            headers={"X-Phonghoc-Signature": sign(HOOK_SECRET, joined)})
        assert r.status == 401
        # a class of another platform has no such hook
        plain, _ = await create_class(gw, api, {"kind": "generic",
                                                "url": "https://meet.example.org/abc"})
        r = await anon.post(f"/hooks/{KIND}/{plain['id']}", data=joined,
                            headers={"X-Phonghoc-Signature": sign(HOOK_SECRET, joined)})
        assert r.status == 401
    assert pool.closed  # closed with the process


async def test_a_platform_brings_its_form_and_warnings(
        tmp_path: Any, redis_url: str, redis_prefix: str, phonghoc_registered: None,
        upstream: Phonghoc) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix,
                               platform_allow_networks=LOCAL_PLATFORMS) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        # the new-class form offers the platform with the fields it declares
        form = await (await api.get("/classes/new")).text()
        assert f'<option value="{KIND}">' in form
        assert f'<div class="platform" data-kind="{KIND}" hidden>' in form
        assert (f'<input id="pf-{KIND}-api_url" name="platform.api_url" '
                'data-field="platform.api_url" type="url" required '
                'placeholder="https://phonghoc.example/api" ') in form
        assert (f'<input id="pf-{KIND}-hook_secret" name="platform.hook_secret" '
                'data-field="platform.hook_secret" type="password" required ') in form
        # the platform's own warning about a class's settings is on the class page, and
        # only when the settings call for it
        plain_http = {"kind": KIND, "api_url": upstream.base, "hook_secret": HOOK_SECRET}
        assert upstream.base.startswith("http://")
        klass, _ = await create_class(gw, api, plain_http)
        page = await (await api.get(f"/classes/{klass['id']}")).text()
        assert f'<p class="warn">{WARN_PLAIN_HTTP}</p>' in page
        other, _ = await create_class(gw, api, {"kind": "generic",
                                                "url": "https://meet.example.org/abc"})
        page = await (await api.get(f"/classes/{other['id']}")).text()
        assert WARN_PLAIN_HTTP not in page


def test_registry_refuses_contradictory_declarations(phonghoc_registered: None) -> None:
    class NoFlag(PhonghocAdapter):
        kind: ClassVar[str] = "noflag"
        features: ClassVar[frozenset[Feature]] = frozenset()
        webhooks: ClassVar[tuple[Webhook, ...]] = (Webhook("noflag", "/hooks/noflag"),)

    class Taken(PhonghocAdapter):
        kind: ClassVar[str] = "taken"

    with pytest.raises(ValueError, match="disagree"):
        registry.register(NoFlag)
    with pytest.raises(ValueError, match="taken"):
        registry.register(Taken)  # the webhook name and path are phonghoc's
    with pytest.raises(ValueError, match="exists"):
        registry.register(PhonghocAdapter)
    assert "noflag" not in registry.ADAPTERS and "taken" not in registry.ADAPTERS


def test_docs_feature_matrix_is_generated() -> None:
    from pathlib import Path

    from meeting_adapters.matrix import main

    docs = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"
    assert main(["--features", "--check", str(docs)]) == 0, (
        "docs/adapters.md feature matrix is stale: "
        "python -m meeting_adapters.matrix --features --write docs/adapters.md")
    rows = registry.feature_table().splitlines()
    assert len(rows) == 2 + len(registry.ADAPTERS)
    janus = next(r for r in rows if r.startswith("| `janus` |"))
    assert "`/hooks/janus`" in janus


def test_every_platform_declares_what_it_implements() -> None:
    """Each declared part is the adapter's own, and each part it implements is declared
    (an undeclared one would never be called)."""
    import inspect

    for kind, cls in registry.ADAPTERS.items():
        for feature, name in registry.FEATURE_METHODS.items():
            own = inspect.getattr_static(cls, name) is not inspect.getattr_static(
                AdapterBase, name)
            assert own == (feature in cls.features), (kind, feature)

    class Hollow(PhonghocAdapter):
        kind: ClassVar[str] = "hollow"
        features: ClassVar[frozenset[Feature]] = frozenset({Feature.EVICT})
        webhooks: ClassVar[tuple[Webhook, ...]] = ()

    with pytest.raises(ValueError, match="declares evict but has no evict"):
        registry.register(Hollow)
