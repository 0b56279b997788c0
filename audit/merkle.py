"""RFC 9162 §2.1 Merkle tree hashing, proofs and their verification. Pure: no I/O.

Terms used throughout:

* ``size`` is a number of leaves; indexes are 0-based.
* A *complete node* ``(level, idx)`` is the root of the perfect subtree over leaves
  ``[idx * 2**level, (idx + 1) * 2**level)``; level 0 holds the leaf hashes. These are the
  only nodes storage keeps; every other hash (right edges of trees whose size is not a power
  of two) is recomputed from O(log n) of them.
* Proof generators take a ``get(level, idx) -> bytes`` callback. Run once with
  :func:`plan` to learn which complete nodes are needed, fetch them in one round trip, then
  run again with the fetched values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from audit.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeGetter = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """MTH of a single entry: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2): RFC 9162's ``k``."""
    if n < 2:
        raise ValueError("split_point needs n >= 2")
    return 1 << ((n - 1).bit_length() - 1)


def _is_perfect(start: int, end: int) -> tuple[bool, int]:
    size = end - start
    if size & (size - 1) == 0 and start % size == 0:
        return True, size.bit_length() - 1
    return False, 0


def subtree_hash(start: int, end: int, get: NodeGetter) -> bytes:
    """MTH(D[start:end]) for a subtree that occurs in the RFC 9162 tree shape."""
    if end <= start:
        raise ValueError("empty subtree")
    perfect, level = _is_perfect(start, end)
    if perfect:
        return get(level, start >> level)
    k = split_point(end - start)
    return node_hash(subtree_hash(start, start + k, get), subtree_hash(start + k, end, get))


def root_hash(size: int, get: NodeGetter) -> bytes:
    """The tree head at ``size``; the empty tree's is SHA-256 of the empty string."""
    if size == 0:
        return EMPTY_ROOT
    return subtree_hash(0, size, get)


def inclusion_proof(index: int, size: int, get: NodeGetter) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[0:size]), leaf-side first."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    path: list[bytes] = []
    start, end, m = 0, size, index
    # Walk down from the root, collecting the sibling at each split; the RFC lists them
    # from the leaf upwards, so reverse at the end.
    while end - start > 1:
        k = split_point(end - start)
        if m < k:
            path.append(subtree_hash(start + k, end, get))
            end = start + k
        else:
            path.append(subtree_hash(start, start + k, get))
            start, m = start + k, m - k
    path.reverse()
    return path


def consistency_proof(first: int, second: int, get: NodeGetter) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(first, D[0:second]); empty when first is 0 or equal."""
    if not 0 <= first <= second:
        raise ProofError(f"cannot prove size {first} is a prefix of size {second}")
    if first == 0 or first == second:
        return []
    out: list[bytes] = []
    start, end, m, whole = 0, second, first, True
    while True:
        n = end - start
        if m == n:
            if not whole:
                out.append(subtree_hash(start, end, get))
            break
        k = split_point(n)
        if m <= k:
            out.append(subtree_hash(start + k, end, get))
            end = start + k
        else:
            out.append(subtree_hash(start, start + k, get))
            start, m, whole = start + k, m - k, False
    out.reverse()
    return out


def plan(build: Callable[[NodeGetter], object]) -> list[tuple[int, int]]:
    """Complete nodes that ``build`` reads, in first-use order, without duplicates."""
    seen: dict[tuple[int, int], None] = {}

    def record(level: int, idx: int) -> bytes:
        seen[(level, idx)] = None
        return bytes(HASH_SIZE)

    build(record)
    return list(seen)


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2), written as the RFC's numbered steps ---


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} must be {HASH_SIZE} bytes, found {len(value)}")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """Steps 1-4 of RFC 9162 §2.1.3.2: the root that ``proof`` implies for ``leaf``."""
    _check_hash("leaf hash", leaf)
    # 1. The index must lie inside the tree.
    if not 0 <= index < size:
        raise ProofError(f"step 1: expected index < size {size}, found index {index}")
    # 2. fn is the leaf's position, sn the last position.
    fn, sn = index, size - 1
    # 3. Start from the leaf hash.
    r = leaf
    # 4. Fold in each proof element.
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)
        if sn == 0:  # 4a
            raise ProofError(
                f"step 4a: expected {i} proof hashes for index {index} in size {size}, "
                f"found {len(proof)}"
            )
        if fn & 1 or fn == sn:  # 4b
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 4c
        sn >>= 1
    # 5 (first half): every level must have been consumed.
    if sn != 0:
        raise ProofError(
            f"step 5: expected more proof hashes for index {index} in size {size}, "
            f"found only {len(proof)}"
        )
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2; raises :class:`ProofError` naming the failed step."""
    _check_hash("root hash", root)
    computed = root_from_inclusion(index, size, leaf, proof)
    # 5. The computed root must equal the tree head.
    if computed != root:
        raise ProofError(
            f"step 5: expected root {root.hex()}, found {computed.hex()} "
            f"(leaf {index} is not in this tree of size {size})"
        )


