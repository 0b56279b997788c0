"""Pure secret handling for staff accounts: password hashes, session sealing, token formats.

No I/O and no clock here; :mod:`gateway.staff` does the Redis work and runs the
(deliberately slow) KDF in a worker thread.

Formats (stored or handed to clients, so versioned or fixed):

* password hash: ``scrypt$<n>$<r>$<p>$<b64 salt>$<b64 hash>`` (standard base64, no padding
  stripped), 16-byte salt, 32-byte derived key;
* session cookie: ``b64url(sid) + "." + b64url(secret)`` (16 + 32 random bytes, unpadded);
  the session record is ``v1.<b64url(nonce || AES-GCM ciphertext)>`` under a key derived
  from the secret with HKDF-SHA256, the sid as associated data;
* API token: ``cgk_ + b64url(token_id) + "_" + b64url(secret)`` (12 + 32 random bytes,
  unpadded). base64url may itself contain ``_``, so the parts are split by their fixed
  lengths, not by the separator.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

SALT_BYTES = 16
HASH_BYTES = 32
# Bounds on parameters read back from a stored hash, so a corrupted record cannot make one
# login allocate gigabytes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16

SID_BYTES = 16
SESSION_SECRET_BYTES = 32
_SID_B64_LEN = 22  # unpadded base64url of 16 bytes
_SECRET_B64_LEN = 43  # unpadded base64url of 32 bytes
_NONCE_BYTES = 12
_SESSION_INFO = b"classguard/staff-session/v1"
_SESSION_RECORD_PREFIX = "v1."

API_TOKEN_PREFIX = "cgk_"  # noqa: S105 - a format marker, not a secret
TOKEN_ID_BYTES = 12
_TOKEN_ID_B64_LEN = 16  # 12 bytes -> 16 characters, never padded
_API_TOKEN_LEN = len(API_TOKEN_PREFIX) + _TOKEN_ID_B64_LEN + 1 + _SECRET_B64_LEN

_B64URL = re.compile(r"[A-Za-z0-9_-]*")

# Letters and digits that cannot be mistaken for each other when read off a printout
# (no 0/o, 1/l/i): 31 symbols, so 20 of them carry ~99 bits.
_OTP_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_OTP_GROUPS = 4
_OTP_GROUP_LEN = 5


class SecretFormatError(ValueError):
    """A stored hash or record does not have the expected shape."""


@dataclass(frozen=True, slots=True)
class ScryptParams:
    n: int = 2**15
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or self.n > _MAX_N:
            raise ValueError(f"scrypt n must be a power of two <= 2**20, got {self.n}")
        if not 1 <= self.r <= _MAX_R or not 1 <= self.p <= _MAX_P:
            raise ValueError(f"scrypt r/p out of range: r={self.r} p={self.p}")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode_exact(text: str, size: int) -> bytes | None:
    """Decode unpadded base64url of exactly ``size`` bytes; anything else is None.

    ``base64.urlsafe_b64decode`` silently skips characters outside the alphabet and
    ignores stray trailing bits, so the input is checked against the alphabet and
    re-encoded: only the one canonical spelling of a value is accepted.
    """
    if not _B64URL.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != size or b64url(raw) != text:
        return None
    return raw


# -- passwords -----------------------------------------------------------------------------


def _scrypt(password: str, salt: bytes, params: ScryptParams) -> bytes:
    kdf = Scrypt(salt=salt, length=HASH_BYTES, n=params.n, r=params.r, p=params.p)
    return kdf.derive(password.encode("utf-8"))


def hash_password(password: str, params: ScryptParams) -> str:
    """Blocking: run it in a worker thread."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, params)
    return "$".join(
        (
            "scrypt",
            str(params.n),
            str(params.r),
            str(params.p),
            base64.b64encode(salt).decode("ascii"),
            base64.b64encode(digest).decode("ascii"),
        )
    )


