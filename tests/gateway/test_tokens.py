"""Join tokens: issue/verify round trips, the named attack fixtures, fuzzing."""

from __future__ import annotations

import base64
import json
import runpy
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.keys import JoinKeyring, b64url_decode_canonical
from gateway.tokens import (
    AUDIENCE,
    MAX_TOKEN_CHARS,
    REQUIRED_CLAIMS,
    TokenError,
    is_safe_id,
    issue_join_token,
    peek_token,
    verify_join_token,
)
from policies.model import TokenFacts

FIXTURES = Path(__file__).resolve().parents[1] / "attacks" / "fixtures" / "tokens"
CASES_DOC: dict[str, Any] = json.loads((FIXTURES / "cases.json").read_text("utf-8"))
CASES = CASES_DOC["cases"]
ISSUER = CASES_DOC["issuer"]
NOW = 1_767_225_600.0


@pytest.fixture(scope="module")
def fixture_keyring() -> JoinKeyring:
    return JoinKeyring.from_pem_files([FIXTURES / "our_key.pem"])


@pytest.fixture
def keyring(tmp_path: Path) -> JoinKeyring:
    return JoinKeyring.load_or_create(tmp_path / "keys", clock=lambda: NOW)


def _issue(keyring: JoinKeyring, **over: Any) -> str:
    args: dict[str, Any] = {
        "issuer": ISSUER,
        "student_id": "s7k2mnpqrstu",
        "class_id": "cabcdefghijk",
        "jti": "AbC_def-123",
        "iat": 1_767_225_600,
        "nbf": 1_767_225_540,
        "exp": 1_798_761_600,
    }
    args.update(over)
    return issue_join_token(keyring.signing_key(), **args)


# -- the attack fixtures (data in tests/attacks/fixtures/tokens) -----------------------


def test_fixtures_are_what_the_generator_makes() -> None:
    module = runpy.run_path(str(FIXTURES / "generate.py"))
    for name, data in module["build"]().items():
        assert (FIXTURES / name).read_bytes() == data, f"{name} is stale: run generate.py"


