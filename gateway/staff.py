"""Staff accounts, organisations, login, sessions and API tokens, kept in Redis.

Everything lives under one key ``prefix`` (e.g. ``"cg:"``); no state is kept in process
memory, so every gateway process sees the same accounts, bans and sessions.

Redis keys (``P`` = prefix)::

    P staff:{org}:all                 set     every org slug
    P staff:{org}:o:<slug>            hash    v, slug, name, parent ("" for a root), created
    P staff:{org}:c:<slug>            set     slugs of the direct children
    P staff:{org}:root                string  slug of the deployment root org (set once)
    P staff:users                     set     every username
    P staff:user:<username>           hash    v, username, role, org, pw, must_change_password,
                                              disabled, created, email (optional: where
                                              incident notifications go, gateway/notify.py)
    P staff:user_sessions:<username>  zset    sid hashes scored by expiry       (TTL)
    P staff:session:<sha256(sid) hex> string  "v1." + b64url(nonce || AES-GCM) (TTL)
    P staff:user_tokens:<username>    set     API token ids
    P staff:apitoken:<token_id>       hash    v, username, label, secret_sha256, created,
                                              expires ("" = created + the longest lifetime,
                                              for tokens issued before expiry existed) (TTL)
    P staff:user_failed:<username>    list    JSON {t, ip, why} of failed sign-ins since the
                                              last successful one (newest first, 20 kept)
    P staff:user_failed_n:<username>  string  how many there were                  (TTL)
    P staff:{login}:p|i:<hash>:f      zset    login attempts of a pair (account, source) or
                                              of a source, in the window       (TTL)
    P staff:{login}:p|i:<hash>:b      hash    until, level (ban and backoff)  (TTL)
    P staff:{login}:a:<hash>:f|g|t    zset, string, hash: an account's attempts from all
                                      sources, its slow-down gate, its trusted sources

Revocations are announced on the channel ``P revoke`` as JSON:
``{"kind": "staff_session", "sid_hash": "<hex>"}`` for a session and
``{"kind": "api_token", "token_id": "<id>"}`` for a bearer token, so every process can
close the matching WebSockets at once.

The org tree (province department -> district office -> school) only grows downwards:
an org names its parent when it is created, the parent must already exist, and the
parent never changes afterwards, so a cycle cannot be built.

One org is the *deployment root* (``classguard init`` makes it and records it once).
Deployment-wide actions (join-token keys, events that belong to no org such as failed
sign-ins) need an administrator of that org (gateway/authz.py, with
:meth:`StaffStore.deployment_target`). Every other org is created under an existing one;
an administrator of a school is an administrator of that school's subtree and nothing
more. Who may do what is decided in gateway/authz.py alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any, Literal, cast, get_args

import redis.asyncio as aioredis

from audit.scripts import Script, ScriptRunner

from . import staff_secrets as sec
from .authz import Target
from .config import valid_email
from .passwords import MAX_LENGTH as _MAX_PASSWORD_CHARS
from .passwords import MIN_LENGTH, common_passwords, password_problem
from .staff_regulation import LoginRegulator
from .stores.keys import Keys, StaffKeys

log = logging.getLogger("classguard.staff")

Role = Literal["teacher", "it", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
LoginCode = Literal["ok", "invalid_credentials", "regulated"]

_USERNAME_RE = re.compile(r"[a-z0-9._-]{2,64}")
_SLUG_RE = re.compile(r"[a-z0-9-]{1,64}")
_MAX_ORG_DEPTH = 32
_MAX_NAME_CHARS = 200
_MAX_LABEL_CHARS = 200
_MAX_UA_CHARS = 512
_RECORD_VERSION = "1"
_FAILURES_KEPT = 20
_FAILURES_TTL_S = 90 * 86400
# API bearer tokens: lifetime when none is asked for, and the longest one allowed.
TOKEN_DEFAULT_LIFETIME_S = 90 * 86400
TOKEN_MAX_LIFETIME_S = 365 * 86400

_STATUS = {
    "user_exists": 409,
    "org_conflict": 409,
    "user_disabled": 409,
    "not_found": 404,
    "unknown_org": 404,
    "wrong_password": 403,
    "regulated": 429,
}


class StaffError(Exception):
    """A staff-layer failure with a stable ``code`` (the HTTP layer maps ``status``)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = _STATUS.get(code, 400)
        self.problem: str | None = None  # for weak_password: why (gateway.passwords)
        self.retry_after: int | None = None  # for regulated: seconds


@dataclass(frozen=True, slots=True)
class Org:
    slug: str
    name: str
    parent: str | None


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: Role
    org: str
    must_change_password: bool = False
    disabled: bool = False
    created: float = 0.0
    # Where incident notifications go (gateway/notify.py); shown to administrators only.
    email: str | None = None


@dataclass(frozen=True, slots=True)
class Session:
    sid_hash: str  # what revocation messages name; the sid itself never leaves the cookie
    username: str
    role: Role
    org: str
    csrf_token: str
    created: float
    expires: float
    ip: str
    user_agent: str
    # The account must choose a new password before doing anything else.
    must_change_password: bool = False
    # Failed sign-ins at the account between the previous successful one and this
    # session's: how many, and the newest (unix time, address) pairs.
    failed_logins: int = 0
    failed_recent: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FailedLogins:
    """Failed sign-ins at an account since its last successful one (shown to the owner)."""

    count: int = 0
    recent: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True, slots=True)
