"""Second factor for staff: TOTP, WebAuthn passkeys and one-time recovery codes; the
pending sign-in between the first and the second factor; step-up freshness; and the
list of an account's sessions (device, address, created, last seen).

Redis keys (``P`` = prefix; named in gateway/stores/keys.py, ``MfaKeys``)::

    P mfa:totp:<username>          hash    secret (sealed, gateway/secretbox.py), confirmed
                                           ("0" while enrolment waits for a first code), created
    P mfa:totp_step:<username>     string  the last TOTP time step accepted (replay guard)
    P mfa:recovery:<username>      hash    HMAC-SHA256(server key, code) -> created
    P mfa:recovery_key             string  the HMAC key, sealed in the secret box
    P mfa:webauthn:<username>      hash    credential id (base64url) -> JSON public key,
                                           sign count, created
    P mfa:challenge:<purpose>:<id> string  a WebAuthn challenge (base64url)       (TTL)
    P mfa:pending:<sha256(token)>  string  JSON of a sign-in whose first factor passed (TTL)
    P mfa:fresh:<sid hash>         string  when the session last proved a second factor (TTL)
    P mfa:fail:<username>          string  failed second-factor attempts in the window (TTL)
    P mfa:policy:<org>             string  "required" | "optional"
    P mfa:session:<sid hash>       hash    username, ip, ua, created, seen           (TTL)

Org policy (``second_factor_policy``): ``required`` makes a second factor mandatory for
administrators and IT staff of the org and of its subtree (the nearest org that says
anything decides); ``optional`` (the default, so an upgrade locks nobody out) leaves it
to each person. Whoever has enrolled a factor must use it at every sign-in, whatever
the policy, and teachers may always enrol one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import pyotp
import redis.asyncio as aioredis
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import InvalidAuthenticationResponse, InvalidRegistrationResponse
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from audit.scripts import Script, ScriptRunner

from .secretbox import SecretBox, SecretBoxError
from .stores.keys import MfaKeys

STEP_UP_MAX_AGE_S = 300.0  # exporting evidence, rotating keys, erasing, managing staff
PENDING_TTL_S = 300  # between the first factor and the second
CHALLENGE_TTL_S = 300
RECOVERY_CODES = 10
TOTP_STEP_S = 30
TOTP_SKEW_STEPS = 1
# Wrong second-factor answers per account per window, whatever the source: a TOTP code
# has a million values, so five guesses in five minutes give an attacker 1 in 200,000.
FAILURES_PER_WINDOW = 5
FAILURE_WINDOW_S = 300
STEP_UP_ROLES = frozenset({"admin", "it"})
Policy = Literal["required", "optional"]
POLICIES: tuple[Policy, ...] = ("required", "optional")
Method = Literal["totp", "webauthn", "recovery"]

_TAKE_STEP = Script.load("gateway.stores", "mfa_take_step")
_TOUCH = Script.load("gateway.stores", "mfa_touch_session")


class MfaError(Exception):
    """A refused second-factor operation with a stable ``code``."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Pending:
    """A sign-in whose first factor passed: who, from where, and what to show them."""

    username: str
    ip: str
    user_agent: str
    via: str  # password | oidc
    failures: tuple[int, tuple[tuple[float, str], ...]]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    sid_hash: str
    ip: str
    user_agent: str
    created: float
    seen: float


def format_recovery_code(raw: str) -> str:
    return f"{raw[:5]}-{raw[5:]}"


def _normalise_code(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())[:64]


