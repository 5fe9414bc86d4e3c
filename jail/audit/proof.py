"""Offline proofs: C2SP tlog-proof for one record, consistency bodies for witnesses.

`hivejail audit prove SEQ` emits a c2sp.org/tlog-proof@v1 file: the record's
stored line (base64, in the `extra` line), its index, the RFC 6962 inclusion
path and the signed checkpoint.  The extra data is not trusted by itself: the
verifier hashes it as the leaf, so it is authenticated by the inclusion proof
and the checkpoint signature.  Such a file lets anyone holding the verifier
key confirm "run X was logged, with this outcome" without the log.

Proofs read the `tree`/`index` caches when they fold to the latest checkpoint
(one seek per hash: milliseconds at 100,000 records) and otherwise rebuild the
tree in memory from log.jsonl; every proof is verified before it is printed.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Callable, NamedTuple, Optional

from . import AuditError
from . import files as F
from .cache import TreeCache, scan_log
from .checkpoint import Checkpoint, CheckpointError, open_checkpoint, parse_history_line, parse_text
from .merkle import (ProofError, consistency_proof, inclusion_proof, leaf_hash, root_at, verify_consistency,
                     verify_inclusion)
from .note import Verifier
from .record import LineError, check_line

HEADER = "c2sp.org/tlog-proof@v1"
MAX_HASHES = 63
_INDEX = re.compile(r"index (0|[1-9][0-9]{0,18})")


class TlogProof(NamedTuple):
    extra: Optional[bytes]
    index: int
    hashes: list[bytes]
    checkpoint: bytes


def format_proof(p: TlogProof) -> bytes:
    out = [HEADER + "\n"]
    if p.extra is not None:
        out.append(f"extra {base64.b64encode(p.extra).decode()}\n")
    out.append(f"index {p.index}\n")
    out.extend(base64.b64encode(h).decode() + "\n" for h in p.hashes)
    out.append("\n")
    return "".join(out).encode() + p.checkpoint


def _hash_lines(lines: list[str], what: str) -> list[bytes]:
    hashes = []
    for i, line in enumerate(lines):
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise ProofError(f"{what} line {i + 1} is not base64") from None
        if len(h) != 32:
            raise ProofError(f"{what} line {i + 1} holds {len(h)} bytes, not a SHA-256 hash")
        hashes.append(h)
    if len(hashes) > MAX_HASHES:
        raise ProofError(f"{what} has more than {MAX_HASHES} hashes")
    return hashes


def parse_proof(data: bytes) -> TlogProof:
    """Parse a tlog-proof strictly; raises ProofError naming the bad line."""
    sep = data.find(b"\n\n")
    if sep < 0:
        raise ProofError("not a tlog-proof: no blank line before the checkpoint")
    try:
        head = data[:sep].decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise ProofError("not a tlog-proof: non-ASCII header") from None
    if head[0] != HEADER:
        raise ProofError(f"not a tlog-proof: the first line must be {HEADER}")
    pos, extra = 1, None
    if len(head) > 1 and head[1].startswith("extra "):
        try:
            extra = base64.b64decode(head[1][6:], validate=True)
        except (binascii.Error, ValueError):
            raise ProofError("tlog-proof line 2: extra data is not base64") from None
        pos = 2
    if len(head) <= pos or not _INDEX.fullmatch(head[pos]):
        raise ProofError(f"tlog-proof line {pos + 1}: expected `index N`")
    index = int(head[pos][6:])
    hashes = _hash_lines(head[pos + 1:], "tlog-proof hash")
    checkpoint = data[sep + 2:]
    if not checkpoint:
        raise ProofError("tlog-proof has no checkpoint")
    return TlogProof(extra, index, hashes, checkpoint)


class LogView:
    """The latest checkpoint of a folder and subtree hashes for proving.

    The checkpoint is not verified here (the prover may not have the verifier
    key at hand); the proof's verifier checks its signature.  But the hashes
    are checked to fold to its root, so a proof is never built from a cache or
    log that disagrees with what was signed."""

    def __init__(self, folder: str) -> None:
        self.dir = os.path.abspath(folder)
        cps = os.path.join(self.dir, F.CHECKPOINTS)
        try:
            last, _ = F.read_last_line(cps)
            self.note = parse_history_line(last)
            self.cp: Checkpoint = parse_text(self.note[: self.note.rfind(b"\n\n") + 1])
        except OSError as e:
            raise AuditError(f"cannot read {cps}: {e.strerror}") from None
        except CheckpointError as e:
            raise AuditError(f"{cps}: the last checkpoint is unreadable ({e}); run `hivejail audit verify`") from None
        self.log_path = os.path.join(self.dir, F.LOG)
        self._cache = TreeCache(self.dir)
        self.get: Callable[[int, int], bytes]
        self.line: Callable[[int], bytes]
        try:
            with open(self.log_path, "rb") as lf:
                ok = self._cache.valid_for(self.cp.size, self.cp.root, lf.fileno())
        except OSError as e:
            raise AuditError(f"cannot read {self.log_path}: {e.strerror}") from None
        if ok:
            self.get, self.line = self._cache.get, self._cached_line
        else:
            self.in_memory()

    def _cached_line(self, seq: int) -> bytes:
        start, end = self._cache.end(seq - 1), self._cache.end(seq)
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read(end - start)[:-1]

    def in_memory(self) -> None:
        """Rebuild the tree from log.jsonl (caches missing, stale or not ours)."""
        self._cache.close()
        with open(self.log_path, "rb") as f:
            data = f.read()
        tree, ends = scan_log(data, self.cp.size)
        if tree.size < self.cp.size or tree.root() != self.cp.root:
            raise AuditError(f"{self.log_path} does not match its latest checkpoint (size {self.cp.size}): "
                             "run `hivejail audit verify`")
        self.get = tree.get
        self.line = lambda seq: data[(ends[seq - 1] if seq else 0):ends[seq] - 1]

    def close(self) -> None:
        self._cache.close()


def make_proof(folder: str, seq: int) -> bytes:
    """A tlog-proof that record `seq` is in the folder's latest signed checkpoint."""
    view = LogView(folder)
    try:
        size = view.cp.size
        if not 0 <= seq < size:
            raise AuditError(f"seq {seq} is not covered by the latest checkpoint of {view.dir} (size {size})")
        for attempt in (0, 1):
            line = view.line(seq)
            path = inclusion_proof(view.get, seq, size)
            try:
                verify_inclusion(leaf_hash(line), seq, size, path, view.cp.root)
                break
            except ProofError:
                if attempt:
                    raise AuditError(f"{view.log_path}: seq {seq} does not prove against the latest checkpoint; "
                                     "run `hivejail audit verify`") from None
                view.in_memory()
        return format_proof(TlogProof(line, seq, path, view.note))
    finally:
        view.close()


