"""Credential forgery: made-up, edited, re-keyed and time-shifted join tokens.

Each attack is played from a machine of its own against a running ``classguard serve``.
The attacker must never be held in the waiting room (a ticket would put a fake student
in front of the teacher) nor handed a ``/go`` redirect; a real student of the same class
still gets in; and the attempt is in the audit trail with its reason and the
verifier's finding (``facts.token_failure``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.auditing import milestone

from . import forge
from .kit import Deployment, Device, Klass, Scene, assert_kept_out, reasons, scene

pytestmark = pytest.mark.slow


def _server_key(dep: Deployment, genuine: str) -> Ed25519PrivateKey:
    header, _, _ = forge.parts(genuine)
    key = serialization.load_pem_private_key(dep.join_key_pem(header["kid"]), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


async def _refused(s: Scene, k: Klass, token: str, reason: str) -> Device:
    """The attacker opens the forged link (JSON and HTML) and is refused outright."""
    attacker = s.device()
    for _ in range(2):
        r = await attacker.open(token)
        assert r.status == 403, r
        assert r.body["status"] == "denied" and r.body["reason"] == reason, r
        assert "ticket" not in r.body and "ws" not in r.body, r
    r = await attacker.open_html(token)
    assert r.status == 403 and "/go/" not in r.body
    assert_kept_out(attacker)
    st = await s.teacher.state(k.id)
    assert st["waiting"] == [] and st["admitted"] == [], st
    return attacker


async def _public_pem(s: Scene, genuine: str) -> bytes:
    r = await s.device().get("/.well-known/jwks.json")
    assert r.status == 200
    header, _, _ = forge.parts(genuine)
    jwk = next(j for j in r.body["keys"] if j["kid"] == header["kid"])
    return forge.public_pem_from_jwk(jwk)


# attack -> (recipe(genuine token of student 0, our published public key as PEM, class),
#            what the verifier must find)
FORGERIES: dict[str, tuple[Callable[[str, bytes, Klass], str], str]] = {
    "alg_none": (lambda g, pem, k: forge.alg_none(g), "bad_signature"),
    "hs256_with_public_key": (lambda g, pem, k: forge.hs256_with_public_key(g, pem),
                              "bad_signature"),
    "unknown_kid": (lambda g, pem, k: forge.unknown_kid(g), "unknown_kid"),
    "another_gateways_key": (lambda g, pem, k: forge.another_gateways_key(g), "bad_signature"),
    "another_gateways_token": (lambda g, pem, k: forge.another_gateways_token(g),
                               "unknown_kid"),
    "header_jwk_injection": (lambda g, pem, k: forge.header_jwk_injection(g), "bad_signature"),
    # impersonation: a real student's token carrying a classmate's id
    "tampered_sub": (lambda g, pem, k: forge.tampered(g, sub=k.sid(1)), "bad_signature"),
}


@pytest.mark.parametrize("attack", list(FORGERIES))
async def test_forged_token(deployment: Deployment, attack: str) -> None:
    make, failure = FORGERIES[attack]
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        token = make(k.token(0), await _public_pem(s, k.token(0)), k)
        attacker = await _refused(s, k, token, "token_invalid")
        await s.admit_legit(k, 1)
        # A refused forgery names no class the gateway could trust: the root
        # administrator finds it by the attacker's address.
        events = await s.attempts_from(attacker.ip, 3)
        assert reasons(events) == ["token_invalid"] * 3
        assert {e["facts"]["token_failure"] for e in events} == {failure}
        assert all("class" not in e for e in events)


async def test_tampered_cls_to_enter_another_class(deployment: Deployment) -> None:
    """A student of one class edits ``cls`` to walk into another class of the school."""
    async with scene(deployment) as s:
        mine = await s.new_class("strict")
        target = await s.new_class("standard", title="Lý 11B2")
        ctl = await s.teacher.control(target.id)  # host present: roster students walk in
        try:
            forged = forge.tampered(mine.token(0), cls=target.id)
            attacker = await _refused(s, target, forged, "token_invalid")
            phone = s.device()
            r = await phone.open(target.token(2))
            assert r.body["status"] == "admitted", r
            assert (await phone.go(r.body["redirect"])).status == 302
        finally:
            await ctl.close()
        events = await s.attempts_from(attacker.ip, 3)
        assert set(reasons(events)) == {"token_invalid"}
        assert {e["facts"]["token_failure"] for e in events} == {"bad_signature"}


async def test_expired_token(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        now = int(time.time())
        old = forge.resigned(k.token(0), _server_key(deployment, k.token(0)),
                             iat=now - 90 * 86400, nbf=now - 90 * 86400, exp=now - 3600)
        await _refused(s, k, old, "token_expired")
        await s.admit_legit(k, 1)
        # A genuine (verified) token names its class: the class's trail has it.
        events = await s.await_audit(
            lambda ev: reasons(ev).count("token_expired") == 3, class_=k.id, type="join")
        assert {e["subject"] for e in events if e["reason"] == "token_expired"} == {k.sid(0)}


async def test_not_yet_valid_token(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        now = int(time.time())
        early = forge.resigned(k.token(0), _server_key(deployment, k.token(0)),
                               nbf=now + 86400, exp=now + 30 * 86400)
        await _refused(s, k, early, "token_invalid")
        await s.admit_legit(k, 1)
        events = await s.await_audit(
            lambda ev: reasons(ev).count("token_invalid") == 3, class_=k.id, type="join")
        assert all(e["facts"].get("not_yet_valid") is True
                   for e in events if e["reason"] == "token_invalid")


async def test_token_for_another_class(deployment: Deployment) -> None:
    """A correctly signed token whose class is not the one it was issued for (what a
    buggy or compromised issuing path could mint): the student is not on that class's
    links, so it is a revoked credential there."""
    async with scene(deployment) as s:
        mine = await s.new_class("strict")
        target = await s.new_class("strict", title="Hoá 12C")
        moved = forge.resigned(mine.token(0), _server_key(deployment, mine.token(0)),
                               cls=target.id)
        await _refused(s, target, moved, "token_revoked")
        await s.admit_legit(target, 0)
        await s.await_audit(lambda ev: reasons(ev).count("token_revoked") == 3,
                            class_=target.id, type="join")


def _corpus() -> list[dict[str, Any]]:
    doc = json.loads((forge.FIXTURES / "cases.json").read_text())
    return [c for c in doc["cases"] if c["token"]]


async def test_token_fixture_corpus_over_http(deployment: Deployment) -> None:
    """Every forgery of the fixed corpus (``fixtures/tokens``), sent as a link: refused,
    never a 500, never a ticket, each refusal audited."""
    cases = _corpus()
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        devices = []
        refused = throttled = 0
        unshaped: Counter[str] = Counter()  # refused links not in three parts, per address
        for i, case in enumerate(cases):
            if i % 15 == 0:  # stay under the per-address limit: this is not a flood
                devices.append(s.device())
            r = await devices[-1].open(quote(case["token"], safe=""))
            assert r.status in (403, 404, 429), (case["name"], r)
            if r.status == 403:
                assert r.body == {"status": "denied", "reason": "token_invalid"}, case["name"]
                if case["token"].count(".") != 2:
                    unshaped[devices[-1].ip] += 1
                else:
                    refused += 1
            elif r.status == 429:
                # Most cases share one jti: its bucket is drawn before any signature
                # check, so the corpus is throttled like any replayed credential.
                assert r.body["reason"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
                throttled += 1
        assert refused >= 10 and refused + throttled >= len(cases) - 3
        assert_kept_out(*devices)
        await s.admit_legit(k, 0)
        # Sequenced asynchronously: poll until every refusal is in the trail.
        for _ in range(100):
            found = []
            for d in devices:
                found += reasons(await s.audit(reader="qt.hoa", ip=d.ip))
            if found.count("token_invalid") >= refused + len(unshaped) and \
                    ("rate_limited" in found or not throttled):
                break
            await asyncio.sleep(0.1)
        # every refusal of something shaped like a token one by one; links not even in
        # three parts, and the throttled ones, aggregated per address (the 1st, 10th...)
        aggregated = sum(sum(1 for n in range(1, k + 1) if milestone(n))
                         for k in unshaped.values())
        assert unshaped, "the corpus has links that are not in three parts"
        assert [r for r in found if r != "rate_limited"] == \
            ["token_invalid"] * (refused + aggregated)
        assert ("rate_limited" in found) == (throttled > 0)
        assert found.count("rate_limited") <= len(devices) * 2


async def test_unshaped_links_are_audited_per_source_in_aggregate(
        deployment: Deployment) -> None:
    """Links not even in three parts (a scanner's noise, a garbage flood) are refused and
    audited per source address: the 1st in a window in full, then the 10th with its
    count, so a flood cannot flood the log; a forgery shaped like a token from the same
    address is still recorded on its own."""
    async with scene(deployment) as s:
        k = await s.new_class("strict")
        scanner = s.device()
        for i in range(12):
            r = await scanner.open(f"not-a-token-{i}")
            assert r.status == 403 and r.body == {"status": "denied",
                                                  "reason": "token_invalid"}, r
        assert scanner.cookie is None  # noise is handed no device cookie
        r = await scanner.open(forge.alg_none(k.token(0)))
        assert r.status == 403 and r.body["reason"] == "token_invalid", r
        assert_kept_out(scanner)
        events = await s.attempts_from(scanner.ip, 3)
        assert reasons(events) == ["token_invalid"] * 3
        aggregated = sorted((e for e in events if "count" in (e.get("facts") or {})),
                            key=lambda e: e["facts"]["count"])
        assert [e["facts"]["count"] for e in aggregated] == [1, 10], events
        for e in aggregated:
            assert e["facts"]["window_s"] == 60 and e["facts"]["first_at"] > 0
            assert e["facts"]["token_failure"] == "malformed" and "class" not in e
        single = [e for e in events if "count" not in (e.get("facts") or {})]
        assert len(single) == 1 and single[0]["facts"]["token_failure"] == "bad_signature"
