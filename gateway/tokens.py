"""Join tokens: compact JWS (JWT) signed with Ed25519 (``alg`` EdDSA).

Header ``{"alg": "EdDSA", "kid": <kid>, "typ": "JWT"}``; claims exactly ``iss``, ``aud``
(= ``"classguard:join"``), ``sub`` (student id), ``cls`` (class id), ``jti``, ``iat``,
``nbf``, ``exp``. No names or other personal data: links end up in browser histories and
screenshots.

``verify_join_token`` never raises: whatever arrives in a URL, it answers with
``TokenFacts``. It checks, in order:

1. size and shape: a string of at most ``MAX_TOKEN_CHARS``, three canonical base64url
   segments (one spelling per token);
2. the header: small, a JSON object without duplicate members, ``alg`` exactly
   ``EdDSA``, no ``crit``/``b64`` extensions, ``typ`` JWT when present;
3. the ``kid``: well-formed and known to *our* keyring (the key is never taken from the
   token: ``jwk``, ``jku``, ``x5u``, ``x5c`` header members are ignored), and a
   signature of exactly 64 bytes;
4. the Ed25519 signature over the two first segments as they arrived, with the key from
   step 3 (libsodium through PyNaCl, which also refuses non-canonical signatures and
   small-order keys, at about half the cost of OpenSSL's verify: the one operation every
   join pays most for; the algorithm is fixed by step 2, never chosen by the token),
   then the static claims: a JSON object without duplicate members, every claim we rely
   on present, ``iss`` our issuer and ``aud`` exactly our audience string (not a
   list containing it);
5. claim types: ids are short strings of a safe alphabet, times are integers.

Steps 1-3 cost no signature check, so garbage is rejected cheaply. Each token is decoded
once (steps 1-2 are cached for the few links in flight): the join path reads the claims
unverified to choose its Redis keys, then verifies the same decoded bytes. PyJWT signs
(``issue_join_token``); tests check this verifier against PyJWT's ``jwt.decode`` on the
same tokens, forged and damaged ones included (tests/gateway/test_tokens.py). Time (``exp``,
``nbf``) is *not* checked here: the policy does it with the injected clock and the
policy's leeway, so "expired" can be told apart from "forged".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, TypeGuard

import jwt
from nacl.exceptions import BadSignatureError

from gateway.keys import (
    KID_PATTERN,
    JoinKeyring,
    JoinSigningKey,
    b64url_decode_canonical,
)
from policies.model import ClassId, Jti, StudentId, TokenFacts, TokenFailure

AUDIENCE: Final = "classguard:join"
ALGORITHM: Final = "EdDSA"
MAX_TOKEN_CHARS: Final = 2048
MAX_HEADER_CHARS: Final = 512  # ours is ~110 characters
MAX_ISSUER_CHARS: Final = 256
_SIGNATURE_BYTES: Final = 64  # an Ed25519 signature (86 base64url characters)
REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "cls", "jti", "iat", "nbf", "exp")
# Student, class and token ids: short, URL- and Redis-key-safe (no braces, colons, dots).
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
# Unix seconds from 1970 to the end of year 9999: rejects negatives and absurd values.
_MAX_TIME: Final = 253_402_300_799


class TokenError(ValueError):
    """Refusal to *issue* a token (verification never raises). Carries a stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def is_safe_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def _is_time(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= _MAX_TIME


def issue_join_token(
    key: JoinSigningKey,
    *,
    issuer: str,
    student_id: str,
    class_id: str,
    jti: str,
    iat: int,
    nbf: int,
    exp: int,
) -> str:
    """Sign a join token. Raises ``TokenError`` for values that would not verify."""
    if not isinstance(issuer, str) or not 0 < len(issuer) <= MAX_ISSUER_CHARS:
        raise TokenError("bad_issuer", "issuer must be a non-empty string")
    for name, value in (("student_id", student_id), ("class_id", class_id), ("jti", jti)):
        if not is_safe_id(value):
            raise TokenError("bad_id", f"{name} must match {ID_PATTERN.pattern}")
    for name, t in (("iat", iat), ("nbf", nbf), ("exp", exp)):
        if not _is_time(t):
            raise TokenError("bad_time", f"{name} must be an integer of unix seconds")
    if nbf > exp:
        raise TokenError("bad_time", "nbf must not be after exp")
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": student_id,
        "cls": class_id,
        "jti": jti,
        "iat": iat,
        "nbf": nbf,
        "exp": exp,
    }
    token = jwt.encode(
        claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "JWT"}
    )
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError("too_long", "the token would exceed the verifier's size limit")
    return token


