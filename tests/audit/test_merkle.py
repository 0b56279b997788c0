"""audit/merkle.py against published vectors, a naive reference and random trees."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from audit import merkle
from audit.errors import ProofError
from tests.audit.vectors.generate import build, mth, path, subproof

VECTORS = json.loads((Path(__file__).parent / "vectors" / "merkle_vectors.json").read_text())
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaf_inputs_hex"]]

# Published reference roots of the 8-leaf RFC 6962 test tree (certificate-transparency C++
# tests, repeated in transparency-dev/merkle), sizes 1..8.
PUBLISHED_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# A few happy-path cases of transparency-dev/merkle testdata (inclusion/1, 3, 4 and
# consistency/1, 3, 4), base64 as published.
PUBLISHED_INCLUSION = [
    (
        0,
        8,
        "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=",
        [
            "lqKW0iTyhcZ77pPDD4owkVfw2qNdxbh+QQt4YwoJz8c=",
            "Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4=",
            "a0eq8p7jwq+a+Im8H7klTavTEXfxYjLdaqsDXKOb9uQ=",
        ],
    ),
    (
        2,
        3,
        "ApjRIpBtz8EIkstTpzmS/FufST6kybrbJ7eRtBJ6f+c=",
        ["+sVCA+fMaWzw38tCySodnbr3CtnmIfS9jZhmLwDjwSU="],
    ),
    (
        1,
        5,
        "lqKW0iTyhcZ77pPDD4owkVfw2qNdxbh+QQt4YwoJz8c=",
        [
            "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=",
            "Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4=",
            "vBoGQ7EuTS18d5GPROD095qDi2z57FtcKD4fTYhZnms=",
        ],
    ),
]
PUBLISHED_CONSISTENCY = [
    (
        1,
        8,
        [
            "lqKW0iTyhcZ77pPDD4owkVfw2qNdxbh+QQt4YwoJz8c=",
            "Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4=",
            "a0eq8p7jwq+a+Im8H7klTavTEXfxYjLdaqsDXKOb9uQ=",
        ],
    ),
    (
        2,
        5,
        [
            "Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4=",
            "vBoGQ7EuTS18d5GPROD095qDi2z57FtcKD4fTYhZnms=",
        ],
    ),
    (
        6,
        7,
        [
            "DrxdNDf74tsVi58Sah0RjjCBgQMdCpSfje3t68VY72o=",
            "sIaT7C5yFZcTBkHoIR5+7cy0wmQTlj7ubB4u0W/7Gl8=",
            "037kGJdt2VdTwcc4Yrk5j6Kiz5tP8P3+izDNlSCWFLc=",
        ],
    ),
]


def b(x: str) -> bytes:
    return base64.b64decode(x)


def levels_for(data: list[bytes]) -> merkle.NodeGetter:
    packed = b"".join(merkle.leaf_hash(d) for d in data)
    return merkle.levels_getter(merkle.build_levels(packed))


def test_fixture_file_matches_its_generator() -> None:
    assert json.loads(json.dumps(build())) == VECTORS


def test_fixture_roots_match_published_reference_roots() -> None:
    assert [VECTORS["roots"][str(n)] for n in range(1, 9)] == PUBLISHED_ROOTS
    assert VECTORS["roots"]["0"] == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("size", range(0, 9))
def test_root_hash_matches_vectors(size: int) -> None:
    get = levels_for(LEAVES[:size]) if size else merkle.levels_getter([b""])
    assert merkle.root_hash(size, get).hex() == VECTORS["roots"][str(size)]


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['index']}-{c['size']}")
def test_inclusion_vectors(case: dict) -> None:
    get = levels_for(LEAVES[: case["size"]])
    proof = merkle.inclusion_proof(case["index"], case["size"], get)
    assert [base64.b64encode(h).decode() for h in proof] == case["proof"]
    merkle.verify_inclusion(
        case["index"], case["size"], b(case["leaf_hash"]), proof, b(case["root"])
    )


@pytest.mark.parametrize(
    "case", VECTORS["consistency"], ids=lambda c: f"{c['first']}-{c['second']}"
)
def test_consistency_vectors(case: dict) -> None:
    get = levels_for(LEAVES[: case["second"]])
    proof = merkle.consistency_proof(case["first"], case["second"], get)
    assert [base64.b64encode(h).decode() for h in proof] == case["proof"]
    merkle.verify_consistency(
        case["first"], case["second"], b(case["first_root"]), b(case["second_root"]), proof
    )


@pytest.mark.parametrize(("index", "size", "leaf", "proof"), PUBLISHED_INCLUSION)
def test_published_inclusion_cases(index: int, size: int, leaf: str, proof: list[str]) -> None:
    get = levels_for(LEAVES[:size])
    assert [base64.b64encode(h).decode() for h in merkle.inclusion_proof(index, size, get)] == proof
    merkle.verify_inclusion(
        index, size, b(leaf), [b(p) for p in proof], bytes.fromhex(PUBLISHED_ROOTS[size - 1])
    )


@pytest.mark.parametrize(("first", "second", "proof"), PUBLISHED_CONSISTENCY)
def test_published_consistency_cases(first: int, second: int, proof: list[str]) -> None:
    get = levels_for(LEAVES[:second])
    assert [
        base64.b64encode(h).decode() for h in merkle.consistency_proof(first, second, get)
    ] == proof
    merkle.verify_consistency(
        first,
        second,
        bytes.fromhex(PUBLISHED_ROOTS[first - 1]),
        bytes.fromhex(PUBLISHED_ROOTS[second - 1]),
        [b(p) for p in proof],
    )


def test_all_pairs_up_to_64_match_the_naive_reference() -> None:
    data = [i.to_bytes(2, "big") for i in range(64)]
    get = levels_for(data)
    for n in range(1, 65):
        root = mth(data[:n])
        assert merkle.root_hash(n, get) == root
        for m in range(n):
            proof = merkle.inclusion_proof(m, n, get)
            assert proof == path(m, data[:n])
            merkle.verify_inclusion(m, n, merkle.leaf_hash(data[m]), proof, root)
        for m in range(1, n + 1):
            c = merkle.consistency_proof(m, n, get)
            assert c == (subproof(m, data[:n], True) if m < n else [])
            merkle.verify_consistency(m, n, mth(data[:m]), root, c)


def test_incremental_frontier_matches_batch_build() -> None:
    data = [i.to_bytes(3, "big") for i in range(300)]
    frontier: list[bytes | None] = []
    nodes: list[list[bytes]] = []
    for i, d in enumerate(data):
        merkle.append_leaf(frontier, i, merkle.leaf_hash(d), nodes)
        assert merkle.frontier_root(frontier) == mth(data[: i + 1])
    levels = merkle.build_levels(b"".join(nodes[0]))
    for level in range(1, len(levels)):
        assert b"".join(nodes[level]) == levels[level]


def _flip(h: bytes, bit: int) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 2000), data=st.data())
@example(size=1, data=None)
@example(size=1024, data=None)
def test_inclusion_properties(size: int, data: st.DataObject | None) -> None:
    index = 0 if data is None else data.draw(st.integers(0, size - 1))
    leaves = [i.to_bytes(4, "big") for i in range(size)]
    get = levels_for(leaves)
    root = merkle.root_hash(size, get)
    proof = merkle.inclusion_proof(index, size, get)
    leaf = merkle.leaf_hash(leaves[index])
    merkle.verify_inclusion(index, size, leaf, proof, root)
    # Any change to the leaf, the index, the size or a proof element is caught.
    with pytest.raises(ProofError):
        merkle.verify_inclusion(index, size, _flip(leaf, 0), proof, root)
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = _flip(bad[i], 3)
        with pytest.raises(ProofError):
            merkle.verify_inclusion(index, size, leaf, bad, root)
    if size > 1:
        with pytest.raises(ProofError):
            merkle.verify_inclusion((index + 1) % size, size, leaf, proof, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(index, size, leaf, [*proof, root], root)


@settings(max_examples=150, deadline=None)
@given(second=st.integers(2, 2000), data=st.data())
@example(second=8, data=None)
def test_consistency_properties(second: int, data: st.DataObject | None) -> None:
    first = 4 if data is None else data.draw(st.integers(1, second - 1))
    leaves = [i.to_bytes(4, "big") for i in range(second)]
    get = levels_for(leaves)
    r1, r2 = merkle.root_hash(first, get), merkle.root_hash(second, get)
    proof = merkle.consistency_proof(first, second, get)
    merkle.verify_consistency(first, second, r1, r2, proof)
    with pytest.raises(ProofError):
        merkle.verify_consistency(first, second, _flip(r1, 1), r2, proof)
    with pytest.raises(ProofError):
        merkle.verify_consistency(first, second, r1, _flip(r2, 1), proof)
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = _flip(bad[i], 5)
        with pytest.raises(ProofError):
            merkle.verify_consistency(first, second, r1, r2, bad)
    with pytest.raises(ProofError):
        merkle.verify_consistency(first, second, r1, r2, proof[:-1])


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 700), data=st.data())
def test_range_proof_reproduces_root(size: int, data: st.DataObject) -> None:
    lo = data.draw(st.integers(0, size - 1))
    hi = data.draw(st.integers(lo + 1, size))
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    get = merkle.levels_getter(merkle.build_levels(b"".join(leaves)))
    proof = merkle.range_proof(lo, hi, size, get)
    assert len(proof) <= 2 * size.bit_length()
    assert merkle.root_from_range(lo, hi, size, leaves[lo:hi], proof) == merkle.root_hash(size, get)
    tampered = list(leaves[lo:hi])
    tampered[0] = _flip(tampered[0], 2)
    assert merkle.root_from_range(lo, hi, size, tampered, proof) != merkle.root_hash(size, get)


def test_verification_failures_say_expected_and_found() -> None:
    get = levels_for(LEAVES)
    proof = merkle.inclusion_proof(3, 8, get)
    with pytest.raises(ProofError, match=r"step 5: expected root .* found"):
        merkle.verify_inclusion(3, 8, merkle.leaf_hash(b"x"), proof, merkle.root_hash(8, get))
    with pytest.raises(ProofError, match="step 1"):
        merkle.verify_inclusion(8, 8, merkle.leaf_hash(b"x"), proof, merkle.root_hash(8, get))
    with pytest.raises(ProofError, match="step 1: expected a non-empty"):
        merkle.verify_consistency(3, 8, bytes(32), bytes(32), [])
