"""What checking one join link costs: the gateway's verifier against the libraries' own.

Run: ``python tests/bench/tokens.py [--rounds N]``. Not collected by pytest
(``tests/bench`` is in ``norecursedirs``).

One link issued by the gateway (``gateway.tokens.issue_join_token``), then, alternating
in rounds so a busy host slows every column alike (the best round of each is printed,
with the median):

* ``gateway.tokens.verify_join_token``: the whole check a join makes (shape, header,
  kid, Ed25519 through libsodium, claims);
* ``PyNaCl VerifyKey.verify``: libsodium's Ed25519 check alone;
* ``cryptography Ed25519PublicKey.verify``: OpenSSL's Ed25519 check alone;
* ``jwt.decode``: PyJWT's whole check, as the join benchmark's baseline handler makes it
  (tests/bench/join.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jwt  # noqa: E402 - path set up above for running as a script

from gateway.keys import JoinKeyring  # noqa: E402
from gateway.tokens import _shape, issue_join_token, verify_join_token  # noqa: E402

ISSUER = "https://classguard.example.edu.vn"
CALLS = 2000


def per_call_us(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    return (time.perf_counter() - start) / CALLS * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        now = time.time()
        ring = JoinKeyring.load_or_create(Path(tmp) / "keys", clock=lambda: now)
        token = issue_join_token(
            ring.signing_key(), issuer=ISSUER, student_id="s7k2mnpqrstu",
            class_id="cabcdefghijk", jti="AbC_def-123", iat=int(now), nbf=int(now) - 60,
            exp=int(now) + 86400)
    kid = ring.active_kid
    shape = _shape(token)
    sodium, openssl = ring.verifier(kid), ring.public_key(kid)
    assert sodium is not None and openssl is not None
    assert verify_join_token(ring, token, issuer=ISSUER).failure is None
    cases: dict[str, Callable[[], object]] = {
        "gateway verify_join_token (libsodium)": lambda: verify_join_token(
            ring, token, issuer=ISSUER),
        "PyNaCl VerifyKey.verify (libsodium)": lambda: sodium.verify(
            shape.signing_input, shape.signature),
        "cryptography Ed25519 verify (OpenSSL)": lambda: openssl.verify(
            shape.signature, shape.signing_input),
        "PyJWT jwt.decode (the baseline's)": lambda: jwt.decode(
            token, key=openssl, algorithms=["EdDSA"], audience="classguard:join",
            issuer=ISSUER),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            results[name].append(per_call_us(fn))
    print(f"one join link checked, {args.rounds} rounds of {CALLS} calls each "
          f"(best, median microseconds per call):")
    for name, times in results.items():
        print(f"  {name:40s} {min(times):7.1f}  {statistics.median(times):7.1f}")


if __name__ == "__main__":
    main()
