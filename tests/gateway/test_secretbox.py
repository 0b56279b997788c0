"""Secrets at rest: AES-256-GCM sealing, key files, tampering."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.secretbox import SecretBox, SecretBoxError


@pytest.fixture
def box(tmp_path: Path) -> SecretBox:
    return SecretBox.load_or_create(tmp_path / "secretbox.key")


def test_key_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secretbox.key"
    SecretBox.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert [p.name for p in path.parent.iterdir()] == ["secretbox.key"]


def test_key_file_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    sealed = SecretBox.load_or_create(path).encrypt(b"secret", aad=b"a")
    assert SecretBox.load_or_create(path).decrypt(sealed, aad=b"a") == b"secret"


def test_concurrent_creation_agrees_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "k"
    boxes: list[SecretBox] = []

    def make() -> None:
        boxes.append(SecretBox.load_or_create(path))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sealed = boxes[0].encrypt(b"x", aad=b"")
    assert all(b.decrypt(sealed, aad=b"") == b"x" for b in boxes)


def test_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    SecretBox.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(SecretBoxError) as err:
        SecretBox.load_or_create(path)
    assert err.value.code == "insecure_permissions"


def test_wrong_size_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(SecretBoxError) as err:
        SecretBox.load_or_create(path)
    assert err.value.code == "bad_key"


def test_from_env_value_accepts_both_base64_alphabets() -> None:
    raw = bytes(range(250, 256)) + os.urandom(26)
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    sealed = SecretBox.from_env_value(std).encrypt(b"v", aad=b"")
    assert SecretBox.from_env_value(url + "\n").decrypt(sealed, aad=b"") == b"v"


@pytest.mark.parametrize("value", ["", "not base64!", base64.b64encode(b"x" * 31).decode()])
def test_from_env_value_refuses_bad_keys(value: str) -> None:
    with pytest.raises(SecretBoxError):
        SecretBox.from_env_value(value)


def test_sealed_format(box: SecretBox) -> None:
    sealed = box.encrypt(b"hello", aad=b"ctx")
    raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    assert raw[0] == 1
    assert len(raw) == 1 + 12 + len(b"hello") + 16
    assert "=" not in sealed
    assert box.encrypt(b"hello", aad=b"ctx") != sealed  # fresh nonce every time


def test_round_trip(box: SecretBox) -> None:
    assert box.decrypt(box.encrypt(b"", aad=b""), aad=b"") == b""
    assert box.decrypt(box.encrypt(b"\x00" * 1000, aad=b"x"), aad=b"x") == b"\x00" * 1000


def test_wrong_aad_fails(box: SecretBox) -> None:
    sealed = box.encrypt(b"bbb-secret", aad=b"class:c1")
    with pytest.raises(SecretBoxError) as err:
        box.decrypt(sealed, aad=b"class:c2")
    assert err.value.code == "tampered"


def test_wrong_key_fails(box: SecretBox) -> None:
    sealed = box.encrypt(b"x", aad=b"")
    with pytest.raises(SecretBoxError):
        SecretBox.generate().decrypt(sealed, aad=b"")


def test_every_flipped_bit_is_detected(box: SecretBox) -> None:
    sealed = box.encrypt(b"abc", aad=b"aad")
    raw = bytearray(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
    for i in range(len(raw)):
        for bit in (0, 7):
            mutated = bytearray(raw)
            mutated[i] ^= 1 << bit
            token = base64.urlsafe_b64encode(bytes(mutated)).decode().rstrip("=")
            with pytest.raises(SecretBoxError):
                box.decrypt(token, aad=b"aad")


def test_unknown_version_is_refused(box: SecretBox) -> None:
    sealed = box.encrypt(b"abc", aad=b"")
    raw = bytearray(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
    raw[0] = 2
    token = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(SecretBoxError) as err:
        box.decrypt(token, aad=b"")
    assert err.value.code == "unsupported_version"


@given(st.text(max_size=200))
def test_decrypt_raises_only_secretbox_error(text: str) -> None:
    box = SecretBox(b"k" * 32)
    with pytest.raises(SecretBoxError):
        box.decrypt(text, aad=b"")


def test_repr_hides_the_key() -> None:
    assert "kkkk" not in repr(SecretBox(b"k" * 32))


def test_mac_is_keyed_and_separated_by_purpose() -> None:
    box, other = SecretBox.generate(), SecretBox.generate()
    mac = box.mac(b"jti-1", purpose=b"report-form")
    assert len(mac) == 64 and mac == box.mac(b"jti-1", purpose=b"report-form")
    assert mac != box.mac(b"jti-2", purpose=b"report-form")
    assert mac != box.mac(b"jti-1", purpose=b"another-form")
    assert mac != other.mac(b"jti-1", purpose=b"report-form")
