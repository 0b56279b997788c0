"""Ed25519 keyring for join tokens.

Layout of a keyring directory (mode 0700)::

    <keys_dir>/
        keyring.json        manifest, written atomically (temp file + os.replace)
        <kid>.pem           one PKCS#8 PEM private key per kid, mode 0600
        .lock               flock(2) target that serialises writers across processes

``keyring.json``::

    {"v": 1,
     "active": "<kid>",
     "keys": {"<kid>": {"created_at": 1700000000.0, "retired_at": null, "not_after": null},
              "<old kid>": {"created_at": ..., "retired_at": ..., "not_after": ...}}}

A ``kid`` is the RFC 7638 JWK thumbprint of the public key (base64url SHA-256 of the
canonical ``{"crv","kty","x"}`` JWK), so it is stable, derivable by anyone holding the
public key, and safe to use as a file name.

Rotation makes a new key active; the old key is *retired*: it no longer signs but keeps
verifying until ``not_after`` (= retired_at + the longest token lifetime), after which
``public_key`` stops returning it and ``prune`` deletes it.

This key type is for join tokens only. The audit checkpoint key is a separate key with a
separate type, so one can never be passed where the other is expected.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from nacl.signing import VerifyKey

try:  # pragma: no cover - always present on Linux, the only supported platform
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MANIFEST_NAME = "keyring.json"
LOCK_NAME = ".lock"
MANIFEST_VERSION = 1
# A kid we generate is 43 base64url characters; keys given as files get the same kind.
# The pattern also guards the "<kid>.pem" file name against path tricks.
KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_MAX_MANIFEST_BYTES = 1 << 20
_B64URL = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


class KeyringError(Exception):
    """A keyring could not be loaded or changed. ``code`` is stable, ``message`` human."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode_canonical(text: str) -> bytes | None:
    """Strict base64url without padding: the alphabet only, and the one canonical
    spelling of the bytes (no stray bits in the last character). None when invalid."""
    if not text.isascii() or len(text) % 4 == 1:
        return None
    if text and not _B64URL.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    if b64url_encode(raw) != text:
        return None
    return raw


def raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def jwk_thumbprint(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint of the RFC 8037 OKP JWK of ``public_key`` (SHA-256, base64url)."""
    x = b64url_encode(raw_public_bytes(public_key))
    # RFC 7638 §3.2: required members only, lexicographic order, no whitespace.
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def public_jwk(public_key: Ed25519PublicKey, kid: str) -> dict[str, str]:
    """The RFC 8037 public JWK published in ``/.well-known/jwks.json``."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url_encode(raw_public_bytes(public_key)),
        "kid": kid,
        "use": "sig",
        "alg": "EdDSA",
    }


@dataclass(frozen=True, slots=True)
class JoinSigningKey:
    """The private key that signs join tokens, with its kid.

    Deliberately its own type: an audit checkpoint key cannot be passed where a join key
    is expected (and vice versa). The private key never appears in ``repr``.
    """

    kid: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


KeyState = Literal["active", "retired", "expired"]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    kid: str
    created_at: float
    retired_at: float | None
    not_after: float | None  # retired keys stop verifying after this (unix seconds)
    state: KeyState


