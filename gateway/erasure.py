"""Erasure orders: remove the personal part of audit records, unless under legal hold.

One code path for ``classguard audit erase`` and ``POST /api/v1/audit/erase``: read the
legal holds (incidents not closed, ``incidents.legal_holds``), ask the log to erase
(``AuditLog.erase_personal``) after recording its intent, and record the outcome. A
refused order is recorded as ``audit.erase_refused`` naming the incidents (and its intent
as ``intent.failed``); a carried-out one as ``audit.erase`` with how many records lost
their personal part. The order's reference or reason is the
requester's words and goes in the record's erasable personal part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from audit import AuditLog, LegalHoldError

from .auditing import Auditor
from .incidents import legal_holds

MAX_INDEXES = 10_000


@dataclass(frozen=True, slots=True)
class ErasureResult:
    erased: int  # records whose personal part was removed
    asked: int  # records the order named (by index and by student)


async def erase_order(
    log: AuditLog, auditor: Auditor, redis: aioredis.Redis, prefix: str, *, actor: str,
    org: str | None, student: str | None, indexes: Sequence[int], reason: str,
) -> ErasureResult:
    """Carry out an erasure order, or raise :class:`LegalHoldError` (recorded) when an
    open incident holds any of the records; nothing is erased then."""
    wanted = set(indexes)
    if student is not None:
        wanted.update(await log.indexes_of_student(student))
    holds = await legal_holds(redis, prefix)
    facts = {"student": student, "indexes": sorted(indexes)[:50] or None,
             "records": len(wanted)}
    erased = 0
    try:
        # NOTE: intent first: an erasure cannot be undone, so it is announced before it
        # runs (docs/audit.md, "No effect without its record").
        async with auditor.intended("audit.erase", actor=actor, org=org, facts=facts,
                                    personal={"reason": reason}) as out:
            erased = await log.erase_personal(sorted(wanted), holds=holds)
            out.facts["erased"] = erased
    except LegalHoldError as exc:
        await auditor.record(
            "audit.erase_refused", actor=actor, org=org,
            facts={**facts, "incidents": exc.incidents, "held": sum(exc.held.values())},
            personal={"reason": reason})
        raise
    return ErasureResult(erased, len(wanted))
