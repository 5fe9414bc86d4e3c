"""The `tree` and `index` caches: stored Merkle hashes and line end offsets.

Why caches: appending needs the tree's right edge, and a proof at 100,000
records must not rehash the whole log.  Why they are never trusted: they are
derived data in a folder an attacker may write.  Every use is checked against
a signed checkpoint first (the compact range must fold to its root, and the
last covered line must hash to the stored leaf); on any mismatch the caller
rebuilds from log.jsonl or computes in memory.
"""

from __future__ import annotations

import os
import struct
from typing import Optional

from . import AuditError
from .files import INDEX, LOG, TREE, atomic_write, write_all
from .merkle import (HASH_SIZE, CompactRange, MemoryTree, compact_nodes, leaf_hash, root_at,
                     stored_hash_count, stored_hash_index)

_OFF = struct.Struct(">Q")


class TreeCache:
    """Read/append access to D/tree and D/index (open lazily, read with pread)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.tree_path = os.path.join(folder, TREE)
        self.index_path = os.path.join(folder, INDEX)
        self._tree: Optional[int] = None
        self._index: Optional[int] = None

    def close(self) -> None:
        for fd in (self._tree, self._index):
            if fd is not None:
                os.close(fd)
        self._tree = self._index = None

    def __enter__(self) -> "TreeCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fds(self) -> tuple[int, int]:
        if self._tree is None:
            self._tree = os.open(self.tree_path, os.O_RDONLY | os.O_CLOEXEC)
            self._index = os.open(self.index_path, os.O_RDONLY | os.O_CLOEXEC)
        assert self._index is not None
        return self._tree, self._index

    def get(self, level: int, index: int) -> bytes:
        tree, _ = self._fds()
        h = os.pread(tree, HASH_SIZE, stored_hash_index(level, index) * HASH_SIZE)
        if len(h) != HASH_SIZE:
            raise LookupError(f"{self.tree_path} has no hash ({level}, {index})")
        return h

    def end(self, seq: int) -> int:
        """Byte offset just past line `seq`'s newline (0 for seq -1)."""
        if seq < 0:
            return 0
        _, index = self._fds()
        raw = os.pread(index, 8, seq * 8)
        if len(raw) != 8:
            raise LookupError(f"{self.index_path} has no offset for seq {seq}")
        return _OFF.unpack(raw)[0]

    def valid_for(self, size: int, root: bytes, log_fd: int) -> bool:
        """Do the caches describe the first `size` lines of the log whose tree has `root`?"""
        try:
            tree, index = self._fds()
            if os.fstat(tree).st_size < stored_hash_count(size) * HASH_SIZE or os.fstat(index).st_size < size * 8:
                return False
            if root_at(self.get, size) != root:
                return False
            if size == 0:
                return True
            start, end = self.end(size - 2), self.end(size - 1)
            if not 0 <= start < end:
                return False
            line = os.pread(log_fd, end - start, start)
            return line.endswith(b"\n") and len(line) == end - start and leaf_hash(line[:-1]) == self.get(0, size - 1)
        except (OSError, LookupError):
            return False

    def compact_range(self, size: int) -> CompactRange:
        return CompactRange(size, [self.get(level, idx) for level, idx in compact_nodes(size)])

    def trim(self, size: int) -> None:
        """Drop cache entries past `size` (left by a writer that stopped before signing)."""
        for path, length in ((self.tree_path, stored_hash_count(size) * HASH_SIZE), (self.index_path, size * 8)):
            if os.path.getsize(path) > length:
                os.truncate(path, length)

    def append(self, hashes: list[bytes], ends: list[int]) -> None:
        for path, data in ((self.tree_path, b"".join(hashes)), (self.index_path, b"".join(_OFF.pack(e) for e in ends))):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)


def scan_log(data: bytes, size: int) -> tuple[MemoryTree, list[int]]:
    """Tree and end offsets of the first `size` lines of log bytes `data`."""
    tree = MemoryTree()
    ends: list[int] = []
    pos = 0
    for _ in range(size):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        tree.add_hash(leaf_hash(data[pos:nl]))
        pos = nl + 1
        ends.append(pos)
    return tree, ends


def rebuild(folder: str, size: int, root: bytes, write: bool = True) -> tuple[MemoryTree, list[int]]:
    """Recompute the tree of the first `size` lines of log.jsonl and check it
    against the signed `root`; rewrite the cache files when `write`."""
    log = os.path.join(folder, LOG)
    with open(log, "rb") as f:
        data = f.read()
    tree, ends = scan_log(data, size)
    if tree.size < size:
        raise AuditError(f"{log} has only {tree.size} complete records but the last signed checkpoint covers "
                         f"{size}: records were removed; run `hivejail audit verify` (the writer refuses to continue)")
    if tree.root() != root:
        raise AuditError(f"{log} does not match the last signed checkpoint (size {size}): the log was altered; "
                         "run `hivejail audit verify` (the writer refuses to sign over it)")
    if write:
        atomic_write(os.path.join(folder, TREE), b"".join(tree.stored))
        atomic_write(os.path.join(folder, INDEX), b"".join(_OFF.pack(e) for e in ends))
    return tree, ends
