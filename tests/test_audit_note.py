"""Signed notes and checkpoints against published vectors.

The C2SP signed-note spec's example (quasimodo.example/salvatore) does not
publish its key, so signing is tested against the reference implementation's
example keys and note (golang.org/x/mod/sumdb/note, note_test.go: PeterNeumann
and EnochRoot); the C2SP spec examples are used for parsing.
"""

from __future__ import annotations

import base64

import pytest

from jail.audit.checkpoint import CheckpointError, parse_text
from jail.audit.note import NoteError, open_note, parse_skey, parse_vkey, sign
from jail.audit.proof import parse_proof
from jail.audit.witness import parse_body

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_SIG = "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"

QUASIMODO = ("Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u00e8 subito sera.\n\n"
             "\u2014 quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0x"
             "McXxj99ihAQwaqP3ZekRwNtIc=\n").encode()


def test_go_keys_parse_and_match():
    v = parse_vkey(PETER_VKEY)
    s = parse_skey(PETER_SKEY)
    assert (v.name, v.key_id) == ("PeterNeumann", 0xC74F20A3)
    assert s.verifier().vkey == PETER_VKEY and s.skey == PETER_SKEY
    assert parse_vkey(ENOCH_VKEY).key_id == 0xAF0CFE78


def test_go_sign_vector_byte_for_byte():
    """Ed25519 is deterministic: our note must equal the Go reference output."""
    assert sign(TEXT, parse_skey(PETER_SKEY)) == TEXT + b"\n" + PETER_SIG.encode()
    with pytest.raises(NoteError):
        sign(b"abc", parse_skey(PETER_SKEY))


@pytest.mark.parametrize("key,parse", [(PETER_VKEY, parse_vkey), (PETER_SKEY, parse_skey)])
def test_go_key_manglings_rejected(key, parse):
    """Every proper substring and every single-byte increment must fail (Go TestNewVerifier/TestNewSigner)."""
    b = key.encode()
    bad = [b[i:j] for i in range(len(b) + 1) for j in range(i + 1, len(b) + 1) if (i, j) != (0, len(b))]
    bad += [b[:i] + bytes([b[i] + 1]) + b[i + 1:] for i in range(len(b))]
    for k in bad:
        try:
            text = k.decode()
        except UnicodeDecodeError:
            continue
        with pytest.raises(NoteError):
            parse(text)
    for k in ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
              "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"):
        with pytest.raises(NoteError):
            parse_vkey(k)


def test_go_open_vectors():
    peter, enoch = parse_vkey(PETER_VKEY), parse_vkey(ENOCH_VKEY)
    msg = TEXT + b"\n" + (PETER_SIG + ENOCH_SIG).encode()
    n = open_note(msg, [peter])
    assert n.text == TEXT and [s.name for s in n.sigs] == ["PeterNeumann"]
    assert [s.name for s in n.unverified] == ["EnochRoot"]
    n = open_note(msg, [peter, enoch])
    assert [s.name for s in n.sigs] == ["PeterNeumann", "EnochRoot"] and not n.unverified
    with pytest.raises(NoteError, match="no verifiable signatures"):
        open_note(msg, [])
    with pytest.raises(NoteError, match="ambiguous key EnochRoot\\+af0cfe78"):
        open_note(TEXT + b"\n" + ENOCH_SIG.encode(), [enoch, peter, enoch])
    open_note(TEXT + b"\n" + PETER_SIG.encode(), [enoch, peter, enoch])  # unused duplicate is fine
    with pytest.raises(NoteError, match="more than 100"):
        open_note(TEXT + b"\n" + (PETER_SIG * 101).encode(), [peter])
    bad_sig = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        open_note(TEXT + b"\n" + bad_sig.encode(), [peter])
    enoch_bad = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    n = open_note(TEXT + b"\n" + (PETER_SIG * 2 + ENOCH_SIG * 2 + enoch_bad).encode(), [peter])
    assert len(n.sigs) == 1 and len(n.unverified) == 2
    tampered = msg.replace(b"cryptography", b"cryptographY")
    with pytest.raises(NoteError):
        open_note(tampered, [peter])


@pytest.mark.parametrize("msg", [
    TEXT, TEXT + b"\n", TEXT + b"\n" + PETER_SIG.encode()[:-1], b"\x01" + TEXT + b"\n" + PETER_SIG.encode(),
    b"\xff" + TEXT + b"\n" + PETER_SIG.encode(),
    TEXT + b"\n" + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=".encode(),
    TEXT + b"\n" + PETER_SIG.encode() + b"Unexpected line.\n",
])
def test_go_malformed_notes(msg):
    with pytest.raises(NoteError):
        open_note(msg, [parse_vkey(PETER_VKEY)])


def test_c2sp_signed_note_example():
    """The spec's example parses (text with an inner blank line, UTF-8); without
    its key it must be refused, its signature listed as unknown."""
    with pytest.raises(NoteError, match="no verifiable signatures.*quasimodo.example/salvatore"):
        open_note(QUASIMODO, [parse_vkey(PETER_VKEY)])


def test_c2sp_checkpoint_example():
    text = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = parse_text(text)
    assert (cp.origin, cp.size, cp.root_b64) == ("example.com/behind-the-sofa", 20852163,
                                                 "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.text() == text
    for bad in (b"o\n012\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n", b"o\n1\nAAAA\n", b"\n1\n" + text[-45:],
                b"o\n1\n", text[:-1], text + b"\n"):
        with pytest.raises(CheckpointError):
            parse_text(bad)


def test_c2sp_tlog_proof_and_witness_examples():
    """Verbatim from the specs (their signatures are elided there, so only the structure is checked)."""
    proof = (b"c2sp.org/tlog-proof@v1\nextra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ\nindex 73894\n"
             b"gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=\nB95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=\n"
             b"EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=\nRoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=\n"
             b"AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=\n\nexample.com/fancylog\n109482\n"
             b"sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n\n")
    p = parse_proof(proof)
    assert p.index == 73894 and len(p.hashes) == 5 and p.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
    assert p.checkpoint.startswith(b"example.com/fancylog\n109482\n")
    body = (b"old 20852014\nPlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\njrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
            b"5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n\n"
            b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n")
    old, hashes, note = parse_body(body)
    assert old == 20852014 and len(hashes) == 4 and note.startswith(b"example.com/behind-the-sofa\n")
    assert base64.b64encode(hashes[0]).decode() == "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw="
