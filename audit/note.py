"""C2SP signed notes with Ed25519, and the audit log's dedicated key types.

A note is UTF-8 text ending in a newline, then a blank line, then one or more signature
lines ``— <name> <base64(key id || signature)>``. The signature covers the text including
its final newline. The key id is the first 4 bytes of SHA-256(name || 0x0A || 0x01 ||
public key); a verifier key is shared as ``<name>+<hex key id>+<base64(0x01 || public key)>``.

:class:`AuditSigningKey` is deliberately a type of its own: the join-token keyring cannot be
passed where the checkpoint key is expected, and vice versa.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audit.errors import KeyFileError, SignatureError

SIG_TYPE_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash and a space
MAX_SIGNATURES = 100


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise SignatureError(
            f"key name must be non-empty without spaces or '+', found {name!r}",
            code="audit_bad_key",
        )


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte C2SP key id of an Ed25519 key."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([SIG_TYPE_ED25519]) + public_key).digest()[
        :4
    ]


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A parsed (not yet verified) note."""

    text: str
    signatures: tuple[NoteSignature, ...]


def parse_note(note: str) -> SignedNote:
    """Split a note into its text and signature lines (syntax only, nothing verified)."""
    cut = note.rfind("\n\n")
    if cut < 0:
        raise SignatureError("signed note has no blank line before its signatures")
    text, sig_block = note[: cut + 1], note[cut + 2 :]
    if not sig_block.endswith("\n"):
        raise SignatureError("signed note must end with a newline")
    sigs: list[NoteSignature] = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise SignatureError(
                f"expected a signature line starting with '\u2014 ', found {line!r}"
            )
        parts = line[len(SIG_PREFIX) :].split(" ")
        if len(parts) != 2:
            raise SignatureError(f"expected '\u2014 <name> <signature>', found {line!r}")
        name, b64 = parts
        _check_name(name)
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError(f"signature of {name!r} is not base64") from exc
        if len(raw) < 5:
            raise SignatureError(f"signature of {name!r} is too short")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
    if not sigs or len(sigs) > MAX_SIGNATURES:
        raise SignatureError(f"expected 1..{MAX_SIGNATURES} signatures, found {len(sigs)}")
    return SignedNote(text, tuple(sigs))


@dataclass(frozen=True, slots=True)
class AuditVerifierKey:
    """Public half of the checkpoint key, in C2SP verifier-key form."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(self.public_key) != 32:
            raise SignatureError("Ed25519 public key must be 32 bytes", code="audit_bad_key")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    def encode(self) -> str:
        """``name+hex(key id)+base64(0x01 || public key)``."""
        blob = base64.b64encode(bytes([SIG_TYPE_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    @classmethod
    def parse(cls, vkey: str) -> AuditVerifierKey:
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise SignatureError(
                f"verifier key must be name+keyid+key, found {len(parts)} parts",
                code="audit_bad_key",
            )
        name, hex_id, b64 = parts
        try:
            kid = bytes.fromhex(hex_id)
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError("verifier key is not hex/base64", code="audit_bad_key") from exc
        if len(raw) != 33 or raw[0] != SIG_TYPE_ED25519:
            raise SignatureError(
                "verifier key must be an Ed25519 key (type 0x01, 32 bytes)", code="audit_bad_key"
            )
        key = cls(name, raw[1:])
        if key.key_id != kid:
            raise SignatureError(
                f"verifier key id: expected {key.key_id.hex()}, found {hex_id}",
                code="audit_bad_key",
            )
        return key

    def verify(self, note: str) -> str:
        """Check ``note`` carries a valid signature by this key; return the signed text.

        Signature lines of other keys are ignored (a note may be cosigned); a line with our
        name and key id that fails verification rejects the note.
        """
        parsed = parse_note(note)
        pub = Ed25519PublicKey.from_public_bytes(self.public_key)
        kid = self.key_id
        for sig in parsed.signatures:
            if sig.name != self.name or sig.key_id != kid:
                continue
            try:
                pub.verify(sig.signature, parsed.text.encode())
            except InvalidSignature as exc:
                raise SignatureError(
                    f"signature by {self.name} ({kid.hex()}) does not match the note text"
                ) from exc
            return parsed.text
        found = ", ".join(f"{s.name}/{s.key_id.hex()}" for s in parsed.signatures)
        raise SignatureError(f"expected a signature by {self.name}/{kid.hex()}, found {found}")


class AuditSigningKey:
    """The private Ed25519 key that signs checkpoints and archive notes. Never a join key."""

    __slots__ = ("_private", "name")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._private = private_key

    def __repr__(self) -> str:  # never print key material
        return f"AuditSigningKey(name={self.name!r}, key_id={self.verifier().key_id.hex()})"

    @classmethod
    def generate(cls, name: str) -> AuditSigningKey:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> AuditSigningKey:
        if len(seed) != 32:
            raise KeyFileError("Ed25519 seed must be 32 bytes")
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load_or_create(cls, path: Path, name: str) -> AuditSigningKey:
        """Load the PKCS#8 PEM key at ``path``, or create it with mode 0600.

        NOTE: a key file readable by group or others is refused rather than used: whoever
        can read it can forge checkpoints.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls._load(path, name)
        except OSError as exc:
            raise KeyFileError(f"cannot create audit key {path}: {exc.strerror}") from exc
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        return cls(name, key)

    @classmethod
    def _load(cls, path: Path, name: str) -> AuditSigningKey:
        try:
            st = path.stat()
            if stat.S_IMODE(st.st_mode) & 0o077:
                raise KeyFileError(
                    f"audit key {path} must be readable by its owner only "
                    f"(expected mode 0600, found {stat.S_IMODE(st.st_mode):04o})"
                )
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read audit key {path}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"audit key {path} is not a PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"audit key {path} must be Ed25519")
        return cls(name, key)

    def verifier(self) -> AuditVerifierKey:
        pub = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return AuditVerifierKey(self.name, pub)

    def sign_note(self, text: str) -> str:
        """Sign ``text`` (non-empty, newline-terminated) and return the full signed note."""
        if not text.endswith("\n") or "\n\n" in text or text.startswith("\n"):
            raise SignatureError("note text must be non-empty lines each ending in a newline")
        sig = self._private.sign(text.encode())
        blob = base64.b64encode(self.verifier().key_id + sig).decode()
        return f"{text}\n{SIG_PREFIX}{self.name} {blob}\n"
