"""Signed notes, audit keys, checkpoints and the tlog-proof text format."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit import merkle
from audit.checkpoint import Checkpoint, open_checkpoint
from audit.errors import FormatError, KeyFileError, ProofError, SignatureError
from audit.note import AuditSigningKey, AuditVerifierKey, key_id, parse_note
from audit.proofs import TlogProof

SEED = bytes(range(32))


def test_key_id_and_verifier_key_follow_c2sp() -> None:
    key = AuditSigningKey.from_seed("example.com/audit", SEED)
    v = key.verifier()
    expected = hashlib.sha256(b"example.com/audit\n\x01" + v.public_key).digest()[:4]
    assert v.key_id == expected == key_id("example.com/audit", v.public_key)
    name, hex_id, blob = v.encode().split("+", 2)
    assert (name, hex_id) == ("example.com/audit", expected.hex())
    assert base64.b64decode(blob) == b"\x01" + v.public_key
    assert AuditVerifierKey.parse(v.encode()) == v


def test_signed_checkpoint_layout_and_verification() -> None:
    key = AuditSigningKey.from_seed("example.com/audit", SEED)
    cp = Checkpoint("example.com/audit", 12, bytes(range(32)))
    note = cp.sign(key)
    body, sig_line = note.split("\n\n")
    assert (
        body + "\n"
        == "example.com/audit\n12\n" + base64.b64encode(bytes(range(32))).decode() + "\n"
    )
    assert sig_line.startswith("\u2014 example.com/audit ")
    raw = base64.b64decode(sig_line.split(" ")[2])
    assert raw[:4] == key.verifier().key_id and len(raw) == 68
    assert open_checkpoint(note, key.verifier(), "example.com/audit") == cp


def test_forged_and_foreign_signatures_are_rejected() -> None:
    key = AuditSigningKey.from_seed("example.com/audit", SEED)
    other = AuditSigningKey.generate("example.com/audit")
    note = Checkpoint("example.com/audit", 3, bytes(32)).sign(key)
    with pytest.raises(SignatureError, match="expected a signature by"):
        open_checkpoint(Checkpoint("example.com/audit", 3, bytes(32)).sign(other), key.verifier())
    forged = note.replace("\n3\n", "\n4\n")
    with pytest.raises(SignatureError, match="does not match"):
        open_checkpoint(forged, key.verifier())
    with pytest.raises(FormatError, match="origin"):
        open_checkpoint(note, key.verifier(), "other.example/log")


def test_cosigned_note_verifies_with_either_key() -> None:
    a = AuditSigningKey.generate("a.example")
    b_key = AuditSigningKey.generate("b.example")
    text = "a.example\n1\n" + base64.b64encode(bytes(32)).decode() + "\n"
    note = a.sign_note(text)
    cosig = b_key.sign_note(text).split("\n\n")[1]
    both = note + cosig
    assert len(parse_note(both).signatures) == 2
    assert a.verifier().verify(both) == text == b_key.verifier().verify(both)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "no blank line\n",
        "a\n\nnot a signature\n",
        "a\n\n\u2014 name !!!\n",
        "a\n\n\u2014 n AAAA\n",
    ],
)
def test_malformed_notes(bad: str) -> None:
    with pytest.raises(SignatureError):
        parse_note(bad)


def test_load_or_create_writes_0600_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    k1 = AuditSigningKey.load_or_create(path, "x.example/audit")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    k2 = AuditSigningKey.load_or_create(path, "x.example/audit")
    assert k1.verifier() == k2.verifier()
    assert "PRIVATE" not in repr(k1)


def test_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    AuditSigningKey.load_or_create(path, "x.example")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="0600"):
        AuditSigningKey.load_or_create(path, "x.example")


def test_key_file_of_wrong_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    path.write_text("not a key")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        AuditSigningKey.load_or_create(path, "x.example")


@pytest.mark.parametrize("name", ["", "has space", "a+b"])
def test_bad_key_names(name: str) -> None:
    with pytest.raises(SignatureError):
        AuditSigningKey.generate(name)


def test_checkpoint_body_parsing() -> None:
    root = base64.b64encode(bytes(32)).decode()
    assert Checkpoint.parse_body(f"o\n0\n{root}\n").size == 0
    assert Checkpoint.parse_body(f"o\n5\n{root}\next\n").extensions == ("ext",)
    for bad in (f"o\n05\n{root}\n", f"o\n-1\n{root}\n", "o\n1\nAAAA\n", f"o\n1\n{root}"):
        with pytest.raises(FormatError):
            Checkpoint.parse_body(bad)


def _tree(n: int) -> tuple[list[bytes], merkle.NodeGetter]:
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(n)]
    return leaves, merkle.levels_getter(merkle.build_levels(b"".join(leaves)))


def test_tlog_proof_round_trip_and_verify() -> None:
    key = AuditSigningKey.generate("example.com/audit")
    leaves, get = _tree(13)
    note = Checkpoint("example.com/audit", 13, merkle.root_hash(13, get)).sign(key)
    proof = TlogProof(6, tuple(merkle.inclusion_proof(6, 13, get)), note, extra=b"bundle")
    text = proof.encode()
    assert text.startswith("c2sp.org/tlog-proof@v1\nextra YnVuZGxl\nindex 6\n")
    parsed = TlogProof.parse(text)
    assert parsed == proof
    assert parsed.verify(leaves[6], key.verifier(), "example.com/audit").size == 13
    with pytest.raises(ProofError):
        parsed.verify(leaves[7], key.verifier())


@given(st.text(max_size=200))
def test_tlog_proof_parser_never_crashes(text: str) -> None:
    try:
        TlogProof.parse(text)
    except FormatError:
        pass


def test_tlog_proof_rejects_bad_lines() -> None:
    with pytest.raises(FormatError, match="header"):
        TlogProof.parse("c2sp.org/tlog-proof@v2\nindex 1\n\nx\n")
    with pytest.raises(FormatError, match="index"):
        TlogProof.parse("c2sp.org/tlog-proof@v1\nindex 01\n\nx\n")
    with pytest.raises(FormatError, match="32 bytes"):
        TlogProof.parse("c2sp.org/tlog-proof@v1\nindex 1\nAAAA\n\nx\n")