def verify_consistency(
    first: int,
    second: int,
    first_root: bytes,
    second_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """RFC 9162 §2.1.4.2; raises :class:`ProofError` naming the failed step."""
    _check_hash("first root", first_root)
    _check_hash("second root", second_root)
    if not 0 <= first <= second:
        raise ProofError(f"expected first <= second, found {first} > {second}")
    if first == 0 or first == second:
        # Trivial cases outside the RFC algorithm: nothing to prove but equality.
        if proof:
            raise ProofError(f"expected an empty proof, found {len(proof)} hashes")
        if first == second and first_root != second_root:
            raise ProofError(
                f"expected equal roots at equal size {first}, found "
                f"{first_root.hex()} and {second_root.hex()}"
            )
        return
    # 1. A non-trivial proof is never empty.
    if not proof:
        raise ProofError("step 1: expected a non-empty consistency proof, found none")
    for i, c in enumerate(proof):
        _check_hash(f"proof[{i}]", c)
    path = list(proof)
    # 2. When first is a power of two its root is the starting point of the path.
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    # 3. fn and sn are the last positions of both trees.
    fn, sn = first - 1, second - 1
    # 4. Skip the levels where the first tree's right edge is a right child.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Both running hashes start at the first path element.
    fr = sr = path[0]
    # 6. Fold in the rest.
    for i, c in enumerate(path[1:], start=1):
        if sn == 0:  # 6a
            raise ProofError(
                f"step 6a: expected {i} path hashes for sizes {first}->{second}, found {len(path)}"
            )
        if fn & 1 or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    # 7. Both roots must be reproduced and the path fully used.
    if sn != 0:
        raise ProofError(
            f"step 7: expected more proof hashes for sizes {first}->{second}, "
            f"found only {len(proof)}"
        )
    if fr != first_root:
        raise ProofError(f"step 7: expected first root {first_root.hex()}, found {fr.hex()}")
    if sr != second_root:
        raise ProofError(f"step 7: expected second root {second_root.hex()}, found {sr.hex()}")


# --- incremental building (used by the sequencer) ---


def frontier_positions(size: int) -> list[tuple[int, int]]:
    """The complete nodes whose hashes summarise a tree of ``size`` (one per set bit)."""
    return [(level, (size >> level) - 1) for level in range(size.bit_length()) if size >> level & 1]


def append_leaf(
    frontier: list[bytes | None], size: int, leaf: bytes, new_nodes: list[list[bytes]]
) -> None:
    """Add leaf number ``size`` to ``frontier`` (indexed by level, updated in place).

    Each complete node that the leaf finishes is appended to ``new_nodes[level]`` (level 0
    receives the leaf itself), in index order, ready to be appended to storage.
    """
    while len(new_nodes) <= size.bit_length() + 1:
        new_nodes.append([])
    while len(frontier) <= size.bit_length() + 1:
        frontier.append(None)
    h, level, idx = leaf, 0, size
    new_nodes[0].append(h)
    while idx & 1:
        left = frontier[level]
        if left is None:
            raise ValueError(f"frontier has no node at level {level} for size {size}")
        frontier[level] = None
        h = node_hash(left, h)
        level += 1
        idx >>= 1
        new_nodes[level].append(h)
    frontier[level] = h


def frontier_root(frontier: Sequence[bytes | None]) -> bytes:
    """Tree head from a frontier: fold the perfect subtrees from the smallest up."""
    r: bytes | None = None
    for h in frontier:
        if h is None:
            continue
        r = h if r is None else node_hash(h, r)
    return EMPTY_ROOT if r is None else r


def build_levels(leaves: bytes) -> list[bytes]:
    """All complete nodes of a tree from its packed leaf hashes; ``[0]`` is ``leaves``."""
    if len(leaves) % HASH_SIZE:
        raise ValueError("packed leaf hashes must be a multiple of 32 bytes")
    levels = [leaves]
    cur = leaves
    sha = hashlib.sha256
    while len(cur) >= 2 * HASH_SIZE:
        pairs = len(cur) // (2 * HASH_SIZE)
        out = bytearray(pairs * HASH_SIZE)
        mv = memoryview(cur)
        for i in range(pairs):
            o = 64 * i
            out[32 * i : 32 * i + 32] = sha(b"\x01" + mv[o : o + 64]).digest()
        cur = bytes(out)
        levels.append(cur)
    return levels


def levels_getter(levels: Sequence[bytes]) -> NodeGetter:
    """A :data:`NodeGetter` over packed levels (as from :func:`build_levels` or storage)."""

    def get(level: int, idx: int) -> bytes:
        if level >= len(levels):
            raise ProofError(f"no stored node at level {level}")
        h = levels[level][HASH_SIZE * idx : HASH_SIZE * idx + HASH_SIZE]
        if len(h) != HASH_SIZE:
            raise ProofError(f"no stored node {idx} at level {level}")
        return h

    return get


# --- range proofs (archive segments): a contiguous run of leaves inside a tree head ---


def range_proof(lo: int, hi: int, size: int, get: NodeGetter) -> list[bytes]:
    """Hashes of the maximal subtrees of the size-``size`` tree lying outside [lo, hi).

    Together with the leaf hashes of [lo, hi) they reproduce the root
    (:func:`root_from_range`), so a segment of records can be checked against a checkpoint.
    """
    if not 0 <= lo < hi <= size:
        raise ProofError(f"range [{lo}, {hi}) is not inside a tree of size {size}")
    out: list[bytes] = []

    def walk(s: int, e: int) -> None:
        if e <= lo or s >= hi:
            out.append(subtree_hash(s, e, get))
        elif lo <= s and e <= hi:
            return
        else:
            k = split_point(e - s)
            walk(s, s + k)
            walk(s + k, e)

    walk(0, size)
    return out


def root_from_range(
    lo: int, hi: int, size: int, leaves: Sequence[bytes], proof: Sequence[bytes]
) -> bytes:
    """Root implied by the leaf hashes of [lo, hi) and a :func:`range_proof`."""
    if not 0 <= lo < hi <= size or len(leaves) != hi - lo:
        raise ProofError(
            f"expected {hi - lo} leaves for range [{lo}, {hi}) of size {size}, found {len(leaves)}"
        )
    it = iter(proof)
    used = 0

    def mth(s: int, e: int) -> bytes:
        if e - s == 1:
            return leaves[s - lo]
        k = split_point(e - s)
        return node_hash(mth(s, s + k), mth(s + k, e))

    def walk(s: int, e: int) -> bytes:
        nonlocal used
        if e <= lo or s >= hi:
            try:
                h = next(it)
            except StopIteration:
                raise ProofError(
                    f"range proof too short: expected more than {used} hashes"
                ) from None
            used += 1
            _check_hash(f"range proof[{used - 1}]", h)
            return h
        if lo <= s and e <= hi:
            return mth(s, e)
        k = split_point(e - s)
        return node_hash(walk(s, s + k), walk(s + k, e))

    root = walk(0, size)
    if used != len(proof):
        raise ProofError(f"range proof too long: expected {used} hashes, found {len(proof)}")
    return root
