"""Join-token forgeries, named after the attack, made from a genuine link of the live
gateway (class and student ids are random per run, so these are recipes; the fixed
corpus with its generator lives in ``fixtures/tokens``).

Built byte by byte with ``cryptography`` (no pyjwt, nothing from ``gateway``) so the
gateway's verifier is tested against an independent implementation, and forgeries that
libraries refuse to produce (HS256 keyed with a PEM public key) can be written. The
"other gateway" and "attacker" keys are the fixture keys of ``fixtures/tokens``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tokens"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    h, p, s = token.split(".")
    return json.loads(unb64(h)), json.loads(unb64(p)), s


def fixture_key(name: str) -> Ed25519PrivateKey:
    """``other_key`` (another ClassGuard gateway) or ``attacker_key``."""
    key = serialization.load_pem_private_key((FIXTURES / f"{name}.pem").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def thumbprint(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"' + b64(raw) + '"}'
    return b64(hashlib.sha256(canonical.encode()).digest())


def sign(header: dict[str, Any], claims: dict[str, Any], key: Ed25519PrivateKey) -> str:
    signing_input = f"{b64(compact(header))}.{b64(compact(claims))}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


def public_pem_from_jwk(jwk: dict[str, str]) -> bytes:
    """The PEM a key-confusion attacker derives from our published JWKS."""
    pub = Ed25519PublicKey.from_public_bytes(unb64(jwk["x"]))
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


# --- the forgeries ------------------------------------------------------------------------

def alg_none(genuine: str) -> str:
    header, claims, _ = parts(genuine)
    return f"{b64(compact({**header, 'alg': 'none'}))}.{b64(compact(claims))}."


def hs256_with_public_key(genuine: str, public_pem: bytes) -> str:
    header, claims, _ = parts(genuine)
    signing_input = f"{b64(compact({**header, 'alg': 'HS256'}))}.{b64(compact(claims))}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def unknown_kid(genuine: str) -> str:
    """The attacker's own key, announced under its own kid."""
    header, claims, _ = parts(genuine)
    key = fixture_key("attacker_key")
    return sign({**header, "kid": thumbprint(key.public_key())}, claims, key)


def another_gateways_key(genuine: str) -> str:
    """Our kid in the header, signed by another ClassGuard gateway's key."""
    header, claims, _ = parts(genuine)
    return sign(header, claims, fixture_key("other_key"))


def another_gateways_token(genuine: str) -> str:
    """A token of another ClassGuard gateway, its own kid and key, for our class."""
    header, claims, _ = parts(genuine)
    key = fixture_key("other_key")
    return sign({**header, "kid": thumbprint(key.public_key())}, claims, key)


def header_jwk_injection(genuine: str) -> str:
    """The attacker's public key embedded as ``jwk``, signed by the attacker."""
    header, claims, _ = parts(genuine)
    key = fixture_key("attacker_key")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return sign({**header, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}}, claims, key)


def tampered(genuine: str, **changes: Any) -> str:
    """Claims edited, the genuine signature kept."""
    h, _, s = genuine.split(".")
    _, claims, _ = parts(genuine)
    return f"{h}.{b64(compact({**claims, **changes}))}.{s}"


def resigned(genuine: str, key: Ed25519PrivateKey, **changes: Any) -> str:
    """Claims edited and signed again with ``key`` (the gateway's own key: a genuine
    token with other times or another class, as a clock-skewed or buggy issuer makes)."""
    header, claims, _ = parts(genuine)
    return sign(header, {**claims, **changes}, key)