class MfaStore:
    def __init__(self, redis: aioredis.Redis, prefix: str, box: SecretBox, *,
                 clock: Callable[[], float] = time.time, rp_id: str, origin: str,
                 rp_name: str = "ClassGuard", session_ttl_s: float = 12 * 3600) -> None:
        self._r = redis
        self._p = prefix
        self._k = MfaKeys(prefix)
        self._scripts = ScriptRunner(redis)
        self._box = box
        self._clock = clock
        self.rp_id = rp_id
        self.origin = origin
        self.rp_name = rp_name
        self._session_ttl = session_ttl_s

    # -- what an account has ---------------------------------------------------------------

    async def methods(self, username: str) -> list[Method]:
        out: list[Method] = []
        if await self._r.hget(self._k.totp(username), "confirmed") == "1":
            out.append("totp")
        if await self._r.hlen(self._k.webauthn(username)):
            out.append("webauthn")
        return out

    async def recovery_left(self, username: str) -> int:
        return int(await self._r.hlen(self._k.recovery(username)))

    async def policy(self, org_chain: list[str]) -> Policy:
        """The nearest explicit policy along ``[org, parent, ..., root]``."""
        for org in org_chain:
            value = await self._r.get(self._k.policy(org))
            if value in POLICIES:
                return value
        return "optional"

    async def set_policy(self, org: str, policy: Policy) -> None:
        if policy not in POLICIES:
            raise MfaError("invalid_policy", "policy must be required or optional")
        await self._r.set(self._k.policy(org), policy)

    # -- failures (per account) ------------------------------------------------------------

    async def _check_regulated(self, username: str) -> None:
        key = self._k.fail(username)
        n = int(await self._r.get(key) or 0)
        if n >= FAILURES_PER_WINDOW:
            ttl = int(await self._r.ttl(key))
            raise MfaError("regulated", "too many wrong codes; wait",
                           retry_after=max(1, ttl))

    async def _fail(self, username: str) -> None:
        key = self._k.fail(username)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, FAILURE_WINDOW_S, nx=True)
            await pipe.execute()

    async def _succeed(self, username: str) -> None:
        await self._r.delete(self._k.fail(username))

    # -- TOTP ------------------------------------------------------------------------------

    def _aad(self, username: str) -> bytes:
        return f"mfa:totp:{username}".encode()

    async def begin_totp(self, username: str) -> str:
        """A new secret, kept unconfirmed until a first code proves the app holds it.
        Refused while a confirmed one exists (remove it first)."""
        key = self._k.totp(username)
        if await self._r.hget(key, "confirmed") == "1":
            raise MfaError("already_enrolled", "an authenticator app is already enrolled")
        secret = pyotp.random_base32()
        await self._r.hset(key, mapping={
            "secret": self._box.encrypt(secret.encode(), aad=self._aad(username)),
            "confirmed": "0", "created": str(self._clock())})
        return secret

    def provisioning_uri(self, username: str, secret: str) -> str:
        return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=self.rp_name)

    async def _totp_secret(self, username: str) -> tuple[str, bool] | None:
        row = cast(dict[str, str], await self._r.hgetall(self._k.totp(username)))
        if not row.get("secret"):
            return None
        try:
            secret = self._box.decrypt(row["secret"], aad=self._aad(username)).decode()
        except SecretBoxError:
            return None
        return secret, row.get("confirmed") == "1"

    async def _match_totp(self, username: str, secret: str, code: str) -> bool:
        """The code of the current step or of one step either side, each step once."""
        code = "".join(ch for ch in code if ch.isdigit())
        if len(code) != 6:
            return False
        totp = pyotp.TOTP(secret)
        now = self._clock()
        for offset in range(-TOTP_SKEW_STEPS, TOTP_SKEW_STEPS + 1):
            at = int(now) + offset * TOTP_STEP_S
            if hmac.compare_digest(totp.at(at), code):
                step = at // TOTP_STEP_S
                took = await self._scripts.run(
                    _TAKE_STEP, [self._k.totp_step(username)],
                    [str(step), str(TOTP_STEP_S * (2 * TOTP_SKEW_STEPS + 2))])
                return bool(took)
        return False

    async def confirm_totp(self, username: str, code: str) -> list[str]:
        """Enable the pending secret with its first code; returns fresh recovery codes."""
        await self._check_regulated(username)
        found = await self._totp_secret(username)
        if found is None or found[1]:
            raise MfaError("not_pending", "start the enrolment first")
        if not await self._match_totp(username, found[0], code):
            await self._fail(username)
            raise MfaError("invalid_code", "wrong or already used code")
        await self._succeed(username)
        await self._r.hset(self._k.totp(username), "confirmed", "1")
        return await self._new_recovery_codes_if_none(username)

    async def remove_totp(self, username: str) -> bool:
        return bool(await self._r.delete(self._k.totp(username),
                                         self._k.totp_step(username)))

    # -- recovery codes --------------------------------------------------------------------

    async def _hmac_key(self) -> bytes:
        key = self._k.recovery_key()
        sealed = await self._r.get(key)
        if sealed is None:
            await self._r.set(key, self._box.encrypt(os.urandom(32), aad=b"mfa:recovery_key"),
                              nx=True)
            sealed = await self._r.get(key)
        return self._box.decrypt(str(sealed), aad=b"mfa:recovery_key")

    async def _code_digest(self, code: str) -> str:
        return hmac.new(await self._hmac_key(), _normalise_code(code).encode(),
                        hashlib.sha256).hexdigest()

    async def new_recovery_codes(self, username: str) -> list[str]:
        """Ten new codes (the old ones stop working); shown once, kept only as HMACs."""
        alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
        codes = ["".join(secrets.choice(alphabet) for _ in range(10))
                 for _ in range(RECOVERY_CODES)]
        key = self._k.recovery(username)
        now = str(self._clock())
        digests = {await self._code_digest(c): now for c in codes}
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=cast(dict[Any, Any], digests))
            await pipe.execute()
        return [format_recovery_code(c) for c in codes]

    async def _new_recovery_codes_if_none(self, username: str) -> list[str]:
        if await self.recovery_left(username):
            return []
        return await self.new_recovery_codes(username)

    async def use_recovery_code(self, username: str, code: str) -> bool:
        """Spend one code: the HDEL is atomic, so a code opens one sign-in only.

        NOTE: the lookup is by keyed HMAC, not by the code: how long Redis takes to find
        or miss a field tells nothing about any code."""
        await self._check_regulated(username)
        ok = bool(await self._r.hdel(self._k.recovery(username),
                                     await self._code_digest(code)))
        if ok:
            await self._succeed(username)
        else:
            await self._fail(username)
        return ok

    # -- WebAuthn --------------------------------------------------------------------------

    async def _credentials(self, username: str) -> dict[str, dict[str, Any]]:
        rows = cast(dict[str, str], await self._r.hgetall(self._k.webauthn(username)))
        return {cid: json.loads(v) for cid, v in rows.items()}

    async def registration_options(self, username: str) -> str:
        existing = await self._credentials(username)
        opts = generate_registration_options(
            rp_id=self.rp_id, rp_name=self.rp_name,
            user_id=hashlib.sha256(f"{self._p}{username}".encode()).digest()[:16],
            user_name=username, user_display_name=username,
            exclude_credentials=[PublicKeyCredentialDescriptor(id=base64url_to_bytes(c))
                                 for c in existing],
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.PREFERRED),
        )
        await self._r.set(self._k.challenge("reg", username),
                          bytes_to_base64url(opts.challenge), ex=CHALLENGE_TTL_S)
        return options_to_json(opts)

    async def register(self, username: str, credential: dict[str, Any]) -> list[str]:
        """Keep a new passkey; returns fresh recovery codes if the account had none."""
        challenge = await self._r.getdel(self._k.challenge("reg", username))
        if challenge is None:
            raise MfaError("no_challenge", "ask for registration options first")
        try:
            v = verify_registration_response(
                credential=credential, expected_challenge=base64url_to_bytes(_text(challenge)),
                expected_rp_id=self.rp_id, expected_origin=self.origin)
        except (InvalidRegistrationResponse, ValueError, KeyError, TypeError) as exc:
            raise MfaError("invalid_credential", f"passkey refused: {exc}") from exc
        cid = bytes_to_base64url(v.credential_id)
        await self._r.hset(self._k.webauthn(username), cid, json.dumps({
            "pk": bytes_to_base64url(v.credential_public_key), "count": v.sign_count,
            "created": self._clock()}))
        return await self._new_recovery_codes_if_none(username)

    async def forget_recovery_codes(self, username: str) -> None:
        """With no factor left, recovery codes would stand in for nothing."""
        await self._r.delete(self._k.recovery(username))

    async def remove_passkeys(self, username: str) -> bool:
        return bool(await self._r.delete(self._k.webauthn(username)))

    async def authentication_options(self, username: str, purpose: str) -> str:
        creds = await self._credentials(username)
        if not creds:
            raise MfaError("not_enrolled", "no passkey enrolled")
        opts = generate_authentication_options(
            rp_id=self.rp_id,
            allow_credentials=[PublicKeyCredentialDescriptor(id=base64url_to_bytes(c))
                               for c in creds],
            user_verification=UserVerificationRequirement.PREFERRED)
        await self._r.set(self._k.challenge(purpose, username),
                          bytes_to_base64url(opts.challenge), ex=CHALLENGE_TTL_S)
        return options_to_json(opts)

    async def verify_assertion(self, username: str, purpose: str,
                               credential: dict[str, Any]) -> bool:
        await self._check_regulated(username)
        challenge = await self._r.getdel(self._k.challenge(purpose, username))
        creds = await self._credentials(username)
        cid = credential.get("id") if isinstance(credential, dict) else None
        row = creds.get(cid) if isinstance(cid, str) else None
        if challenge is None or row is None:
            await self._fail(username)
            return False
        try:
            v = verify_authentication_response(
                credential=credential, expected_challenge=base64url_to_bytes(_text(challenge)),
                expected_rp_id=self.rp_id, expected_origin=self.origin,
                credential_public_key=base64url_to_bytes(row["pk"]),
                credential_current_sign_count=int(row["count"]))
        except (InvalidAuthenticationResponse, ValueError, KeyError, TypeError):
            await self._fail(username)
            return False
        row["count"] = v.new_sign_count
        await self._r.hset(self._k.webauthn(username), str(cid), json.dumps(row))
        await self._succeed(username)
        return True

    # -- one check for every method --------------------------------------------------------

    async def verify_code(self, username: str, code: str) -> Method | None:
        """A TOTP code or a recovery code; which one matched, or None."""
        await self._check_regulated(username)
        digits = "".join(ch for ch in code if ch.isdigit())
        if len(digits) == 6 and len(_normalise_code(code)) == 6:
            found = await self._totp_secret(username)
            if found is not None and found[1] and \
                    await self._match_totp(username, found[0], digits):
                await self._succeed(username)
                return "totp"
            await self._fail(username)
            return None
        if await self.use_recovery_code(username, code):
            return "recovery"
        return None

    # -- pending sign-ins ------------------------------------------------------------------

    async def create_pending(self, p: Pending) -> str:
        token = secrets.token_urlsafe(32)
        body = {"u": p.username, "ip": p.ip, "ua": p.user_agent, "via": p.via,
                "fc": p.failures[0], "fr": [list(x) for x in p.failures[1]]}
        await self._r.set(self._k.pending(_sha(token)), json.dumps(body), ex=PENDING_TTL_S)
        return token

    async def peek_pending(self, token: str | None) -> Pending | None:
        if not token or len(token) > 128:
            return None
        raw = await self._r.get(self._k.pending(_sha(token)))
        return _pending(raw)

    async def take_pending(self, token: str) -> Pending | None:
        """The pending sign-in, consumed: one second factor opens one session."""
        if not token or len(token) > 128:
            return None
        return _pending(await self._r.getdel(self._k.pending(_sha(token))))

    # -- freshness -------------------------------------------------------------------------

    async def mark_fresh(self, sid_hash: str) -> None:
        await self._r.set(self._k.fresh(sid_hash), str(self._clock()),
                          ex=max(1, int(self._session_ttl)))

    async def fresh_age(self, sid_hash: str) -> float | None:
        raw = await self._r.get(self._k.fresh(sid_hash))
        if raw is None:
            return None
        return self._clock() - float(raw)

    # -- the sessions an account has -------------------------------------------------------

    async def note_session(self, sid_hash: str, username: str, ip: str, user_agent: str,
                           created: float) -> None:
        key = self._k.session(sid_hash)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"u": username, "ip": ip, "ua": user_agent[:512],
                                    "created": str(created), "seen": str(created)})
            pipe.expire(key, max(1, int(self._session_ttl)))
            await pipe.execute()

    async def describe_sessions(self, sid_hashes: list[str]) -> list[SessionInfo]:
        out: list[SessionInfo] = []
        for h in sid_hashes:
            row = cast(dict[str, str], await self._r.hgetall(self._k.session(h)))
            if not row:
                out.append(SessionInfo(h, "", "", 0.0, 0.0))
                continue
            out.append(SessionInfo(h, row.get("ip", ""), row.get("ua", ""),
                                   float(row.get("created", 0)), float(row.get("seen", 0))))
        return out

    async def forget_session(self, sid_hash: str) -> None:
        await self._r.delete(self._k.session(sid_hash), self._k.fresh(sid_hash))


async def touch_session(redis: aioredis.Redis, prefix: str, sid_hash: str, now: float) -> None:
    """Note that a session was used (its owner's session list shows "last seen")."""
    await ScriptRunner(redis).run(_TOUCH, [MfaKeys(prefix).session(sid_hash)], [str(now)])


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode()


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _pending(raw: Any) -> Pending | None:
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        return Pending(str(d["u"]), str(d["ip"]), str(d["ua"]), str(d["via"]),
                       (int(d["fc"]), tuple((float(t), str(a)) for t, a in d["fr"])))
    except (ValueError, KeyError, TypeError):
        return None
