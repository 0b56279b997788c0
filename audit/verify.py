"""Integrity check of the whole log (``classguard audit verify``) and offline helpers.

:func:`verify_log` reads everything the log keeps in Redis and reports the first fault it
finds, with the index and what is wrong. Steps (each failure says expected vs found):

1. Read the log size and the packed leaf hashes; their lengths must agree.
2. Check the signed archive notes cover exactly the archived prefix.
3. Recompute every leaf from its stored record and compare with the stored leaf hash;
   classify a mismatch as *edited*, *reordered*, *missing* or *extra*.
4. Rebuild the tree from the leaf hashes and compare with the stored subtree hashes.
5. Check every stored checkpoint: signature, origin, size within the log, root equal to
   the rebuilt tree at that size.
6. Check consistency between consecutive checkpoints (RFC 9162 §2.1.4), so the log never
   forked or rewrote history between two signed heads.
7. Report whether the latest checkpoint covers the whole log.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import redis.asyncio as aioredis

from audit import merkle
from audit.checkpoint import Checkpoint, open_checkpoint
from audit.errors import AuditError
from audit.note import AuditVerifierKey
from audit.proofs import TlogProof
from audit.records import canonical, check_personal, decode_record
from audit.retention import open_archive_note
from audit.store import AuditKeys, ensure_bytes_client

CHUNK = 10_000
# Tree levels read with the size: 2^48 records are far beyond any log.
MAX_LEVELS = 48


class Fault(StrEnum):
    EDITED = "edited"
    MISSING = "missing"
    REORDERED = "reordered"
    EXTRA = "extra"
    TRUNCATED = "truncated"
    FORKED_CHECKPOINT = "forked_checkpoint"
    BAD_SIGNATURE = "bad_signature"
    BAD_TREE = "bad_tree"
    BAD_ARCHIVE = "bad_archive"
    UNSUPPORTED_VERSION = "unsupported_version"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    size: int
    fault: Fault | None = None
    first_bad_index: int | None = None
    checkpoint: int | None = None  # position in the checkpoint list, for checkpoint faults
    message: str = ""
    checkpoints_checked: int = 0
    archived_before: int = 0
    signed_size: int = 0  # size of the latest valid checkpoint

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "size": self.size,
            "fault": None if self.fault is None else str(self.fault),
            "first_bad_index": self.first_bad_index,
            "checkpoint": self.checkpoint,
            "message": self.message,
            "checkpoints_checked": self.checkpoints_checked,
            "archived_before": self.archived_before,
            "signed_size": self.signed_size,
        }


async def verify_log(
    redis: aioredis.Redis,
    prefix: str,
    verifier_key: AuditVerifierKey | str,
    *,
    origin: str | None = None,
) -> VerifyReport:
    """Check the whole log under ``prefix``; never raises for a fault, reports it."""
    ensure_bytes_client(redis)
    vkey = (
        verifier_key
        if isinstance(verifier_key, AuditVerifierKey)
        else AuditVerifierKey.parse(verifier_key)
    )
    keys = AuditKeys(prefix)

    # NOTE: the log grows while it is checked (the check's own audit.read events are
    # sequenced meanwhile). Everything but the records is read in one transaction, so
    # it describes one size; a batch is committed atomically by one script, and records
    # below that size never change, so they are read afterwards in chunks. Read
    # separately, a commit between two reads was reported as extra records or a bad
    # tree.
    async with redis.pipeline(transaction=True) as p:
        p.hgetall(keys.meta)
        p.get(keys.leaves)
        p.lrange(keys.archives, 0, -1)
        p.hlen(keys.records)
        p.lrange(keys.checkpoints, 0, -1)
        for level in range(1, MAX_LEVELS + 1):
            p.get(keys.level(level))
        meta, leaves_raw, notes, count, raw_cps, *stored_levels = await p.execute()

    # 1. Size and leaf hashes.
    size = int(meta.get(b"size", b"0"))
    archived = int(meta.get(b"archived_before", b"0"))
    if origin is None:
        origin = meta[b"origin"].decode() if b"origin" in meta else None
    leaves = cast(bytes, leaves_raw or b"")

    def fail(fault: Fault, index: int | None, message: str, **kw: Any) -> VerifyReport:
        return VerifyReport(
            False, size, fault, index, message=message, archived_before=archived, **kw
        )

    if len(leaves) != 32 * size:
        have = len(leaves) // 32
        if have > size:
            return fail(Fault.EXTRA, size, f"step 1: expected {size} leaf hashes, found {have}")
        return fail(Fault.MISSING, have, f"step 1: expected {size} leaf hashes, found {have}")

    # 2. Archived prefix must be covered by signed archive notes.
    covered = 0
    for pos, raw in enumerate(notes):
        try:
            note = open_archive_note(raw.decode(), vkey)
        except AuditError as exc:
            return fail(Fault.BAD_ARCHIVE, covered, f"step 2: archive note {pos}: {exc.message}")
        if note.start != covered:
            return fail(
                Fault.BAD_ARCHIVE,
                covered,
                f"step 2: archive note {pos}: expected a range starting at {covered}, "
                f"found [{note.start}, {note.end})",
            )
        covered = note.end
    if covered != archived:
        return fail(
            Fault.MISSING if archived > covered else Fault.BAD_ARCHIVE,
            covered,
            f"step 2: expected signed archive notes up to index {archived}, found {covered}",
        )

    # 3. Leaves from records.
    expected_count = size - archived
    by_hash: dict[bytes, int] | None = None
    for start in range(archived, size, CHUNK):
        end = min(size, start + CHUNK)
        raws = await cast(
            Awaitable[list[bytes | None]],
            redis.hmget(keys.records, [str(i) for i in range(start, end)]),
        )
        sha_leaf = merkle.leaf_hash
        for i, maybe in zip(range(start, end), raws, strict=True):
            stored = leaves[32 * i : 32 * i + 32]
            if maybe is None:
                return fail(
                    Fault.MISSING,
                    i,
                    f"step 3: expected record {i} (leaf {stored.hex()[:16]}…), found none",
                )
            raw = maybe
            if sha_leaf(raw) == stored:
                continue
            if by_hash is None:
                by_hash = {leaves[32 * j : 32 * j + 32]: j for j in range(size)}
            h = sha_leaf(raw)
            other = by_hash.get(h)
            if other is not None:
                return fail(
                    Fault.REORDERED,
                    min(i, other),
                    f"step 3: record stored at index {i} is the record of index {other}",
                )
            return fail(
                Fault.EDITED,
                i,
                f"step 3: record {i}: expected leaf hash {stored.hex()}, found {h.hex()}",
            )
        for i, maybe in zip(range(start, end), raws, strict=True):
            try:
                decode_record(cast(bytes, maybe))
            except AuditError as exc:
                kind = (
                    Fault.UNSUPPORTED_VERSION
                    if exc.code == "audit_unsupported_version"
                    else Fault.MALFORMED
                )
                return fail(kind, i, f"step 3: record {i}: {exc.message}")
    if count != expected_count:
        # (the names and the size read together: records sequenced since are not extra)
        async with redis.pipeline(transaction=True) as p:
            p.hkeys(keys.records)
            p.hget(keys.meta, "size")
            fields, size_now = await p.execute()
        now = int(size_now or size)
        outside = sorted(
            int(f) if f.isdigit() else -1
            for f in fields
            if not (f.isdigit() and archived <= int(f) < now)
        )
        first = outside[0] if outside else size
        return fail(
            Fault.EXTRA,
            first,
            f"step 3: expected {expected_count} stored records, found {count} "
            f"(unexpected entries: {[f for f in outside[:5]]})",
        )

    # 4. Rebuild the tree and compare with stored subtree hashes.
    levels = merkle.build_levels(leaves)
    for level in range(1, len(levels)):
        stored_level = cast(bytes, stored_levels[level - 1] or b"")
        if stored_level != levels[level]:
            n = min(len(stored_level), len(levels[level])) // 32
            bad = next(
                (
                    j
                    for j in range(n)
                    if stored_level[32 * j : 32 * j + 32] != levels[level][32 * j : 32 * j + 32]
                ),
                n,
            )
            return fail(
                Fault.BAD_TREE,
                bad << level,
                f"step 4: stored node {bad} at level {level} differs from the rebuilt tree "
                f"(expected {len(levels[level]) // 32} nodes, found {len(stored_level) // 32})",
            )
    get = merkle.levels_getter(levels)

    # 5. and 6. Checkpoints.
    prev: Checkpoint | None = None
    for pos, raw in enumerate(raw_cps):
        try:
            cp = open_checkpoint(raw.decode(), vkey, origin)
        except AuditError as exc:
            return fail(
                Fault.BAD_SIGNATURE,
                None,
                f"step 5: checkpoint {pos}: {exc.message}",
                checkpoint=pos,
                checkpoints_checked=pos,
            )
        if cp.size > size:
            return fail(
                Fault.TRUNCATED,
                size,
                f"step 5: checkpoint {pos} signs {cp.size} records, the log holds {size}",
                checkpoint=pos,
                checkpoints_checked=pos,
            )
        actual = merkle.root_hash(cp.size, get)
        if actual != cp.root_hash:
            lower = prev.size if prev is not None else 0
            return fail(
                Fault.FORKED_CHECKPOINT,
                lower,
                f"step 5: checkpoint {pos} (size {cp.size}): expected root "
                f"{cp.root_hash.hex()}, found {actual.hex()}; records in "
                f"[{lower}, {cp.size}) were changed after signing, or the checkpoint is "
                "from another log",
                checkpoint=pos,
                checkpoints_checked=pos,
            )
        if prev is not None:
            if cp.size < prev.size:
                return fail(
                    Fault.FORKED_CHECKPOINT,
                    cp.size,
                    f"step 6: checkpoint {pos}: expected size >= {prev.size}, found {cp.size}",
                    checkpoint=pos,
                    checkpoints_checked=pos,
                )
            try:
                proof = merkle.consistency_proof(prev.size, cp.size, get)
                merkle.verify_consistency(prev.size, cp.size, prev.root_hash, cp.root_hash, proof)
            except AuditError as exc:
                return fail(
                    Fault.FORKED_CHECKPOINT,
                    prev.size,
                    f"step 6: checkpoints {pos - 1}->{pos}: {exc.message}",
                    checkpoint=pos,
                    checkpoints_checked=pos,
                )
        prev = cp

    # 7. Coverage.
    signed = prev.size if prev is not None else 0
    message = f"{size} records verified, {len(raw_cps)} checkpoints checked"
    if archived:
        message += f", records below {archived} archived (checked by leaf hash)"
    if signed < size:
        message += f"; records from {signed} on are not signed by a checkpoint yet"
    return VerifyReport(
        True,
        size,
        message=message,
        checkpoints_checked=len(raw_cps),
        archived_before=archived,
        signed_size=signed,
    )


# --- offline helpers (evidence bundles) ---


def verify_event_line(
    line: Mapping[str, Any] | str,
    proof: TlogProof,
    verifier: AuditVerifierKey,
    *,
    origin: str | None = None,
) -> Checkpoint:
    """Check one ``events.jsonl`` line against its tlog-proof; returns the checkpoint.

    1. The line's ``index`` must match the proof's.
    2. When personal data is disclosed, SHA-256(salt || RFC8785(P)) must equal ``pd``.
    3. The leaf is SHA-256(0x00 || RFC8785(record)).
    4. The checkpoint signature and the inclusion proof must verify.
    """
    import base64
    import binascii

    obj = json.loads(line) if isinstance(line, str) else line
    index, record = obj.get("index"), obj.get("record")
    if not isinstance(record, dict) or not isinstance(index, int):
        raise AuditError("event line needs 'index' and 'record'", code="audit_bad_format")
    if index != proof.index:
        raise AuditError(
            f"step 1: expected proof for index {index}, found {proof.index}",
            code="audit_proof_invalid",
        )
    decode_record(canonical(record))
    personal, salt_b64 = obj.get("personal"), obj.get("salt")
    if personal is not None:
        try:
            salt = base64.b64decode(str(salt_b64), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AuditError("salt is not base64", code="audit_bad_format") from exc
        if not isinstance(personal, dict) or not check_personal(record, personal, salt):
            raise AuditError(
                f"step 2: record {index}: disclosed personal data does not match its "
                f"commitment pd={record.get('pd')!r}",
                code="audit_proof_invalid",
            )
    leaf = merkle.leaf_hash(canonical(record))
    return proof.verify(leaf, verifier, origin)


def verify_consistency_offline(
    old_note: str,
    new_note: str,
    hashes: Sequence[bytes],
    verifier: AuditVerifierKey,
    *,
    origin: str | None = None,
) -> tuple[Checkpoint, Checkpoint]:
    """Both checkpoints are signed and the newer extends the older (RFC 9162 §2.1.4.2)."""
    old = open_checkpoint(old_note, verifier, origin)
    new = open_checkpoint(new_note, verifier, origin)
    merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash, hashes)
    return old, new
