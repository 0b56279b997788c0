"""Legal holds: records whose personal data must outlive retention and erasure orders.

While an incident is open, the personal data of the records it covers are evidence: an
erasure order that reaches them is refused (:class:`LegalHoldError`, naming the
incident), and retention stops before them. The gateway builds one :class:`LegalHold`
per open incident and hands them to :meth:`audit.log.AuditLog.erase_personal` and
:func:`audit.retention.archive_before`; this module is pure.

A hold covers a record when

* its index is listed by the incident explicitly, or
* it is one of the incident's own custody records (``incident.*`` naming it), or
* it belongs to the incident's class, lies in its time window, and names an involved
  student, carries an involved visitor's address or device in its personal part, or is a
  host action or an alert of the class (the records an evidence export gathers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from audit.errors import AuditError
from audit.store import student_ids

#: Record types that an evidence export takes whatever person they name.
CLASS_WIDE_TYPES = ("host.", "presence.")


@dataclass(frozen=True, slots=True)
class LegalHold:
    """What one open incident holds. ``name`` is the incident id."""

    name: str
    class_id: str
    since_ms: int
    until_ms: int
    students: frozenset[str] = frozenset()
    ips: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    indexes: frozenset[int] = frozenset()

    def covers(self, index: int, record: Mapping[str, Any],
               personal: Mapping[str, Any] | None) -> bool:
        if index in self.indexes:
            return True
        if record.get("class") != self.class_id:
            return False
        rtype = str(record.get("type", ""))
        facts = record.get("facts")
        if rtype.startswith("incident.") and isinstance(facts, dict) \
                and facts.get("incident") == self.name:
            return True
        ts = record.get("ts")
        if not isinstance(ts, int) or not self.since_ms <= ts <= self.until_ms:
            return False
        if rtype.startswith(CLASS_WIDE_TYPES):
            return True
        ids = {x for sid in student_ids(record) for x in sid.split(",") if x}
        if ids & self.students:
            return True
        if personal:
            if personal.get("ip") in self.ips or personal.get("device") in self.devices:
                return True
        return False


def holding(holds: Iterable[LegalHold], index: int, record: Mapping[str, Any],
            personal: Mapping[str, Any] | None) -> LegalHold | None:
    """The first hold covering the record, or None."""
    for h in holds:
        if h.covers(index, record, personal):
            return h
    return None


class LegalHoldError(AuditError):
    """An erasure order reached records under legal hold; nothing was erased."""

    code = "audit_legal_hold"

    def __init__(self, held: Mapping[str, int]) -> None:
        self.held = dict(sorted(held.items()))
        names = ", ".join(f"{k} ({n} records)" for k, n in self.held.items())
        super().__init__(f"personal data under legal hold by open incident {names}; "
                         "close the incident first, then order the erasure again")

    @property
    def incidents(self) -> list[str]:
        return list(self.held)
