"""Evidence bundles: build the zip of an incident, and verify one offline. No I/O but bytes.

The layout is the contract of docs/evidence.md::

    manifest.json            every other file's SHA-256 and size, incident, exporter, tool
    manifest.json.sig        C2SP signed note over SHA-256(manifest.json), audit key
    VERIFY.txt               how to check the bundle, with the tool or by hand
    report.html, report.pdf  the human-readable report
    custody.json             chain of custody (created, viewed, attached, exported)
    events.jsonl             {"index", "record", "personal", "salt"} per line
    proofs/<index>.tlog-proof   C2SP tlog-proof@v1 of each record, with its checkpoint
    checkpoints/<size>.checkpoint   the signed checkpoints the proofs refer to
    keys/audit.vkey          verifier key (C2SP name+keyid+key), keys/fingerprint.txt
    attachments/<n>-<sha256 prefix>.<ext>   the files attached to the incident

The manifest signature is a C2SP signed note made with the audit checkpoint key, whose
text is::

    classguard-evidence-manifest v1
    <log origin>
    <incident id>
    sha256 <base64 SHA-256 of the exact bytes of manifest.json>

Its first line keeps it from ever being mistaken for a checkpoint (whose second line is a
decimal size) and vice versa.

:func:`verify_bundle` needs nothing but the zip bytes (and, optionally, a pinned verifier
key). It runs every check and reports every problem with a stable code, the file, and what
was expected and found, instead of stopping at the first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import posixpath
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from audit import merkle
from audit.checkpoint import Checkpoint, open_checkpoint
from audit.errors import AuditError
from audit.note import AuditSigningKey, AuditVerifierKey
from audit.proofs import TlogProof
from audit.records import SALT_SIZE, canonical, decode_record, personal_commitment

FORMAT = "classguard-evidence v1"
SIG_HEADER = "classguard-evidence-manifest v1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
EVENTS = "events.jsonl"
CUSTODY = "custody.json"
KEY_FILE = "keys/audit.vkey"
FINGERPRINT_FILE = "keys/fingerprint.txt"

#: Limits that keep a hostile zip from exhausting the verifying machine.
MAX_FILES = 100_000
MAX_FILE_BYTES = 1 << 30
MAX_TOTAL_BYTES = 4 << 30


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_fingerprint(key: AuditVerifierKey) -> str:
    """SHA-256 of the verifier key text: what a school publishes for people to compare."""
    return sha256_hex(key.encode().encode())


def fingerprint_text(key: AuditVerifierKey) -> str:
    return (
        f"verifier key: {key.encode()}\n"
        f"key name (log origin): {key.name}\n"
        f"key id: {key.key_id.hex()}\n"
        f"sha256 of the verifier key: {key_fingerprint(key)}\n"
    )


def signature_text(origin: str, incident: str, manifest: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(manifest).digest()).decode()
    return f"{SIG_HEADER}\n{origin}\n{incident}\nsha256 {digest}\n"


def event_line(
    index: int,
    record: Mapping[str, Any],
    personal: Mapping[str, Any] | None,
    salt: bytes | None,
) -> bytes:
    """One line of ``events.jsonl`` (RFC 8785 bytes, newline-terminated)."""
    return (
        canonical(
            {
                "index": index,
                "record": dict(record),
                "personal": dict(personal) if personal is not None else None,
                "salt": base64.b64encode(salt).decode() if salt is not None else None,
            }
        )
        + b"\n"
    )


# --- writing ---


@dataclass(frozen=True, slots=True)
class BundleEvent:
    """A sequenced record ``E`` (as stored) and, when disclosed, its ``P`` and salt."""

    index: int
    record: Mapping[str, Any]
    personal: Mapping[str, Any] | None = None
    salt: bytes | None = None


@dataclass(frozen=True, slots=True)
class BundleInputs:
    incident: str
    exporter: str
    exported_at_ms: int
    tool_version: str
    origin: str
    events: Sequence[BundleEvent]
    proofs: Mapping[int, TlogProof]
    checkpoints: Sequence[str]
    attachments: Sequence[tuple[str, bytes]]  # (file name under attachments/, content)
    files: Mapping[str, bytes]  # report.html, report.pdf, custody.json, VERIFY.txt, ...
    extra_manifest: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Bundle:
    data: bytes
    manifest: bytes
    manifest_sha256: str
    sha256: str  # of the whole zip: recorded in the audit log, it cannot be inside itself
    files: int


def _safe_name(path: str) -> bool:
    parts = path.split("/")
    return (
        bool(path)
        and not path.startswith("/")
        and "\\" not in path
        and all(p not in ("", ".", "..") for p in parts)
        and ":" not in parts[0]
    )


def build_bundle(inputs: BundleInputs, signer: AuditSigningKey) -> Bundle:
    """Lay out, hash, sign and zip an incident's evidence. Deterministic for equal inputs."""
    files: dict[str, bytes] = {}

    def put(path: str, data: bytes) -> None:
        if not _safe_name(path) or path in files or path in (MANIFEST, SIGNATURE):
            raise AuditError(f"bundle file name {path!r} is unsafe or repeated",
                             code="evidence_bad_input")
        files[path] = data

    missing = [e.index for e in inputs.events if e.index not in inputs.proofs]
    if missing:
        raise AuditError(f"no inclusion proof for records {missing[:5]}",
                         code="evidence_bad_input")
    for name, data in inputs.files.items():
        put(name, data)
    put(EVENTS, b"".join(
        event_line(e.index, e.record, e.personal, e.salt)
        for e in sorted(inputs.events, key=lambda e: e.index)
    ))
    for e in inputs.events:
        put(f"proofs/{e.index}.tlog-proof", inputs.proofs[e.index].encode().encode())
    for note in dict.fromkeys(inputs.checkpoints):
        cp = Checkpoint.parse_body(note[: note.rfind("\n\n") + 1])
        put(f"checkpoints/{cp.size}.checkpoint", note.encode())
    vkey = signer.verifier()
    put(KEY_FILE, (vkey.encode() + "\n").encode())
    put(FINGERPRINT_FILE, fingerprint_text(vkey).encode())
    for name, data in inputs.attachments:
        put(f"attachments/{name}", data)

    manifest_obj = {
        "format": FORMAT,
        "incident": inputs.incident,
        "exporter": inputs.exporter,
        "exported_at": datetime.fromtimestamp(inputs.exported_at_ms / 1000, UTC)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "tool": {"name": "classguard", "version": inputs.tool_version},
        "log_origin": inputs.origin,
        "verifier_key": vkey.encode(),
        "signature": {"file": SIGNATURE, "format": "c2sp signed-note, Ed25519",
                      "text": f"{SIG_HEADER} / origin / incident / sha256 <base64>"},
        **dict(inputs.extra_manifest),
        "files": [
            {"path": p, "sha256": sha256_hex(d), "size": len(d)} for p, d in sorted(files.items())
        ],
    }
    manifest = (json.dumps(manifest_obj, ensure_ascii=False, indent=2, sort_keys=True)
                + "\n").encode()
    sig = signer.sign_note(signature_text(inputs.origin, inputs.incident, manifest)).encode()

    stamp = datetime.fromtimestamp(inputs.exported_at_ms / 1000, UTC)
    when = (max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute,
            stamp.second)
    order = [MANIFEST, SIGNATURE, *sorted(files, key=_zip_order)]
    everything = {MANIFEST: manifest, SIGNATURE: sig, **files}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in order:
            info = zipfile.ZipInfo(path, date_time=when)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, everything[path])
    data = buf.getvalue()
    return Bundle(data, manifest, sha256_hex(manifest), sha256_hex(data), len(everything))