@dataclass(frozen=True, slots=True)
class _Entry:
    created_at: float
    retired_at: float | None
    not_after: float | None


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One consistent snapshot of a keyring; swapped in whole on reload."""

    active: JoinSigningKey
    entries: Mapping[str, _Entry]
    public: Mapping[str, Ed25519PublicKey]
    signature: tuple[tuple[int, int, int], ...]  # (ino, mtime_ns, size) of watched files
    # The same public keys for libsodium, which verifies join tokens (gateway/tokens.py)
    verifiers: Mapping[str, VerifyKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.verifiers:
            object.__setattr__(self, "verifiers", {
                kid: VerifyKey(raw_public_bytes(key)) for kid, key in self.public.items()})


def _file_sig(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _private_key_from_pem(data: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyringError("bad_key", f"{source}: not an unencrypted PKCS#8 PEM key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyringError("wrong_key_type", f"{source}: expected an Ed25519 key")
    return key


def _pem_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never
    a half-written one, even across a crash (temp file, fsync, rename, fsync dir)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _number(value: Any, what: str, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KeyringError("corrupt", f"{MANIFEST_NAME}: {what} must be a number")
    return float(value)


def _parse_manifest(raw: bytes) -> tuple[str, dict[str, _Entry]]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise KeyringError("corrupt", f"{MANIFEST_NAME} is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise KeyringError("corrupt", f"{MANIFEST_NAME} must hold a JSON object")
    version = doc.get("v")
    if version != MANIFEST_VERSION:
        raise KeyringError(
            "unsupported_version",
            f"{MANIFEST_NAME}: expected v={MANIFEST_VERSION}, found v={version!r}",
        )
    active = doc.get("active")
    keys = doc.get("keys")
    if not isinstance(active, str) or not isinstance(keys, dict):
        raise KeyringError("corrupt", f"{MANIFEST_NAME}: needs 'active' and 'keys'")
    entries: dict[str, _Entry] = {}
    for kid, item in keys.items():
        if not KID_PATTERN.fullmatch(kid):
            raise KeyringError("corrupt", f"{MANIFEST_NAME}: invalid kid {kid!r}")
        if not isinstance(item, dict):
            raise KeyringError("corrupt", f"{MANIFEST_NAME}: key {kid} must be an object")
        created = _number(item.get("created_at"), f"{kid}.created_at", optional=False)
        assert created is not None
        entries[kid] = _Entry(
            created_at=created,
            retired_at=_number(item.get("retired_at"), f"{kid}.retired_at", optional=True),
            not_after=_number(item.get("not_after"), f"{kid}.not_after", optional=True),
        )
    if active not in entries:
        raise KeyringError("corrupt", f"{MANIFEST_NAME}: active kid {active!r} is not listed")
    if entries[active].retired_at is not None:
        raise KeyringError("corrupt", f"{MANIFEST_NAME}: active kid {active} is retired")
    return active, entries


def _manifest_bytes(active: str, entries: Mapping[str, _Entry]) -> bytes:
    doc = {
        "v": MANIFEST_VERSION,
        "active": active,
        "keys": {
            kid: {"created_at": e.created_at, "retired_at": e.retired_at, "not_after": e.not_after}
            for kid, e in sorted(entries.items(), key=lambda kv: (kv[1].created_at, kv[0]))
        },
    }
    return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode("utf-8")


class JoinKeyring:
    """The join-token keys of this gateway.

    Build it with ``load_or_create`` (a keys directory in the data dir, writable, supports
    rotation) or with ``from_pem_files`` / ``from_pem_bytes`` (keys given by the operator,
    read-only: the first key signs, the others only verify).

    Every process holds a snapshot; ``reload_if_changed`` picks up a rotation made by
    another process or by ``classguard keys rotate`` (a cheap ``stat``).
    """

    def __init__(
        self,
        *,
        loaded: _Loaded,
        clock: Callable[[], float],
        keys_dir: Path | None,
        pem_paths: tuple[Path, ...] = (),
    ) -> None:
        # Use the constructors below; this one only assembles the parts.
        self._state = loaded
        self._clock = clock
        self._dir = keys_dir
        self._pem_paths = pem_paths

    # -- construction -------------------------------------------------------------

    @classmethod
    def load_or_create(cls, keys_dir: Path, *, clock: Callable[[], float]) -> JoinKeyring:
        """Open the keyring in ``keys_dir``, creating the directory (0700), a first key
        (0600) and the manifest when the directory holds no keyring yet.

        Raises ``KeyringError`` when the directory holds key files but no manifest (a
        new key would silently invalidate every issued link), when a key file is readable
        by group or others, or when anything is inconsistent.
        """
        keys_dir = Path(keys_dir)
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _tighten_dir(keys_dir)
        with _locked(keys_dir, exclusive=True):
            manifest = keys_dir / MANIFEST_NAME
            if not manifest.exists():
                if any(keys_dir.glob("*.pem")):
                    raise KeyringError(
                        "manifest_missing",
                        f"{keys_dir} holds key files but no {MANIFEST_NAME}; restore it "
                        "from a backup rather than starting a new keyring",
                    )
                key = Ed25519PrivateKey.generate()
                kid = jwk_thumbprint(key.public_key())
                _atomic_write(keys_dir / f"{kid}.pem", _pem_bytes(key))
                entries = {kid: _Entry(created_at=clock(), retired_at=None, not_after=None)}
                _atomic_write(manifest, _manifest_bytes(kid, entries))
                log.info("created join-token keyring in %s (kid %s)", keys_dir, kid)
            loaded = _load_dir(keys_dir)
        return cls(loaded=loaded, clock=clock, keys_dir=keys_dir)

    @classmethod
    def from_pem_files(
        cls, paths: Sequence[Path], *, clock: Callable[[], float] | None = None
    ) -> JoinKeyring:
        """A read-only keyring from PEM files given by the operator: the first key signs,
        the others verify (keep an old key listed until its tokens have expired)."""
        pem_paths = tuple(Path(p) for p in paths)
        loaded = _load_pem_files(pem_paths)
        return cls(loaded=loaded, clock=clock or _no_clock, keys_dir=None, pem_paths=pem_paths)

    @classmethod
    def from_pem_bytes(cls, pems: Sequence[bytes]) -> JoinKeyring:
        """A read-only keyring from PEM data (e.g. an environment variable)."""
        loaded = _load_pems([(pem, f"key #{i + 1}") for i, pem in enumerate(pems)], ())
        return cls(loaded=loaded, clock=_no_clock, keys_dir=None)

    # -- reading ------------------------------------------------------------------

    @property
    def read_only(self) -> bool:
        return self._dir is None

    @property
    def active_kid(self) -> str:
        return self._state.active.kid

    def signing_key(self) -> JoinSigningKey:
        return self._state.active

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The key that verifies tokens with this kid, or None: unknown kid, or a retired
        key past its ``not_after`` (even before ``prune`` has deleted it)."""
        return self._state.public.get(kid) if self._usable(kid) else None

    def _usable(self, kid: str) -> bool:
        """Known, and not a retired key past its ``not_after``."""
        entry = self._state.entries.get(kid)
        return entry is not None and (entry.not_after is None
                                      or self._clock() < entry.not_after)

    def verifier(self, kid: str) -> VerifyKey | None:
        """``public_key(kid)`` for libsodium (PyNaCl): what join tokens are verified
        with, under the same rules (None for an unknown kid or one past ``not_after``)."""
        return self._state.verifiers.get(kid) if self._usable(kid) else None

    def list(self) -> builtins.list[KeyInfo]:
        now = self._clock()
        state = self._state
        out = []
        for kid, e in state.entries.items():
            key_state: KeyState
            if kid == state.active.kid:
                key_state = "active"
            elif e.not_after is not None and now >= e.not_after:
                key_state = "expired"
            else:
                key_state = "retired"
            out.append(KeyInfo(kid, e.created_at, e.retired_at, e.not_after, key_state))
        out.sort(key=lambda k: (k.created_at, k.kid))
        return out

    def jwks(self) -> dict[str, builtins.list[dict[str, str]]]:
        """RFC 7517 JWK set of every key that still verifies, active key first."""
        state = self._state
        keys = [
            public_jwk(state.public[info.kid], info.kid)
            for info in sorted(self.list(), key=lambda k: k.state != "active")
            if info.state != "expired"
        ]
        return {"keys": keys}

    def reload_if_changed(self) -> bool:
        """Reload when the files changed since the last load (stat only otherwise).

        Returns True when a new snapshot was loaded. On a broken manifest the previous
        snapshot stays in force and ``KeyringError`` is raised; the next call retries.
        """
        try:
            current = self._current_signature()
        except OSError as exc:
            raise KeyringError("unreadable", f"cannot stat keyring files: {exc}") from exc
        if current == self._state.signature:
            return False
        if self._dir is not None:
            with _locked(self._dir, exclusive=False):
                self._state = _load_dir(self._dir)
        else:
            self._state = _load_pem_files(self._pem_paths)
        return True

    def _current_signature(self) -> tuple[tuple[int, int, int], ...]:
        if self._dir is not None:
            return (_file_sig(self._dir / MANIFEST_NAME),)
        return tuple(_file_sig(p) for p in self._pem_paths)

    # -- changing -----------------------------------------------------------------

    def rotate(self, max_token_lifetime_s: float) -> str:
        """Make a new key active and return its kid.

        The previous active key retires now and keeps verifying for
        ``max_token_lifetime_s`` more seconds (pass the longest lifetime a join token
        can have, leeway included), after which ``prune`` removes it.
        """
        if max_token_lifetime_s < 0:
            raise KeyringError("bad_lifetime", "max_token_lifetime_s must be >= 0")
        keys_dir = self._writable_dir()
        with _locked(keys_dir, exclusive=True):
            # Start from the files, not from our snapshot: another process may have
            # rotated since we last looked.
            current = _load_dir(keys_dir)
            now = self._clock()
            key = Ed25519PrivateKey.generate()
            kid = jwk_thumbprint(key.public_key())
            entries = dict(current.entries)
            old = current.active.kid
            entries[old] = _Entry(
                created_at=entries[old].created_at,
                retired_at=now,
                not_after=now + max_token_lifetime_s,
            )
            entries[kid] = _Entry(created_at=now, retired_at=None, not_after=None)
            # Key file first, manifest second: a crash in between leaves an unused key
            # file, never a manifest naming a key that does not exist.
            _atomic_write(keys_dir / f"{kid}.pem", _pem_bytes(key))
            _atomic_write(keys_dir / MANIFEST_NAME, _manifest_bytes(kid, entries))
            self._state = _load_dir(keys_dir)
        log.info("rotated join-token key: %s -> %s", old, kid)
        return kid

    def prune(self) -> builtins.list[str]:
        """Delete retired keys past their ``not_after``; return their kids."""
        keys_dir = self._writable_dir()
        with _locked(keys_dir, exclusive=True):
            current = _load_dir(keys_dir)
            now = self._clock()
            gone = [
                kid
                for kid, e in current.entries.items()
                if kid != current.active.kid and e.not_after is not None and now >= e.not_after
            ]
            if gone:
                entries = {k: e for k, e in current.entries.items() if k not in gone}
                # Manifest first: a crash in between leaves an unlisted key file (ignored).
                _atomic_write(
                    keys_dir / MANIFEST_NAME, _manifest_bytes(current.active.kid, entries)
                )
                for kid in gone:
                    with contextlib.suppress(FileNotFoundError):
                        (keys_dir / f"{kid}.pem").unlink()
                _fsync_dir(keys_dir)
            self._state = _load_dir(keys_dir)
        if gone:
            log.info("pruned expired join-token keys: %s", ", ".join(gone))
        return gone

    def _writable_dir(self) -> Path:
        if self._dir is None:
            raise KeyringError(
                "read_only", "keys given by file or environment are managed by the operator"
            )
        return self._dir


