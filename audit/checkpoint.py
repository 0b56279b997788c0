"""C2SP tlog-checkpoint bodies (origin, size, base64 root) and their signed form."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from audit.errors import FormatError
from audit.merkle import HASH_SIZE
from audit.note import AuditSigningKey, AuditVerifierKey


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The note text: origin, decimal size, base64 root, extension lines; each ends in \\n."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        lines.extend(self.extensions)
        return "".join(line + "\n" for line in lines)

    def sign(self, key: AuditSigningKey) -> str:
        return key.sign_note(self.body())

    @classmethod
    def parse_body(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise FormatError("checkpoint body must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or any(not line for line in lines):
            raise FormatError("checkpoint body needs origin, size and root hash lines")
        origin, size_s, root_s, *ext = lines
        if not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")):
            raise FormatError(f"checkpoint size must be a decimal number, found {size_s!r}")
        try:
            root = base64.b64decode(root_s, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FormatError("checkpoint root hash is not base64") from exc
        if len(root) != HASH_SIZE:
            raise FormatError(f"checkpoint root must be {HASH_SIZE} bytes, found {len(root)}")
        return cls(origin, int(size_s), root, tuple(ext))


def open_checkpoint(note: str, verifier: AuditVerifierKey, origin: str | None = None) -> Checkpoint:
    """Verify the signature of a signed checkpoint and parse it.

    Raises :class:`~audit.errors.SignatureError` or :class:`~audit.errors.FormatError`.
    """
    text = verifier.verify(note)
    cp = Checkpoint.parse_body(text)
    if origin is not None and cp.origin != origin:
        raise FormatError(f"checkpoint origin: expected {origin!r}, found {cp.origin!r}")
    return cp
