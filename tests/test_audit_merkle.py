"""RFC 6962 / RFC 9162 Merkle tree against published vectors.

Vectors: the RFC 6962 reference test data as published in
github.com/transparency-dev/merkle (proof/verify_test.go, rfc6962/rfc6962_test.go),
which come from certificate-transparency's C++ reference implementation.
"""

from __future__ import annotations

import hashlib

import pytest

from jail.audit.merkle import (EMPTY_ROOT, MemoryTree, ProofError, consistency_proof, inclusion_proof, leaf_hash,
                               node_hash, stored_hash_count, stored_hash_index, verify_consistency, verify_inclusion)


def dh(h: str) -> bytes:
    return bytes.fromhex(h)


LEAVES = [dh(x) for x in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                          "606162636465666768696a6b6c6d6e6f"]]
ROOTS = [dh(x) for x in [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]]
# (leaf number 1-based, tree size, proof)
INCLUSION = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
SOME_HASH = dh("abacaba000000000000000000000000000000000000000000060061e00123456")


def test_hasher_vectors():
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert leaf_hash(b"L123456").hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    assert node_hash(b"N123", b"N456").hex() == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"


def test_roots_of_every_prefix():
    tree = MemoryTree.from_leaves(LEAVES)
    assert tree.root(0) == EMPTY_ROOT
    for n in range(1, 9):
        assert tree.root(n) == ROOTS[n - 1], n


@pytest.mark.parametrize("leaf,size,proof", INCLUSION)
def test_inclusion_vectors(leaf, size, proof):
    tree = MemoryTree.from_leaves(LEAVES[:size])
    want = [dh(h) for h in proof]
    assert inclusion_proof(tree.get, leaf - 1, size) == want
    lh = leaf_hash(LEAVES[leaf - 1])
    verify_inclusion(lh, leaf - 1, size, want, ROOTS[size - 1])
    # The corruption probes of transparency-dev/merkle's verifierCheck.
    probes = [(leaf - 2, size, ROOTS[size - 1], lh, want), (leaf, size, ROOTS[size - 1], lh, want),
              ((leaf - 1) ^ 2, size, ROOTS[size - 1], lh, want), (leaf - 1, size * 2, ROOTS[size - 1], lh, want),
              (leaf - 1, size // 2, ROOTS[size - 1], lh, want), (leaf - 1, size, ROOTS[size - 1], b"WrongLeaf", want),
              (leaf - 1, size, EMPTY_ROOT, lh, want), (leaf - 1, size, SOME_HASH, lh, want),
              (leaf - 1, size, ROOTS[size - 1], lh, want + [b""]),
              (leaf - 1, size, ROOTS[size - 1], lh, want + [ROOTS[size - 1]]),
              (leaf - 1, size, ROOTS[size - 1], lh, [b""] + want),
              (leaf - 1, size, ROOTS[size - 1], lh, [ROOTS[size - 1]] + want)]
    for i in range(len(want)):
        bad = list(want)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((leaf - 1, size, ROOTS[size - 1], lh, bad))
    if want:
        probes.append((leaf - 1, size, ROOTS[size - 1], lh, want[:-1]))
    if len(want) > 1:
        probes.append((leaf - 1, size, ROOTS[size - 1], lh, [want[0], SOME_HASH] + want[1:]))
    for index, sz, root, lhash, proof_ in probes:
        if index == leaf - 1 and sz == size and root == ROOTS[size - 1] and lhash == lh and proof_ == want:
            continue  # (leafIndex ^ 2 can equal the index for some vectors)
        with pytest.raises(ProofError):
            verify_inclusion(lhash, index, sz, proof_, root)


@pytest.mark.parametrize("m,n,proof", CONSISTENCY)
def test_consistency_vectors(m, n, proof):
    tree = MemoryTree.from_leaves(LEAVES[:n])
    want = [dh(h) for h in proof]
    assert consistency_proof(tree.get, m, n) == want
    r1, r2 = ROOTS[m - 1], ROOTS[n - 1]
    verify_consistency(m, n, r1, r2, want)
    if not want:
        return
    probes = [(m - 1, n, r1, r2, want), (m + 1, n, r1, r2, want), (m ^ 2, n, r1, r2, want),
              (m, n * 2, r1, r2, want), (m, n // 2, r1, r2, want), (m, n, b"WrongRoot", r2, want),
              (m, n, r1, b"WrongRoot", want), (m, n, r2, r1, want), (m, n, r1, r2, []),
              (m, n, r1, r2, want + [b""]), (m, n, r1, r2, want + [r1]), (m, n, r1, r2, want + [r2]),
              (m, n, r1, r2, [b""] + want), (m, n, r1, r2, [r1] + want), (m, n, r1, r2, [r2] + want),
              (m, n, r1, r2, [want[0]] + want), (m, n, r1, r2, want[:-1])]
    for i in range(len(want)):
        bad = list(want)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((m, n, r1, r2, bad))
    for a, b, ra, rb, p in probes:
        with pytest.raises(ProofError):
            verify_consistency(a, b, ra, rb, p)


@pytest.mark.parametrize("m,n,r1,r2,proof,ok", [
    (0, 0, b"1", b"2", [], False), (1, 1, b"1", b"2", [], False),
    (0, 0, b"1", b"1", [], True), (0, 1, b"1", b"2", [], True), (1, 1, b"2", b"2", [], True),
    (1, 0, b"1", b"2", [], False), (2, 1, b"1", b"2", [], False), (1, 2, b"1", b"2", [], False),
    (0, 0, EMPTY_ROOT, b"2", [], False), (1, 1, EMPTY_ROOT, b"2", [], False),
    (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False), (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
    (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
])
def test_consistency_edge_cases(m, n, r1, r2, proof, ok):
    """transparency-dev/merkle TestVerifyConsistency's table."""
    if ok:
        verify_consistency(m, n, r1, r2, proof)
    else:
        with pytest.raises(ProofError):
            verify_consistency(m, n, r1, r2, proof)


def test_inclusion_edge_cases():
    h = leaf_hash(b"data")
    verify_inclusion(h, 0, 1, [], h)
    for index, size in ((0, 0), (1, 0), (2, 1)):
        with pytest.raises(ProofError):
            verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)
    with pytest.raises(ProofError):
        verify_inclusion(h, 0, 1, [], b"")


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 2.1 MTH, written recursively as in the RFC."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def test_every_proof_up_to_70_leaves():
    data = [b"leaf %d" % i for i in range(70)]
    tree = MemoryTree.from_leaves(data)
    roots = [tree.root(n) for n in range(71)]
    for n in (0, 1, 2, 3, 7, 8, 9, 31, 33, 64, 70):
        assert roots[n] == _mth(data[:n])
    for n in range(1, 71):
        for i in range(n):
            verify_inclusion(leaf_hash(data[i]), i, n, inclusion_proof(tree.get, i, n), roots[n])
        for m in range(0, n + 1):
            verify_consistency(m, n, roots[m], roots[n], consistency_proof(tree.get, m, n))


def test_stored_hash_layout():
    """tlog order: after leaf n come the subtrees it completes."""
    assert [stored_hash_index(0, i) for i in range(4)] == [0, 1, 3, 4]
    assert stored_hash_index(1, 0) == 2 and stored_hash_index(1, 1) == 5 and stored_hash_index(2, 0) == 6
    tree = MemoryTree.from_leaves([bytes([i]) for i in range(100)])
    for n in range(101):
        assert stored_hash_count(n) == len(MemoryTree.from_leaves([bytes([i]) for i in range(n)]).stored)
    assert tree.get(2, 1) == _mth([bytes([i]) for i in range(4, 8)])