def _no_clock() -> float:
    # Read-only keyrings have no retirement deadlines, so nothing reads the time.
    return 0.0


def _tighten_dir(keys_dir: Path) -> None:
    try:
        mode = stat.S_IMODE(keys_dir.stat().st_mode)
        if mode & 0o077:
            os.chmod(keys_dir, 0o700)
    except OSError as exc:
        raise KeyringError("unreadable", f"cannot secure {keys_dir}: {exc}") from exc


@contextlib.contextmanager
def _locked(keys_dir: Path, *, exclusive: bool) -> Iterator[None]:
    """flock on ``<keys_dir>/.lock``: writers exclusive, loaders shared. A read-only
    directory (e.g. a mounted secret) cannot hold a lock file; loading goes on without."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:
        fd = os.open(keys_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if exclusive:
            raise KeyringError("unwritable", f"cannot lock {keys_dir}: {exc}") from exc
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _load_dir(keys_dir: Path) -> _Loaded:
    manifest = keys_dir / MANIFEST_NAME
    try:
        sig = _file_sig(manifest)
        with manifest.open("rb") as fh:
            raw = fh.read(_MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise KeyringError("manifest_missing", f"{manifest} does not exist") from exc
    except OSError as exc:
        raise KeyringError("unreadable", f"cannot read {manifest}: {exc}") from exc
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise KeyringError("corrupt", f"{manifest} is too large")
    active, entries = _parse_manifest(raw)
    public: dict[str, Ed25519PublicKey] = {}
    active_key: JoinSigningKey | None = None
    for kid in entries:
        path = keys_dir / f"{kid}.pem"
        try:
            st = path.stat()
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise KeyringError("key_missing", f"{path} is listed but missing") from exc
        except OSError as exc:
            raise KeyringError("unreadable", f"cannot read {path}: {exc}") from exc
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise KeyringError(
                "insecure_permissions",
                f"{path} is readable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):o}); expected 0600",
            )
        key = _private_key_from_pem(data, str(path))
        if jwk_thumbprint(key.public_key()) != kid:
            raise KeyringError("kid_mismatch", f"{path} does not hold the key of kid {kid}")
        public[kid] = key.public_key()
        if kid == active:
            active_key = JoinSigningKey(kid=kid, private_key=key)
    assert active_key is not None  # _parse_manifest checked active is listed
    return _Loaded(active=active_key, entries=entries, public=public, signature=(sig,))


def _load_pem_files(paths: tuple[Path, ...]) -> _Loaded:
    items: list[tuple[bytes, str]] = []
    sigs = []
    for path in paths:
        try:
            sigs.append(_file_sig(path))
            items.append((path.read_bytes(), str(path)))
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError as exc:
            raise KeyringError("unreadable", f"cannot read {path}: {exc}") from exc
        if mode & 0o077:
            # NOTE: mounted secrets are often 0644 inside a container that runs only
            # us; refusing them would push operators to worse workarounds. Say it.
            log.warning("join-token key %s is readable by group or others", path)
    return _load_pems(items, tuple(sigs))


def _load_pems(
    items: Sequence[tuple[bytes, str]], sigs: tuple[tuple[int, int, int], ...]
) -> _Loaded:
    if not items:
        raise KeyringError("no_keys", "at least one join-token key is required")
    public: dict[str, Ed25519PublicKey] = {}
    entries: dict[str, _Entry] = {}
    active: JoinSigningKey | None = None
    for data, source in items:
        key = _private_key_from_pem(data, source)
        kid = jwk_thumbprint(key.public_key())
        if kid in public:
            raise KeyringError("duplicate_key", f"{source}: the same key is given twice")
        public[kid] = key.public_key()
        if active is None:
            active = JoinSigningKey(kid=kid, private_key=key)
            entries[kid] = _Entry(created_at=0.0, retired_at=None, not_after=None)
        else:
            entries[kid] = _Entry(created_at=0.0, retired_at=0.0, not_after=None)
    assert active is not None
    return _Loaded(active=active, entries=entries, public=public, signature=sigs)