class LoginResult:
    ok: bool
    code: LoginCode
    user: User | None = None
    retry_after: int | None = None  # seconds, only with code "regulated"
    # For the audit record only, never for the client: "unknown_user", "wrong_password",
    # "disabled" or "regulated". The client sees "invalid_credentials" for the first three.
    audit_reason: str | None = None
    failures: FailedLogins = FailedLogins()  # only with code "ok"


@dataclass(frozen=True, slots=True)
class ApiToken:
    token_id: str
    username: str
    label: str | None
    created: float
    expires: float


# -- validation ----------------------------------------------------------------------------


def normalize_username(raw: str) -> str:
    """NFKC, trimmed, lowercase. Does not validate: see :func:`validate_username`."""
    return unicodedata.normalize("NFKC", raw).strip().lower()


def validate_username(raw: str) -> str:
    name = normalize_username(raw)
    if not _USERNAME_RE.fullmatch(name):
        raise StaffError(
            "invalid_username",
            "username must be 2-64 characters: a-z, 0-9, '.', '_' or '-'",
            "username",
        )
    return name


def validate_slug(raw: str, field: str = "org") -> str:
    if not isinstance(raw, str) or not _SLUG_RE.fullmatch(raw):
        raise StaffError("invalid_org", "org must be 1-64 characters: a-z, 0-9 or '-'", field)
    return raw


def validate_role(raw: str) -> Role:
    if raw not in ROLES:
        raise StaffError("invalid_role", f"role must be one of {', '.join(ROLES)}", "role")
    return raw


def _clean_text(raw: str, limit: int, field: str) -> str:
    text = raw.strip()
    if not text or len(text) > limit or any(unicodedata.category(c) == "Cc" for c in text):
        raise StaffError(
            "invalid_" + field, f"{field} must be 1-{limit} printable characters", field
        )
    return text


# -- sessions (pure) ----------------------------------------------------------------------


def check_csrf(session: Session, header_value: str | None) -> bool:
    """Constant-time check of the ``X-CSRF-Token`` header against the session's token."""
    return sec.tokens_equal(session.csrf_token, header_value)


# -- the store -----------------------------------------------------------------------------

_CREATE_ORG = Script.load("gateway.stores", "staff_create_org")
_CREATE_USER = Script.load("gateway.stores", "staff_create_user")


