"""Tamper-evident audit log: RFC 9162 Merkle tree in Redis, C2SP checkpoints and proofs.

This package is a library: it never imports ``gateway`` or aiohttp. See docs/audit.md.
"""

from audit.checkpoint import Checkpoint, open_checkpoint
from audit.errors import (
    AuditError,
    FormatError,
    InvalidEventError,
    KeyFileError,
    NotDurableError,
    NotFoundError,
    NotLeaderError,
    ProofError,
    QueryError,
    SignatureError,
    UnsupportedVersionError,
)
from audit.holds import LegalHold, LegalHoldError
from audit.log import (
    AuditEvent,
    AuditLog,
    AuditQuery,
    ConsistencyProof,
    InclusionProof,
    LogStatus,
)
from audit.note import AuditSigningKey, AuditVerifierKey
from audit.proofs import TlogProof
from audit.retention import ArchiveResult, SegmentInfo, archive_before, verify_segment
from audit.sequencer import Sequencer
from audit.store import AuditKeys
from audit.verify import (
    Fault,
    VerifyReport,
    verify_consistency_offline,
    verify_event_line,
    verify_log,
)

__all__ = [
    "ArchiveResult",
    "AuditError",
    "AuditEvent",
    "AuditKeys",
    "AuditLog",
    "AuditQuery",
    "AuditSigningKey",
    "AuditVerifierKey",
    "Checkpoint",
    "ConsistencyProof",
    "Fault",
    "FormatError",
    "QueryError",
    "InclusionProof",
    "InvalidEventError",
    "KeyFileError",
    "LegalHold",
    "LegalHoldError",
    "LogStatus",
    "NotDurableError",
    "NotFoundError",
    "NotLeaderError",
    "ProofError",
    "SegmentInfo",
    "Sequencer",
    "SignatureError",
    "TlogProof",
    "UnsupportedVersionError",
    "VerifyReport",
    "archive_before",
    "open_checkpoint",
    "verify_consistency_offline",
    "verify_event_line",
    "verify_log",
    "verify_segment",
]
