"""Retention: move old records to offline-verifiable segment files, then out of Redis.

A segment file (``audit-<start>-<end>.segment``, format in docs/audit.md)::

    classguard-audit-segment v1
    origin <origin>
    range <start> <end>
    record <index> <base64 leaf hash> <base64 record bytes>      (one per index)
    node <base64 hash>                                            (range proof, 0+ lines)

    <signed checkpoint covering the range>

The leaf hashes of the records plus the ``node`` hashes reproduce the checkpoint's root
(:func:`audit.merkle.root_from_range`), so the file verifies with nothing but the verifier
key. Leaf hashes and tree nodes stay in Redis, so proofs and ``verify`` keep working; a
signed archive note in ``audit:archives`` records which range left and the file's digest.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis

from audit import merkle
from audit.checkpoint import Checkpoint, open_checkpoint
from audit.errors import AuditError, FormatError, NotFoundError
from audit.holds import LegalHold, holding
from audit.note import AuditSigningKey, AuditVerifierKey
from audit.records import decode_personal, decode_record
from audit.store import (
    AuditKeys,
    ensure_bytes_client,
    fetch_nodes,
    field_indexes,
    student_ids,
)

SEGMENT_HEADER = "classguard-audit-segment v1"
ARCHIVE_HEADER = "classguard-audit-archive v1"
SCAN_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class ArchiveNote:
    origin: str
    start: int
    end: int
    sha256: bytes

    def body(self) -> str:
        digest = base64.b64encode(self.sha256).decode()
        return f"{ARCHIVE_HEADER}\n{self.origin}\n{self.start} {self.end}\n{digest}\n"


def open_archive_note(note: str, verifier: AuditVerifierKey) -> ArchiveNote:
    text = verifier.verify(note)
    lines = text.rstrip("\n").split("\n")
    try:
        header, origin, rng, digest = lines
        start_s, end_s = rng.split(" ")
        sha = base64.b64decode(digest, validate=True)
        start, end = int(start_s), int(end_s)
    except (ValueError, binascii.Error) as exc:
        raise FormatError("archive note is malformed") from exc
    if header != ARCHIVE_HEADER or not 0 <= start < end or len(sha) != 32:
        raise FormatError("archive note is malformed")
    return ArchiveNote(origin, start, end, sha)


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    path: Path
    start: int
    end: int
    checkpoint_size: int


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    origin: str
    start: int
    end: int
    checkpoint: Checkpoint
    records: tuple[bytes, ...]


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


async def archive_before(
    redis: aioredis.Redis,
    prefix: str,
    cutoff_ms: int,
    out_dir: Path,
    signer: AuditSigningKey,
    *,
    holds: Sequence[LegalHold] = (),
) -> ArchiveResult | None:
    """Archive the oldest records with ``ts < cutoff_ms`` (a contiguous run from the start).

    Only records covered by the latest checkpoint are archived, and only after their
    leaf hashes were re-checked. Their personal data is erased, not archived: retention
    has ended for it. Returns None when nothing is due.

    The run stops before the first record a legal hold in ``holds`` covers: held records
    keep their personal data and stay in Redis (so does everything after them, the
    archive being a prefix) until the incident is closed.
    """
    ensure_bytes_client(redis)
    keys = AuditKeys(prefix)
    meta = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(keys.meta))
    start = int(meta.get(b"archived_before", b"0"))
    note_raw = await cast(Awaitable[bytes | None], redis.lindex(keys.checkpoints, -1))
    if note_raw is None:
        raise NotFoundError("no checkpoint yet; nothing can be archived")
    verifier = signer.verifier()
    cp = open_checkpoint(note_raw.decode(), verifier)
    # 1. Find the run of expired records.
    end = start
    records: list[bytes] = []
    while end < cp.size:
        upto = min(cp.size, end + SCAN_CHUNK)
        raws = await cast(
            Awaitable[list[bytes | None]],
            redis.hmget(keys.records, [str(i) for i in range(end, upto)]),
        )
        pds: list[bytes | None] = [None] * len(raws)
        if holds:
            pds = await cast(
                Awaitable[list[bytes | None]],
                redis.hmget(keys.personal, [str(i) for i in range(end, upto)]),
            )
        stop = False
        for i, raw, pd in zip(range(end, upto), raws, pds, strict=True):
            if raw is None:
                raise AuditError(f"record {i} is missing; run verify", code="audit_corrupt")
            rec = decode_record(raw)
            ts = rec.get("ts")
            if not isinstance(ts, int) or ts >= cutoff_ms:
                stop = True
                break
            personal = decode_personal(pd)[0] if pd is not None else None
            if holds and holding(holds, i, rec, personal) is not None:
                stop = True
                break
            records.append(raw)
            end = i + 1
        if stop:
            break
    if end == start:
        return None
    # 2. Re-check the leaves and build the range proof against the checkpoint.
    leaves_raw = cast(bytes, await redis.getrange(keys.leaves, 32 * start, 32 * end - 1))
    leaves = [leaves_raw[32 * j : 32 * j + 32] for j in range(end - start)]
    for j, (raw, leaf) in enumerate(zip(records, leaves, strict=True)):
        if merkle.leaf_hash(raw) != leaf:
            raise AuditError(
                f"record {start + j} does not match its leaf hash; run verify",
                code="audit_corrupt",
            )
    size = cp.size

    def build(get: merkle.NodeGetter) -> list[bytes]:
        return merkle.range_proof(start, end, size, get)

    nodes = await fetch_nodes(redis, keys, merkle.plan(build))
    proof = build(lambda lv, i: nodes[(lv, i)])
    if merkle.root_from_range(start, end, size, leaves, proof) != cp.root_hash:
        raise AuditError(
            "stored tree does not match the checkpoint; run verify", code="audit_corrupt"
        )
    # 3. Write the segment file.
    lines = [SEGMENT_HEADER, f"origin {cp.origin}", f"range {start} {end}"]
    for j, (raw, leaf) in enumerate(zip(records, leaves, strict=True)):
        lines.append(
            f"record {start + j} {base64.b64encode(leaf).decode()} {base64.b64encode(raw).decode()}"
        )
    lines.extend(f"node {base64.b64encode(h).decode()}" for h in proof)
    data = ("\n".join(lines) + "\n\n" + note_raw.decode()).encode()
    path = out_dir / f"audit-{start:012d}-{end:012d}.segment"
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(_write_file, path, data)
    # 4. Record the archive (signed) and remove records and their personal data.
    archive = ArchiveNote(cp.origin, start, end, hashlib.sha256(data).digest())
    signed = signer.sign_note(archive.body())
    fields = [str(i) for i in range(start, end)]
    blobs: list[bytes | None] = []
    for k in range(0, len(fields), SCAN_CHUNK):
        blobs += await cast(
            Awaitable[list[bytes | None]], redis.hmget(keys.personal, fields[k : k + SCAN_CHUNK])
        )
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(keys.meta)
        current = await cast(Awaitable[bytes | None], pipe.hget(keys.meta, "archived_before"))
        if int(current or 0) != start:
            raise AuditError("another process archived concurrently", code="audit_conflict")
        pipe.multi()  # type: ignore[no-untyped-call]
        for idx, raw, blob in zip(fields, records, blobs, strict=True):
            rec = decode_record(raw)
            cls = rec.get("class")
            if isinstance(cls, str) and cls:
                pipe.zrem(keys.class_index(cls), idx)
            for sid in student_ids(rec):
                pipe.zrem(keys.personal_index("student", sid), idx)
            for key in field_indexes(keys, rec):
                pipe.zrem(key, idx)
            if blob is not None:
                ip = decode_personal(blob)[0].get("ip")
                if isinstance(ip, str):
                    pipe.zrem(keys.personal_index("ip", ip), idx)
        for k in range(0, len(fields), SCAN_CHUNK):
            pipe.hdel(keys.records, *fields[k : k + SCAN_CHUNK])
            pipe.hdel(keys.personal, *fields[k : k + SCAN_CHUNK])
        pipe.rpush(keys.archives, signed)
        pipe.hset(keys.meta, "archived_before", end)
        await pipe.execute()
    return ArchiveResult(path, start, end, cp.size)


def parse_segment(
    text: str,
) -> tuple[str, int, int, list[tuple[int, bytes, bytes]], list[bytes], str]:
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise FormatError("segment: expected a blank line before the checkpoint")
    lines = head.split("\n")
    if lines[0] != SEGMENT_HEADER:
        raise FormatError(f"segment: expected header {SEGMENT_HEADER!r}, found {lines[0]!r}")
    try:
        if not lines[1].startswith("origin ") or not lines[2].startswith("range "):
            raise FormatError("segment: expected 'origin' and 'range' lines")
        origin = lines[1][7:]
        start_s, end_s = lines[2][6:].split(" ")
        start, end = int(start_s), int(end_s)
        records: list[tuple[int, bytes, bytes]] = []
        nodes: list[bytes] = []
        for line in lines[3:]:
            kind, _, rest = line.partition(" ")
            if kind == "record" and not nodes:
                idx_s, leaf_b64, rec_b64 = rest.split(" ")
                records.append(
                    (
                        int(idx_s),
                        base64.b64decode(leaf_b64, validate=True),
                        base64.b64decode(rec_b64, validate=True),
                    )
                )
            elif kind == "node":
                nodes.append(base64.b64decode(rest, validate=True))
            else:
                raise FormatError(f"segment: unexpected line {line[:40]!r}")
    except (ValueError, IndexError, binascii.Error) as exc:
        raise FormatError("segment: malformed line") from exc
    return origin, start, end, records, nodes, note


def verify_segment(path: Path, verifier_key: AuditVerifierKey | str) -> SegmentInfo:
    """Check a segment file offline; raises an :class:`AuditError` naming the failed step.

    1. The checkpoint is signed by ``verifier_key`` and names the segment's origin.
    2. Records are contiguous and cover exactly the stated range inside the checkpoint.
    3. Each leaf hash is SHA-256(0x00 || record) and each record is a known format.
    4. The leaves plus the range proof reproduce the checkpoint's root hash.
    """
    vkey = (
        verifier_key
        if isinstance(verifier_key, AuditVerifierKey)
        else AuditVerifierKey.parse(verifier_key)
    )
    origin, start, end, records, nodes, note = parse_segment(path.read_text(encoding="utf-8"))
    cp = open_checkpoint(note, vkey, origin)
    if not 0 <= start < end <= cp.size:
        raise FormatError(
            f"step 2: expected a range inside the checkpoint (size {cp.size}), "
            f"found [{start}, {end})"
        )
    indexes = [r[0] for r in records]
    if indexes != list(range(start, end)):
        raise FormatError(f"step 2: expected records {start}..{end - 1} in order")
    for idx, leaf, raw in records:
        if merkle.leaf_hash(raw) != leaf:
            raise AuditError(
                f"step 3: record {idx}: expected leaf {leaf.hex()}, "
                f"found {merkle.leaf_hash(raw).hex()}",
                code="audit_proof_invalid",
            )
        decode_record(raw)
    root = merkle.root_from_range(start, end, cp.size, [r[1] for r in records], nodes)
    if root != cp.root_hash:
        raise AuditError(
            f"step 4: expected root {cp.root_hash.hex()}, found {root.hex()}",
            code="audit_proof_invalid",
        )
    return SegmentInfo(origin, start, end, cp, tuple(r[2] for r in records))