def consistency_body(folder: str, old: int) -> bytes:
    """A C2SP tlog-witness add-checkpoint body: `old M`, the RFC 6962 consistency
    proof from size M to the latest checkpoint, a blank line, the checkpoint."""
    view = LogView(folder)
    try:
        size = view.cp.size
        if not 0 <= old <= size:
            raise AuditError(f"old size {old} is larger than the latest checkpoint of {view.dir} (size {size})")
        proof = consistency_proof(view.get, old, size)
        verify_consistency(old, size, root_at(view.get, old), view.cp.root, proof)
        lines = "".join(base64.b64encode(h).decode() + "\n" for h in proof)
        return f"old {old}\n{lines}\n".encode() + view.note
    finally:
        view.close()


class ProofResult(NamedTuple):
    seq: int
    checkpoint: Checkpoint
    record: dict


def verify_proof(data: bytes, verifier: Verifier, record_line: Optional[bytes] = None) -> ProofResult:
    """Check a tlog-proof offline; raises ProofError saying what does not hold."""
    p = parse_proof(data)
    line = record_line if record_line is not None else p.extra
    if line is None:
        raise ProofError("the proof carries no record (no extra line): give the record line separately")
    try:
        cp = open_checkpoint(p.checkpoint, verifier)
    except CheckpointError as e:
        raise ProofError(f"the proof's checkpoint does not verify: {e}") from None
    try:
        record = check_line(line)
    except LineError as e:
        raise ProofError(f"the record is not a stored audit line: {e}") from None
    if record.get("seq") != p.index:
        raise ProofError(f"the record holds seq {record.get('seq')!r} but the proof is for index {p.index}")
    if record.get("origin") != cp.origin:
        raise ProofError(f"the record's origin {record.get('origin')!r} is not the checkpoint's {cp.origin!r}")
    try:
        verify_inclusion(leaf_hash(line), p.index, cp.size, p.hashes, cp.root)
    except ProofError as e:
        raise ProofError(f"record seq {p.index} is not in the checkpoint of size {cp.size}: {e}") from None
    return ProofResult(p.index, cp, record)
