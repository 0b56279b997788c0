"""Incidents in Redis: what happened in which class, when, to whom, plus attached files.

An incident names a class, a time window, the people involved (roster students and/or
unknown visitors known by device hash or IP address) and optionally specific audit
indexes. Status moves ``open -> exported -> closed`` (``open -> closed`` too); a closed
incident takes no more edits or attachments.

Attachments (screenshots, chat exports, recordings) are sealed at rest with the gateway's
SecretBox in chunks of 1 MiB, each bound by its associated data to the incident, the
attachment, its position and the chunk count, so chunks cannot be swapped, reordered,
dropped or moved to another incident without failing to open. The sealed file lives on
disk under ``<data_dir>/attachments/`` (``attachments_dir``), content-addressed by the
SHA-256 of its sealed bytes, written atomically (temporary file, fsync, rename) with mode
0600; Redis keeps only the metadata and both hashes. Every gateway process that exports
must see the same directory (one host, or a shared volume). Each org (the incident's
school) has a storage quota, ``attachment_org_quota_bytes``, counted in Redis.

Attachments stored by earlier versions (sealed chunks in a Redis list) still open.

Keys (hash tag ``{i:<id>}`` keeps an incident's keys on one Cluster slot)::

    <p>{i:<id>}:meta          hash: the incident (JSON members where structured)
    <p>{i:<id>}:att           hash: attachment id -> metadata JSON
    <p>{i:<id>}:att:<att id>  list: sealed chunks
    <p>{i:<id>}:rev           list: revisions, append-only (JSON, oldest first)
    <p>incidents:org:<org>    zset: incident ids by creation time
    <p>incidents:class:<cid>  zset: incident ids by creation time
    <p>incidents:held         zset: ids of incidents not closed (legal holds)
    <p>incidents:usage:<org>  string: bytes of attachments the org stores (its quota)

Severity is ``normal`` or ``serious`` (a record without the member is ``normal``);
marking an incident serious escalates its notification (gateway/notify.py). An incident
is *acknowledged* once, by an administrator responsible for its school (the school's or
an org's above it): ``ack_by`` and ``ack_at`` in the meta hash, set by
:meth:`IncidentStore.acknowledge` and never changed afterwards.

Revisions: creation is revision 0; every later change of title, description, status or
severity appends one revision with who, when, why and each field's old and new value, in the same
script that applies the change. Nothing ever rewrites or trims the list.

Legal hold: an incident that is not closed holds the personal data of the audit records
it covers (``audit.holds``); :func:`legal_holds` lists them for erasure and retention.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis.asyncio as aioredis

from audit.holds import LegalHold
from audit.scripts import Script, ScriptRunner

from .secretbox import SecretBox
from .stores.keys import IncidentKeys

Status = Literal["open", "exported", "closed"]
STATUSES: tuple[Status, ...] = ("open", "exported", "closed")
#: Allowed status changes. Exporting again an exported incident keeps it ``exported``;
#: an administrator may reopen a closed incident (the route enforces who).
TRANSITIONS: Mapping[str, frozenset[str]] = {
    "open": frozenset({"exported", "closed"}),
    "exported": frozenset({"closed"}),
    "closed": frozenset({"open"}),
}
Severity = Literal["normal", "serious"]
SEVERITIES: tuple[Severity, ...] = ("normal", "serious")
#: Fields whose every change is kept as a revision.
REVISED_FIELDS = ("title", "description", "status", "severity")
RECORD_VERSION = 1
CHUNK_BYTES = 1 << 20
MAX_ATTACHMENTS = 20
_ID_RE = re.compile(r"i[a-z0-9]{12}")
_ATT_RE = re.compile(r"a[a-z0-9]{10}")
_BLOB_RE = re.compile(r"[0-9a-f]{64}")
_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


class IncidentError(Exception):
    """A stable ``code`` and an English message; ``status`` for the HTTP layer."""

    def __init__(self, code: str, message: str, *, status: int = 400,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.field = field


def new_incident_id() -> str:
    return "i" + "".join(secrets.choice(_ALPHABET) for _ in range(12))


def _new_attachment_id() -> str:
    return "a" + "".join(secrets.choice(_ALPHABET) for _ in range(10))


def valid_incident_id(value: str) -> bool:
    return bool(_ID_RE.fullmatch(value))


@dataclass(frozen=True, slots=True)
class Visitor:
    """Someone not on the roster, known by the device hash or the address the log holds."""

    device: str | None = None
    ip: str | None = None

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in (("device", self.device), ("ip", self.ip)) if v}


@dataclass(frozen=True, slots=True)
class Attachment:
    id: str
    filename: str  # as uploaded; shown to staff, never used as a file name
    content_type: str  # sniffed from the bytes, never the client's header
    extension: str
    size: int
    sha256: str
    uploaded_by: str
    uploaded_at: float
    chunks: int
    # SHA-256 of the sealed file on disk (its name); None for one kept in Redis
    blob: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
            "uploaded_by": self.uploaded_by,
            "uploaded_at": self.uploaded_at,
        }


@dataclass(frozen=True, slots=True)
class Incident:
    id: str
    org: str
    class_id: str
    title: str
    description: str
    since_ms: int
    until_ms: int
    student_ids: tuple[str, ...]
    visitors: tuple[Visitor, ...]
    indexes: tuple[int, ...]
    status: Status
    created_by: str
    created_at: float
    updated_at: float
    attachments: tuple[Attachment, ...] = field(default=())
    severity: Severity = "normal"
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "org": self.org,
            "class_id": self.class_id,
            "title": self.title,
            "description": self.description,
            "since": self.since_ms,
            "until": self.until_ms,
            "student_ids": list(self.student_ids),
            "visitors": [v.to_json() for v in self.visitors],
            "indexes": list(self.indexes),
            "status": self.status,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attachments": [a.to_json() for a in self.attachments],
            "severity": self.severity,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": self.acknowledged_at,
        }

    def summary(self) -> dict[str, Any]:
        """What a list shows: no people, no description (opening one is a custody view)."""
        return {
            "id": self.id,
            "class_id": self.class_id,
            "title": self.title,
            "status": self.status,
            "severity": self.severity,
            "since": self.since_ms,
            "until": self.until_ms,
            "created_by": self.created_by,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class Revision:
    """One change of an incident: ``changes`` maps a field to ``(old, new)``."""

    n: int
    at: float
    by: str
    reason: str | None
    changes: Mapping[str, tuple[str | None, str | None]]

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "at": self.at, "by": self.by, "reason": self.reason,
                "changes": {k: {"old": o, "new": n} for k, (o, n) in self.changes.items()}}


def _revision_from_json(d: Mapping[str, Any]) -> Revision:
    raw = d.get("changes")
    changes = {str(k): (_opt(v[0]), _opt(v[1])) for k, v in
               (raw.items() if isinstance(raw, dict) else ())
               if isinstance(v, list) and len(v) == 2}
    reason = d.get("reason")
    return Revision(n=int(d["n"]), at=float(d["at"]), by=str(d["by"]),
                    reason=str(reason) if isinstance(reason, str) and reason else None,
                    changes=changes)


def _opt(v: Any) -> str | None:
    return v if isinstance(v, str) else None


# --- content sniffing (pure) ---

_MAGIC: Sequence[tuple[int, bytes, str, str]] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (0, b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (0, b"GIF87a", "image/gif", "gif"),
    (0, b"GIF89a", "image/gif", "gif"),
    (0, b"%PDF-", "application/pdf", "pdf"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm", "webm"),
    (0, b"OggS", "audio/ogg", "ogg"),
    (0, b"ID3", "audio/mpeg", "mp3"),
    (0, b"PK\x03\x04", "application/zip", "zip"),
)


def sniff(head: bytes) -> tuple[str, str]:
    """``(content type, extension)`` from the first bytes of a file.

    NOTE: the client's Content-Type header is ignored on purpose: it is whatever the
    uploader claims. Unknown binary data is kept as application/octet-stream (evidence may
    come in any format); nothing is ever served back to a browser inline.
    """
    for offset, magic, ctype, ext in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return ctype, ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp", "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav", "wav"
    if head[4:8] == b"ftyp":
        return "video/mp4", "mp4"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text/plain", "txt"
        except UnicodeDecodeError as exc:
            # a multi-byte character cut at the end of the sniffed prefix is still text
            if exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
                return "text/plain", "txt"
    return "application/octet-stream", "bin"


# --- the store ---

_REVISE = Script.load("gateway.stores", "incident_revise")
_ACKNOWLEDGE = Script.load("gateway.stores", "incident_acknowledge")


class IncidentStore:
    """Incidents and their sealed attachments; every method is one or a few round trips."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *, clock: Callable[[], float],
                 secretbox: SecretBox, blob_dir: Path | None = None) -> None:
        self.r = redis
        self.p = prefix
        self._keys = IncidentKeys(prefix)
        self.clock = clock
        self.box = secretbox
        self.blob_dir = blob_dir
        self._scripts = ScriptRunner(redis)

    def _k(self, iid: str, suffix: str) -> str:
        return self._keys.item(iid, suffix)

    def _org_key(self, org: str) -> str:
        return self._keys.of_org(org)

    def _class_key(self, cid: str) -> str:
        return self._keys.of_class(cid)

    @property
    def _held_key(self) -> str:
        return held_key(self.p)

    async def create(
        self, *, org: str, class_id: str, title: str, description: str, since_ms: int,
        until_ms: int, student_ids: Sequence[str], visitors: Sequence[Visitor],
        indexes: Sequence[int], created_by: str, severity: Severity = "normal",
    ) -> Incident:
        if severity not in SEVERITIES:
            raise IncidentError("invalid_field",
                                f"severity must be one of {', '.join(SEVERITIES)}",
                                field="severity")
        iid = new_incident_id()
        now = self.clock()
        inc = Incident(iid, org, class_id, title, description, since_ms, until_ms,
                       tuple(student_ids), tuple(visitors), tuple(indexes), "open",
                       created_by, now, now, severity=severity)
        changes: dict[str, list[str | None]] = {
            "title": [None, title], "description": [None, description],
            "status": [None, "open"]}
        if severity != "normal":
            changes["severity"] = [None, severity]
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self._k(iid, "meta"), mapping={
                "v": str(RECORD_VERSION),
                "id": iid,
                "org": org,
                "class_id": class_id,
                "title": title,
                "description": description,
                "since_ms": str(since_ms),
                "until_ms": str(until_ms),
                "student_ids": json.dumps(list(student_ids)),
                "visitors": json.dumps([v.to_json() for v in visitors]),
                "indexes": json.dumps(list(indexes)),
                "status": "open",
                "severity": severity,
                "created_by": created_by,
                "created_at": repr(now),
                "updated_at": repr(now),
            })
            p.rpush(self._k(iid, "rev"), json.dumps({
                "v": 1, "n": 0, "at": now, "by": created_by, "reason": None,
                "changes": changes}, ensure_ascii=False))
            p.zadd(self._org_key(org), {iid: now})
            p.zadd(self._class_key(class_id), {iid: now})
            p.zadd(self._held_key, {iid: now})
            await p.execute()
        return inc

    async def get(self, iid: str) -> Incident | None:
        if not valid_incident_id(iid):
            return None
        async with self.r.pipeline(transaction=False) as p:
            p.hgetall(self._k(iid, "meta"))
            p.hgetall(self._k(iid, "att"))
            replies: list[Any] = await p.execute()
        meta, atts = replies[0], replies[1]
        if not meta:
            return None
        v = int(meta.get("v", "0"))
        if v != RECORD_VERSION:
            raise IncidentError("unsupported_version",
                                f"incident record v{v}; this software knows v{RECORD_VERSION}",
                                status=500)
        attachments = sorted(
            (_attachment_from_json(json.loads(raw)) for raw in atts.values()),
            key=lambda a: (a.uploaded_at, a.id),
        )
        return Incident(
            id=meta["id"], org=meta["org"], class_id=meta["class_id"], title=meta["title"],
            description=meta["description"], since_ms=int(meta["since_ms"]),
            until_ms=int(meta["until_ms"]),
            student_ids=tuple(json.loads(meta["student_ids"])),
            visitors=tuple(Visitor(**v) for v in json.loads(meta["visitors"])),
            indexes=tuple(json.loads(meta["indexes"])),
            status=meta["status"],
            created_by=meta["created_by"], created_at=float(meta["created_at"]),
            updated_at=float(meta["updated_at"]), attachments=tuple(attachments),
            severity="serious" if meta.get("severity") == "serious" else "normal",
            acknowledged_by=meta.get("ack_by") or None,
            acknowledged_at=float(meta["ack_at"]) if meta.get("ack_at") else None,
        )

    async def ids_of_orgs(self, orgs: Iterable[str], limit: int = 200) -> list[str]:
        return await self._ids([self._org_key(o) for o in orgs], limit)

    async def ids_of_classes(self, class_ids: Iterable[str], limit: int = 200) -> list[str]:
        return await self._ids([self._class_key(c) for c in class_ids], limit)

    async def _ids(self, keys: list[str], limit: int) -> list[str]:
        found: dict[str, float] = {}
        for key in keys:
            pairs: list[Any] = await self.r.zrevrange(key, 0, limit - 1, withscores=True)
            for member, score in pairs:
                found[str(member)] = float(score)
        return [i for i, _ in sorted(found.items(), key=lambda kv: -kv[1])[:limit]]

    async def set_status(self, iid: str, status: str, *, by: str, reason: str | None = None,
                         allow_same: bool = False) -> str:
        """Move the incident to ``status`` if the transition is allowed (atomically, with
        its revision). Returns the status it had."""
        return await self.revise(iid, by=by, status=status, reason=reason,
                                 allow_same=allow_same)

    async def revise(self, iid: str, *, by: str, title: str | None = None,
                     description: str | None = None, status: str | None = None,
                     severity: str | None = None,
                     reason: str | None = None, allow_same: bool = False) -> str:
        """Apply a change and append its revision in one step; returns the old status.

        Raises ``invalid_transition`` (409) for a status change the table refuses and
        ``incident_closed`` (409) for an edit of a closed incident."""
        if status is not None and status not in STATUSES:
            raise IncidentError("invalid_field", f"status must be one of {', '.join(STATUSES)}",
                                field="status")
        if severity is not None and severity not in SEVERITIES:
            raise IncidentError("invalid_field",
                                f"severity must be one of {', '.join(SEVERITIES)}",
                                field="severity")
        ch = {k: v for k, v in (("title", title), ("description", description),
                                ("status", status), ("severity", severity)) if v is not None}
        res = await self._scripts.run(
            _REVISE, [self._k(iid, "meta"), self._k(iid, "rev"), self._held_key],
            [json.dumps(ch, ensure_ascii=False), by, repr(self.clock()), reason or "",
             json.dumps({k: sorted(v) for k, v in TRANSITIONS.items()}),
             "1" if allow_same else "0", iid],
        )
        code = int(res[0])
        cur = res[1].decode() if isinstance(res[1], bytes) else str(res[1])
        if code == -1:
            raise IncidentError("not_found", "incident not found", status=404)
        if code == 0:
            raise IncidentError("invalid_transition",
                                f"expected a status reachable from {cur!r}, found {status!r}",
                                status=409, field="status")
        if code == 2:
            raise IncidentError("incident_closed", "a closed incident cannot be edited",
                                status=409)
        return cur

    async def acknowledge(self, iid: str, *, by: str) -> tuple[bool, str, float]:
        """Record that ``by`` acknowledged the incident, unless someone already did.

        Returns ``(acknowledged now, by whom, when)``; the first acknowledgment stays."""
        res = await self._scripts.run(_ACKNOWLEDGE, [self._k(iid, "meta")],
                                      [by, repr(self.clock())])
        code = int(res[0])
        if code == -1:
            raise IncidentError("not_found", "incident not found", status=404)
        who, at = (x.decode() if isinstance(x, bytes) else str(x) for x in res[1:3])
        return code == 1, who, float(at)

    async def history(self, iid: str) -> list[Revision]:
        """Every revision, oldest first (creation is revision 0)."""
        raw: list[Any] = await self.r.lrange(self._k(iid, "rev"), 0, -1)
        return [_revision_from_json(json.loads(x)) for x in raw]

    async def legal_holds(self) -> list[LegalHold]:
        return await legal_holds(self.r, self.p)

    # --- attachments ---

    def _aad(self, iid: str, aid: str, i: int, n: int) -> bytes:
        return f"incident-attachment:{iid}:{aid}:{i}:{n}".encode()

    def _usage_key(self, org: str) -> str:
        return self._keys.usage(org)

    async def usage(self, org: str) -> int:
        """Bytes of attachments the org stores (what its quota counts)."""
        raw = await self.r.get(self._usage_key(org))
        return int(raw or 0)

    def blob_path(self, blob: str) -> Path:
        if self.blob_dir is None or not _BLOB_RE.fullmatch(blob):
            raise IncidentError("attachment_damaged", f"no attachment file {blob!r}",
                                status=500)
        return self.blob_dir / blob[:2] / f"{blob}.sealed"

    async def add_attachment(self, inc: Incident, *, filename: str, data: bytes,
                             uploaded_by: str, quota: int | None = None) -> Attachment:
        """Seal ``data``, write it to disk and record it; the caller enforces the per-file
        size limit and logs the upload. ``quota`` is the org's storage budget in bytes:
        over it, ``quota_exceeded`` (413) and nothing is stored."""
        if len(inc.attachments) >= MAX_ATTACHMENTS:
            raise IncidentError("too_many_attachments",
                                f"an incident holds at most {MAX_ATTACHMENTS} attachments",
                                status=409)
        if self.blob_dir is None:
            raise IncidentError("no_storage", "no attachment directory is configured",
                                status=500)
        aid = _new_attachment_id()
        ctype, ext = sniff(data[:512])
        n = max(1, -(-len(data) // CHUNK_BYTES))
        sealed = "\n".join(
            self.box.encrypt(data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES],
                             aad=self._aad(inc.id, aid, i, n))
            for i in range(n)
        ).encode("ascii")
        blob = hashlib.sha256(sealed).hexdigest()
        att = Attachment(aid, filename, ctype, ext, len(data), hashlib.sha256(data).hexdigest(),
                         uploaded_by, self.clock(), n, blob)
        # Reserve the bytes first (atomic): two uploads racing for the last of a quota
        # cannot both pass.
        usage_key = self._usage_key(inc.org)
        used = int(await self.r.incrby(usage_key, len(data)))
        if quota is not None and used > quota:
            await self.r.decrby(usage_key, len(data))
            raise QuotaExceeded(used - len(data), quota)
        try:
            await asyncio.to_thread(write_blob, self.blob_path(blob), sealed)
            async with self.r.pipeline(transaction=True) as p:
                p.hset(self._k(inc.id, "att"), aid, json.dumps(_attachment_to_json(att)))
                p.hset(self._k(inc.id, "meta"), "updated_at", repr(self.clock()))
                await p.execute()
        except BaseException:
            await self.r.decrby(usage_key, len(data))
            raise
        return att

    async def attachment_bytes(self, iid: str, att: Attachment) -> bytes:
        """Open every chunk and check the SHA-256s recorded at upload (of the sealed file
        and of the plaintext)."""
        if not _ATT_RE.fullmatch(att.id):
            raise IncidentError("not_found", "attachment not found", status=404)
        if att.blob is not None:
            path = self.blob_path(att.blob)
            try:
                sealed = await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                raise IncidentError("attachment_damaged",
                                    f"attachment {att.id}: expected the file {path.name}, "
                                    f"found none ({exc.strerror})", status=500) from exc
            found_blob = hashlib.sha256(sealed).hexdigest()
            if found_blob != att.blob:
                raise IncidentError("attachment_damaged",
                                    f"attachment {att.id}: expected sealed SHA-256 {att.blob}, "
                                    f"found {found_blob}", status=500)
            chunks: list[Any] = sealed.decode("ascii").split("\n")
        else:
            chunks = await self.r.lrange(self._k(iid, f"att:{att.id}"), 0, -1)
        if len(chunks) != att.chunks:
            raise IncidentError("attachment_damaged",
                                f"attachment {att.id}: expected {att.chunks} sealed chunks, "
                                f"found {len(chunks)}", status=500)
        data = b"".join(
            self.box.decrypt(str(c), aad=self._aad(iid, att.id, i, att.chunks))
            for i, c in enumerate(chunks)
        )
        found = hashlib.sha256(data).hexdigest()
        if found != att.sha256:
            raise IncidentError("attachment_damaged",
                                f"attachment {att.id}: expected SHA-256 {att.sha256}, "
                                f"found {found}", status=500)
        return data


class QuotaExceeded(IncidentError):  # noqa: N818 - an IncidentError with its figures
    def __init__(self, used: int, quota: int) -> None:
        super().__init__("quota_exceeded",
                         f"your organisation stores {used} bytes of incident attachments; "
                         f"its quota is {quota} bytes (attachment_org_quota_bytes)",
                         status=413, field="file")
        self.used = used
        self.quota = quota


def write_blob(path: Path, data: bytes) -> None:
    """Write ``data`` at ``path`` atomically, mode 0600: a temporary file in the same
    directory, fsync, rename, fsync of the directory. An existing file with the same
    name already holds the same bytes (the name is their hash) and is kept."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def held_key(prefix: str) -> str:
    return IncidentKeys(prefix).held()


async def legal_holds(redis: aioredis.Redis, prefix: str) -> list[LegalHold]:
    """The holds of every incident that is not closed, from Redis (text or bytes client).

    Needs no SecretBox, so the command line can check holds without the gateway's keys."""
    ids: list[Any] = await redis.zrange(held_key(prefix), 0, -1)
    out: list[LegalHold] = []
    for raw in ids:
        iid = raw.decode() if isinstance(raw, bytes) else str(raw)
        if not valid_incident_id(iid):
            continue
        meta: dict[Any, Any] = await redis.hgetall(IncidentKeys(prefix).item(iid, "meta"))
        m = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                           else v) for k, v in meta.items()}
        if not m or m.get("status") == "closed":
            continue
        visitors = [Visitor(**v) for v in json.loads(m["visitors"])]
        out.append(LegalHold(
            name=iid, class_id=m["class_id"], since_ms=int(m["since_ms"]),
            until_ms=int(m["until_ms"]), students=frozenset(json.loads(m["student_ids"])),
            ips=frozenset(v.ip for v in visitors if v.ip),
            devices=frozenset(v.device for v in visitors if v.device),
            indexes=frozenset(int(x) for x in json.loads(m["indexes"]))))
    return out


def _attachment_to_json(a: Attachment) -> dict[str, Any]:
    out = {**a.to_json(), "extension": a.extension, "chunks": a.chunks}
    if a.blob is not None:
        out["blob"] = a.blob
    return out


def _attachment_from_json(d: Mapping[str, Any]) -> Attachment:
    return Attachment(
        id=str(d["id"]), filename=str(d["filename"]), content_type=str(d["content_type"]),
        extension=str(d["extension"]), size=int(d["size"]), sha256=str(d["sha256"]),
        uploaded_by=str(d["uploaded_by"]), uploaded_at=float(d["uploaded_at"]),
        chunks=int(d["chunks"]), blob=str(d["blob"]) if d.get("blob") else None,
    )
