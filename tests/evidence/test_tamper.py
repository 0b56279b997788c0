"""Tampering with any part of a bundle makes ``verify`` fail and name the fault."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from audit import AuditSigningKey
from audit.evidence import verify_bundle

from . import tampering
from .conftest import Exported


def insider_key(exported: Exported) -> AuditSigningKey:
    return AuditSigningKey.load_or_create(exported.data_dir / "keys" / "audit.key",
                                          "classguard.test/classguard")


def test_genuine_bundle_verifies(exported: Exported) -> None:
    report = verify_bundle(exported.bundle, exported.vkey)
    assert report.ok, report.problems
    assert report.key_pinned and report.events >= 5 and report.proofs == report.events
    assert report.attachments == 2 and report.custody_entries >= 4


CASES: list[tuple[str, Callable[[bytes], bytes], set[tuple[str, str]]]] = [
    ("edited_event_byte", tampering.edited_event_byte,
     {("file_altered", "events.jsonl"), ("proof_invalid", "proofs/")}),
    ("forged_proof_hash", tampering.forged_proof_hash,
     {("file_altered", "proofs/"), ("proof_invalid", "proofs/")}),
    ("edited_checkpoint", tampering.edited_checkpoint,
     {("file_altered", "checkpoints/"), ("checkpoint_invalid", "checkpoints/")}),
    ("edited_manifest", tampering.edited_manifest, {("manifest_altered", "manifest.json")}),
    ("swapped_attachment", tampering.swapped_attachment,
     {("file_altered", "attachments/"), ("attachment_not_logged", "attachments/")}),
    ("removed_file", tampering.removed_file,
     {("missing_file", "proofs/"), ("proof_missing", "proofs/")}),
    ("added_file", tampering.added_file,
     {("extra_file", "attachments/99-planted.png")}),
    ("path_traversal", tampering.path_traversal, {("unsafe_path", "../../etc/cron.d/evil")}),
    ("not_a_zip", tampering.not_a_zip, {("bad_zip", "")}),
    ("resigned_with_other_key", tampering.resigned_with_other_key,
     {("key_mismatch", "keys/audit.vkey"), ("signature_invalid", "manifest.json.sig")}),
]


@pytest.mark.parametrize(("attack", "expected"), [(f, e) for _, f, e in CASES],
                         ids=[n for n, _, _ in CASES])
def test_tampering_is_named(exported: Exported, attack: Callable[[bytes], bytes],
                            expected: set[tuple[str, str]]) -> None:
    report = verify_bundle(attack(exported.bundle), exported.vkey)
    assert not report.ok
    found = {(p.code, p.path or "") for p in report.problems}
    for code, path in expected:
        assert any(c == code and f.startswith(path) for c, f in found), (code, path, found)
    for p in report.problems:
        assert p.message  # every problem says what was expected and what was found


def test_insider_with_the_key_cannot_edit_a_record(exported: Exported) -> None:
    """Even re-signing the manifest with the audit key, an edited record is not in the
    signed log, and an edited IP no longer matches its commitment."""
    key = insider_key(exported)
    report = verify_bundle(tampering.edited_event_resigned_by_insider(key)(exported.bundle),
                           exported.vkey)
    assert [p.code for p in report.problems] == ["proof_invalid"], report.problems
    assert "expected root" in report.problems[0].message
    report = verify_bundle(
        tampering.edited_personal_resigned_by_insider(key)(exported.bundle), exported.vkey)
    assert [p.code for p in report.problems] == ["personal_mismatch"], report.problems
    assert "expected pd" in report.problems[0].message


def test_unpinned_forgery_fails_at_the_checkpoints(exported: Exported) -> None:
    """Without --key a forger's own key signs the manifest, but not the log's checkpoints."""
    report = verify_bundle(tampering.resigned_with_other_key(exported.bundle))
    codes = {p.code for p in report.problems}
    assert "checkpoint_invalid" in codes and not report.key_pinned


def test_cli_names_the_fault(exported: Exported, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    bad = tmp_path / "bad.zip"
    bad.write_bytes(tampering.edited_manifest(exported.bundle))
    assert main(["evidence", "verify", str(bad), "--key", exported.vkey, "--lang", "en"]) == 1
    err = capsys.readouterr().err
    assert "manifest_altered" in err and "manifest.json was altered after signing" in err
    assert "INVALID: 1 problems found" in err
