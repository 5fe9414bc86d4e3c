"""A minimal offline witness: remember the last checkpoint, accept only growth.

Why: a signed log proves nothing against its own signer.  Whoever holds the
key (or stole it) can rewrite history and re-sign every checkpoint, and
whoever can write the folder can cut log and checkpoints back together.  A
witness keeps the last checkpoint it accepted somewhere else and accepts a
new one only with an RFC 6962 consistency proof from the old size; it refuses
rollbacks (smaller size), forks (same size, other root) and rewrites (proof
fails).  Its state file is itself a signed checkpoint, so it doubles as
`verify --trusted-checkpoint`.

Input is a C2SP tlog-witness add-checkpoint body ("old N", proof lines, blank
line, checkpoint), as `hivejail audit consistency` prints, or a bare
checkpoint together with the log folder to compute the proof from.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import NamedTuple, Optional

from . import AuditError
from .checkpoint import Checkpoint, CheckpointError, open_checkpoint
from .files import FileLock, atomic_write
from .merkle import ProofError, verify_consistency
from .note import Verifier

_OLD = re.compile(r"old (0|[1-9][0-9]{0,18})")


class WitnessResult(NamedTuple):
    accepted: bool
    message: str
    old: Optional[Checkpoint]
    new: Optional[Checkpoint]


def parse_body(data: bytes) -> tuple[Optional[int], list[bytes], bytes]:
    """(old size or None, proof hashes, checkpoint note) of a witness input."""
    if not data.startswith(b"old "):
        return None, [], data
    sep = data.find(b"\n\n")
    if sep < 0:
        raise ValueError("add-checkpoint body has no blank line before the checkpoint")
    head = data[:sep].decode("ascii", "replace").split("\n")
    if not _OLD.fullmatch(head[0]):
        raise ValueError("add-checkpoint body: first line must be `old N`")
    proof = []
    for i, line in enumerate(head[1:], 2):
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"add-checkpoint body line {i}: not base64") from None
        if len(h) != 32:
            raise ValueError(f"add-checkpoint body line {i}: not a SHA-256 hash")
        proof.append(h)
    if len(proof) > 63:
        raise ValueError("add-checkpoint body: more than 63 proof lines")
    return int(head[0][4:]), proof, data[sep + 2:]


def witness(state_path: str, verifier: Verifier, data: bytes, log_dir: Optional[str] = None) -> WitnessResult:
    """Check `data` against the witnessed state and update it if consistent.

    Refusals come back as accepted=False with the reason; malformed input
    raises ValueError and I/O problems AuditError."""
    old_size, proof, note = parse_body(data)
    try:
        new = open_checkpoint(note, verifier)
    except CheckpointError as e:
        return WitnessResult(False, f"REFUSED: the checkpoint does not verify with {verifier.name}: {e}", None, None)
    lock = FileLock(state_path + ".lock")
    lock.acquire(10.0)
    try:
        try:
            with open(state_path, "rb") as f:
                state = f.read()
        except FileNotFoundError:
            _store(state_path, note)
            return WitnessResult(True, f"accepted: first checkpoint of {new.origin} (size {new.size}) recorded; "
                                       "trust on first use", None, new)
        except OSError as e:
            raise AuditError(f"cannot read witness state {state_path}: {e.strerror}") from None
        try:
            old = open_checkpoint(state, verifier)
        except CheckpointError as e:
            raise AuditError(f"witness state {state_path} does not verify with {verifier.name}: {e}") from None
        if new.size < old.size:
            return WitnessResult(False, f"REFUSED (rollback): checkpoint size {new.size} is smaller than the witnessed "
                                        f"size {old.size}: records were removed", old, new)
        if new.size == old.size:
            if new.root != old.root:
                return WitnessResult(False, f"REFUSED (fork): a different root for the witnessed size {old.size}: "
                                            "the log was rewritten with the signing key", old, new)
            return WitnessResult(True, f"accepted: unchanged at size {old.size}", old, new)
        if old_size is None or old_size != old.size:
            if log_dir is None:
                got = "none" if old_size is None else f"one from size {old_size}"
                raise ValueError(f"a consistency proof from the witnessed size {old.size} is needed (got {got}): run "
                                 f"`hivejail audit consistency --dir D {old.size}` on the host, or pass --dir")
            proof = _proof_from_log(log_dir, old.size, new)
        try:
            verify_consistency(old.size, new.size, old.root, new.root, proof)
        except ProofError as e:
            return WitnessResult(False, f"REFUSED (inconsistent): size {new.size} does not extend the witnessed size "
                                        f"{old.size}: {e}: the log was rewritten", old, new)
        _store(state_path, note)
        return WitnessResult(True, f"accepted: {new.origin} grew from size {old.size} to {new.size}", old, new)
    finally:
        lock.release()


def _proof_from_log(log_dir: str, old: int, new: Checkpoint) -> list[bytes]:
    from .merkle import consistency_proof
    from .proof import LogView

    view = LogView(log_dir)
    try:
        if new.size > view.cp.size:
            raise AuditError(f"{log_dir} has no tree of size {new.size} (latest checkpoint size {view.cp.size})")
        return consistency_proof(view.get, old, new.size)
    finally:
        view.close()


def _store(path: str, note: bytes) -> None:
    try:
        atomic_write(path, note, 0o644, sync_dir=True)
    except OSError as e:
        raise AuditError(f"cannot write witness state {path}: {e.strerror}") from None
