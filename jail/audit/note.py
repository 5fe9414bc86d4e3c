"""C2SP signed-note (c2sp.org/signed-note) with Ed25519 keys.

Why this format: it is what transparency-log checkpoints, witnesses and the Go
tooling (golang.org/x/mod/sumdb/note) already speak, so a hivejail checkpoint
can be checked by third-party code.  Key strings use the Go encoding:

    verifier key  <name>+<8 hex key id>+base64(0x01 || 32-byte public key)
    signer key    PRIVATE+KEY+<name>+<8 hex key id>+base64(0x01 || 32-byte seed)

Parsing and verification follow the Go reference (the same manglings are
rejected, the same malformed notes refused) so both accept the same notes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from typing import TYPE_CHECKING, Iterable, NamedTuple

if TYPE_CHECKING:  # imported on first use: `prove` and `show` never need cryptography
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")


class NoteError(ValueError):
    """A key or note is malformed, or a note does not verify."""


_BAD_NAME = re.compile(r"[\s+]")


def valid_name(name: str) -> bool:
    """Key names: non-empty, no Unicode spaces, no '+'."""
    return bool(name) and _BAD_NAME.search(name) is None


def key_id(name: str, alg_and_key: bytes) -> int:
    """SHA-256(name || 0x0A || alg || key)[:4] as a big-endian uint32."""
    return struct.unpack(">I", hashlib.sha256(name.encode() + b"\n" + alg_and_key).digest()[:4])[0]


def _b64decode(text: str) -> bytes:
    """Strict standard base64: alphabet, padding, and canonical form."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise NoteError(f"bad base64: {e}") from None
    if base64.b64encode(raw).decode() != text:
        raise NoteError("non-canonical base64")
    return raw