def test_fixture_keyring_has_the_fixture_kid(fixture_keyring: JoinKeyring) -> None:
    assert fixture_keyring.active_kid == CASES_DOC["our_kid"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_attack_fixture(fixture_keyring: JoinKeyring, case: dict[str, Any]) -> None:
    facts = verify_join_token(fixture_keyring, case["token"], issuer=ISSUER)
    expect = case["expect"]
    assert facts.failure == expect["failure"], case["attack"]
    if expect["failure"] is None:
        assert facts == TokenFacts(
            failure=None,
            student_id=expect["student_id"],
            class_id=expect["class_id"],
            jti=expect["jti"],
            exp=float(expect["exp"]),
            nbf=float(expect["nbf"]),
            kid=expect["kid"],
        )
    else:
        # A failed token reports no claims, only a well-formed kid.
        assert facts.student_id is None and facts.class_id is None and facts.jti is None
        assert facts.exp is None and facts.nbf is None
        assert facts.kid == expect.get("kid")


def test_fixture_names_cover_the_required_attacks() -> None:
    names = {c["name"] for c in CASES}
    assert {
        "alg_none",
        "hs256_with_public_key",
        "unknown_kid",
        "tampered_sub",
        "tampered_cls",
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "another_gateways_key",
        "header_jwk_injection",
        "header_jku_injection",
        "header_x5u_injection",
        "oversized",
        "non_base64_garbage",
    } <= names


def test_oversized_fixture_is_really_over_the_limit() -> None:
    (case,) = [c for c in CASES if c["name"] == "oversized"]
    assert len(case["token"]) > MAX_TOKEN_CHARS


def test_pyjwt_alone_would_accept_the_hs256_confusion_if_asked() -> None:
    """Shows the fixture is a real attack: a verifier that lets the token pick the
    algorithm and keys HMAC with the public key accepts it."""
    (case,) = [c for c in CASES if c["name"] == "hs256_with_raw_public_key"]
    pub = JoinKeyring.from_pem_files([FIXTURES / "our_key.pem"]).signing_key().public_key()
    from cryptography.hazmat.primitives import serialization

    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    claims = jwt.decode(
        case["token"],
        key=raw,
        algorithms=["HS256"],
        audience=AUDIENCE,
        options={"verify_exp": False},
    )
    assert claims["sub"] == "s7k2mnpqrstu"


# -- round trips -------------------------------------------------------------------------


def test_issue_and_verify(keyring: JoinKeyring) -> None:
    token = _issue(keyring)
    facts = verify_join_token(keyring, token, issuer=ISSUER)
    assert facts == TokenFacts(
        failure=None,
        student_id="s7k2mnpqrstu",  # type: ignore[arg-type]
        class_id="cabcdefghijk",  # type: ignore[arg-type]
        jti="AbC_def-123",  # type: ignore[arg-type]
        exp=1_798_761_600.0,
        nbf=1_767_225_540.0,
        kid=keyring.active_kid,
    )
    assert peek_token(token) == (keyring.active_kid, "AbC_def-123")


# The order of the group Ed25519 works in (RFC 8032 §5.1): a signature's S is below it.
_ED25519_L = 2**252 + 27742317777372353535851937790883648493


def test_a_malleated_signature_is_refused(keyring: JoinKeyring) -> None:
    """S + L verifies the same equation; RFC 8032 §5.1.7 (and libsodium, which verifies
    join tokens) refuse it, so one link has one signature, as PyJWT's OpenSSL path has."""
    token = _issue(keyring)
    head, payload, sig_b64 = token.split(".")
    sig = b64url_decode_canonical(sig_b64)
    assert sig is not None
    s = int.from_bytes(sig[32:], "little") + _ED25519_L
    assert s < 2**256
    forged = f"{head}.{payload}." + base64.urlsafe_b64encode(
        sig[:32] + s.to_bytes(32, "little")).rstrip(b"=").decode()
    assert verify_join_token(keyring, forged, issuer=ISSUER).failure == "bad_signature"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key=keyring.public_key(keyring.active_kid), algorithms=["EdDSA"],
                   audience="classguard:join", issuer=ISSUER)


def test_issued_token_has_exactly_the_contract_header_and_claims(keyring: JoinKeyring) -> None:
    token = _issue(keyring)
    assert jwt.get_unverified_header(token) == {
        "alg": "EdDSA",
        "typ": "JWT",
        "kid": keyring.active_kid,
    }
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) == {"iss", "aud", "sub", "cls", "jti", "iat", "nbf", "exp"}
    assert claims["aud"] == "classguard:join"
    assert len(token) < 600  # fits a QR code comfortably


def test_issue_is_deterministic(keyring: JoinKeyring) -> None:
    # Ed25519 is deterministic: a link can be re-signed identically from stored claims.
    assert _issue(keyring) == _issue(keyring)


def test_token_of_another_issuer_is_bad_claims(keyring: JoinKeyring) -> None:
    token = _issue(keyring)
    assert verify_join_token(keyring, token, issuer="https://other.example").failure == (
        "bad_claims"
    )


def test_time_is_not_checked_here(keyring: JoinKeyring) -> None:
    token = _issue(keyring, iat=1000, nbf=1000, exp=2000)
    facts = verify_join_token(keyring, token, issuer=ISSUER)
    assert facts.failure is None and facts.exp == 2000.0