class StaffStore:
    """Staff state in Redis. ``redis`` must be an asyncio client with decode_responses."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "",
        clock: Callable[[], float] = time.time,
        scrypt_n: int = 2**15,
        scrypt_r: int = 8,
        scrypt_p: int = 1,
        kdf_concurrency: int = 4,
        min_password_length: int = MIN_LENGTH,
        login_max_failures: int = 3,
        login_ip_max_failures: int | None = None,
        login_account_max_failures: int = 10,
        login_account_slow_s: float = 10,
        login_window_s: float = 120,
        login_ban_s: float = 300,
        login_ban_max_s: float = 86400,
        login_ban_decay_s: float = 86400,
        session_ttl_s: float = 12 * 3600,
    ) -> None:
        """
        ``login_max_failures`` is per account and source, ``login_ip_max_failures`` per
        source across accounts (defaults to ``login_max_failures``; raise it where many
        teachers share one school NAT address), ``login_account_max_failures`` per
        account across sources, after which it is slowed to one attempt per
        ``login_account_slow_s`` (see ``staff_regulation``).

        NOTE: scrypt below n=2**14 is refused; tests use 2**14 for speed, production the
        default 2**15 (32 MiB per hash). ``kdf_concurrency`` bounds how many hashes run at
        once, so a burst of logins cannot exhaust memory.
        """
        if scrypt_n < 2**14:
            raise ValueError("scrypt_n below 2**14 is too weak")
        if session_ttl_s <= 0 or kdf_concurrency < 1 or min_password_length < 1:
            raise ValueError("session_ttl_s, kdf_concurrency, min_password_length must be > 0")
        self._r = redis
        self._keys = StaffKeys(prefix)
        self._clock = clock
        self._scrypt = sec.ScryptParams(scrypt_n, scrypt_r, scrypt_p)
        self._kdf_slots = asyncio.Semaphore(kdf_concurrency)
        self._min_password = min_password_length
        self._session_ttl = session_ttl_s
        self._dummy_hash = sec.dummy_password_hash(self._scrypt)
        self._regulator = LoginRegulator(
            redis,
            prefix=prefix,
            clock=clock,
            max_failures=login_max_failures,
            ip_max_failures=login_ip_max_failures or login_max_failures,
            window_s=login_window_s,
            ban_s=login_ban_s,
            ban_max_s=login_ban_max_s,
            decay_s=login_ban_decay_s,
            account_max_failures=login_account_max_failures,
            account_slow_s=login_account_slow_s,
        )
        self._scripts = ScriptRunner(redis)

    # typed reads (the client decodes responses, its stubs cannot know that)
    async def _hgetall(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], await self._r.hgetall(key))

    async def _hget(self, key: str, field: str) -> str | None:
        return cast(str | None, await self._r.hget(key, field))

    async def _smembers(self, key: str) -> set[str]:
        return cast(set[str], await self._r.smembers(key))

    @property
    def regulator(self) -> LoginRegulator:
        """Sign-in regulation, for other ways of signing in (gateway/routes/oidc.py)."""
        return self._regulator

    @property
    def redis_client(self) -> aioredis.Redis:
        """The client this store uses, for stores kept beside it (gateway/oidc_cli.py)."""
        return self._r

    @property
    def revoke_channel(self) -> str:
        return Keys(self._keys.p).revoke()

    # keys
    def _org_key(self, slug: str) -> str:
        return self._keys.org(slug)

    def _children_key(self, slug: str) -> str:
        return self._keys.children(slug)

    def _user_key(self, username: str) -> str:
        return self._keys.user(username)

    def _session_key(self, sid_hash: str) -> str:
        return self._keys.session(sid_hash)

    def _user_sessions_key(self, username: str) -> str:
        return self._keys.user_sessions(username)

    def _token_key(self, token_id: str) -> str:
        return self._keys.api_token(token_id)

    def _user_tokens_key(self, username: str) -> str:
        return self._keys.user_tokens(username)

    def _failed_key(self, username: str) -> str:
        return self._keys.user_failed(username)

    def _failed_n_key(self, username: str) -> str:
        return self._keys.user_failed_n(username)

    def _root_key(self) -> str:
        return self._keys.root()

    # -- the deployment root ---------------------------------------------------------------

    async def deployment_root(self) -> str | None:
        """The slug of the deployment root org, or None before ``classguard init``."""
        return cast(str | None, await self._r.get(self._root_key()))

    async def init_root(self, slug: str, *, name: str | None = None) -> Org:
        """Make ``slug`` the deployment root: created without a parent when missing, and
        recorded once. Naming another root later, or an org that has a parent, is
        ``org_conflict``; naming the same one again is a no-op."""
        validate_slug(slug)
        current = await self.deployment_root()
        if current is not None and current != slug:
            raise StaffError("org_conflict",
                             f"the deployment root is already {current!r}", "org")
        existing = await self.get_org(slug)
        if existing is not None and existing.parent is not None:
            raise StaffError("org_conflict",
                             f"org {slug!r} lies under {existing.parent!r}: a root has no "
                             "parent", "org")
        org = await self.ensure_org(slug, name=name)
        if not await self._r.set(self._root_key(), slug, nx=True):
            current = await self.deployment_root()
            if current != slug:
                raise StaffError("org_conflict",
                                 f"the deployment root is already {current!r}", "org")
        return org

    async def deployment_target(self) -> Target:
        """What deployment-wide actions act on (key rotation, events that belong to no
        org, every school's failed sign-ins), for ``authz.allows``."""
        return Target.deployment(await self.deployment_root())

    # -- orgs ------------------------------------------------------------------------------

    async def ensure_org(
        self, slug: str, *, name: str | None = None, parent: str | None = None
    ) -> Org:
        """The org ``slug``, created when missing (as a root when ``parent`` is None).

        An existing org keeps its parent: naming a different one is ``org_conflict``.
        A given ``name`` renames an existing org. A missing parent is ``unknown_org``.
        """
        validate_slug(slug)
        if parent is not None:
            validate_slug(parent, "parent")
            if parent == slug:
                raise StaffError("org_conflict", "an org cannot be its own parent", "parent")
        clean_name = _clean_text(name, _MAX_NAME_CHARS, "name") if name is not None else None
        for _ in range(2):
            existing = await self.get_org(slug)
            if existing is not None:
                if parent is not None and parent != existing.parent:
                    raise StaffError(
                        "org_conflict",
                        f"org {slug!r} already exists under {existing.parent or 'no parent'}",
                        "parent",
                    )
                if clean_name is not None and clean_name != existing.name:
                    await self._r.hset(self._org_key(slug), "name", clean_name)
                    existing = Org(slug, clean_name, existing.parent)
                return existing
            parent_slug = parent or ""
            created = await self._scripts.run(
                _CREATE_ORG,
                [
                    self._org_key(slug),
                    self._keys.all_orgs(),
                    self._org_key(parent_slug or slug),
                    self._children_key(parent_slug or slug),
                ],
                [slug, clean_name or slug, parent_slug, self._clock(), _RECORD_VERSION],
            )
            if int(created) == -1:
                raise StaffError("unknown_org", f"parent org {parent!r} does not exist", "parent")
            if int(created) == 1:
                return Org(slug, clean_name or slug, parent)
            # created concurrently by someone else: compare with what they wrote
        raise StaffError("org_conflict", f"org {slug!r} changed while being created", "org")

    async def get_org(self, slug: str) -> Org | None:
        if not _SLUG_RE.fullmatch(slug):
            return None
        return _org_from_hash(await self._hgetall(self._org_key(slug)))

    async def list_orgs(self) -> list[Org]:
        slugs = await self._smembers(self._keys.all_orgs())
        async with self._r.pipeline(transaction=False) as pipe:
            for slug in sorted(slugs):
                pipe.hgetall(self._org_key(slug))
            rows: list[dict[str, str]] = await pipe.execute()
        return [org for org in map(_org_from_hash, rows) if org is not None]

    async def org_ancestors(self, slug: str) -> list[str]:
        """``[slug, parent, grandparent, ..., root]`` (inclusive); ``[]`` for an unknown org."""
        chain: list[str] = []
        current: str | None = slug
        while current:
            if len(chain) >= _MAX_ORG_DEPTH or current in chain or not _SLUG_RE.fullmatch(current):
                # cannot be built through this API; refuse rather than loop
                raise StaffError("org_conflict", f"org tree above {slug!r} is corrupt", "org")
            parent = await self._hget(self._org_key(current), "parent")
            if parent is None:
                if not chain:
                    return []
                raise StaffError("org_conflict", f"org {current!r} is missing", "org")
            chain.append(current)
            current = parent
        return chain

    async def org_subtree(self, slug: str) -> set[str]:
        """``slug`` and every org below it; empty for an unknown org."""
        if await self.get_org(slug) is None:
            return set()
        seen = {slug}
        frontier = [slug]
        for _ in range(_MAX_ORG_DEPTH):
            if not frontier:
                break
            async with self._r.pipeline(transaction=False) as pipe:
                for org in frontier:
                    pipe.smembers(self._children_key(org))
                levels: list[set[str]] = await pipe.execute()
            frontier = sorted({c for level in levels for c in level} - seen)
            seen.update(frontier)
        return seen

    async def is_within(self, org: str, ancestor: str) -> bool:
        """Is ``org`` equal to ``ancestor`` or below it?"""
        return ancestor in await self.org_ancestors(org)

    # -- users -----------------------------------------------------------------------------

    async def _check_password(self, password: str, username: str) -> None:
        """``weak_password`` with a ``problem`` (see ``gateway.passwords``) unless usable."""
        if not isinstance(password, str):
            raise StaffError("weak_password", "password must be a string", "password")
        # The list is read and decompressed once per process (~0.1-0.2 s): off the loop.
        await asyncio.to_thread(common_passwords)
        problem = password_problem(password, username, min_length=self._min_password)
        if problem is not None:
            text = {
                "too_short": f"password must be at least {self._min_password} characters",
                "too_long": f"password must be at most {_MAX_PASSWORD_CHARS} characters",
                "contains_username": "password must not contain the username",
                "common": "password is on the list of common, breached passwords",
                "repetitive": "password is a repetition or a run of characters",
            }.get(problem, "password is too weak")
            err = StaffError("weak_password", text, "password")
            err.problem = problem
            raise err

    async def _hash(self, password: str) -> str:
        async with self._kdf_slots:
            return await asyncio.to_thread(sec.hash_password, password, self._scrypt)

    async def _verify(self, password: str, encoded: str) -> bool:
        async with self._kdf_slots:
            try:
                return await asyncio.to_thread(sec.verify_password, password, encoded)
            except sec.SecretFormatError:
                log.error("stored password hash is malformed; treating it as a mismatch")
                return False

    async def create_user(
        self, username: str, *, role: str, org: str, password: str | None = None
    ) -> tuple[User, str | None]:
        """Create an account in an existing org (``unknown_org`` otherwise: orgs are made
        with :meth:`ensure_org` under a parent, or as the root by :meth:`init_root`).

        Without ``password`` a one-time password is generated, returned and flagged
        ``must_change_password``. Errors: invalid_username, invalid_role, invalid_org,
        weak_password, user_exists.
        """
        name = validate_username(username)
        checked_role = validate_role(role)
        validate_slug(org)
        one_time = None
        if password is None:
            one_time = password = sec.generate_one_time_password()
        else:
            await self._check_password(password, name)
        if await self._r.exists(self._user_key(name)):
            raise StaffError("user_exists", f"user {name!r} already exists", "username")
        if await self.get_org(org) is None:
            raise StaffError("unknown_org", f"org {org!r} does not exist", "org")
        encoded = await self._hash(password)
        user = User(name, checked_role, org, one_time is not None, False, self._clock())
        # The index goes first: an index entry without a record is skipped when listing,
        # a record missing from the index would be invisible.
        await self._r.sadd(self._keys.users(), name)
        created = await self._scripts.run(
            _CREATE_USER,
            [self._user_key(name)],
            [
                "v", _RECORD_VERSION,
                "username", name,
                "role", checked_role,
                "org", org,
                "pw", encoded,
                "must_change_password", int(user.must_change_password),
                "disabled", 0,
                "created", user.created,
            ],
        )  # fmt: skip
        if not int(created):
            raise StaffError("user_exists", f"user {name!r} already exists", "username")
        return user, one_time

    async def _user_record(self, username: str) -> tuple[User, str] | None:
        return _user_from_hash(await self._hgetall(self._user_key(username)))

    async def get_user(self, username: str) -> User | None:
        name = normalize_username(username)
        if not _USERNAME_RE.fullmatch(name):
            return None
        record = await self._user_record(name)
        return record[0] if record else None

    async def list_users(self, *, org_subtree: str | Collection[str] | None = None) -> list[User]:
        """All users, or those whose org is in ``org_subtree``: a set of slugs, or one
        slug whose subtree is meant. Sorted by username."""
        orgs: Collection[str] | None
        if isinstance(org_subtree, str):
            orgs = await self.org_subtree(org_subtree)
        else:
            orgs = org_subtree
        names = await self._smembers(self._keys.users())
        async with self._r.pipeline(transaction=False) as pipe:
            for name in sorted(names):
                pipe.hgetall(self._user_key(name))
            rows: list[dict[str, str]] = await pipe.execute()
        users = []
        for row in rows:
            record = _user_from_hash(row)
            if record and (orgs is None or record[0].org in orgs):
                users.append(record[0])
        return users

    async def set_password(
        self, username: str, password: str, *, must_change: bool = False
    ) -> None:
        """Replace the password and end every session of the account."""
        name = normalize_username(username)
        await self._check_password(password, name)
        await self._store_password(name, password, must_change=must_change)

    async def _store_password(self, name: str, password: str, *, must_change: bool) -> None:
        if await self.get_user(name) is None:
            raise StaffError("not_found", f"user {name!r} not found", "username")
        encoded = await self._hash(password)
        await self._r.hset(
            self._user_key(name),
            mapping={"pw": encoded, "must_change_password": int(must_change)},
        )
        await self.revoke_user_sessions(name)

    async def change_password(self, username: str, current: str, new: str, *, ip: str) -> User:
        """The owner's change: ``current`` must be the password in force
        (``wrong_password`` otherwise), ``new`` must pass the checks and differ from it.
        Clears ``must_change_password`` and ends every session of the account (the caller
        opens a fresh one).

        NOTE: checking ``current`` is a sign-in attempt: regulated and counted like one
        (``regulated`` with ``retry_after``), so a stolen session cannot be used to guess
        the password."""
        name = normalize_username(username)
        await self._check_password(new, name)
        attempt = await self._regulator.begin(account=name, ip=ip)
        if attempt.retry_after:
            err = StaffError("regulated", "too many wrong passwords; try again later",
                             "current_password")
            err.retry_after = attempt.retry_after
            raise err
        record = await self._user_record(name)
        if record is None or record[0].disabled:
            await self._regulator.failed(attempt)
            raise StaffError("not_found", f"user {name!r} not found", "username")
        if not isinstance(current, str) or len(current) > _MAX_PASSWORD_CHARS \
                or not await self._verify(current, record[1]):
            await self._regulator.failed(attempt)
            await self._note_failure(name, ip, "wrong_password")
            raise StaffError("wrong_password", "the current password is wrong",
                             "current_password")
        await self._regulator.succeeded(attempt)
        if new == current:
            raise StaffError("weak_password", "the new password must differ from the old one",
                             "password")
        await self._store_password(name, new, must_change=False)
        user = await self.get_user(name)
        assert user is not None
        return user

    async def reset_password(self, username: str) -> tuple[User, str]:
        """An administrator's reset: a new one-time password (returned, shown once) that
        must be changed at the next sign-in; every session of the account ends, and its
        sign-in regulation is lifted so the owner can use the new password at once."""
        name = normalize_username(username)
        if await self.get_user(name) is None:
            raise StaffError("not_found", f"user {name!r} not found", "username")
        one_time = sec.generate_one_time_password()
        await self._store_password(name, one_time, must_change=True)
        await self._regulator.reset(account=name)
        user = await self.get_user(name)
        assert user is not None
        return user, one_time

    async def _set_disabled(self, username: str, disabled: bool) -> User:
        name = normalize_username(username)
        if await self.get_user(name) is None:
            raise StaffError("not_found", f"user {name!r} not found", "username")
        await self._r.hset(self._user_key(name), "disabled", int(disabled))
        user = await self.get_user(name)
        assert user is not None
        return user

    async def disable_user(self, username: str) -> User:
        """Block logins and end every session and API token of the account."""
        user = await self._set_disabled(username, True)
        await self.revoke_user_sessions(user.username)
        for token in await self.list_api_tokens(user.username):
            await self.revoke_api_token(token.token_id)
        return user

    async def enable_user(self, username: str) -> User:
        return await self._set_disabled(username, False)

    async def set_email(self, username: str, address: str | None) -> User:
        """Set (or with ``None`` or ``""``, clear) the account's email address.
        Errors: not_found, invalid_email."""
        name = normalize_username(username)
        if await self.get_user(name) is None:
            raise StaffError("not_found", f"user {name!r} not found", "username")
        value = (address or "").strip()
        if value:
            if not valid_email(value):
                raise StaffError("invalid_email", "email must be an address like "
                                 "name@school.edu.vn (at most 254 characters)", "email")
            await self._r.hset(self._user_key(name), "email", value)
        else:
            await self._r.hdel(self._user_key(name), "email")
        user = await self.get_user(name)
        assert user is not None
        return user

    # -- login -----------------------------------------------------------------------------

    async def login(self, username: str, password: str, *, ip: str) -> LoginResult:
        """Check a username and password, regulated per account and per client IP.

        1. A regulated account or IP is answered ``regulated`` with ``retry_after``,
           before and without looking at the password.
        2. The password is checked in constant time; an unknown (or malformed) username is
           checked against a dummy hash with the same cost, so the answer
           (``invalid_credentials``) and its timing are those of a wrong password.
        3. The attempt is recorded as a failure, or the account's failures are cleared.
        """
        name = normalize_username(username)
        # Bound the regulation key for junk input; valid names are far shorter.
        attempt = await self._regulator.begin(account=name[:256], ip=ip)
        if attempt.retry_after:
            await self.note_regulated(name[:64], ip)
            return LoginResult(
                False, "regulated", retry_after=attempt.retry_after, audit_reason="regulated"
            )
        record = await self._user_record(name) if _USERNAME_RE.fullmatch(name) else None
        if not isinstance(password, str) or len(password) > _MAX_PASSWORD_CHARS:
            # NOTE: no KDF for oversized input. The timing then depends on the password's
            # length only, never on whether the account exists.
            matches = False
        else:
            matches = await self._verify(password, record[1] if record else self._dummy_hash)
        reason = None
        if record is None:
            reason = "unknown_user"
        elif not matches:
            reason = "wrong_password"
        elif record[0].disabled:
            # NOTE: a disabled account answers like a wrong password (and counts as a
            # failure), so its password cannot be confirmed through the login form.
            reason = "disabled"
        if reason is not None:
            await self._regulator.failed(attempt)
            if record is not None:
                await self._note_failure(name, ip, reason)
            return LoginResult(False, "invalid_credentials", audit_reason=reason)
        assert record is not None
        await self._regulator.succeeded(attempt)
        if sec.needs_rehash(record[1], self._scrypt):
            await self._r.hset(self._user_key(name), "pw", await self._hash(password))
        return LoginResult(True, "ok", user=record[0], failures=await self._take_failures(name))

    async def _note_failure(self, name: str, ip: str, why: str) -> None:
        """Remember a failed sign-in at an existing account, for its owner to see.

        NOTE: only for accounts that exist, and at most ``_FAILURES_KEPT`` entries plus a
        counter per account, so guessing cannot grow Redis; the addresses kept here are
        the owner's to see, the audit log has them for IT anyway."""
        entry = json.dumps({"t": round(self._clock(), 3), "ip": ip[:64], "why": why})
        key, n_key = self._failed_key(name), self._failed_n_key(name)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.lpush(key, entry)
            pipe.ltrim(key, 0, _FAILURES_KEPT - 1)
            pipe.expire(key, _FAILURES_TTL_S)
            pipe.incr(n_key)
            pipe.expire(n_key, _FAILURES_TTL_S)
            await pipe.execute()

    async def _take_failures(self, name: str) -> FailedLogins:
        """The failures since the last successful sign-in, forgotten as they are read."""
        key, n_key = self._failed_key(name), self._failed_n_key(name)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, 4)
            pipe.get(n_key)
            pipe.delete(key, n_key)
            rows, count, _ = await pipe.execute()
        recent = []
        for row in rows:
            try:
                item = json.loads(row)
                recent.append((float(item["t"]), str(item["ip"])))
            except (ValueError, KeyError, TypeError):
                continue
        return FailedLogins(int(count or 0), tuple(recent))

    async def note_regulated(self, username: str, ip: str) -> None:
        """A refused (regulated) attempt at an existing account counts for its owner too."""
        name = normalize_username(username)
        if _USERNAME_RE.fullmatch(name) and await self._r.exists(self._user_key(name)):
            await self._note_failure(name, ip, "regulated")

    async def reset_login_regulation(
        self, *, username: str | None = None, ip: str | None = None
    ) -> None:
        """Lift a login ban and forget recorded failures (an administrator's unlock)."""
        await self._regulator.reset(
            account=normalize_username(username)[:256] if username is not None else None,
            ip=ip,
        )

    # -- sessions --------------------------------------------------------------------------

    async def create_session(
        self, user: User, *, ip: str, user_agent: str, failures: FailedLogins | None = None
    ) -> tuple[str, str, Session]:
        """(cookie value, CSRF token, session). Redis keeps only the encrypted record,
        under the SHA-256 of the sid; the secret that decrypts it is only in the cookie.

        The session carries the account's ``must_change_password`` (every change of it
        ends the account's sessions, so it cannot go stale) and the failed sign-ins its
        owner is to be shown (``failures``)."""
        failures = failures or FailedLogins()
        if user.disabled:
            raise StaffError("user_disabled", "account is disabled", "username")
        sid, secret = sec.new_session_ids()
        sid_hash = sec.sid_hash(sid)
        now = self._clock()
        session = Session(
            sid_hash=sid_hash,
            username=user.username,
            role=user.role,
            org=user.org,
            csrf_token=sec.new_csrf_token(),
            created=now,
            expires=now + self._session_ttl,
            ip=ip,
            user_agent=user_agent[:_MAX_UA_CHARS],
            must_change_password=user.must_change_password,
            failed_logins=failures.count,
            failed_recent=failures.recent,
        )
        body: dict[str, Any] = {
            "v": 1,
            "username": session.username,
            "role": session.role,
            "org": session.org,
            "csrf_token": session.csrf_token,
            "created": session.created,
            "expires": session.expires,
            "ip": session.ip,
            "ua": session.user_agent,
            "mc": int(session.must_change_password),
            "fl": session.failed_logins,
            "fr": [list(item) for item in session.failed_recent],
        }
        record = sec.seal_session(sid, secret, json.dumps(body).encode("utf-8"))
        ttl_ms = max(1, int(self._session_ttl * 1000))
        index = self._user_sessions_key(user.username)
        # Index first: a dangling index entry is harmless, an unindexed session would
        # survive revoke_user_sessions.
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(index, "-inf", now)
            pipe.zadd(index, {sid_hash: session.expires})
            pipe.pexpire(index, ttl_ms)
            pipe.set(self._session_key(sid_hash), record, px=ttl_ms)
            await pipe.execute()
        return sec.session_cookie(sid, secret), session.csrf_token, session

    async def load_session(self, cookie_value: str | None) -> Session | None:
        """The live session of a cookie, or None (missing, malformed, tampered, expired
        or revoked). Never raises for bad input; a Redis outage still raises."""
        if not isinstance(cookie_value, str):
            return None
        parsed = sec.parse_session_cookie(cookie_value)
        if parsed is None:
            return None
        sid, secret = parsed
        sid_hash = sec.sid_hash(sid)
        record = cast(str | None, await self._r.get(self._session_key(sid_hash)))
        if record is None:
            return None
        plaintext = sec.open_session(sid, secret, record)
        if plaintext is None:
            return None
        try:
            body = json.loads(plaintext)
            if body.get("v") != 1 or body["role"] not in ROLES:
                return None
            session = Session(
                sid_hash=sid_hash,
                username=str(body["username"]),
                role=body["role"],
                org=str(body["org"]),
                csrf_token=str(body["csrf_token"]),
                created=float(body["created"]),
                expires=float(body["expires"]),
                ip=str(body["ip"]),
                user_agent=str(body["ua"]),
                must_change_password=body.get("mc", 1) != 0,
                failed_logins=int(body.get("fl", 0)),
                failed_recent=tuple((float(t), str(a)) for t, a in body.get("fr", [])),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if session.expires <= self._clock():
            return None
        if "mc" not in body:
            # A session opened before the flag was kept: ask the account record.
            user = await self.get_user(session.username)
            if user is None:
                return None
            session = replace(session, must_change_password=user.must_change_password)
        return session

    check_csrf = staticmethod(check_csrf)

    async def _announce(self, message: dict[str, str]) -> None:
        await self._r.publish(self.revoke_channel, json.dumps(message))

    async def revoke_session(self, handle: str | Session) -> bool:
        """End one session: given the ``Session``, its cookie value, its sid (base64url)
        or its sid hash (hex). Announces ``staff_session`` on the revoke channel.
        Returns whether a live record was deleted; unrecognisable input is False."""
        username = None
        if isinstance(handle, Session):
            sid_hash, username = handle.sid_hash, handle.username
        elif re.fullmatch(r"[0-9a-f]{64}", handle):
            sid_hash = handle
        elif (parsed := sec.parse_session_cookie(handle)) is not None:
            session = await self.load_session(handle)
            sid_hash = sec.sid_hash(parsed[0])
            username = session.username if session else None
        elif (sid := sec.parse_sid(handle)) is not None:
            sid_hash = sec.sid_hash(sid)
        else:
            return False
        deleted = await self._r.delete(self._session_key(sid_hash))
        if username is not None:
            await self._r.zrem(self._user_sessions_key(username), sid_hash)
        await self._announce({"kind": "staff_session", "sid_hash": sid_hash})
        return bool(deleted)

    async def session_ids(self, username: str) -> list[str]:
        """The sid hashes of the account's live sessions, oldest expiry first."""
        index = self._user_sessions_key(normalize_username(username))
        hashes = cast(list[str], await self._r.zrangebyscore(index, self._clock(), "+inf"))
        if not hashes:
            return []
        alive = await self._r.exists(*(self._session_key(h) for h in hashes))
        if alive == len(hashes):
            return hashes
        out = []
        for h in hashes:
            if await self._r.exists(self._session_key(h)):
                out.append(h)
        return out

    async def revoke_session_of(self, username: str, sid_hash: str) -> bool:
        """End one session of ``username`` by its sid hash (its owner's session list, an
        administrator's): False when it is not one of theirs."""
        name = normalize_username(username)
        if not re.fullmatch(r"[0-9a-f]{64}", sid_hash) or \
                await self._r.zscore(self._user_sessions_key(name), sid_hash) is None:
            return False
        await self._r.zrem(self._user_sessions_key(name), sid_hash)
        return await self.revoke_session(sid_hash)

    async def revoke_user_sessions(self, username: str) -> int:
        """End every session of an account; returns how many were live."""
        name = normalize_username(username)
        index = self._user_sessions_key(name)
        sid_hashes = cast(list[str], await self._r.zrange(index, 0, -1))
        deleted = 0
        if sid_hashes:
            deleted = await self._r.delete(*(self._session_key(h) for h in sid_hashes))
        await self._r.delete(index)
        for sid_hash in sid_hashes:
            await self._announce({"kind": "staff_session", "sid_hash": sid_hash})
        return int(deleted)

    # -- API bearer tokens -----------------------------------------------------------------

    async def create_api_token(
        self, username: str, *, label: str | None = None, expires_in_s: float | None = None
    ) -> str:
        """A new bearer token ``cgk_<id>_<secret>``; it is shown once, Redis keeps only
        the SHA-256 of the secret. Every token expires: after ``expires_in_s`` (default
        ``TOKEN_DEFAULT_LIFETIME_S``, at most ``TOKEN_MAX_LIFETIME_S``), and it can be
        revoked before (:meth:`revoke_api_token`)."""
        name = normalize_username(username)
        user = await self.get_user(name)
        if user is None:
            raise StaffError("not_found", f"user {name!r} not found", "username")
        if user.disabled:
            raise StaffError("user_disabled", "account is disabled", "username")
        clean_label = _clean_text(label, _MAX_LABEL_CHARS, "label") if label is not None else ""
        if expires_in_s is None:
            expires_in_s = TOKEN_DEFAULT_LIFETIME_S
        if not 0 < expires_in_s <= TOKEN_MAX_LIFETIME_S:
            raise StaffError(
                "invalid_expiry",
                f"expiry must be 1 s to {TOKEN_MAX_LIFETIME_S // 86400} days",
                "expires_in_s",
            )
        token, token_id, digest = sec.new_api_token()
        now = self._clock()
        expires = str(now + expires_in_s)
        key = self._token_key(token_id)
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.sadd(self._user_tokens_key(name), token_id)
            pipe.hset(
                key,
                mapping={
                    "v": _RECORD_VERSION,
                    "username": name,
                    "label": clean_label,
                    "secret_sha256": digest,
                    "created": str(now),
                    "expires": expires,
                },
            )
            pipe.pexpire(key, max(1, int(expires_in_s * 1000)))
            await pipe.execute()
        return token

    async def resolve_bearer(self, token: str | None) -> User | None:
        """The enabled user a bearer token belongs to, or None. Never raises for bad input.

        NOTE: whether a token id exists may show in the timing; the id is not secret, the
        secret part is compared in constant time."""
        if not isinstance(token, str):
            return None
        parsed = sec.parse_api_token(token.strip())
        if parsed is None:
            return None
        token_id, secret = parsed
        data = await self._hgetall(self._token_key(token_id))
        stored = data.get("secret_sha256")
        if not stored or not sec.api_secret_matches(secret, stored):
            return None
        if _token_expiry(data) <= self._clock():
            return None
        user = await self.get_user(data.get("username", ""))
        if user is None or user.disabled:
            return None
        return user

    async def revoke_api_token(self, token_id: str, *, username: str | None = None) -> bool:
        """Delete a token (by id, or the full token). Announces ``api_token``. With
        ``username``, only a token of that account (False for anyone else's)."""
        parsed = sec.parse_api_token(token_id)
        if parsed is not None:
            token_id = parsed[0]
        if not sec.is_token_id(token_id):
            return False
        key = self._token_key(token_id)
        owner = await self._hget(key, "username")
        if username is not None and owner != normalize_username(username):
            return False
        username = owner
        deleted = await self._r.delete(key)
        if username:
            await self._r.srem(self._user_tokens_key(username), token_id)
        await self._announce({"kind": "api_token", "token_id": token_id})
        return bool(deleted)

    async def list_api_tokens(self, username: str) -> list[ApiToken]:
        """The account's live tokens (never their secrets), oldest first."""
        name = normalize_username(username)
        index = self._user_tokens_key(name)
        ids = await self._smembers(index)
        ordered = sorted(ids)
        async with self._r.pipeline(transaction=False) as pipe:
            for token_id in ordered:
                pipe.hgetall(self._token_key(token_id))
            rows: list[dict[str, str]] = await pipe.execute()
        tokens = []
        gone = []
        now = self._clock()
        for token_id, row in zip(ordered, rows, strict=True):
            if not row or _token_expiry(row) <= now:
                gone.append(token_id)  # expired (through its TTL, or by the clock)
                continue
            tokens.append(
                ApiToken(
                    token_id=token_id,
                    username=row.get("username", name),
                    label=row.get("label") or None,
                    created=float(row.get("created", 0)),
                    expires=_token_expiry(row),
                )
            )
        if gone:
            await self._r.srem(index, *gone)
        return sorted(tokens, key=lambda t: (t.created, t.token_id))


# -- record decoding -----------------------------------------------------------------------


def _token_expiry(row: dict[str, str]) -> float:
    """When a stored token stops working. Tokens issued before every token had an expiry
    (``expires`` empty) live ``TOKEN_MAX_LIFETIME_S`` from their creation; an unreadable
    record is already expired (fail closed)."""
    try:
        raw = row.get("expires") or ""
        if raw:
            return float(raw)
        return float(row["created"]) + TOKEN_MAX_LIFETIME_S
    except (KeyError, ValueError):
        return 0.0


def _org_from_hash(data: dict[str, str]) -> Org | None:
    if not data or data.get("v") != _RECORD_VERSION:
        return None
    return Org(
        slug=data["slug"], name=data.get("name") or data["slug"], parent=data.get("parent") or None
    )


def _user_from_hash(data: dict[str, Any]) -> tuple[User, str] | None:
    """(user, password hash), or None for a missing or unreadable record."""
    if not data:
        return None
    if data.get("v") != _RECORD_VERSION or data.get("role") not in ROLES:
        log.error("unreadable staff user record (v=%r)", data.get("v"))
        return None
    user = User(
        username=data["username"],
        role=data["role"],
        org=data["org"],
        must_change_password=data.get("must_change_password") == "1",
        disabled=data.get("disabled") == "1",
        created=float(data.get("created", 0)),
        email=data.get("email") or None,
    )
    return user, data["pw"]