def parse_password_hash(encoded: str) -> tuple[ScryptParams, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise SecretFormatError("not a scrypt password hash")
    try:
        params = ScryptParams(int(parts[1]), int(parts[2]), int(parts[3]))
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise SecretFormatError(f"malformed scrypt password hash: {exc}") from exc
    if len(salt) < SALT_BYTES or len(digest) != HASH_BYTES:
        raise SecretFormatError("scrypt salt or hash has the wrong length")
    return params, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """Blocking: run it in a worker thread. Constant-time comparison of the derived key."""
    params, salt, expected = parse_password_hash(encoded)
    return hmac.compare_digest(_scrypt(password, salt, params), expected)


def dummy_password_hash(params: ScryptParams) -> str:
    """A well-formed hash that no password matches, for logins of unknown users.

    Verifying against it costs exactly one KDF run with ``params``, like a real account,
    without computing anything up front. The "digest" is random, so a match would need a
    256-bit preimage.
    """
    return "$".join(
        (
            "scrypt",
            str(params.n),
            str(params.r),
            str(params.p),
            base64.b64encode(secrets.token_bytes(SALT_BYTES)).decode("ascii"),
            base64.b64encode(secrets.token_bytes(HASH_BYTES)).decode("ascii"),
        )
    )


def needs_rehash(encoded: str, params: ScryptParams) -> bool:
    try:
        stored, _, _ = parse_password_hash(encoded)
    except SecretFormatError:
        return True
    return stored != params


def generate_one_time_password() -> str:
    """``xxxxx-xxxxx-xxxxx-xxxxx`` from an unambiguous alphabet (~99 bits)."""
    groups = (
        "".join(secrets.choice(_OTP_ALPHABET) for _ in range(_OTP_GROUP_LEN))
        for _ in range(_OTP_GROUPS)
    )
    return "-".join(groups)


# -- sessions ------------------------------------------------------------------------------


def new_session_ids() -> tuple[bytes, bytes]:
    """(sid, secret): 16 and 32 random bytes."""
    return secrets.token_bytes(SID_BYTES), secrets.token_bytes(SESSION_SECRET_BYTES)


def session_cookie(sid: bytes, secret: bytes) -> str:
    return f"{b64url(sid)}.{b64url(secret)}"


def parse_session_cookie(value: str) -> tuple[bytes, bytes] | None:
    """(sid, secret), or None for anything that is not a well-formed cookie."""
    if len(value) != _SID_B64_LEN + 1 + _SECRET_B64_LEN:
        return None
    sid_text, sep, secret_text = value.partition(".")
    if not sep:
        return None
    sid = b64url_decode_exact(sid_text, SID_BYTES)
    secret = b64url_decode_exact(secret_text, SESSION_SECRET_BYTES)
    if sid is None or secret is None:
        return None
    return sid, secret


def parse_sid(text: str) -> bytes | None:
    return b64url_decode_exact(text, SID_BYTES)


def sid_hash(sid: bytes) -> str:
    """The Redis-side name of a session: SHA-256 of the sid, hex."""
    return hashlib.sha256(sid).hexdigest()


def _session_aead(secret: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SESSION_INFO).derive(secret)
    return AESGCM(key)


def seal_session(sid: bytes, secret: bytes, plaintext: bytes) -> str:
    # NOTE: each session key encrypts exactly one record (it is never re-sealed), so a
    # random 96-bit nonce is far from any reuse bound.
    nonce = secrets.token_bytes(_NONCE_BYTES)
    ciphertext = _session_aead(secret).encrypt(nonce, plaintext, sid)
    return _SESSION_RECORD_PREFIX + b64url(nonce + ciphertext)


def open_session(sid: bytes, secret: bytes, record: str) -> bytes | None:
    """The plaintext, or None when the record is malformed or does not authenticate."""
    if not record.startswith(_SESSION_RECORD_PREFIX):
        return None
    body = record[len(_SESSION_RECORD_PREFIX) :]
    if not _B64URL.fullmatch(body):
        return None
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) <= _NONCE_BYTES + 16:
        return None
    try:
        return _session_aead(secret).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], sid)
    except InvalidTag:
        return None


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_equal(expected: str, presented: str | None) -> bool:
    """Constant-time equality of two secrets given as text (any characters)."""
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))


# -- API bearer tokens ---------------------------------------------------------------------


def new_api_token() -> tuple[str, str, str]:
    """(token, token_id, secret_sha256_hex)."""
    token_id = b64url(secrets.token_bytes(TOKEN_ID_BYTES))
    secret = secrets.token_bytes(SESSION_SECRET_BYTES)
    token = f"{API_TOKEN_PREFIX}{token_id}_{b64url(secret)}"
    return token, token_id, hashlib.sha256(secret).hexdigest()


def parse_api_token(token: str) -> tuple[str, bytes] | None:
    """(token_id, secret) or None. Split by fixed lengths: base64url may contain ``_``."""
    if len(token) != _API_TOKEN_LEN or not token.startswith(API_TOKEN_PREFIX):
        return None
    rest = token[len(API_TOKEN_PREFIX) :]
    token_id, sep, secret_text = (
        rest[:_TOKEN_ID_B64_LEN],
        rest[_TOKEN_ID_B64_LEN],
        rest[_TOKEN_ID_B64_LEN + 1 :],
    )
    if sep != "_" or b64url_decode_exact(token_id, TOKEN_ID_BYTES) is None:
        return None
    secret = b64url_decode_exact(secret_text, SESSION_SECRET_BYTES)
    if secret is None:
        return None
    return token_id, secret


def is_token_id(text: str) -> bool:
    return b64url_decode_exact(text, TOKEN_ID_BYTES) is not None


def api_secret_matches(secret: bytes, stored_sha256_hex: str) -> bool:
    # NOTE: a plain SHA-256 (not a slow KDF) is enough here: the secret is 256 random bits,
    # so there is nothing to brute-force, and bearer checks run on every API request.
    return hmac.compare_digest(
        hashlib.sha256(secret).hexdigest().encode("ascii"), stored_sha256_hex.encode("utf-8")
    )
