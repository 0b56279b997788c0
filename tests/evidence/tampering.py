"""Attacks on an evidence bundle, each named after what the attacker does.

Every function takes the genuine zip bytes and returns altered zip bytes; the tests
assert which problem ``classguard evidence verify`` reports. ``resign`` plays an insider
who holds a signing key and rewrites the manifest to match the altered files.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Callable

from audit import AuditSigningKey
from audit.evidence import MANIFEST, SIGNATURE, signature_text

Files = dict[str, bytes]


def read(bundle: bytes) -> Files:
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write(files: Files) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _first(files: Files, prefix: str) -> str:
    return sorted(n for n in files if n.startswith(prefix))[0]


def edited_event_byte(bundle: bytes) -> bytes:
    """Change one byte inside a record (a digit of its timestamp)."""
    f = read(bundle)
    ev = f["events.jsonl"]
    at = ev.index(b'"ts":') + 6
    f["events.jsonl"] = ev[:at] + (b"1" if ev[at:at + 1] != b"1" else b"2") + ev[at + 1:]
    return write(f)


def forged_proof_hash(bundle: bytes) -> bytes:
    """Replace one hash of an inclusion proof."""
    f = read(bundle)
    name = _first(f, "proofs/")
    lines = f[name].decode().split("\n")
    lines[2] = base64.b64encode(hashlib.sha256(b"forged").digest()).decode()
    f[name] = "\n".join(lines).encode()
    return write(f)


def edited_checkpoint(bundle: bytes) -> bytes:
    """Claim a larger log in the checkpoint file (its root line changes a byte)."""
    f = read(bundle)
    name = _first(f, "checkpoints/")
    text = f[name].decode().split("\n")
    root = bytearray(base64.b64decode(text[2]))
    root[0] ^= 1
    text[2] = base64.b64encode(bytes(root)).decode()
    f[name] = "\n".join(text).encode()
    return write(f)


def edited_manifest(bundle: bytes) -> bytes:
    """Change who exported the bundle in manifest.json."""
    f = read(bundle)
    m = json.loads(f[MANIFEST])
    m["exporter"] = "user:someone.else"
    f[MANIFEST] = (json.dumps(m, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode()
    return write(f)


def swapped_attachment(bundle: bytes) -> bytes:
    """Alter one byte of an attached file."""
    f = read(bundle)
    name = _first(f, "attachments/")
    f[name] = flip(f[name], len(f[name]) // 2)
    return write(f)


def removed_file(bundle: bytes) -> bytes:
    """Drop a proof (hiding that a record is unproven)."""
    f = read(bundle)
    del f[_first(f, "proofs/")]
    return write(f)


def added_file(bundle: bytes) -> bytes:
    """Slip in a file the manifest does not list."""
    f = read(bundle)
    f["attachments/99-planted.png"] = b"\x89PNG\r\n\x1a\nplanted"
    return write(f)


def path_traversal(bundle: bytes) -> bytes:
    f = read(bundle)
    f["../../etc/cron.d/evil"] = b"* * * * * root true\n"
    return write(f)


def not_a_zip(bundle: bytes) -> bytes:
    return bundle[: len(bundle) // 3]


def resign(files: Files, key: AuditSigningKey) -> Files:
    """Recompute every manifest hash and sign it with ``key``."""
    m = json.loads(files[MANIFEST])
    for entry in m["files"]:
        entry["sha256"] = hashlib.sha256(files[entry["path"]]).hexdigest()
        entry["size"] = len(files[entry["path"]])
    manifest = (json.dumps(m, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode()
    files[MANIFEST] = manifest
    files[SIGNATURE] = key.sign_note(
        signature_text(m["log_origin"], m["incident"], manifest)).encode()
    return files


def edited_event_resigned_by_insider(key: AuditSigningKey) -> Callable[[bytes], bytes]:
    """An insider with the audit key edits a record and re-signs the manifest: the record
    is still not in the log the checkpoint signs."""
    def attack(bundle: bytes) -> bytes:
        return write(resign(read(edited_event_byte(bundle)), key))
    return attack


def edited_personal_resigned_by_insider(key: AuditSigningKey) -> Callable[[bytes], bytes]:
    """Change a disclosed IP address (and re-sign): it no longer matches the record's pd."""
    def attack(bundle: bytes) -> bytes:
        f = read(bundle)
        f["events.jsonl"] = f["events.jsonl"].replace(b"203.0.113.66", b"203.0.113.67", 1)
        return write(resign(f, key))
    return attack


def resigned_with_other_key(bundle: bytes) -> bytes:
    """Replace the bundle's key and signature with the attacker's own."""
    key = AuditSigningKey.generate("classguard.test/classguard")
    f = read(edited_manifest(bundle))
    f["keys/audit.vkey"] = (key.verifier().encode() + "\n").encode()
    return write(resign(f, key))