def test_wall_clock_is_irrelevant(keyring: JoinKeyring) -> None:
    far_future = int(time.time()) + 10 * 365 * 86400
    token = _issue(keyring, iat=far_future, nbf=far_future, exp=far_future + 60)
    assert verify_join_token(keyring, token, issuer=ISSUER).failure is None


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("student_id", "", "bad_id"),
        ("student_id", "a b", "bad_id"),
        ("class_id", "c{x}", "bad_id"),
        ("jti", "x" * 65, "bad_id"),
        ("issuer", "", "bad_issuer"),
        ("exp", 1.5, "bad_time"),
        ("exp", True, "bad_time"),
        ("nbf", -1, "bad_time"),
        ("nbf", 1_900_000_000, "bad_time"),  # after exp
    ],
)
def test_issue_refuses_values_that_would_not_verify(
    keyring: JoinKeyring, field: str, value: Any, code: str
) -> None:
    with pytest.raises(TokenError) as err:
        _issue(keyring, **{field: value})
    assert err.value.code == code


def test_token_of_a_rotated_key_verifies_until_not_after(tmp_path: Path) -> None:
    now = [NOW]
    ring = JoinKeyring.load_or_create(tmp_path / "k", clock=lambda: now[0])
    old_token = _issue(ring)
    ring.rotate(max_token_lifetime_s=3600)
    new_token = _issue(ring)
    assert verify_join_token(ring, old_token, issuer=ISSUER).failure is None
    assert verify_join_token(ring, new_token, issuer=ISSUER).failure is None
    now[0] += 3600
    assert verify_join_token(ring, old_token, issuer=ISSUER).failure == "unknown_kid"
    assert verify_join_token(ring, new_token, issuer=ISSUER).failure is None


# -- peek ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_peek_never_raises_on_fixtures(case: dict[str, Any]) -> None:
    result = peek_token(case["token"])
    if result is not None:
        kid, jti = result
        assert kid and jti


def test_peek_rejects_unsafe_jti() -> None:
    (case,) = [c for c in CASES if c["name"] == "valid"]
    h, _, s = case["token"].split(".")
    import base64

    payload = base64.urlsafe_b64encode(b'{"jti":"a:b"}').rstrip(b"=").decode()
    assert peek_token(f"{h}.{payload}.{s}") is None


def test_peek_survives_deep_nesting() -> None:
    (case,) = [c for c in CASES if c["name"] == "valid"]
    h, _, s = case["token"].split(".")
    import base64

    payload = base64.urlsafe_b64encode(b"[" * 1400).rstrip(b"=").decode()
    assert peek_token(f"{h}.{payload}.{s}") is None


# -- fuzzing --------------------------------------------------------------------------------

_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_token_like = st.builds(
    lambda a, b, c: f"{a}.{b}.{c}",
    st.text(_B64_CHARS, max_size=200),
    st.text(_B64_CHARS, max_size=300),
    st.text(_B64_CHARS, max_size=100),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=3000), _token_like))
@example("a.b.c")
@example("..")
@example("\x00.\x00.\x00")
@example("e30.e30." + "A" * 86)  # {} header
def test_verify_never_raises(fixture_keyring: JoinKeyring, token: str) -> None:
    facts = verify_join_token(fixture_keyring, token, issuer=ISSUER)
    assert isinstance(facts, TokenFacts)
    assert facts.failure is not None
    peek_token(token)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.binary(max_size=400))
def test_verify_never_raises_on_arbitrary_json_parts(
    fixture_keyring: JoinKeyring, header: bytes, payload: bytes
) -> None:
    import base64

    def enc(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    token = f"{enc(header)}.{enc(payload)}.{'A' * 86}"
    assert verify_join_token(fixture_keyring, token, issuer=ISSUER).failure is not None
    peek_token(token)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=len(CASES[0]["token"]) - 1), st.characters())
def test_any_single_character_change_of_a_valid_token_fails(
    fixture_keyring: JoinKeyring, index: int, ch: str
) -> None:
    token = CASES[0]["token"]
    mutated = token[:index] + ch + token[index + 1 :]
    facts = verify_join_token(fixture_keyring, mutated, issuer=ISSUER)
    if mutated == token:
        assert facts.failure is None
    else:
        assert facts.failure is not None


