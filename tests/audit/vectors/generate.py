"""Regenerate ``merkle_vectors.json`` from the RFC 9162 §2.1 definitions.

The inputs are the eight leaf inputs of the RFC 6962 reference tests (also used by the
transparency-dev/merkle test data). Everything here is written straight from the RFC's
recursive definitions (MTH, PATH, SUBPROOF) without sharing code with ``audit.merkle``, so
the fixture is an independent oracle. Run: ``python tests/audit/vectors/generate.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

LEAF_INPUTS = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]


def mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


def b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


def build() -> dict[str, object]:
    data = [bytes.fromhex(x) for x in LEAF_INPUTS]
    return {
        "leaf_inputs_hex": LEAF_INPUTS,
        "roots": {str(n): mth(data[:n]).hex() for n in range(0, 9)},
        "inclusion": [
            {
                "index": m,
                "size": n,
                "leaf_hash": b64(mth(data[m : m + 1])),
                "root": b64(mth(data[:n])),
                "proof": [b64(h) for h in path(m, data[:n])],
            }
            for n in range(1, 9)
            for m in range(n)
        ],
        "consistency": [
            {
                "first": m,
                "second": n,
                "first_root": b64(mth(data[:m])),
                "second_root": b64(mth(data[:n])),
                "proof": [b64(h) for h in subproof(m, data[:n], True)],
            }
            for n in range(1, 9)
            for m in range(1, n)
        ],
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("merkle_vectors.json")
    out.write_text(json.dumps(build(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
