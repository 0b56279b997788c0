"""Errors of the audit package.

Every error carries a stable ``code`` (part of the API error contract) and a message meant
for people. The HTTP layer turns them into ``{"error": {"code", "message"}}`` in one place.
"""

from __future__ import annotations


class AuditError(Exception):
    """Base class; ``code`` is stable, ``message`` is for humans."""

    code: str = "audit_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidEventError(AuditError):
    """The caller handed an event that cannot enter the log."""

    code = "audit_invalid_event"


class UnsupportedVersionError(AuditError):
    """A stored record or file uses a format version this code does not know."""

    code = "audit_unsupported_version"


class NotDurableError(AuditError):
    """An append could not be confirmed durable (replicas did not acknowledge in time)."""

    code = "audit_not_durable"


class NotFoundError(AuditError):
    """No record, checkpoint or personal data at the requested place."""

    code = "audit_not_found"


class ProofError(AuditError):
    """A proof could not be produced or did not verify."""

    code = "audit_proof_invalid"


class SignatureError(AuditError):
    """A signed note, checkpoint or key is malformed or its signature does not verify."""

    code = "audit_bad_signature"


class KeyFileError(AuditError):
    """The audit signing key file is unreadable, malformed or too widely readable."""

    code = "audit_key_file"


class FormatError(AuditError):
    """A text format (checkpoint, tlog-proof, segment, cursor) could not be parsed."""

    code = "audit_bad_format"


class NotLeaderError(AuditError):
    """The sequencer lost (or never held) the lease while trying to commit."""

    code = "audit_not_leader"


class QueryError(FormatError):
    """A search parameter of the wrong shape; ``field`` names it."""

    code = "invalid_field"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