def test_verify_accepts_non_str_without_raising(fixture_keyring: JoinKeyring) -> None:
    for junk in (None, b"a.b.c", 12, ["a"]):
        facts = verify_join_token(fixture_keyring, junk, issuer=ISSUER)  # type: ignore[arg-type]
        assert facts.failure == "malformed"
        assert peek_token(junk) is None  # type: ignore[arg-type]


# -- the verifier against PyJWT's --------------------------------------------------------


def _pyjwt_accepts(keyring: JoinKeyring, token: str) -> dict[str, Any] | None:
    """What PyJWT's own verifier says of the token, with the options the join path's
    contract names (EdDSA only, strict audience, our issuer, every claim required; times
    are the policy's). None when it refuses."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        key = keyring.public_key(kid) if isinstance(kid, str) else None
        if key is None:
            return None
        claims: dict[str, Any] = jwt.decode(
            token, key=key, algorithms=["EdDSA"], audience=AUDIENCE, issuer=ISSUER,
            options={"require": list(REQUIRED_CLAIMS), "strict_aud": True,
                     "verify_exp": False, "verify_nbf": False, "verify_iat": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    return claims


def _step5(claims: dict[str, Any]) -> bool:
    ids = all(is_safe_id(claims.get(k)) for k in ("sub", "cls", "jti"))
    times = all(type(claims.get(k)) is int and 0 <= claims[k] <= 253_402_300_799
                for k in ("iat", "nbf", "exp"))
    return ids and times and claims["nbf"] <= claims["exp"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_verifier_accepts_only_what_pyjwt_accepts(fixture_keyring: JoinKeyring,
                                                   case: dict[str, Any]) -> None:
    ours = verify_join_token(fixture_keyring, case["token"], issuer=ISSUER)
    ref = _pyjwt_accepts(fixture_keyring, case["token"])
    if ours.failure is None:
        assert ref is not None
        assert (ref["sub"], ref["cls"], ref["jti"]) == (ours.student_id, ours.class_id,
                                                          ours.jti)
    elif ours.failure in ("bad_signature", "unknown_kid"):
        assert ref is None


_GOOD: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "s7k2mnpqrstu",
                         "cls": "cabcdefghijk", "jti": "AbC_def-123", "iat": 1_767_225_600,
                         "nbf": 1_767_225_540, "exp": 1_798_761_600}
_ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**40), st.floats(0, 1e10),
                        st.text(max_size=8), st.just([AUDIENCE]), st.just(ISSUER + "/"),
                        st.just({"a": 1}), st.just("has space"))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(REQUIRED_CLAIMS), _ODD_VALUES, max_size=3),
       st.sets(st.sampled_from(REQUIRED_CLAIMS), max_size=2),
       st.dictionaries(st.sampled_from(["x", "name", "crit"]), st.text(max_size=4),
                       max_size=2))
def test_verifier_agrees_with_pyjwt_on_signed_claims(
    fixture_keyring: JoinKeyring, changed: dict[str, Any], dropped: set[str],
    extra: dict[str, str]
) -> None:
    """Genuinely signed tokens with odd claims: ours accepts exactly what PyJWT accepts
    and the claim types of step 5 allow."""
    claims = {**_GOOD, **changed, **extra}
    for name in dropped:
        claims.pop(name, None)
    key = fixture_keyring.signing_key()
    # signed as raw JWS bytes: PyJWT's own encoder would refuse some of these claims
    token = jwt.api_jws.encode(json.dumps(claims).encode(), key.private_key,
                               algorithm="EdDSA", headers={"kid": key.kid, "typ": "JWT"})
    ours = verify_join_token(fixture_keyring, token, issuer=ISSUER)
    ref = _pyjwt_accepts(fixture_keyring, token)
    assert (ours.failure is None) == (ref is not None and _step5(ref)), (claims, ours)
