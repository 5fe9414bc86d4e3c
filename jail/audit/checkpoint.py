"""C2SP tlog-checkpoint: origin, tree size and root hash, as a signed note.

A checkpoint is the only thing an auditor has to keep to hold the log to its
past: every later state must be consistent with it (RFC 9162 consistency
proof), and every record can be proven to be under it (inclusion proof).

The writer keeps every checkpoint it signs, one per line of
`checkpoints.jsonl` as {"note": "<verbatim signed note>"}: one line per entry
so that a torn write after a crash stays confined to one line the verifier can
name (a raw concatenation of notes would not resynchronise).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import NamedTuple

from .merkle import HASH_SIZE
from .note import NoteError, Signer, Verifier, open_note, sign, split_note

_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")


class CheckpointError(ValueError):
    """A checkpoint is malformed or not signed by the expected key."""


class Checkpoint(NamedTuple):
    origin: str
    size: int
    root: bytes

    def text(self) -> bytes:
        """The note text: origin, size, base64 root, each ending in a newline."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n".encode()

    @property
    def root_b64(self) -> str:
        return base64.b64encode(self.root).decode()


def parse_text(text: bytes) -> Checkpoint:
    """Parse checkpoint note text; extension lines are allowed and ignored."""
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("checkpoint text is not UTF-8") from None
    if not s.endswith("\n"):
        raise CheckpointError("checkpoint text does not end with a newline")
    lines = s[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint needs origin, size and root lines")
    origin, size, root64 = lines[:3]
    if not origin:
        raise CheckpointError("checkpoint origin is empty")
    if not _SIZE.fullmatch(size) or int(size) >= 1 << 63:
        raise CheckpointError(f"checkpoint size {size!r} is not a decimal without leading zeroes")
    try:
        root = base64.b64decode(root64, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError("checkpoint root is not base64") from None
    if len(root) != HASH_SIZE or base64.b64encode(root).decode() != root64:
        raise CheckpointError("checkpoint root is not a canonical base64 SHA-256 hash")
    if any(not ext for ext in lines[3:]):
        raise CheckpointError("checkpoint has an empty extension line")
    return Checkpoint(origin, int(size), root)


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> bytes:
    """The signed note for `cp`; the key name is the origin (C2SP SHOULD)."""
    return sign(cp.text(), signer)


def open_checkpoint(note: bytes, verifier: Verifier) -> Checkpoint:
    """Verify `note` with `verifier` and parse it; the origin must be the key's name."""
    try:
        opened = open_note(note, [verifier])
    except NoteError as e:
        raise CheckpointError(str(e)) from None
    cp = parse_text(opened.text)
    if cp.origin != verifier.name:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} is not the verifier key's name {verifier.name!r}")
    return cp


def read_checkpoint(note: bytes) -> Checkpoint:
    """Parse a signed checkpoint WITHOUT verifying its signature; only for
    comparing it with the tree (callers that trust it use open_checkpoint)."""
    try:
        text, _ = split_note(note)
    except NoteError as e:
        raise CheckpointError(str(e)) from None
    return parse_text(text)


def history_line(note: bytes) -> bytes:
    """One `checkpoints.jsonl` line (without newline) holding `note` verbatim."""
    return json.dumps({"note": note.decode("utf-8")}, ensure_ascii=False, separators=(",", ":")).encode()


_DECODER = json.JSONDecoder()


def parse_history_line(line: bytes) -> bytes:
    """The note stored in one `checkpoints.jsonl` line; strict: exactly
    {"note": str} in our compact encoding (a duplicate key or any other
    encoding fails the byte-for-byte comparison)."""
    try:
        obj = _DECODER.decode(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"not a JSON line: {e}") from None
    if type(obj) is not dict or len(obj) != 1 or type(obj.get("note")) is not str:
        raise CheckpointError('expected {"note": "<signed checkpoint>"}')
    try:
        note = obj["note"].encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError("note holds a lone surrogate") from None
    if history_line(note) != line:
        raise CheckpointError("line is not in canonical form (re-encoded, or a duplicate key)")
    return note
