"""Attacks on the second factor: guessing TOTP codes, a password-only session reaching
for step-up actions, and forged or replayed passkey assertions.

The passkey is a software authenticator written here (P-256, "none" attestation), as a
security key would answer; the gateway checks it with py_webauthn."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pyotp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.mfa import FAILURES_PER_WINDOW

from ..gateway.helpers import TEACHER_PASSWORD, Gateway, running_gateway

ORIGIN = "http://classguard.test"  # the test gateway's public_url
RP_ID = "classguard.test"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SoftKey:
    """A passkey on a software authenticator."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cred_id = os.urandom(16)
        self.count = 0

    def _cose(self) -> bytes:
        n = self.key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: n.x.to_bytes(32, "big"),
                            -3: n.y.to_bytes(32, "big")})

    @staticmethod
    def _client_data(kind: str, challenge: str, origin: str) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge, "origin": origin,
                           "crossOrigin": False}).encode()

    def register(self, options: dict[str, Any]) -> dict[str, Any]:
        cd = self._client_data("webauthn.create", options["challenge"], ORIGIN)
        auth = (hashlib.sha256(RP_ID.encode()).digest() + bytes([0x45])
                + struct.pack(">I", 0) + bytes(16) + struct.pack(">H", len(self.cred_id))
                + self.cred_id + self._cose())
        att = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth})
        return {"id": b64u(self.cred_id), "rawId": b64u(self.cred_id), "type": "public-key",
                "response": {"clientDataJSON": b64u(cd), "attestationObject": b64u(att)},
                "clientExtensionResults": {}}

    def assert_(self, challenge: str, *, signer: ec.EllipticCurvePrivateKey | None = None,
                origin: str = ORIGIN) -> dict[str, Any]:
        self.count += 1
        cd = self._client_data("webauthn.get", challenge, origin)
        auth = hashlib.sha256(RP_ID.encode()).digest() + bytes([0x05]) + \
            struct.pack(">I", self.count)
        sig = (signer or self.key).sign(auth + hashlib.sha256(cd).digest(),
                                        ec.ECDSA(hashes.SHA256()))
        return {"id": b64u(self.cred_id), "rawId": b64u(self.cred_id), "type": "public-key",
                "response": {"clientDataJSON": b64u(cd), "authenticatorData": b64u(auth),
                             "signature": b64u(sig), "userHandle": None},
                "clientExtensionResults": {}}


async def password(gw: Gateway, username: str) -> tuple[aiohttp.ClientSession,
                                                        aiohttp.ClientResponse]:
    c = gw.client()
    r = await c.post("/api/v1/session", json={"username": username,
                                              "password": TEACHER_PASSWORD})
    return c, r


async def test_totp_guessing_is_limited_per_account(tmp_path: Path, redis_url: str,
                                                    redis_prefix: str) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        await gw.staff_user("thay.hieu", "admin")
        c, r = await password(gw, "thay.hieu")
        csrf = (await r.json())["csrf_token"]
        h = {"X-CSRF-Token": csrf}
        secret = (await (await c.post("/api/v1/account/second-factor/totp", headers=h)
                         ).json())["secret"]
        r = await c.post("/api/v1/account/second-factor/totp/confirm", headers=h,
                         json={"code": pyotp.TOTP(secret).now()})
        assert r.status == 200
        # the attacker knows the password; each guess comes from a fresh device
        statuses = []
        for guess in range(FAILURES_PER_WINDOW + 3):
            d, r = await password(gw, "thay.hieu")
            assert r.status == 401
            r = await d.post("/api/v1/session/second-factor", json={"code": f"{guess:06d}"})
            statuses.append(r.status)
        assert statuses[:FAILURES_PER_WINDOW] == [401] * FAILURES_PER_WINDOW
        assert set(statuses[FAILURES_PER_WINDOW:]) == {429}
        # the right code is refused too while the account is held back
        d, r = await password(gw, "thay.hieu")
        r = await d.post("/api/v1/session/second-factor",
                         json={"code": pyotp.TOTP(secret).now()})
        assert r.status == 429 and "Retry-After" in r.headers
        assert "cg_session" not in {m.key for m in d.cookie_jar}


async def test_password_only_session_cannot_take_step_up_actions(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        token = await gw.staff_user("thay.hieu", "admin")
        r = await gw.api(token).put("/api/v1/orgs/school-a/second-factor-policy",
                                    json={"policy": "required"})
        assert r.status == 200
        c, r = await password(gw, "thay.hieu")
        h = {"X-CSRF-Token": (await r.json())["csrf_token"]}
        for method, path, body in [
            ("POST", "/api/v1/admin/users", {"username": "x.y", "role": "admin",
                                             "org": "school-a"}),
            ("POST", "/api/v1/admin/users/thay.hieu/password-reset", None),
            ("POST", "/api/v1/audit/erase", {"reason": "r", "student_id": "s"}),
            ("DELETE", "/api/v1/admin/users/thay.hieu/sessions", None),
        ]:
            r = await c.request(method, path, json=body, headers=h)
            assert r.status == 403, (path, r.status)
            assert (await r.json())["error"]["code"] == "step_up_required", path
        # nor can it switch the policy's second factor off by removing it
        r = await c.delete("/api/v1/account/second-factor/totp", headers=h)
        assert r.status == 403


async def test_forged_and_replayed_passkey_assertions_are_refused(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        await gw.staff_user("thay.hieu", "admin")
        key = SoftKey()
        c, r = await password(gw, "thay.hieu")
        h = {"X-CSRF-Token": (await r.json())["csrf_token"]}
        opts = await (await c.post("/api/v1/account/second-factor/passkeys/options",
                                   headers=h)).json()
        r = await c.post("/api/v1/account/second-factor/passkeys", headers=h,
                         json={"credential": key.register(opts)})
        assert r.status == 201, await r.text()
        assert len((await r.json())["recovery_codes"]) == 10

        async def attempt(make: Any) -> int:
            d, r = await password(gw, "thay.hieu")
            assert (await r.json())["error"]["code"] == "second_factor_required"
            o = await (await d.post("/api/v1/session/second-factor/passkey/options")).json()
            r = await d.post("/api/v1/session/second-factor",
                             json={"credential": make(o["challenge"])})
            return r.status

        # signed by another key
        assert await attempt(lambda ch: key.assert_(ch, signer=ec.generate_private_key(
            ec.SECP256R1()))) == 401
        # for another site
        assert await attempt(lambda ch: key.assert_(ch, origin="https://evil.example")) == 401
        # a genuine assertion over a challenge of its own making
        assert await attempt(lambda ch: key.assert_(b64u(os.urandom(32)))) == 401
        # the genuine one works, once
        kept: dict[str, dict[str, Any]] = {}

        def genuine(ch: str) -> dict[str, Any]:
            kept["a"] = key.assert_(ch)
            return kept["a"]

        assert await attempt(genuine) == 200
        # replayed on a new sign-in (its challenge is spent)
        assert await attempt(lambda ch: kept["a"]) == 401
