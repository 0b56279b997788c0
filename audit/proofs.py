"""C2SP ``tlog-proof@v1`` text format: an inclusion proof bundled with its checkpoint.

Layout::

    c2sp.org/tlog-proof@v1
    extra <base64>            (optional)
    index <decimal>
    <base64 hash>             (zero or more inclusion proof hashes, leaf side first)

    <signed checkpoint note>

Evidence bundles store one per record as ``proofs/<index>.tlog-proof``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from audit.checkpoint import Checkpoint, open_checkpoint
from audit.errors import FormatError
from audit.merkle import HASH_SIZE, verify_inclusion
from audit.note import AuditVerifierKey

HEADER = "c2sp.org/tlog-proof@v1"


@dataclass(frozen=True, slots=True)
class TlogProof:
    index: int
    hashes: tuple[bytes, ...]
    checkpoint: str  # the signed note, verbatim
    extra: bytes | None = None

    def encode(self) -> str:
        lines = [HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode())
        lines.append(f"index {self.index}")
        lines.extend(base64.b64encode(h).decode() for h in self.hashes)
        return "\n".join(lines) + "\n\n" + self.checkpoint

    @classmethod
    def parse(cls, text: str) -> TlogProof:
        head, sep, checkpoint = text.partition("\n\n")
        if not sep or not checkpoint:
            raise FormatError("tlog-proof: expected a blank line followed by a checkpoint")
        lines = head.split("\n")
        if lines[0] != HEADER:
            raise FormatError(f"tlog-proof: expected header {HEADER!r}, found {lines[0]!r}")
        pos = 1
        extra: bytes | None = None
        try:
            if pos < len(lines) and lines[pos].startswith("extra "):
                extra = base64.b64decode(lines[pos][6:], validate=True)
                pos += 1
            if pos >= len(lines) or not lines[pos].startswith("index "):
                raise FormatError("tlog-proof: expected an 'index N' line")
            idx_s = lines[pos][6:]
            if not idx_s.isdigit() or (idx_s != "0" and idx_s.startswith("0")):
                raise FormatError(f"tlog-proof: bad index {idx_s!r}")
            hashes = tuple(base64.b64decode(h, validate=True) for h in lines[pos + 1 :])
        except (binascii.Error, ValueError) as exc:
            raise FormatError("tlog-proof: a line is not valid base64") from exc
        if any(len(h) != HASH_SIZE for h in hashes):
            raise FormatError(f"tlog-proof: every hash must be {HASH_SIZE} bytes")
        return cls(int(idx_s), hashes, checkpoint, extra)

    def verify(
        self, leaf: bytes, verifier: AuditVerifierKey, origin: str | None = None
    ) -> Checkpoint:
        """Check the checkpoint signature, then the inclusion of ``leaf`` (a leaf hash).

        Returns the verified checkpoint; raises an :class:`~audit.errors.AuditError`.
        """
        cp = open_checkpoint(self.checkpoint, verifier, origin)
        verify_inclusion(self.index, cp.size, leaf, list(self.hashes), cp.root_hash)
        return cp