def _raw_public(pub: "Ed25519PublicKey") -> bytes:
    from cryptography.hazmat.primitives import serialization

    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Verifier:
    """A trusted public key for notes: its name, key id and Ed25519 key."""

    __slots__ = ("name", "key_id", "public_key", "raw")

    def __init__(self, name: str, key_id: int, public_key: "Ed25519PublicKey", raw: bytes) -> None:
        self.name, self.key_id, self.public_key, self.raw = name, key_id, public_key, raw

    def __repr__(self) -> str:
        return f"Verifier({self.vkey!r})"

    @property
    def vkey(self) -> str:
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.raw).decode()
        return f"{self.name}+{self.key_id:08x}+{blob}"

    def verify(self, msg: bytes, sig: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self.public_key.verify(sig, msg)
            return True
        except InvalidSignature:
            return False


class Signer:
    """A private key that signs notes under `name` (repr never shows the key)."""

    __slots__ = ("name", "key_id", "private_key", "seed")

    def __init__(self, name: str, key_id: int, private_key: "Ed25519PrivateKey", seed: bytes) -> None:
        self.name, self.key_id, self.private_key, self.seed = name, key_id, private_key, seed

    def __repr__(self) -> str:
        return f"Signer({self.name}+{self.key_id:08x})"

    @property
    def skey(self) -> str:
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{blob}"

    def verifier(self) -> Verifier:
        pub = self.private_key.public_key()
        return Verifier(self.name, self.key_id, pub, _raw_public(pub))

    def sign(self, msg: bytes) -> bytes:
        return self.private_key.sign(msg)


def signer_from_seed(name: str, seed: bytes) -> Signer:
    if not valid_name(name):
        raise NoteError(f"invalid key name {name!r}: it must be non-empty, without spaces or '+'")
    if len(seed) != 32:
        raise NoteError("an Ed25519 seed has 32 bytes")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv = Ed25519PrivateKey.from_private_bytes(seed)
    pub = _raw_public(priv.public_key())
    return Signer(name, key_id(name, bytes([ALG_ED25519]) + pub), priv, seed)


def generate(name: str) -> Signer:
    """A fresh Ed25519 signer named `name`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv = Ed25519PrivateKey.generate()
    seed = priv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                              serialization.NoEncryption())
    return signer_from_seed(name, seed)


def parse_vkey(text: str) -> Verifier:
    """Parse `name+keyid+base64key`; raises NoteError on any mangling."""
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise NoteError("malformed verifier key: expected name+keyid+key")
    name, hash16, key64 = parts
    if not valid_name(name) or not _HEX8.fullmatch(hash16) or not key64:
        raise NoteError("malformed verifier key")
    key = _b64decode(key64)
    if not key or key_id(name, key) != int(hash16, 16):
        raise NoteError("verifier key id does not match its name and key")
    if key[0] != ALG_ED25519:
        raise NoteError(f"unknown verifier key algorithm {key[0]}")
    if len(key) != 33:
        raise NoteError("an Ed25519 verifier key has 32 bytes")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        pub = Ed25519PublicKey.from_public_bytes(key[1:])
    except ValueError as e:
        raise NoteError(f"bad Ed25519 public key: {e}") from None
    return Verifier(name, int(hash16, 16), pub, key[1:])


def parse_skey(text: str) -> Signer:
    """Parse `PRIVATE+KEY+name+keyid+base64seed`; the key id must match the derived public key."""
    parts = text.split("+", 4)
    if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
        raise NoteError("malformed signer key: expected PRIVATE+KEY+name+keyid+key")
    name, hash16, key64 = parts[2:]
    if not valid_name(name) or not _HEX8.fullmatch(hash16) or not key64:
        raise NoteError("malformed signer key")
    key = _b64decode(key64)
    if len(key) != 33 or key[0] != ALG_ED25519:
        raise NoteError("signer key is not an Ed25519 seed")
    signer = signer_from_seed(name, key[1:])
    if signer.key_id != int(hash16, 16):
        raise NoteError("signer key id does not match its key")
    return signer


class Signature(NamedTuple):
    name: str
    key_id: int
    b64: str


class Note(NamedTuple):
    """An opened note: its text, the signatures that verified, and the unknown ones."""

    text: bytes
    sigs: list[Signature]
    unverified: list[Signature]


def sign(text: bytes, *signers: Signer) -> bytes:
    """Signed note: text (ending in newline), blank line, one signature line per signer."""
    if not text.endswith(b"\n"):
        raise NoteError("malformed note text: it must end with a newline")
    _check_chars(text)
    lines = []
    for s in signers:
        blob = base64.b64encode(struct.pack(">I", s.key_id) + s.sign(text)).decode()
        lines.append(f"{SIG_PREFIX}{s.name} {blob}\n")
    return text + b"\n" + "".join(lines).encode()


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _check_chars(msg: bytes) -> str:
    try:
        s = msg.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NoteError(f"malformed note: not UTF-8 at byte {e.start}") from None
    m = _CONTROL.search(s)
    if m:
        raise NoteError(f"malformed note: control character U+{ord(m.group()):04X} at character {m.start()}")
    return s


def split_note(msg: bytes) -> tuple[bytes, list[tuple[str, int, str, bytes]]]:
    """Structure of a signed note, unverified: its text and, per signature
    line, (key name, key id, base64, signature bytes).  Raises NoteError."""
    _check_chars(msg)
    split = msg.rfind(b"\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    text, sigblock = msg[: split + 1], msg[split + 2:]
    if not sigblock or not sigblock.endswith(b"\n"):
        raise NoteError("malformed note: no signature lines, or no final newline")
    sigs = []
    for count, raw_line in enumerate(sigblock[:-1].split(b"\n"), 1):
        line = raw_line.decode()
        if count > MAX_SIGNATURES:
            raise NoteError(f"malformed note: more than {MAX_SIGNATURES} signatures")
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"malformed note: signature line {count} does not start with an em dash")
        name, _, b64 = line[len(SIG_PREFIX):].partition(" ")
        if not valid_name(name) or not b64:
            raise NoteError(f"malformed note: signature line {count} has a bad key name")
        sig = _b64decode(b64)
        if len(sig) < 5:
            raise NoteError(f"malformed note: signature line {count} is too short")
        sigs.append((name, struct.unpack(">I", sig[:4])[0], b64, sig[4:]))
    return text, sigs


def open_note(msg: bytes, verifiers: Iterable[Verifier]) -> Note:
    """Parse and verify a signed note; at least one known key must have signed it.

    Signatures from unknown keys are ignored (C2SP: a key is its name AND id);
    a signature from a known key that fails makes the whole note invalid.
    """
    text, sigs = split_note(msg)
    known: dict[tuple[str, int], list[Verifier]] = {}
    for v in verifiers:
        known.setdefault((v.name, v.key_id), []).append(v)
    note = Note(text, [], [])
    seen: set[tuple[str, int]] = set()
    seen_unverified: set[tuple[str, int, str]] = set()
    for name, kid, b64, sig in sigs:
        cands = known.get((name, kid))
        if not cands:
            if (name, kid, b64) not in seen_unverified:
                seen_unverified.add((name, kid, b64))
                note.unverified.append(Signature(name, kid, b64))
            continue
        if len(cands) > 1:
            raise NoteError(f"ambiguous key {name}+{kid:08x}")
        if (name, kid) in seen:
            continue
        seen.add((name, kid))
        if not cands[0].verify(text, sig):
            raise NoteError(f"invalid signature for key {name}+{kid:08x}")
        note.sigs.append(Signature(name, kid, b64))
    if not note.sigs:
        names = ", ".join(sorted({f"{s.name}+{s.key_id:08x}" for s in note.unverified})) or "none"
        raise NoteError(f"note has no verifiable signatures (signed by: {names})")
    return note
