"""Join-token keyring: files and modes, rotation, pruning, JWKS, reloads, read-only keys."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gateway.keys import (
    MANIFEST_NAME,
    JoinKeyring,
    JoinSigningKey,
    KeyringError,
    jwk_thumbprint,
)


class Clock:
    def __init__(self, now: float = 1_767_225_600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ec_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _b64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


# -- RFC test vectors -------------------------------------------------------------------


def test_thumbprint_matches_rfc8037_appendix_a3() -> None:
    # RFC 8037 A.1 key, A.3 thumbprint.
    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    pub = Ed25519PublicKey.from_public_bytes(_b64(x))
    assert jwk_thumbprint(pub) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_signing_key_matches_rfc8037_appendix_a4() -> None:
    d = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
    ring = JoinKeyring.from_pem_bytes([_pem(Ed25519PrivateKey.from_private_bytes(_b64(d)))])
    assert ring.active_kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    signing_input = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"  # RFC 8037 A.4
    sig = ring.signing_key().private_key.sign(signing_input)
    assert base64.urlsafe_b64encode(sig).rstrip(b"=").decode() == (
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    )


# -- creation ---------------------------------------------------------------------------


def test_create_writes_private_files(tmp_path: Path) -> None:
    keys_dir = tmp_path / "data" / "keys"
    ring = JoinKeyring.load_or_create(keys_dir, clock=Clock())
    assert _mode(keys_dir) == 0o700
    pem = keys_dir / f"{ring.active_kid}.pem"
    assert _mode(pem) == 0o600
    assert _mode(keys_dir / MANIFEST_NAME) == 0o600
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    doc = json.loads((keys_dir / MANIFEST_NAME).read_text())
    assert doc == {
        "v": 1,
        "active": ring.active_kid,
        "keys": {
            ring.active_kid: {"created_at": 1_767_225_600.0, "retired_at": None, "not_after": None}
        },
    }
    assert len(ring.active_kid) == 43
    assert not [p for p in keys_dir.iterdir() if p.name.endswith(".tmp")]


def test_load_existing_keeps_the_key(tmp_path: Path) -> None:
    first = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    second = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    assert first.active_kid == second.active_kid
    assert isinstance(second.signing_key(), JoinSigningKey)


def test_a_loose_directory_is_tightened(tmp_path: Path) -> None:
    keys_dir = tmp_path / "k"
    keys_dir.mkdir(mode=0o755)
    os.chmod(keys_dir, 0o755)
    JoinKeyring.load_or_create(keys_dir, clock=Clock())
    assert _mode(keys_dir) == 0o700


def test_a_readable_key_file_is_refused(tmp_path: Path) -> None:
    ring = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    os.chmod(tmp_path / f"{ring.active_kid}.pem", 0o644)
    with pytest.raises(KeyringError) as err:
        JoinKeyring.load_or_create(tmp_path, clock=Clock())
    assert err.value.code == "insecure_permissions"


def test_keys_without_manifest_are_not_silently_replaced(tmp_path: Path) -> None:
    ring = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(KeyringError) as err:
        JoinKeyring.load_or_create(tmp_path, clock=Clock())
    assert err.value.code == "manifest_missing"
    assert (tmp_path / f"{ring.active_kid}.pem").exists()


def test_swapped_key_file_is_detected(tmp_path: Path) -> None:
    ring = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    pem = tmp_path / f"{ring.active_kid}.pem"
    pem.write_bytes(_pem(Ed25519PrivateKey.generate()))
    with pytest.raises(KeyringError) as err:
        JoinKeyring.load_or_create(tmp_path, clock=Clock())
    assert err.value.code == "kid_mismatch"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"not json", "corrupt"),
        (b"[]", "corrupt"),
        (b'{"v": 2, "active": "x", "keys": {}}', "unsupported_version"),
        (b'{"v": 1, "active": "x", "keys": {}}', "corrupt"),
        (b'{"v": 1, "active": "../x", "keys": {"../x": {"created_at": 1}}}', "corrupt"),
        (b'{"v": 1, "active": "abc", "keys": {"abc": {"created_at": "1"}}}', "corrupt"),
        (b'{"v": 1, "active": "abc", "keys": {"abc": {"created_at": 1}}}', "key_missing"),
    ],
)
def test_bad_manifest_is_refused(tmp_path: Path, content: bytes, code: str) -> None:
    JoinKeyring.load_or_create(tmp_path, clock=Clock())
    (tmp_path / MANIFEST_NAME).write_bytes(content)
    with pytest.raises(KeyringError) as err:
        JoinKeyring.load_or_create(tmp_path, clock=Clock())
    assert err.value.code == code


# -- rotation and pruning ---------------------------------------------------------------


def test_rotate_retires_the_old_key_until_not_after(tmp_path: Path) -> None:
    clock = Clock()
    ring = JoinKeyring.load_or_create(tmp_path, clock=clock)
    old = ring.active_kid
    old_public = ring.public_key(old)
    clock.now += 10
    new = ring.rotate(max_token_lifetime_s=3600)
    assert new != old and ring.active_kid == new
    assert ring.signing_key().kid == new
    assert ring.public_key(old) == old_public  # still verifies
    infos = {k.kid: k for k in ring.list()}
    assert infos[old].state == "retired"
    assert infos[old].retired_at == clock.now
    assert infos[old].not_after == clock.now + 3600
    assert infos[new].state == "active"
    # Pruning before the deadline removes nothing.
    assert ring.prune() == []
    clock.now += 3599
    assert ring.public_key(old) is not None
    clock.now += 1
    # Past not_after the key stops verifying at once, before any prune.
    assert ring.public_key(old) is None
    assert {k.kid: k.state for k in ring.list()}[old] == "expired"
    assert ring.prune() == [old]
    assert not (tmp_path / f"{old}.pem").exists()
    assert [k.kid for k in ring.list()] == [new]
    assert set(json.loads((tmp_path / MANIFEST_NAME).read_text())["keys"]) == {new}


def test_old_token_verifies_after_rotation_and_fails_after_prune(tmp_path: Path) -> None:
    from gateway.tokens import issue_join_token, verify_join_token

    clock = Clock()
    ring = JoinKeyring.load_or_create(tmp_path, clock=clock)
    token = issue_join_token(
        ring.signing_key(),
        issuer="https://x.test",
        student_id="s1",
        class_id="c1",
        jti="j1",
        iat=1,
        nbf=1,
        exp=2,
    )
    ring.rotate(max_token_lifetime_s=60)
    assert verify_join_token(ring, token, issuer="https://x.test").failure is None
    clock.now += 61
    ring.prune()
    assert verify_join_token(ring, token, issuer="https://x.test").failure == "unknown_kid"


def test_rotate_refuses_negative_lifetime(tmp_path: Path) -> None:
    ring = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    with pytest.raises(KeyringError):
        ring.rotate(max_token_lifetime_s=-1)


def test_rotate_starts_from_the_files_not_a_stale_snapshot(tmp_path: Path) -> None:
    clock = Clock()
    a = JoinKeyring.load_or_create(tmp_path, clock=clock)
    b = JoinKeyring.load_or_create(tmp_path, clock=clock)
    first = a.active_kid
    k1 = a.rotate(max_token_lifetime_s=100)
    k2 = b.rotate(max_token_lifetime_s=100)  # b never saw k1
    doc = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert doc["active"] == k2
    assert set(doc["keys"]) == {first, k1, k2}
    assert doc["keys"][k1]["retired_at"] is not None


# -- JWKS -------------------------------------------------------------------------------


def test_jwks_shape_and_membership(tmp_path: Path) -> None:
    clock = Clock()
    ring = JoinKeyring.load_or_create(tmp_path, clock=clock)
    old = ring.active_kid
    new = ring.rotate(max_token_lifetime_s=100)
    jwks = ring.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [new, old]
    for jwk in jwks["keys"]:
        assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg"}
        assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == (
            "OKP",
            "Ed25519",
            "sig",
            "EdDSA",
        )
        assert "d" not in jwk
        # kid is the RFC 7638 thumbprint of the published key.
        pub = Ed25519PublicKey.from_public_bytes(_b64(jwk["x"]))
        assert jwk_thumbprint(pub) == jwk["kid"]
        # pyjwt (any RFC 8037 consumer) can use it.
        assert isinstance(jwt.PyJWK(jwk).key, Ed25519PublicKey)
    clock.now += 100
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new]
    json.dumps(jwks)  # serialisable as is


# -- reload -----------------------------------------------------------------------------


def test_reload_picks_up_rotation_by_another_instance(tmp_path: Path) -> None:
    clock = Clock()
    server = JoinKeyring.load_or_create(tmp_path, clock=clock)
    cli = JoinKeyring.load_or_create(tmp_path, clock=clock)
    old = server.active_kid
    assert server.reload_if_changed() is False
    new = cli.rotate(max_token_lifetime_s=100)
    assert server.active_kid == old
    assert server.public_key(new) is None
    assert server.reload_if_changed() is True
    assert server.active_kid == new
    assert server.public_key(new) is not None and server.public_key(old) is not None
    assert server.reload_if_changed() is False


def test_reload_keeps_the_previous_keys_when_the_manifest_breaks(tmp_path: Path) -> None:
    ring = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    kid = ring.active_kid
    (tmp_path / MANIFEST_NAME).write_text("{broken")
    with pytest.raises(KeyringError):
        ring.reload_if_changed()
    assert ring.active_kid == kid and ring.public_key(kid) is not None


def test_a_crash_mid_write_leaves_the_old_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    before = (tmp_path / MANIFEST_NAME).read_bytes()

    real_replace = os.replace

    def crash(src: str, dst: str) -> None:
        if str(dst).endswith(MANIFEST_NAME):  # the new key file lands, the manifest not
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ring.rotate(max_token_lifetime_s=10)
    monkeypatch.undo()
    assert (tmp_path / MANIFEST_NAME).read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(list(tmp_path.glob("*.pem"))) == 2  # the orphan new key
    again = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    assert again.active_kid == ring.active_kid
    assert [k.kid for k in again.list()] == [ring.active_kid]


def test_an_unlisted_key_file_is_ignored(tmp_path: Path) -> None:
    # What a crash between writing a new key and the manifest leaves behind.
    ring = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    stray = Ed25519PrivateKey.generate()
    path = tmp_path / f"{jwk_thumbprint(stray.public_key())}.pem"
    path.write_bytes(_pem(stray))
    path.chmod(0o600)
    again = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    assert again.active_kid == ring.active_kid
    assert again.public_key(jwk_thumbprint(stray.public_key())) is None


# -- keys given by the operator -----------------------------------------------------------


def test_from_pem_files_is_read_only(tmp_path: Path) -> None:
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    p1, p2 = tmp_path / "a.pem", tmp_path / "b.pem"
    p1.write_bytes(_pem(k1))
    p2.write_bytes(_pem(k2))
    ring = JoinKeyring.from_pem_files([p1, p2])
    kid1, kid2 = jwk_thumbprint(k1.public_key()), jwk_thumbprint(k2.public_key())
    assert ring.read_only
    assert ring.active_kid == kid1
    assert ring.public_key(kid2) is not None
    assert [k["kid"] for k in ring.jwks()["keys"]] == [kid1, kid2]
    with pytest.raises(KeyringError) as err:
        ring.rotate(max_token_lifetime_s=10)
    assert err.value.code == "read_only"
    with pytest.raises(KeyringError):
        ring.prune()
    # The operator swaps the files: reload follows.
    p1.write_bytes(_pem(k2))
    p2.write_bytes(_pem(k1))
    assert ring.reload_if_changed() is True
    assert ring.active_kid == kid2


@pytest.mark.parametrize(
    ("pems", "code"),
    [
        ([], "no_keys"),
        ([b"garbage"], "bad_key"),
        ([_ec_pem()], "wrong_key_type"),
    ],
)
def test_from_pem_bytes_refuses_bad_keys(pems: list[bytes], code: str) -> None:
    with pytest.raises(KeyringError) as err:
        JoinKeyring.from_pem_bytes(pems)
    assert err.value.code == code


def test_same_key_twice_is_refused() -> None:
    pem = _pem(Ed25519PrivateKey.generate())
    with pytest.raises(KeyringError) as err:
        JoinKeyring.from_pem_bytes([pem, pem])
    assert err.value.code == "duplicate_key"


def test_signing_key_repr_hides_the_private_key(tmp_path: Path) -> None:
    ring = JoinKeyring.load_or_create(tmp_path, clock=Clock())
    text = repr(ring.signing_key())
    assert ring.active_kid in text and "private" not in text.lower()
