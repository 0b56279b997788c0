"""Secrets at rest (upstream platform secrets, API credentials): AES-256-GCM.

Sealed form, base64url without padding::

    version (1 byte, 0x01) || nonce (12 random bytes) || ciphertext || tag (16 bytes)

The caller's ``aad`` (e.g. ``b"platform:<class_id>:bbb_secret"``) binds a ciphertext to
its place: moved to another record, it no longer opens. The version byte is
authenticated too (it is prepended to the associated data).

NOTE: random 96-bit nonces under one key are safe for about 2^32 encryptions (NIST SP
800-38D); we store a few secrets per class, many orders of magnitude below that.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
VERSION: Final = 1
_MAX_SEALED_CHARS: Final = 1 << 22  # 4 MiB of text: far above any secret we store
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


class SecretBoxError(Exception):
    """Sealing key unusable, or a sealed value that does not open (tampered, wrong aad,
    wrong key, unknown version). ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class SecretBox:
    _key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self._key) != KEY_BYTES:
            raise SecretBoxError("bad_key", f"the key must be {KEY_BYTES} bytes")

    @classmethod
    def generate(cls) -> SecretBox:
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def load_or_create(cls, path: Path) -> SecretBox:
        """Read the raw 32-byte key at ``path``; create it (mode 0600) when absent.

        Safe when several processes start at once: the key is written to a temp file
        and linked into place, so exactly one key wins and everyone reads that one.
        Refuses a key file readable by group or others.
        """
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    os.fchmod(fh.fileno(), 0o600)
                    fh.write(os.urandom(KEY_BYTES))
                    fh.flush()
                    os.fsync(fh.fileno())
                with contextlib.suppress(FileExistsError):  # another process won
                    os.link(tmp, path)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            data = path.read_bytes()
        except OSError as exc:
            raise SecretBoxError("unreadable", f"cannot read {path}: {exc}") from exc
        if mode & 0o077:
            raise SecretBoxError("insecure_permissions", f"{path} has mode {mode:o}; expected 0600")
        if len(data) != KEY_BYTES:
            raise SecretBoxError("bad_key", f"{path} must hold exactly {KEY_BYTES} bytes")
        return cls(data)

    @classmethod
    def from_env_value(cls, value: str) -> SecretBox:
        """The key from an environment variable: 32 bytes in base64 (standard or
        URL-safe alphabet, padding optional)."""
        text = value.strip().rstrip("=").replace("-", "+").replace("_", "/")
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SecretBoxError("bad_key", "the key is not valid base64") from exc
        if len(raw) != KEY_BYTES:
            raise SecretBoxError("bad_key", f"the key must decode to {KEY_BYTES} bytes")
        return cls(raw)

    def mac(self, data: bytes, *, purpose: bytes) -> str:
        """An HMAC-SHA256 of ``data`` (hex) under a key derived from this box's key for
        ``purpose`` alone: a value only the server can compute (a form token, say), and
        never usable for another purpose or as the sealing key itself."""
        subkey = hmac.new(self._key, b"classguard-mac|" + purpose, hashlib.sha256).digest()
        return hmac.new(subkey, data, hashlib.sha256).hexdigest()

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        header = bytes([VERSION])
        sealed = AESGCM(self._key).encrypt(nonce, plaintext, header + aad)
        return base64.urlsafe_b64encode(header + nonce + sealed).rstrip(b"=").decode("ascii")

    def decrypt(self, token: str, *, aad: bytes) -> bytes:
        """Open a sealed value; ``SecretBoxError`` for anything that does not open."""
        if (
            not isinstance(token, str)
            or len(token) > _MAX_SEALED_CHARS
            or not _B64URL.fullmatch(token)
            or len(token) % 4 == 1
        ):
            raise SecretBoxError("malformed", "not a sealed value")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        if len(raw) < 1 + NONCE_BYTES + TAG_BYTES:
            raise SecretBoxError("malformed", "sealed value too short")
        if raw[0] != VERSION:
            raise SecretBoxError("unsupported_version", f"unknown sealed version {raw[0]}")
        nonce, sealed = raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES :]
        try:
            return AESGCM(self._key).decrypt(nonce, sealed, raw[:1] + aad)
        except InvalidTag as exc:
            raise SecretBoxError(
                "tampered", "the value was altered, or the key or context is wrong"
            ) from exc