@dataclass(frozen=True, slots=True)
class _Shape:
    header: dict[str, Any]
    payload: bytes  # decoded, not yet parsed (a malformed payload is a failure of step 4)
    signature: bytes
    signing_input: bytes  # the first two segments as they arrived, what was signed


class _Reject(Exception):  # noqa: N818 - internal control flow, never escapes
    def __init__(self, failure: TokenFailure, kid: str | None = None) -> None:
        super().__init__(failure)
        self.failure: TokenFailure = failure
        self.kid = kid


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            # Two parsers could pick different members: refuse the ambiguity.
            raise ValueError(f"duplicate member {k!r}")
        out[k] = v
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Reject("malformed") from exc
    if not isinstance(value, dict):
        raise _Reject("malformed")
    return value


@lru_cache(maxsize=512)
def _shape(token: object) -> _Shape:
    """Step 1 and the JSON part of step 2: no cryptography, bounded work.

    NOTE: cached (a refusal raises and is not): a link is shaped once for peeking at
    its claims before the first round trip and again for verifying it after; the
    header dict is only ever read."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        raise _Reject("malformed")
    parts = token.split(".")
    if len(parts) != 3:
        raise _Reject("malformed")
    header_b64, payload_b64, signature_b64 = parts
    if len(header_b64) > MAX_HEADER_CHARS:
        raise _Reject("malformed")
    # Canonical base64url only: one spelling per token, so a jti seen by the rate
    # limiter or the revocation list cannot be dodged by flipping unused bits.
    header = _header(header_b64)
    payload = b64url_decode_canonical(payload_b64) if payload_b64 else None
    signature = b64url_decode_canonical(signature_b64)
    if payload is None or signature is None:
        raise _Reject("malformed")
    return _Shape(
        header=header, payload=payload, signature=signature,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
    )


@lru_cache(maxsize=64)
def _header(header_b64: str) -> dict[str, Any]:
    """A header segment decoded and parsed (cached: every link signed with one key has
    the same header; a refusal raises and is not cached). Only ever read."""
    raw = b64url_decode_canonical(header_b64)
    if raw is None:
        raise _Reject("malformed")
    return _json_object(raw)


@lru_cache(maxsize=512)
def _claims(token: str) -> dict[str, Any]:
    """The payload of a well-shaped token as a JSON object (cached like ``_shape``, and
    only ever read). Raises ``_Reject("malformed")``."""
    return _json_object(_shape(token).payload)


def _kid_of(header: dict[str, Any]) -> str:
    kid = header.get("kid")
    if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
        raise _Reject("malformed")
    return kid


def _check_header(header: dict[str, Any]) -> str:
    """Step 2 (the rest) and the first half of step 3. Returns the kid."""
    # A token that names another algorithm (none, HS256 keyed with our public key,
    # RS256...) is a forgery attempt, not a typo: report it as a bad signature.
    if header.get("alg") != ALGORITHM:
        raise _Reject("bad_signature")
    # We understand no JWS extensions (RFC 7515 §4.1.11 says reject what we don't).
    if "crit" in header or "b64" in header:
        raise _Reject("malformed")
    if "typ" in header and header["typ"] != "JWT":
        raise _Reject("malformed")
    return _kid_of(header)


def _verify(keyring: JoinKeyring, token: str, issuer: str) -> TokenFacts:
    shape = _shape(token)
    kid = _check_header(shape.header)
    # Step 3: the key comes from our keyring, chosen by kid; "jwk", "jku", "x5u" and
    # "x5c" in the header are never read.
    verifier = keyring.verifier(kid)
    if verifier is None:
        raise _Reject("unknown_kid", kid)
    # Only now the signature's size: "alg": "none" with an empty signature, or HS256
    # with a 32-byte MAC, was already reported above as a bad signature; here a wrong
    # size means a truncated or damaged link.
    if len(shape.signature) != _SIGNATURE_BYTES:
        raise _Reject("malformed", kid)
    # Step 4: the signature first (nothing of the payload is believed before it), then
    # the static claims.
    try:
        verifier.verify(shape.signing_input, shape.signature)
    except BadSignatureError as exc:
        raise _Reject("bad_signature", kid) from exc
    try:
        claims = _claims(token)
    except _Reject as rej:
        raise _Reject("malformed", kid) from rej
    if any(name not in claims for name in REQUIRED_CLAIMS):
        raise _Reject("bad_claims", kid)
    # NOTE: exact string comparison; "aud" as a list containing our audience is refused
    # (strict), as are an issuer of another deployment and non-string values.
    if type(claims["iss"]) is not str or claims["iss"] != issuer:
        raise _Reject("bad_claims", kid)
    if type(claims["aud"]) is not str or claims["aud"] != AUDIENCE:
        raise _Reject("bad_claims", kid)
    # Step 5.
    sub, cls, jti = claims.get("sub"), claims.get("cls"), claims.get("jti")
    iat, nbf, exp = claims.get("iat"), claims.get("nbf"), claims.get("exp")
    if not is_safe_id(sub) or not is_safe_id(cls) or not is_safe_id(jti):
        raise _Reject("bad_claims", kid)
    if not _is_time(iat) or not _is_time(nbf) or not _is_time(exp) or nbf > exp:
        raise _Reject("bad_claims", kid)
    return TokenFacts(
        failure=None,
        student_id=StudentId(sub),
        class_id=ClassId(cls),
        jti=Jti(jti),
        exp=float(exp),
        nbf=float(nbf),
        kid=kid,
    )


def verify_join_token(keyring: JoinKeyring, token: str, *, issuer: str) -> TokenFacts:
    """Verify a join token from a URL. Never raises; ``failure`` says what was wrong.

    ``exp``/``nbf`` are returned, not enforced: the policy compares them with ``now``.
    On failure only the ``kid`` (when it was well-formed) is reported, never claims.
    """
    try:
        return _verify(keyring, token, issuer)
    except _Reject as rej:
        return TokenFacts(failure=rej.failure, kid=rej.kid)
    except (ValueError, TypeError, OverflowError, RecursionError, jwt.PyJWTError):
        # NOTE: defence in depth for library corners we did not foresee: an odd token
        # must yield "malformed", never a 500.
        return TokenFacts(failure="malformed")


def peek_token(token: str) -> tuple[str, str] | None:
    """``(kid, jti)`` read WITHOUT verifying anything, or None when the token is not
    even shaped like ours. Only for choosing rate-limit buckets before the signature
    check; never for decisions. Never raises."""
    try:
        kid = _kid_of(_shape(token).header)
        jti = _claims(token).get("jti")
    except (_Reject, ValueError, TypeError, RecursionError):
        return None
    if not is_safe_id(jti):
        return None
    return kid, jti


def peek_claims(token: str) -> tuple[str, str, str, str] | None:
    """``(kid, jti, sub, cls)`` read WITHOUT verifying anything, or None.

    Only for choosing which Redis keys to read (and which rate-limit buckets to charge)
    in the same round trip, before the signature is checked; the decision itself is
    taken on the verified claims. Never raises."""
    try:
        kid = _kid_of(_shape(token).header)
        payload = _claims(token)
    except (_Reject, ValueError, TypeError, RecursionError):
        return None
    jti, sub, cls = payload.get("jti"), payload.get("sub"), payload.get("cls")
    if not (is_safe_id(jti) and is_safe_id(sub) and is_safe_id(cls)):
        return None
    return kid, jti, sub, cls
