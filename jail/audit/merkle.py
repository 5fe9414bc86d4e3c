"""RFC 9162 (RFC 6962) Merkle tree: hashes, proofs and their verification.

Why a Merkle tree and not a hash chain: a chain can prove that a prefix was not
changed, but not cheaply that one record is in the log (the proof is the whole
chain) nor that a later head extends an earlier one without replaying it. The
RFC 6962 tree gives both in O(log n) hashes, which is what lets an auditor hold
one small signed checkpoint and check the log against it later.

Storage order of interior hashes follows Go's golang.org/x/mod/sumdb/tlog
("stored hash index"): after leaf n come the hashes of every subtree that leaf
completes.  That order lets the writer append hashes to a flat file and lets a
prover read any complete subtree hash with one seek.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

HASH_SIZE = 32
#: Root of the empty tree: SHA-256 of the empty string (RFC 9162 2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: get(level, index) -> hash of the complete subtree of 2**level leaves
#: starting at leaf index << level.
SubtreeGetter = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof does not verify, or its arguments are out of range."""


def leaf_hash(data: bytes) -> bytes:
    """Leaf hash: SHA-256(0x00 || data); the 0x00 prefix separates leaves from nodes."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def stored_hash_index(level: int, n: int) -> int:
    """Position of subtree (level, n) in tlog storage order."""
    for _ in range(level):
        n = 2 * n + 1
    i = 0
    while n > 0:
        i += n
        n >>= 1
    return i + level


def stored_hash_count(size: int) -> int:
    """Number of stored hashes for a tree of `size` leaves."""
    if size == 0:
        return 0
    count = stored_hash_index(0, size - 1) + 1
    i = size - 1
    while i & 1:
        count += 1
        i >>= 1
    return count


def compact_nodes(size: int) -> list[tuple[int, int]]:
    """(level, index) of the complete subtrees whose fold is the root of `size` leaves,
    largest (leftmost) first: one per set bit of `size`."""
    out: list[tuple[int, int]] = []
    lo = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, lo >> level))
            lo += 1 << level
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """Root from the compact range (largest subtree first): fold right to left."""
    if not hashes:
        return EMPTY_ROOT
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = node_hash(left, h)
    return h


class CompactRange:
    """The right edge of a tree: one subtree hash per set bit of `size`.

    This is all a writer needs to append and to compute the new root; it is
    also what the verifier keeps while streaming the log.
    """

    __slots__ = ("size", "hashes")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ValueError(f"compact range of size {size} needs {bin(size).count('1')} hashes, got {len(hashes)}")
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> list[bytes]:
        """Add one leaf hash; return the hashes to store, in tlog order
        (the leaf, then each subtree it completes)."""
        h = leaf
        out = [h]
        n = self.size
        hashes = self.hashes
        while n & 1:
            h = node_hash(hashes.pop(), h)
            out.append(h)
            n >>= 1
        hashes.append(h)
        self.size += 1
        return out

    def root(self) -> bytes:
        return fold(self.hashes)

    def copy(self) -> "CompactRange":
        return CompactRange(self.size, self.hashes)


class MemoryTree:
    """All stored hashes of a tree in memory; used when no cache file is usable."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []
        self.range = CompactRange()

    @classmethod
    def from_leaves(cls, leaves: Sequence[bytes]) -> "MemoryTree":
        """Tree over raw leaf data (each item is hashed as a leaf)."""
        t = cls()
        for data in leaves:
            t.add_hash(leaf_hash(data))
        return t

    def add_hash(self, leaf: bytes) -> None:
        self.stored.extend(self.range.append(leaf))

    @property
    def size(self) -> int:
        return self.range.size

    def get(self, level: int, index: int) -> bytes:
        return self.stored[stored_hash_index(level, index)]

    def root(self, size: int | None = None) -> bytes:
        return root_at(self.get, self.size if size is None else size)


def root_at(get: SubtreeGetter, size: int) -> bytes:
    """Root of the first `size` leaves, from stored subtree hashes."""
    return fold([get(level, idx) for level, idx in compact_nodes(size)])


def range_hash(get: SubtreeGetter, lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) for a range that RFC 6962's recursion produces (lo aligned)."""
    if not 0 <= lo < hi:
        raise ProofError(f"empty or negative range [{lo}, {hi})")
    parts = []
    while lo < hi:
        k = 1 << ((hi - lo).bit_length() - 1)
        if lo % k:
            raise ProofError(f"range [{lo}, {hi}) is not aligned to a subtree")
        parts.append(get(k.bit_length() - 1, lo // k))
        lo += k
    return fold(parts)


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(get: SubtreeGetter, index: int, size: int) -> list[bytes]:
    """RFC 6962 2.1.1 PATH(index, D[0:size]), leaf sibling first."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(range_hash(get, lo + k, hi))
            hi = lo + k
        else:
            path.append(range_hash(get, lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_proof(get: SubtreeGetter, old: int, new: int) -> list[bytes]:
    """RFC 6962 2.1.2 PROOF(old, D[0:new]); empty when old is 0 or equals new."""
    if not 0 <= old <= new:
        raise ProofError(f"no consistency proof from size {old} to size {new}")
    if old == 0 or old == new:
        return []
    return _subproof(get, old, 0, new, True)


def _subproof(get: SubtreeGetter, m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if whole else [range_hash(get, lo, hi)]
    k = _split(n)
    if m <= k:
        return _subproof(get, m, lo, lo + k, whole) + [range_hash(get, lo + k, hi)]
    return _subproof(get, m - k, lo + k, hi, False) + [range_hash(get, lo, lo + k)]


def _check_hashes(hashes: Sequence[bytes], what: str) -> None:
    for i, h in enumerate(hashes):
        if len(h) != HASH_SIZE:
            raise ProofError(f"{what} hash {i} has {len(h)} bytes, expected {HASH_SIZE}")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 2.1.3.2; raises ProofError unless `leaf` is at `index` in the tree `root`."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hashes(proof, "inclusion proof")
    if len(leaf) != HASH_SIZE or len(root) != HASH_SIZE:
        raise ProofError("leaf or root hash has the wrong length")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    if r != root:
        raise ProofError("inclusion proof does not lead to the checkpoint's root")


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 2.1.4.2; raises ProofError unless tree `new_root` extends tree `old_root`."""
    if not 0 <= old <= new:
        raise ProofError(f"size {new} is smaller than size {old}: a tree cannot shrink")
    _check_hashes(proof, "consistency proof")
    if old == new:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same size {old}")
        return
    if old == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise ProofError(f"consistency proof does not reproduce the old root at size {old}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not reproduce the new root at size {new}")