def _zip_order(path: str) -> tuple[int, str]:
    top = ["VERIFY.txt", "report.pdf", "report.html", CUSTODY, EVENTS]
    if path in top:
        return (top.index(path), path)
    return (len(top), path)


# --- verifying ---


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a bundle: a stable ``code``, the file, expected vs found."""

    step: int
    code: str
    path: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "code": self.code, "path": self.path, "message": self.message}


@dataclass(slots=True)
class BundleReport:
    problems: list[Problem] = field(default_factory=list)
    incident: str | None = None
    exporter: str | None = None
    exported_at: str | None = None
    origin: str | None = None
    tool_version: str | None = None
    verifier_key: str | None = None
    key_fingerprint: str | None = None
    key_pinned: bool = False
    files: int = 0
    events: int = 0
    personal_disclosed: int = 0
    personal_withheld: int = 0
    proofs: int = 0
    checkpoints: list[int] = field(default_factory=list)
    attachments: int = 0
    custody_entries: int = 0
    steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
            "incident": self.incident,
            "exporter": self.exporter,
            "exported_at": self.exported_at,
            "log_origin": self.origin,
            "tool_version": self.tool_version,
            "verifier_key": self.verifier_key,
            "key_fingerprint": self.key_fingerprint,
            "key_pinned": self.key_pinned,
            "files": self.files,
            "events": self.events,
            "personal_disclosed": self.personal_disclosed,
            "personal_withheld": self.personal_withheld,
            "proofs": self.proofs,
            "checkpoints": self.checkpoints,
            "attachments": self.attachments,
            "custody_entries": self.custody_entries,
        }


class _Verifier:
    def __init__(self, data: bytes, pinned: AuditVerifierKey | None) -> None:
        self.data = data
        self.pinned = pinned
        self.report = BundleReport(key_pinned=pinned is not None)
        self.files: dict[str, bytes] = {}
        self.key: AuditVerifierKey | None = None
        self.manifest: dict[str, Any] | None = None
        self.checkpoints: dict[str, Checkpoint] = {}  # verified note text -> checkpoint
        self.lines: dict[int, dict[str, Any]] = {}

    def fail(self, step: int, code: str, path: str | None, message: str) -> None:
        self.report.problems.append(Problem(step, code, path, message))

    # 1. The zip itself: readable, safe names, no duplicates, bounded sizes.
    def step1_zip(self) -> bool:
        try:
            zf = zipfile.ZipFile(io.BytesIO(self.data))
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            self.fail(1, "bad_zip", None, f"expected a zip archive, found unreadable data ({exc})")
            return False
        with zf:
            infos = zf.infolist()
            if len(infos) > MAX_FILES:
                self.fail(1, "too_large", None,
                          f"expected at most {MAX_FILES} files, found {len(infos)}")
                return False
            total = 0
            for info in infos:
                name = info.filename
                if info.is_dir():
                    continue
                if not _safe_name(name):
                    self.fail(1, "unsafe_path", name,
                              "expected a relative path without '..', found an unsafe name")
                    continue
                if name in self.files:
                    self.fail(1, "duplicate_file", name,
                              "expected each name once, found it twice in the zip")
                    continue
                if info.flag_bits & 0x1:
                    self.fail(1, "bad_zip", name, "expected plain entries, found an encrypted one")
                    continue
                try:
                    with zf.open(info) as fh:
                        content = fh.read(MAX_FILE_BYTES + 1)
                except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                    # zlib.error is a subclass of Exception only; catch it by module below
                    self.fail(1, "bad_zip", name, f"expected a readable entry, found {exc}")
                    continue
                except Exception as exc:  # noqa: BLE001 - zlib.error and CRC errors
                    self.fail(1, "bad_zip", name, f"expected a readable entry, found {exc}")
                    continue
                total += len(content)
                if len(content) > MAX_FILE_BYTES or total > MAX_TOTAL_BYTES:
                    self.fail(1, "too_large", name, "expected a bundle under the size limits, "
                              "found more data (a zip bomb?)")
                    return False
                self.files[name] = content
        self.report.files = len(self.files)
        return True

    # 2. The verifier key: the bundle's, checked against its fingerprint and any pinned key.
    def step2_key(self) -> None:
        raw = self.files.get(KEY_FILE)
        bundled: AuditVerifierKey | None = None
        if raw is None:
            self.fail(2, "missing_file", KEY_FILE, "expected the verifier key file, found none")
        else:
            try:
                bundled = AuditVerifierKey.parse(raw.decode("utf-8", "replace"))
            except AuditError as exc:
                self.fail(2, "bad_key", KEY_FILE, f"expected a C2SP verifier key: {exc.message}")
        if bundled is not None:
            fp = self.files.get(FINGERPRINT_FILE)
            if fp is not None and fp.decode("utf-8", "replace") != fingerprint_text(bundled):
                self.fail(2, "bad_key", FINGERPRINT_FILE,
                          f"expected the fingerprint of the bundled key "
                          f"({key_fingerprint(bundled)}), found other text")
        if self.pinned is not None:
            if bundled is not None and bundled.encode() != self.pinned.encode():
                self.fail(2, "key_mismatch", KEY_FILE,
                          f"expected the pinned key {self.pinned.encode()}, "
                          f"found {bundled.encode()}")
            # NOTE: with a pinned key, only the pinned key counts, whatever the bundle says.
            self.key = self.pinned
        else:
            self.key = bundled
        if self.key is not None:
            self.report.verifier_key = self.key.encode()
            self.report.key_fingerprint = key_fingerprint(self.key)

    # 3. The manifest signature covers the exact manifest bytes.
    def step3_signature(self) -> None:
        manifest, sig = self.files.get(MANIFEST), self.files.get(SIGNATURE)
        if manifest is None:
            self.fail(3, "missing_file", MANIFEST, "expected manifest.json, found none")
            return
        if sig is None:
            self.fail(3, "missing_file", SIGNATURE, "expected the manifest signature, found none")
            return
        if self.key is None:
            self.fail(3, "signature_invalid", SIGNATURE,
                      "expected a verifier key to check the signature with, found none")
            return
        try:
            text = self.key.verify(sig.decode("utf-8", "replace"))
        except AuditError as exc:
            self.fail(3, "signature_invalid", SIGNATURE, exc.message)
            return
        lines = text[:-1].split("\n")
        if len(lines) != 4 or lines[0] != SIG_HEADER or not lines[3].startswith("sha256 "):
            self.fail(3, "signature_invalid", SIGNATURE,
                      f"expected a '{SIG_HEADER}' note, found {lines[0]!r}")
            return
        want = base64.b64encode(hashlib.sha256(manifest).digest()).decode()
        if lines[3][7:] != want:
            self.fail(3, "manifest_altered", MANIFEST,
                      f"expected SHA-256 {lines[3][7:]} (signed), found {want}")
        self.report.origin = lines[1]
        self.report.incident = lines[2]

    # 4. The manifest lists every file with its hash; nothing missing, nothing extra.
    def step4_manifest(self) -> None:
        raw = self.files.get(MANIFEST)
        if raw is None:
            return
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict) or not isinstance(obj.get("files"), list):
                raise ValueError("no file list")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            self.fail(4, "manifest_malformed", MANIFEST, f"expected JSON with a file list: {exc}")
            return
        if obj.get("format") != FORMAT:
            self.fail(4, "unsupported_format", MANIFEST,
                      f"expected format {FORMAT!r}, found {obj.get('format')!r}")
            return
        self.manifest = obj
        r = self.report
        r.exporter, r.exported_at = obj.get("exporter"), obj.get("exported_at")
        r.tool_version = (obj.get("tool") or {}).get("version")
        if r.incident is not None and obj.get("incident") != r.incident:
            self.fail(4, "manifest_altered", MANIFEST,
                      f"expected incident {r.incident!r} (signed), found {obj.get('incident')!r}")
        r.incident = r.incident or obj.get("incident")
        r.origin = r.origin or obj.get("log_origin")
        listed: set[str] = set()
        for entry in obj["files"]:
            path = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(path, str):
                self.fail(4, "manifest_malformed", MANIFEST,
                          f"expected file entries with a path, found {entry!r}")
                continue
            listed.add(path)
            content = self.files.get(path)
            if content is None:
                self.fail(4, "missing_file", path,
                          f"expected {path} (listed in the manifest), found no such file")
                continue
            found = sha256_hex(content)
            if entry.get("sha256") != found:
                self.fail(4, "file_altered", path,
                          f"expected SHA-256 {entry.get('sha256')}, found {found}")
        for path in sorted(set(self.files) - listed - {MANIFEST, SIGNATURE}):
            self.fail(4, "extra_file", path,
                      f"expected only the files the manifest lists, found {path}")

    # 5. Every checkpoint carries a valid signature of the log's key and origin.
    def step5_checkpoints(self) -> None:
        names = sorted(p for p in self.files if p.startswith("checkpoints/"))
        if not names:
            self.fail(5, "missing_file", "checkpoints/", "expected at least one checkpoint")
        for path in names:
            note = self.files[path].decode("utf-8", "replace")
            if self.key is None:
                self.fail(5, "checkpoint_invalid", path, "no verifier key to check it with")
                continue
            try:
                cp = open_checkpoint(note, self.key, self.report.origin)
            except AuditError as exc:
                self.fail(5, "checkpoint_invalid", path, exc.message)
                continue
            self.checkpoints[note] = cp
            self.report.checkpoints.append(cp.size)

    # 6. Each record: disclosed P matches pd, the leaf is in the signed tree.
    def step6_events(self) -> None:
        raw = self.files.get(EVENTS)
        if raw is None:
            self.fail(6, "missing_file", EVENTS, "expected events.jsonl, found none")
            return
        for n, line in enumerate(raw.split(b"\n")[:-1] if raw.endswith(b"\n")
                                 else raw.split(b"\n"), start=1):
            where = f"{EVENTS}:{n}"
            try:
                obj = json.loads(line)
                index, record = obj["index"], obj["record"]
                if not isinstance(index, int) or isinstance(index, bool) or index < 0 \
                        or not isinstance(record, dict):
                    raise ValueError("index or record of the wrong type")
                decode_record(canonical(record))
            except (ValueError, KeyError, TypeError, RecursionError, AuditError) as exc:
                self.fail(6, "event_malformed", where,
                          f"expected {{index, record, personal, salt}}, found {exc}")
                continue
            if index in self.lines:
                self.fail(6, "event_duplicate", where,
                          f"expected record {index} once, found it again")
                continue
            self.lines[index] = obj
            self.report.events += 1
            self._check_personal(where, index, record, obj.get("personal"), obj.get("salt"))
            self._check_inclusion(where, index, record)
        orphans = sorted(
            p for p in self.files
            if p.startswith("proofs/") and _proof_index(p) not in self.lines
        )
        for path in orphans:
            self.fail(6, "proof_orphan", path, "expected a proof for a record in events.jsonl, "
                      "found one for a record the bundle does not contain")

    def _check_personal(self, where: str, index: int, record: Mapping[str, Any],
                        personal: Any, salt_b64: Any) -> None:
        if personal is None:
            if "pd" in record:
                self.report.personal_withheld += 1
            return
        try:
            salt = base64.b64decode(str(salt_b64), validate=True)
            if len(salt) != SALT_SIZE or not isinstance(personal, dict):
                raise ValueError("bad salt or personal object")
            found = personal_commitment(personal, salt)
        except (binascii.Error, ValueError, AuditError) as exc:
            self.fail(6, "personal_mismatch", where,
                      f"record {index}: expected a personal object and a {SALT_SIZE}-byte "
                      f"base64 salt, found {exc}")
            return
        if record.get("pd") != found:
            self.fail(6, "personal_mismatch", where,
                      f"record {index}: expected pd {record.get('pd')!r}, found {found!r} "
                      "from the disclosed personal fields and salt")
            return
        self.report.personal_disclosed += 1

    def _check_inclusion(self, where: str, index: int, record: Mapping[str, Any]) -> None:
        path = f"proofs/{index}.tlog-proof"
        raw = self.files.get(path)
        if raw is None:
            self.fail(6, "proof_missing", path, f"expected a proof of record {index}, found none")
            return
        try:
            proof = TlogProof.parse(raw.decode("utf-8", "replace"))
        except AuditError as exc:
            self.fail(6, "proof_malformed", path, exc.message)
            return
        if proof.index != index:
            self.fail(6, "proof_invalid", path,
                      f"expected a proof of index {index}, found one of {proof.index}")
            return
        cp = self.checkpoints.get(proof.checkpoint)
        if cp is None:
            # The proof's checkpoint is not one of the verified files: check it on its own so
            # the message says whether it is forged or merely absent from checkpoints/.
            if self.key is None:
                return
            try:
                open_checkpoint(proof.checkpoint, self.key, self.report.origin)
            except AuditError as exc:
                self.fail(6, "checkpoint_invalid", path, f"its checkpoint: {exc.message}")
                return
            self.fail(6, "proof_invalid", path,
                      "expected the proof's checkpoint among checkpoints/, found another")
            return
        leaf = merkle.leaf_hash(canonical(record))
        try:
            merkle.verify_inclusion(index, cp.size, leaf, list(proof.hashes), cp.root_hash)
        except AuditError as exc:
            self.fail(6, "proof_invalid", path,
                      f"record {index} ({where}) is not in the signed log: {exc.message}")
            return
        self.report.proofs += 1

    # 7. Each attachment's SHA-256 was written to the log when it was uploaded.
    def step7_attachments(self) -> None:
        logged: set[str] = set()
        for obj in self.lines.values():
            rec = obj["record"]
            facts = rec.get("facts") if isinstance(rec.get("facts"), dict) else {}
            if rec.get("type") == "incident.attach" \
                    and facts.get("incident") == self.report.incident:
                sha = facts.get("sha256")
                if isinstance(sha, str):
                    logged.add(sha)
        for path in sorted(p for p in self.files if p.startswith("attachments/")):
            self.report.attachments += 1
            found = sha256_hex(self.files[path])
            if found not in logged:
                self.fail(7, "attachment_not_logged", path,
                          f"expected SHA-256 {found} in an 'incident.attach' record of the log, "
                          "found no such record")

    # 8. Custody entries that cite a log index cite one this bundle proves.
    def step8_custody(self) -> None:
        raw = self.files.get(CUSTODY)
        if raw is None:
            self.fail(8, "missing_file", CUSTODY, "expected custody.json, found none")
            return
        try:
            obj = json.loads(raw)
            entries = obj["entries"]
            if not isinstance(entries, list):
                raise ValueError("entries is not a list")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
            self.fail(8, "custody_malformed", CUSTODY, f"expected {{entries: [...]}}: {exc}")
            return
        self.report.custody_entries = len(entries)
        for e in entries:
            idx = e.get("index") if isinstance(e, dict) else None
            if isinstance(idx, int) and idx not in self.lines:
                self.fail(8, "custody_unproven", CUSTODY,
                          f"expected log record {idx} in events.jsonl, found none")

    def run(self) -> BundleReport:
        steps = [
            ("1 zip", self.step1_zip),
            ("2 key", self.step2_key),
            ("3 signature", self.step3_signature),
            ("4 manifest", self.step4_manifest),
            ("5 checkpoints", self.step5_checkpoints),
            ("6 records and proofs", self.step6_events),
            ("7 attachments", self.step7_attachments),
            ("8 custody", self.step8_custody),
        ]
        for name, fn in steps:
            result = fn()
            self.report.steps.append(name)
            if result is False:
                break
        return self.report


def _proof_index(path: str) -> int | None:
    stem = posixpath.basename(path)
    if not stem.endswith(".tlog-proof"):
        return None
    num = stem[: -len(".tlog-proof")]
    return int(num) if num.isdigit() else None


def verify_bundle(data: bytes, pinned: AuditVerifierKey | str | None = None) -> BundleReport:
    """Check an evidence bundle offline; never raises for a fault, lists every problem.

    Steps: (1) the zip is readable, names are safe and unique, sizes bounded; (2) the
    verifier key (pinned when given: then only it counts); (3) the manifest signature covers
    the manifest's exact bytes; (4) every listed file is present with its SHA-256, and no
    file is unlisted; (5) every checkpoint is signed by the key for the log's origin;
    (6) every record: disclosed personal fields and salt reproduce ``pd``, the leaf
    SHA-256(0x00 || RFC8785(E)) is included in a verified checkpoint (RFC 9162 §2.1.3.2);
    (7) every attachment's SHA-256 is in an ``incident.attach`` record; (8) custody entries
    citing a log index cite a record the bundle proves.
    """
    key = AuditVerifierKey.parse(pinned) if isinstance(pinned, str) else pinned
    return _Verifier(data, key).run()
