"""Staff layer against a real Redis: orgs, users, login regulation, sessions, API tokens."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway import staff_secrets as sec
from gateway.authz import Action, allows
from gateway.staff import (
    TOKEN_DEFAULT_LIFETIME_S,
    TOKEN_MAX_LIFETIME_S,
    Session,
    StaffError,
    StaffStore,
    User,
    check_csrf,
)

FAST_N = 2**14
PASSWORD = "correct horse battery"
IP = "203.0.113.7"


def u(role: str, org: str, name: str = "someone", disabled: bool = False) -> User:
    return User(name, role, org, disabled=disabled)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_store(redis: aioredis.Redis, prefix: str, clock: FakeClock, **kw: object) -> StaffStore:
    return StaffStore(redis, prefix=prefix, clock=clock, scrypt_n=FAST_N, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(redis: aioredis.Redis, redis_prefix: str, clock: FakeClock) -> StaffStore:
    return make_store(redis, redis_prefix, clock)


@pytest.fixture
async def teacher(store: StaffStore) -> User:
    await store.ensure_org("hcm", name="Sở GD&ĐT TP.HCM")
    await store.ensure_org("q1", parent="hcm")
    await store.ensure_org("thpt-a", parent="q1")
    user, otp = await store.create_user(
        "lan.nguyen", role="teacher", org="thpt-a", password=PASSWORD
    )
    assert otp is None
    return user


async def next_message(ps: aioredis.client.PubSub) -> dict[str, str]:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if msg is not None:
            data: dict[str, str] = json.loads(msg["data"])
            return data
    raise AssertionError("no message published")


@pytest.fixture
async def revocations(
    redis: aioredis.Redis, store: StaffStore
) -> AsyncIterator[aioredis.client.PubSub]:
    ps = redis.pubsub()
    await ps.subscribe(store.revoke_channel)
    try:
        yield ps
    finally:
        await ps.unsubscribe()
        await ps.aclose()  # type: ignore[no-untyped-call]


# -- orgs ----------------------------------------------------------------------------------


async def test_org_tree_ancestors_and_subtree(store: StaffStore) -> None:
    await store.ensure_org("hcm", name="Sở GD&ĐT TP.HCM")
    await store.ensure_org("q1", name="Phòng GD Quận 1", parent="hcm")
    await store.ensure_org("q3", parent="hcm")
    await store.ensure_org("thpt-a", parent="q1")
    await store.ensure_org("thpt-b", parent="q1")
    await store.ensure_org("thpt-c", parent="q3")
    await store.ensure_org("hanoi")

    assert await store.org_ancestors("thpt-a") == ["thpt-a", "q1", "hcm"]
    assert await store.org_ancestors("hcm") == ["hcm"]
    assert await store.org_ancestors("nowhere") == []
    assert await store.org_subtree("q1") == {"q1", "thpt-a", "thpt-b"}
    assert await store.org_subtree("hcm") == {"hcm", "q1", "q3", "thpt-a", "thpt-b", "thpt-c"}
    assert await store.org_subtree("thpt-c") == {"thpt-c"}
    assert await store.org_subtree("nowhere") == set()
    assert await store.is_within("thpt-a", "hcm")
    assert await store.is_within("thpt-a", "thpt-a")
    assert not await store.is_within("thpt-a", "q3")
    assert not await store.is_within("hcm", "q1")

    orgs = {o.slug: o for o in await store.list_orgs()}
    assert set(orgs) == {"hcm", "q1", "q3", "thpt-a", "thpt-b", "thpt-c", "hanoi"}
    assert orgs["q1"].name == "Phòng GD Quận 1" and orgs["q1"].parent == "hcm"
    assert orgs["hanoi"].parent is None and orgs["hanoi"].name == "hanoi"


async def test_ensure_org_is_idempotent_and_never_reparents(store: StaffStore) -> None:
    await store.ensure_org("hcm")
    await store.ensure_org("q1", parent="hcm")
    await store.ensure_org("q3", parent="hcm")
    again = await store.ensure_org("q1")  # no parent named: keep what is there
    assert again.parent == "hcm"
    renamed = await store.ensure_org("q1", name="Quận 1", parent="hcm")
    assert renamed.name == "Quận 1" and (await store.get_org("q1")) == renamed

    with pytest.raises(StaffError) as exc:
        await store.ensure_org("q1", parent="q3")
    assert exc.value.code == "org_conflict" and exc.value.field == "parent"
    # a cycle would need an existing org to take a new parent: refused
    with pytest.raises(StaffError) as exc:
        await store.ensure_org("hcm", parent="q1")
    assert exc.value.code == "org_conflict"
    with pytest.raises(StaffError) as exc:
        await store.ensure_org("x", parent="x")
    assert exc.value.code == "org_conflict"
    with pytest.raises(StaffError) as exc:
        await store.ensure_org("orphan", parent="missing")
    assert exc.value.code == "unknown_org"
    assert await store.get_org("orphan") is None


@pytest.mark.parametrize("slug", ["", "UPPER", "has space", "dấu", "a" * 65, "a:b", "a_b"])
async def test_org_slug_validation(store: StaffStore, slug: str) -> None:
    with pytest.raises(StaffError) as exc:
        await store.ensure_org(slug)
    assert exc.value.code == "invalid_org" and exc.value.field == "org"


async def test_concurrent_ensure_org_creates_once(store: StaffStore) -> None:
    await store.ensure_org("hcm")
    orgs = await asyncio.gather(*(store.ensure_org("q1", parent="hcm") for _ in range(10)))
    assert {o.parent for o in orgs} == {"hcm"}
    assert await store.org_subtree("hcm") == {"hcm", "q1"}


# -- users ---------------------------------------------------------------------------------


async def test_create_user_with_password(store: StaffStore, redis: aioredis.Redis) -> None:
    await store.ensure_org("thpt-a")
    user, otp = await store.create_user(
        "Ｌan.Nguyen", role="teacher", org="thpt-a", password=PASSWORD
    )
    assert otp is None
    assert user.username == "lan.nguyen"  # NFKC + lowercase
    assert user.role == "teacher" and user.org == "thpt-a"
    assert not user.must_change_password and not user.disabled
    assert await store.get_user("LAN.NGUYEN") == user

    stored: dict[str, str] = await redis.hgetall(store._user_key("lan.nguyen"))  # type: ignore[assignment]
    assert PASSWORD not in json.dumps(stored)
    parts = stored["pw"].split("$")
    assert parts[:4] == ["scrypt", str(FAST_N), "8", "1"] and len(parts) == 6


async def test_create_user_needs_an_existing_org(store: StaffStore) -> None:
    """An account never creates its org: a school made by accident as a top-level org
    was how a school's administrator became the deployment's."""
    with pytest.raises(StaffError) as exc:
        await store.create_user("lan", role="admin", org="new-school", password=PASSWORD)
    assert (exc.value.code, exc.value.field, exc.value.status) == ("unknown_org", "org", 404)
    assert await store.list_orgs() == [] and await store.list_users() == []


async def test_deployment_root_is_set_once(store: StaffStore) -> None:
    assert await store.deployment_root() is None
    # no root: nobody acts for the deployment
    assert not allows(u("admin", "so-gd"), Action.ROTATE_KEYS, await store.deployment_target())
    await store.init_root("so-gd", name="Sở GD&ĐT")
    await store.init_root("so-gd")  # the same again: a no-op
    await store.ensure_org("thpt-a", parent="so-gd")
    await store.ensure_org("hanoi")  # a top-level org that is not the root
    for other in ("thpt-a", "hanoi", "new-root"):
        with pytest.raises(StaffError) as exc:
            await store.init_root(other)
        assert exc.value.code == "org_conflict"
    assert await store.deployment_root() == "so-gd"
    root = await store.deployment_target()
    assert allows(u("admin", "so-gd"), Action.ROTATE_KEYS, root)
    assert not allows(u("admin", "so-gd", disabled=True), Action.ROTATE_KEYS, root)
    assert not allows(u("it", "so-gd"), Action.ROTATE_KEYS, root)
    assert not allows(u("admin", "thpt-a"), Action.ROTATE_KEYS, root)
    assert not allows(u("admin", "hanoi"), Action.ROTATE_KEYS, root)


async def test_create_user_generates_one_time_password(store: StaffStore) -> None:
    await store.ensure_org("hcm")
    user, otp = await store.create_user("admin", role="admin", org="hcm", password=None)
    assert otp is not None and len(otp) == 23
    assert user.must_change_password
    result = await store.login("admin", otp, ip=IP)
    assert result.ok and result.user is not None and result.user.must_change_password

    await store.set_password("admin", "a much better passphrase")
    assert (await store.get_user("admin")) == User(
        "admin", "admin", "hcm", must_change_password=False, created=user.created
    )
    assert (await store.login("admin", otp, ip=IP)).code == "invalid_credentials"
    assert (await store.login("admin", "a much better passphrase", ip=IP)).ok


async def test_duplicate_user(store: StaffStore) -> None:
    await store.ensure_org("s1")
    await store.create_user("lan", role="teacher", org="s1", password=PASSWORD)
    with pytest.raises(StaffError) as exc:
        await store.create_user("LAN", role="admin", org="s1", password=PASSWORD)
    assert exc.value.code == "user_exists" and exc.value.status == 409


async def test_concurrent_create_user_only_one_wins(store: StaffStore) -> None:
    await store.ensure_org("s1")
    results = await asyncio.gather(
        *(store.create_user("lan", role="teacher", org="s1", password=PASSWORD) for _ in range(5)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if isinstance(r, tuple)) == 1
    assert all(
        isinstance(r, StaffError) and r.code == "user_exists"
        for r in results
        if not isinstance(r, tuple)
    )


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"username": "a"}, "invalid_username", "username"),
        ({"username": "x" * 65}, "invalid_username", "username"),
        ({"username": "lan nguyen"}, "invalid_username", "username"),
        ({"username": "lan:admin"}, "invalid_username", "username"),
        ({"username": "nguyễn"}, "invalid_username", "username"),
        ({"role": "root"}, "invalid_role", "role"),
        ({"org": "Not A Slug"}, "invalid_org", "org"),
        ({"password": "short"}, "weak_password", "password"),
        ({"password": "x" * 2000}, "weak_password", "password"),
        ({"password": "Lan.Nguyen"}, "weak_password", "password"),
        ({"password": "12345678"}, "weak_password", "password"),
        ({"password": "Password2024!"}, "weak_password", "password"),
        ({"password": "123456789012"}, "weak_password", "password"),
        ({"org": "missing"}, "unknown_org", "org"),
    ],
)
async def test_create_user_validation(
    store: StaffStore, kwargs: dict[str, str], code: str, field: str
) -> None:
    args = {"username": "lan.nguyen", "role": "teacher", "org": "s1", "password": PASSWORD} | kwargs
    with pytest.raises(StaffError) as exc:
        await store.create_user(
            args["username"], role=args["role"], org=args["org"], password=args["password"]
        )
    assert (exc.value.code, exc.value.field) == (code, field)
    assert await store.list_users() == []
    assert await store.list_orgs() == []  # nothing half-written


async def test_list_users_by_subtree(store: StaffStore, teacher: User) -> None:
    await store.ensure_org("thpt-b", parent="q1")
    await store.ensure_org("hanoi")
    await store.create_user("it.q1", role="it", org="q1", password=PASSWORD)
    await store.create_user("b.teacher", role="teacher", org="thpt-b", password=PASSWORD)
    await store.create_user("hn.admin", role="admin", org="hanoi", password=PASSWORD)

    def names(users: list[User]) -> list[str]:
        return [u.username for u in users]

    assert names(await store.list_users()) == ["b.teacher", "hn.admin", "it.q1", "lan.nguyen"]
    assert names(await store.list_users(org_subtree="q1")) == ["b.teacher", "it.q1", "lan.nguyen"]
    assert names(await store.list_users(org_subtree=await store.org_subtree("thpt-a"))) == [
        "lan.nguyen"
    ]
    assert names(await store.list_users(org_subtree={"hanoi"})) == ["hn.admin"]


# -- login ---------------------------------------------------------------------------------


async def test_login_ok_wrong_and_unknown_look_the_same(store: StaffStore, teacher: User) -> None:
    ok = await store.login("Lan.Nguyen", PASSWORD, ip=IP)
    assert ok.ok and ok.code == "ok" and ok.user == teacher

    wrong = await store.login("lan.nguyen", "not the password", ip=IP)
    unknown = await store.login("nobody.here", "not the password", ip="198.51.100.1")
    junk = await store.login("<script>", "not the password", ip="198.51.100.2")
    for result in (wrong, unknown, junk):
        assert not result.ok and result.user is None and result.retry_after is None
        assert result.code == "invalid_credentials"
    assert (wrong.audit_reason, unknown.audit_reason) == ("wrong_password", "unknown_user")


async def test_unknown_user_costs_a_full_kdf(
    redis: aioredis.Redis, redis_prefix: str, clock: FakeClock
) -> None:
    store = make_store(redis, redis_prefix, clock, login_max_failures=1000,
                       login_account_max_failures=1000)
    await store.ensure_org("s1")
    await store.create_user("lan.nguyen", role="teacher", org="s1", password=PASSWORD)

    async def timed(username: str) -> float:
        start = time.perf_counter()
        assert (await store.login(username, "wrong password", ip=IP)).code == "invalid_credentials"
        return time.perf_counter() - start

    known = statistics.median([await timed("lan.nguyen") for _ in range(5)])
    unknown = statistics.median([await timed("nobody.here") for _ in range(5)])
    # Loose bounds (shared CI machines); without the dummy KDF the ratio would be ~0.01.
    assert 0.5 < unknown / known < 2.0


async def test_disabled_user_cannot_log_in(store: StaffStore, teacher: User) -> None:
    await store.disable_user("lan.nguyen")
    result = await store.login("lan.nguyen", PASSWORD, ip=IP)
    assert result.code == "invalid_credentials" and result.audit_reason == "disabled"
    await store.enable_user("lan.nguyen")
    assert (await store.login("lan.nguyen", PASSWORD, ip="198.51.100.9")).ok


async def test_login_rehashes_with_stronger_parameters(
    redis: aioredis.Redis, redis_prefix: str, clock: FakeClock, teacher: User
) -> None:
    stronger = StaffStore(redis, prefix=redis_prefix, clock=clock, scrypt_n=2**15)
    assert (await stronger.login("lan.nguyen", PASSWORD, ip=IP)).ok
    stored = str(await redis.hget(stronger._user_key("lan.nguyen"), "pw"))
    assert stored.startswith(f"scrypt${2**15}$8$1$")
    assert (await stronger.login("lan.nguyen", PASSWORD, ip=IP)).ok


# -- regulation ----------------------------------------------------------------------------


async def fail(store: StaffStore, username: str = "lan.nguyen", ip: str = IP) -> str:
    return (await store.login(username, "wrong password", ip=ip)).code


async def test_three_failures_regulate_the_source_not_the_account(
    store: StaffStore, teacher: User, clock: FakeClock
) -> None:
    assert [await fail(store, ip="198.51.100.1") for _ in range(3)] == [
        "invalid_credentials"
    ] * 3
    clock.advance(10)
    # the right password from the guessing source is not even checked
    result = await store.login("lan.nguyen", PASSWORD, ip="198.51.100.1")
    assert (result.ok, result.code, result.retry_after) == (False, "regulated", 290)
    assert result.user is None
    # the owner, from a source with no failures, is not locked out
    assert (await store.login("lan.nguyen", PASSWORD, ip="192.0.2.50")).ok

    clock.advance(290)
    assert (await store.login("lan.nguyen", PASSWORD, ip="198.51.100.1")).ok


async def test_distributed_attack_slows_the_account_down(
    store: StaffStore, teacher: User, clock: FakeClock
) -> None:
    """Many sources, a few guesses each: past 10 failures at the account, sources the
    owner never signed in from get one attempt per 10 s between them all; the owner's
    own source passes, and so does a fresh one once the gate is free."""
    assert (await store.login("lan.nguyen", PASSWORD, ip="192.0.2.7")).ok  # the owner's
    codes = [await fail(store, ip=f"198.51.100.{i}") for i in range(12)]
    assert codes[:10] == ["invalid_credentials"] * 10
    assert codes[10:] == ["invalid_credentials", "regulated"]  # through the gate, then held
    held = await store.login("lan.nguyen", PASSWORD, ip="203.0.113.99")
    assert held.code == "regulated" and 1 <= (held.retry_after or 0) <= 10
    assert (await store.login("lan.nguyen", PASSWORD, ip="192.0.2.7")).ok
    clock.advance(10)
    assert (await store.login("lan.nguyen", PASSWORD, ip="203.0.113.99")).ok
    # the owner's sign-in did not lift the slow-down the attack earned
    assert await fail(store, ip="198.51.100.200") == "regulated"
    clock.advance(10)
    assert await fail(store, ip="198.51.100.200") == "invalid_credentials"
    assert await fail(store, ip="198.51.100.201") == "regulated"


async def test_owner_sees_failures_since_last_sign_in(
    store: StaffStore, teacher: User, clock: FakeClock
) -> None:
    assert (await store.login("lan.nguyen", PASSWORD, ip=IP)).failures.count == 0
    for i in range(4):
        clock.advance(1)
        await fail(store, ip=f"198.51.100.{i}")
    await fail(store, username="nobody.here")  # no record kept for unknown names
    for _ in range(3):
        await fail(store, ip="198.51.100.0")  # the 3rd is refused: it counts too
    ok = await store.login("lan.nguyen", PASSWORD, ip=IP)
    assert ok.ok and ok.failures.count == 7
    assert [ip for _, ip in ok.failures.recent][:2] == ["198.51.100.0"] * 2
    assert len(ok.failures.recent) == 5
    cookie, _, _ = await store.create_session(teacher, ip=IP, user_agent="UA",
                                              failures=ok.failures)
    session = await store.load_session(cookie)
    assert session is not None and session.failed_logins == 7
    assert session.failed_recent == ok.failures.recent
    # shown once: the next sign-in starts from zero
    assert (await store.login("lan.nguyen", PASSWORD, ip=IP)).failures.count == 0


async def test_failures_outside_the_window_do_not_count(
    store: StaffStore, teacher: User, clock: FakeClock
) -> None:
    for _ in range(2):
        assert await fail(store) == "invalid_credentials"
    clock.advance(121)
    for _ in range(2):
        assert await fail(store) == "invalid_credentials"
    assert (await store.login("lan.nguyen", PASSWORD, ip=IP)).ok


async def test_regulation_per_ip_across_usernames(
    store: StaffStore, teacher: User, clock: FakeClock
) -> None:
    for name in ("alice", "bob", "carol"):
        assert await fail(store, username=name) == "invalid_credentials"
    result = await store.login("lan.nguyen", PASSWORD, ip=IP)
    assert result.code == "regulated" and result.retry_after == 300
    # the account itself is not banned: another address still gets in
    assert (await store.login("lan.nguyen", PASSWORD, ip="198.51.100.20")).ok


async def test_ipv6_is_regulated_per_64(store: StaffStore, teacher: User) -> None:
    for host in (1, 2, 3):
        assert await fail(store, username=f"user{host}", ip=f"2001:db8:1:2::{host}") == (
            "invalid_credentials"
        )
    result = await store.login("lan.nguyen", PASSWORD, ip="2001:db8:1:2:ffff::9")
    assert result.code == "regulated"
    assert (await store.login("lan.nguyen", PASSWORD, ip="2001:db8:1:3::1")).ok


async def test_ban_backoff_doubles_and_decays(
    store: StaffStore, teacher: User, clock: FakeClock
) -> None:
    async def ban_length() -> int | None:
        for _ in range(3):
            assert await fail(store, ip="198.51.100.1") == "invalid_credentials"
        return (await store.login("lan.nguyen", PASSWORD, ip="198.51.100.1")).retry_after

    assert await ban_length() == 300
    clock.advance(300)
    assert await ban_length() == 600
    clock.advance(600)
    assert await ban_length() == 1200
    clock.advance(1200 + 86400)  # a quiet day: back to the first step
    assert await ban_length() == 300


async def test_backoff_is_capped(
    redis: aioredis.Redis, redis_prefix: str, clock: FakeClock, teacher: User
) -> None:
    store = make_store(redis, redis_prefix, clock, login_ban_max_s=1000)
    lengths = []
    for _ in range(4):
        for _ in range(3):
            await fail(store, ip="198.51.100.1")
        retry = (await store.login("lan.nguyen", PASSWORD, ip="198.51.100.1")).retry_after
        assert retry is not None
        lengths.append(retry)
        clock.advance(retry)
    assert lengths == [300, 600, 1000, 1000]


async def test_success_clears_failures(store: StaffStore, teacher: User) -> None:
    for _ in range(2):
        assert await fail(store) == "invalid_credentials"
    assert (await store.login("lan.nguyen", PASSWORD, ip=IP)).ok
    for _ in range(2):  # neither the account nor the IP count the earlier typos
        assert await fail(store) == "invalid_credentials"
    assert (await store.login("lan.nguyen", PASSWORD, ip=IP)).ok


async def test_success_on_own_account_does_not_reset_ip_counter(
    store: StaffStore, teacher: User
) -> None:
    await store.ensure_org("s9")
    await store.create_user("mallory", role="teacher", org="s9", password=PASSWORD)
    assert await fail(store, username="victim1") == "invalid_credentials"
    assert await fail(store, username="victim2") == "invalid_credentials"
    assert (await store.login("mallory", PASSWORD, ip=IP)).ok
    assert await fail(store, username="victim3") == "invalid_credentials"
    assert (await store.login("victim4", "guess", ip=IP)).code == "regulated"


async def test_regulation_is_shared_between_processes(
    redis: aioredis.Redis, redis_url: str, redis_prefix: str, clock: FakeClock, teacher: User
) -> None:
    other_client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        first = make_store(redis, redis_prefix, clock)
        second = make_store(other_client, redis_prefix, clock)
        assert await fail(first) == "invalid_credentials"
        assert await fail(second) == "invalid_credentials"
        assert await fail(first) == "invalid_credentials"
        result = await second.login("lan.nguyen", PASSWORD, ip=IP)
        assert result.code == "regulated" and result.retry_after == 300
    finally:
        await other_client.aclose()


async def test_concurrent_failures_never_exceed_the_limit(
    store: StaffStore, teacher: User, clock: FakeClock
) -> None:
    results = await asyncio.gather(
        *(store.login("lan.nguyen", f"guess {i}", ip=f"198.51.100.{i}") for i in range(20))
    )
    codes = [r.code for r in results]
    # ten fill the account's window, one passes the slow-down gate; no more were checked
    assert codes.count("invalid_credentials") == 11
    assert codes.count("regulated") == 9
    assert (await store.login("lan.nguyen", PASSWORD, ip="192.0.2.1")).code == "regulated"
    clock.advance(10)
    assert (await store.login("lan.nguyen", PASSWORD, ip="192.0.2.1")).ok

    same_source = await asyncio.gather(
        *(store.login("lan.nguyen", f"guess {i}", ip="203.0.113.1") for i in range(20))
    )
    assert [r.code for r in same_source].count("invalid_credentials") <= 3


async def test_admin_can_lift_a_ban(store: StaffStore, teacher: User) -> None:
    for _ in range(3):
        await fail(store)
    assert (await store.login("lan.nguyen", PASSWORD, ip=IP)).code == "regulated"
    await store.reset_login_regulation(username="lan.nguyen", ip=IP)
    assert (await store.login("lan.nguyen", PASSWORD, ip=IP)).ok


async def test_regulation_keys_expire(
    store: StaffStore, teacher: User, redis: aioredis.Redis, redis_prefix: str
) -> None:
    for _ in range(3):
        await fail(store)
    keys = [k async for k in redis.scan_iter(match=f"{redis_prefix}staff:{{login}}:*")]
    assert keys
    for key in keys:
        assert await redis.pttl(key) > 0
        assert "lan" not in key and IP not in key


# -- sessions ------------------------------------------------------------------------------


async def test_session_round_trip(store: StaffStore, teacher: User) -> None:
    cookie, csrf, session = await store.create_session(teacher, ip=IP, user_agent="Firefox")
    loaded = await store.load_session(cookie)
    assert loaded == session
    assert (loaded.username, loaded.role, loaded.org) == ("lan.nguyen", "teacher", "thpt-a")
    assert loaded.csrf_token == csrf and loaded.ip == IP and loaded.user_agent == "Firefox"
    sid_text, _, secret_text = cookie.partition(".")
    assert len(sec.b64url_decode_exact(sid_text, 16) or b"") == 16
    assert len(sec.b64url_decode_exact(secret_text, 32) or b"") == 32


async def test_redis_holds_no_usable_session(
    store: StaffStore, teacher: User, redis: aioredis.Redis, redis_prefix: str
) -> None:
    cookie, csrf, session = await store.create_session(teacher, ip=IP, user_agent="Firefox/130")
    keys = [k async for k in redis.scan_iter(match=f"{redis_prefix}staff:session:*")]
    assert keys == [f"{redis_prefix}staff:session:{session.sid_hash}"]
    value = str(await redis.get(keys[0]))
    for plain in ("lan.nguyen", "teacher", "thpt-a", csrf, IP, "Firefox", cookie.split(".")[1]):
        assert plain not in value
    ttl = await redis.ttl(keys[0])
    assert 12 * 3600 - 5 < ttl <= 12 * 3600
    assert 0 < await redis.ttl(f"{redis_prefix}staff:user_sessions:lan.nguyen")


def _flip(text: str, index: int) -> str:
    c = text[index]
    return text[:index] + ("B" if c != "B" else "C") + text[index + 1 :]


async def test_tampered_or_foreign_cookies_are_rejected(
    store: StaffStore, teacher: User, redis: aioredis.Redis
) -> None:
    cookie, _, session = await store.create_session(teacher, ip=IP, user_agent="UA")
    sid_text, _, secret_text = cookie.partition(".")
    other_secret = sec.b64url(b"\x01" * 32)
    candidates = [
        _flip(cookie, 3),  # another sid
        _flip(cookie, 30),  # the right sid, a corrupted secret
        f"{sid_text}.{other_secret}",  # the right sid, someone else's secret
        f"{secret_text}.{sid_text}",
        cookie + "A",
        cookie[:-1],
        cookie.replace(".", ""),
        "",
        ".",
        "🙂" * 66,
        "x" * 10_000,
    ]
    for bad in candidates:
        assert await store.load_session(bad) is None, bad
    assert await store.load_session(None) is None

    # a record altered in Redis does not decrypt either
    key = store._session_key(session.sid_hash)
    value = str(await redis.get(key))
    await redis.set(key, _flip(value, 20), keepttl=True)
    assert await store.load_session(cookie) is None
    await redis.set(key, "not a record", keepttl=True)
    assert await store.load_session(cookie) is None


async def test_record_cannot_be_moved_to_another_sid(
    store: StaffStore, teacher: User, redis: aioredis.Redis
) -> None:
    cookie_a, _, a = await store.create_session(teacher, ip=IP, user_agent="UA")
    cookie_b, _, b = await store.create_session(teacher, ip=IP, user_agent="UA")
    # copy A's ciphertext under B's name: B's secret cannot open it, and A's secret
    # with B's sid fails the associated data check
    record_a = str(await redis.get(store._session_key(a.sid_hash)))
    await redis.set(store._session_key(b.sid_hash), record_a)
    assert await store.load_session(cookie_b) is None
    forged = cookie_b.split(".")[0] + "." + cookie_a.split(".")[1]
    assert await store.load_session(forged) is None


async def test_session_expires_by_clock(store: StaffStore, teacher: User, clock: FakeClock) -> None:
    cookie, _, _ = await store.create_session(teacher, ip=IP, user_agent="UA")
    clock.advance(12 * 3600 - 1)
    assert await store.load_session(cookie) is not None
    clock.advance(1)
    assert await store.load_session(cookie) is None


async def test_revoke_session_publishes(
    store: StaffStore, teacher: User, revocations: aioredis.client.PubSub
) -> None:
    cookie, _, session = await store.create_session(teacher, ip=IP, user_agent="UA")
    assert await store.revoke_session(cookie)
    assert await next_message(revocations) == {
        "kind": "staff_session",
        "sid_hash": session.sid_hash,
    }
    assert await store.load_session(cookie) is None
    assert not await store.revoke_session(cookie)  # already gone
    await next_message(revocations)

    cookie2, _, session2 = await store.create_session(teacher, ip=IP, user_agent="UA")
    assert await store.revoke_session(session2.sid_hash)
    assert (await next_message(revocations))["sid_hash"] == session2.sid_hash
    assert await store.load_session(cookie2) is None

    assert not await store.revoke_session("garbage")


async def test_revoke_user_sessions(
    store: StaffStore, teacher: User, revocations: aioredis.client.PubSub
) -> None:
    created = [await store.create_session(teacher, ip=IP, user_agent="UA") for _ in range(3)]
    other_user, _ = await store.create_user("minh", role="it", org="q1", password=PASSWORD)
    other_cookie, _, _ = await store.create_session(other_user, ip=IP, user_agent="UA")

    assert await store.revoke_user_sessions("lan.nguyen") == 3
    announced = {(await next_message(revocations))["sid_hash"] for _ in range(3)}
    assert announced == {s.sid_hash for _, _, s in created}
    for cookie, _, _ in created:
        assert await store.load_session(cookie) is None
    assert await store.load_session(other_cookie) is not None


async def test_password_change_and_disable_end_sessions(store: StaffStore, teacher: User) -> None:
    cookie, _, _ = await store.create_session(teacher, ip=IP, user_agent="UA")
    await store.set_password("lan.nguyen", "another long passphrase")
    assert await store.load_session(cookie) is None

    cookie, _, _ = await store.create_session(teacher, ip=IP, user_agent="UA")
    disabled = await store.disable_user("lan.nguyen")
    assert await store.load_session(cookie) is None
    with pytest.raises(StaffError) as exc:
        await store.create_session(disabled, ip=IP, user_agent="UA")
    assert exc.value.code == "user_disabled"


async def test_csrf_check(store: StaffStore, teacher: User) -> None:
    _, csrf, session = await store.create_session(teacher, ip=IP, user_agent="UA")
    assert check_csrf(session, csrf)
    assert store.check_csrf(session, csrf)
    for bad in (None, "", csrf[:-1], csrf + "x", csrf.upper(), "ñ" * len(csrf)):
        assert not check_csrf(session, bad)
    _, other_csrf, _ = await store.create_session(teacher, ip=IP, user_agent="UA")
    assert not check_csrf(session, other_csrf)


# -- API tokens ----------------------------------------------------------------------------


async def test_api_token_lifecycle(
    store: StaffStore,
    teacher: User,
    redis: aioredis.Redis,
    redis_prefix: str,
    revocations: aioredis.client.PubSub,
) -> None:
    token = await store.create_api_token("lan.nguyen", label="roster sync")
    assert token.startswith("cgk_")
    assert await store.resolve_bearer(token) == teacher

    token_id, secret = sec.parse_api_token(token) or ("", b"")
    stored = await redis.hgetall(f"{redis_prefix}staff:apitoken:{token_id}")
    assert stored["username"] == "lan.nguyen"
    assert token not in json.dumps(stored) and sec.b64url(secret) not in json.dumps(stored)

    listed = await store.list_api_tokens("lan.nguyen")
    assert [(t.token_id, t.label, t.expires) for t in listed] == [
        (token_id, "roster sync", teacher.created + TOKEN_DEFAULT_LIFETIME_S)]
    assert stored["secret_sha256"] and 0 < await redis.pttl(
        f"{redis_prefix}staff:apitoken:{token_id}") <= TOKEN_DEFAULT_LIFETIME_S * 1000

    assert not await store.revoke_api_token(token_id, username="someone.else")
    assert await store.resolve_bearer(token) == teacher

    assert await store.revoke_api_token(token_id)
    assert await next_message(revocations) == {"kind": "api_token", "token_id": token_id}
    assert await store.resolve_bearer(token) is None
    assert await store.list_api_tokens("lan.nguyen") == []


async def test_bearer_wrong_or_malformed(store: StaffStore, teacher: User) -> None:
    token = await store.create_api_token("lan.nguyen")
    token_id, _ = sec.parse_api_token(token) or ("", b"")
    other_secret = sec.b64url(bytes([2]) * 32)
    wrong_secret = f"cgk_{token_id}_{other_secret}"
    for bad in (
        wrong_secret,
        _flip(token, len(token) - 5),
        token[:-1],
        token + "A",
        token.replace("cgk_", "cgx_"),
        "cgk_",
        "",
        "Bearer " + token,
        "🙂" * 64,
    ):
        assert await store.resolve_bearer(bad) is None, bad
    assert await store.resolve_bearer(None) is None
    assert await store.resolve_bearer(token) == teacher


async def test_bearer_of_disabled_user_or_expired(
    store: StaffStore, teacher: User, clock: FakeClock
) -> None:
    expiring = await store.create_api_token("lan.nguyen", expires_in_s=60)
    assert await store.resolve_bearer(expiring) == teacher
    clock.advance(60)
    assert await store.resolve_bearer(expiring) is None

    token = await store.create_api_token("lan.nguyen")
    await store.disable_user("lan.nguyen")
    assert await store.resolve_bearer(token) is None
    assert await store.list_api_tokens("lan.nguyen") == []  # disabling revoked them
    with pytest.raises(StaffError) as exc:
        await store.create_api_token("lan.nguyen")
    assert exc.value.code == "user_disabled"
    with pytest.raises(StaffError) as exc:
        await store.create_api_token("nobody")
    assert exc.value.code == "not_found"


async def test_every_token_expires(
    store: StaffStore, teacher: User, clock: FakeClock, redis: aioredis.Redis,
    redis_prefix: str
) -> None:
    for bad in (0, -1, TOKEN_MAX_LIFETIME_S + 1):
        with pytest.raises(StaffError) as exc:
            await store.create_api_token("lan.nguyen", expires_in_s=bad)
        assert exc.value.code == "invalid_expiry"
    default = await store.create_api_token("lan.nguyen")
    clock.advance(TOKEN_DEFAULT_LIFETIME_S - 1)
    assert await store.resolve_bearer(default) == teacher
    clock.advance(1)
    assert await store.resolve_bearer(default) is None
    assert await store.list_api_tokens("lan.nguyen") == []
    # a token stored before expiry existed lives the longest lifetime from its creation
    legacy = await store.create_api_token("lan.nguyen")
    legacy_id = (sec.parse_api_token(legacy) or ("", b""))[0]
    key = f"{redis_prefix}staff:apitoken:{legacy_id}"
    await redis.hset(key, "expires", "")
    await redis.persist(key)
    clock.advance(TOKEN_MAX_LIFETIME_S - 1)
    assert await store.resolve_bearer(legacy) == teacher
    clock.advance(1)
    assert await store.resolve_bearer(legacy) is None


# -- passwords -----------------------------------------------------------------------------


async def test_change_password(store: StaffStore, teacher: User) -> None:
    cookie, _, _ = await store.create_session(teacher, ip=IP, user_agent="UA")
    for current, new, code in (
        ("wrong password", "a brand new passphrase", "wrong_password"),
        (PASSWORD, "short", "weak_password"),
        (PASSWORD, "iloveyou2024!", "weak_password"),
        (PASSWORD, PASSWORD, "weak_password"),
    ):
        with pytest.raises(StaffError) as exc:
            await store.change_password("lan.nguyen", current, new, ip=IP)
        assert exc.value.code == code
    assert await store.load_session(cookie) is not None  # nothing changed yet
    user = await store.change_password("lan.nguyen", PASSWORD, "a brand new passphrase", ip=IP)
    assert not user.must_change_password
    assert await store.load_session(cookie) is None
    assert (await store.login("lan.nguyen", "a brand new passphrase", ip=IP)).ok


async def test_guessing_through_change_password_is_regulated(
    store: StaffStore, teacher: User
) -> None:
    for _ in range(3):
        with pytest.raises(StaffError):
            await store.change_password("lan.nguyen", "guess", "a brand new passphrase", ip=IP)
    with pytest.raises(StaffError) as exc:
        await store.change_password("lan.nguyen", PASSWORD, "a brand new passphrase", ip=IP)
    assert exc.value.code == "regulated" and exc.value.status == 429
    assert (exc.value.retry_after or 0) > 0


async def test_reset_password_forces_a_change(store: StaffStore, teacher: User) -> None:
    cookie, _, _ = await store.create_session(teacher, ip=IP, user_agent="UA")
    for _ in range(3):
        await fail(store)
    user, otp = await store.reset_password("lan.nguyen")
    assert user.must_change_password and len(otp) >= 12
    assert await store.load_session(cookie) is None
    assert (await store.login("lan.nguyen", PASSWORD, ip="192.0.2.9")).code == (
        "invalid_credentials")
    # the guessing source stays banned from the account; the owner, elsewhere, gets in
    assert (await store.login("lan.nguyen", otp, ip=IP)).code == "regulated"
    result = await store.login("lan.nguyen", otp, ip="192.0.2.10")
    assert result.ok and result.user is not None and result.user.must_change_password
    cookie, _, _ = await store.create_session(result.user, ip=IP, user_agent="UA")
    session = await store.load_session(cookie)
    assert session is not None and session.must_change_password
    with pytest.raises(StaffError):
        await store.reset_password("nobody")


def test_token_formats_parse_by_length() -> None:
    # base64url contains '_' and '-': parsing must not split on them
    for _ in range(200):
        token, token_id, digest = sec.new_api_token()
        parsed = sec.parse_api_token(token)
        assert parsed is not None and parsed[0] == token_id
        assert sec.api_secret_matches(parsed[1], digest)
        sid, secret = sec.new_session_ids()
        assert sec.parse_session_cookie(sec.session_cookie(sid, secret)) == (sid, secret)


async def test_session_dataclass_is_frozen(store: StaffStore, teacher: User) -> None:
    _, _, session = await store.create_session(teacher, ip=IP, user_agent="UA")
    assert isinstance(session, Session)
    with pytest.raises(AttributeError):
        session.role = "admin"  # type: ignore[misc]
