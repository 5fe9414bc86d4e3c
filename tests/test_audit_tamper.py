"""Every tamper of issue 7 against `verify`, `verify-proof` and the witness.

Each test tampers the way an attacker who can write the folder (root) would,
after clearing the append-only flag, and asserts the exact check that fires.
One case cannot be caught without an outside anchor and is asserted as such:
truncating log and checkpoints together.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from jail.audit import AuditLog
from jail.audit import files as F
from jail.audit.checkpoint import Checkpoint, history_line, parse_history_line, sign_checkpoint
from jail.audit.cli import main
from jail.audit.merkle import ProofError
from jail.audit.note import generate
from jail.audit.proof import consistency_body, format_proof, make_proof, parse_proof, verify_proof
from jail.audit.witness import witness

try:
    from .test_audit_support import Log, audit_root, edit_record, forge, make_log, result  # noqa: F401
except ImportError:
    from test_audit_support import Log, audit_root, edit_record, forge, make_log, result  # noqa: F401


@pytest.fixture(params=[False, True], ids=["anchored-signatures", "all-signatures"])
def log10(request, audit_root) -> Log:
    """A log of 10 records, verified in both signature modes."""
    log = make_log(os.path.join(audit_root, "audit"), 10)
    log.all_signatures = request.param
    return log


def errors(log: Log, trusted: bytes | None = None) -> str:
    rep = log.verify(trusted)
    assert not rep.ok, "verify should have failed"
    return "\n".join(rep.errors)


def test_untouched_log_verifies(log10):
    rep = log10.verify()
    assert rep.ok, rep.errors
    assert rep.records == 10 and rep.checkpoints == 11 and rep.latest.size == 10 and not rep.warnings
    assert rep.signatures == (11 if log10.all_signatures else 1)


def test_edit_a_field(log10):
    lines = log10.lines()
    lines[3] = edit_record(lines[3], exit_code=0, status="ok")  # still canonical: only the tree can tell
    log10.write_lines(lines)
    err = errors(log10)
    assert "log.jsonl:4 (seq 3): does not match the signed checkpoint of size 4" in err


def test_reencode_a_line_non_canonically(log10):
    lines = log10.lines()
    lines[2] = json.dumps(json.loads(lines[2]), ensure_ascii=True).encode()  # spaces, \\u escapes
    log10.write_lines(lines)
    assert "log.jsonl:3 (seq 2): not RFC 8785 canonical JSON" in errors(log10)


def test_duplicate_key(log10):
    lines = log10.lines()
    lines[5] = lines[5].replace(b'"status":', b'"status":"ok","status":', 1)
    log10.write_lines(lines)
    assert "log.jsonl:6 (seq 5): duplicate key 'status'" in errors(log10)


def test_delete_a_middle_entry(log10):
    lines = log10.lines()
    del lines[4]
    log10.write_lines(lines)
    err = errors(log10)
    assert "log.jsonl:5 (seq 4): holds seq 5: records were deleted, inserted or reordered" in err
    assert "does not match the signed checkpoint of size 5" in err


def test_reorder(log10):
    lines = log10.lines()
    lines[6], lines[7] = lines[7], lines[6]
    log10.write_lines(lines)
    err = errors(log10)
    assert "log.jsonl:7 (seq 6): holds seq 7" in err and "log.jsonl:8 (seq 7): holds seq 6" in err
    assert "log.jsonl:7 (seq 6): does not match the signed checkpoint of size 7" in err


def test_truncate_tail_while_checkpoints_remain(log10):
    log10.write_lines(log10.lines()[:7])
    err = errors(log10)
    assert "signed checkpoint of size 10 but log.jsonl has only 7 complete records: records seq 7..9 removed" in err


def _truncate_all(log: Log, keep: int) -> None:
    """Cut log AND checkpoints back to `keep` records, consistently."""
    log.write_lines(log.lines()[:keep])
    cps = log.cp_lines()[: keep + 1]
    log.write(F.CHECKPOINTS, b"".join(c + b"\n" for c in cps))
    log.write(F.LATEST, parse_history_line(cps[-1]))


def test_truncate_tail_and_checkpoints_with_trusted_checkpoint(log10, tmp_path):
    trusted = open(log10.p(F.LATEST), "rb").read()  # kept outside, e.g. by a witness
    _truncate_all(log10, 6)
    err = errors(log10, trusted)
    assert "trusted checkpoint: size 10 but log.jsonl has only 6 records: the log was truncated or rolled back" in err
    outside = tmp_path / "trusted.checkpoint"
    outside.write_bytes(trusted)
    assert main(["verify", "--dir", log10.dir, "--vkey", log10.vkey, "--trusted-checkpoint", str(outside)]) == 1


def test_truncate_tail_and_checkpoints_without_anchor_verifies(log10):
    """THE LIMIT: a consistent cut of log and checkpoints leaves a valid shorter
    log.  Only an outside anchor (trusted checkpoint, witness) shows it."""
    _truncate_all(log10, 6)
    rep = log10.verify()
    assert rep.ok and rep.records == 6, rep.errors


def test_rewrite_with_stolen_key_is_caught_by_the_witness(log10, tmp_path):
    state = str(tmp_path / "witness.state")
    assert witness(state, log10.verifier, open(log10.p(F.LATEST), "rb").read()).accepted
    lines = log10.lines()
    lines[2] = edit_record(lines[2], status="ok", exit_code=0, reason="edited after the fact")
    forge(log10, lines, log10.signer)  # thief re-signs every checkpoint
    assert log10.verify().ok  # by itself the rewrite verifies: the key is authentic
    AuditLog.open(log10.dir).append(result(99))  # the log even keeps growing
    body = consistency_body(log10.dir, 10)
    res = witness(state, log10.verifier, body)
    assert not res.accepted and "REFUSED (inconsistent)" in res.message
    res = witness(state, log10.verifier, open(log10.p(F.LATEST), "rb").read(), log_dir=log10.dir)
    assert not res.accepted and "REFUSED (inconsistent)" in res.message
    err = errors(log10, open(state, "rb").read())
    assert "does not match it at size 10: the log was rewritten" in err


def test_resign_with_another_key_and_plant_its_verifier(log10, capsys):
    lines = log10.lines()
    lines[0] = edit_record(lines[0], reason="edited")
    other = generate(log10.verifier.name)  # same name, other key
    forge(log10, lines, other)
    planted = log10.p("verifier.pub")
    with open(planted, "w") as f:
        f.write(other.verifier().vkey + "\n")
    err = errors(log10)
    assert "no checkpoint verifies with the given key" in err
    assert "no verifiable signatures" in err
    assert main(["verify", "--dir", log10.dir, "--vkey", planted]) == 2
    assert "refusing a verifier key from inside the log folder" in capsys.readouterr().err
    assert main(["verify", "--dir", log10.dir, "--vkey", log10.vkey]) == 1


def test_splice_in_a_record_from_another_log(log10, audit_root):
    other = make_log(os.path.join(audit_root, "other"), 10, origin="test.example/hivejail-audit/b")
    lines = log10.lines()
    lines[4] = other.lines()[4]  # same seq, other log
    log10.write_lines(lines)
    err = errors(log10)
    assert "log.jsonl:5 (seq 4): origin 'test.example/hivejail-audit/b' is not this log's" in err
    assert "log.jsonl:5 (seq 4): does not match the signed checkpoint of size 5" in err


def test_record_after_the_last_checkpoint(log10):
    extra = edit_record(log10.lines()[-1], seq=10, id="run-planted")
    log10.append_raw(F.LOG, extra + b"\n")
    assert ("log.jsonl:11 (seq 10): 1 record(s) after the last signed checkpoint (size 10): appended without a "
            "signature") in errors(log10)


def test_torn_last_line_detected_then_recovered(log10):
    line = edit_record(log10.lines()[-1], seq=10)
    log10.append_raw(F.LOG, line[: len(line) // 2])
    assert "log.jsonl:11 (seq 10): torn last line" in errors(log10)
    seq = AuditLog.open(log10.dir).recover()
    assert seq == 11
    rep = log10.verify()
    assert rep.ok, rep.errors
    assert any("seq 10): torn line" in w and "recovery record seq 11" in w for w in rep.warnings)


def test_two_checkpoints_of_one_size_with_different_roots(log10):
    forked = sign_checkpoint(Checkpoint(log10.verifier.name, 5, b"\x42" * 32), log10.signer)
    log10.append_raw(F.CHECKPOINTS, history_line(forked) + b"\n")
    err = errors(log10)
    assert "checkpoints.jsonl:6 and 12: two signed checkpoints of size 5 with different roots" in err


def test_edited_size_in_a_signed_checkpoint(log10):
    cps = log10.cp_lines()
    note = parse_history_line(cps[7]).replace(b"\n7\n", b"\n5\n", 1)
    cps[7] = history_line(note)
    log10.write(F.CHECKPOINTS, b"".join(c + b"\n" for c in cps))
    assert "checkpoints.jsonl:8: invalid signature for key" in errors(log10)


def test_inclusion_proof_with_edited_record_or_wrong_index(log10):
    proof = make_proof(log10.dir, 6)
    assert verify_proof(proof, log10.verifier).seq == 6
    p = parse_proof(proof)
    edited = edit_record(p.extra, exit_code=0)
    with pytest.raises(ProofError, match="record seq 6 is not in the checkpoint"):
        verify_proof(format_proof(p.__class__(edited, 6, p.hashes, p.checkpoint)), log10.verifier)
    with pytest.raises(ProofError, match="holds seq 6 but the proof is for index 5"):
        verify_proof(format_proof(p.__class__(p.extra, 5, p.hashes, p.checkpoint)), log10.verifier)
    moved = edit_record(p.extra, seq=5)  # a consistent lie about the index
    with pytest.raises(ProofError, match="record seq 5 is not in the checkpoint"):
        verify_proof(format_proof(p.__class__(moved, 5, p.hashes, p.checkpoint)), log10.verifier)
    bad_cp = p.checkpoint.replace(b"\n10\n", b"\n11\n", 1)
    with pytest.raises(ProofError, match="checkpoint does not verify"):
        verify_proof(format_proof(p.__class__(p.extra, 6, p.hashes, bad_cp)), log10.verifier)
    other = generate(log10.verifier.name).verifier()
    with pytest.raises(ProofError, match="checkpoint does not verify"):
        verify_proof(proof, other)


def test_every_record_proves(log10):
    for seq in range(10):
        res = verify_proof(make_proof(log10.dir, seq), log10.verifier)
        assert res.record["id"] == f"run-{seq:04d}"
    os.unlink(log10.p(F.TREE))  # caches gone: prove rebuilds in memory
    assert verify_proof(make_proof(log10.dir, 3), log10.verifier).seq == 3


def test_witness_refuses_rollback(log10, tmp_path):
    state = str(tmp_path / "w")
    old_cp = parse_history_line(log10.cp_lines()[4])  # size 4
    assert witness(state, log10.verifier, open(log10.p(F.LATEST), "rb").read()).accepted
    res = witness(state, log10.verifier, old_cp)
    assert not res.accepted and "REFUSED (rollback): checkpoint size 4 is smaller than the witnessed size 10" in res.message
    fork = sign_checkpoint(Checkpoint(log10.verifier.name, 10, b"\x01" * 32), log10.signer)
    res = witness(state, log10.verifier, fork)
    assert not res.accepted and "REFUSED (fork)" in res.message


def test_consistency_across_growth_succeeds(log10, tmp_path):
    state = str(tmp_path / "w")
    log = AuditLog.open(log10.dir)
    assert witness(state, log10.verifier, consistency_body(log10.dir, 0)).accepted
    for grow in (1, 5, 2, 17):
        before = json.loads(json.dumps(log10.verify().latest.size))
        for i in range(grow):
            log.append(result(100 + i))
        res = witness(state, log10.verifier, consistency_body(log10.dir, before))
        assert res.accepted and f"grew from size {before} to {before + grow}" in res.message
    log.append(result(200))
    res = witness(state, log10.verifier, open(log10.p(F.LATEST), "rb").read(), log_dir=log10.dir)
    assert res.accepted
    assert log10.verify(open(state, "rb").read()).ok


def test_proof_carries_the_record_in_extra(log10):
    proof = make_proof(log10.dir, 2)
    p = parse_proof(proof)
    assert p.extra == log10.lines()[2]
    assert proof.split(b"\n")[1] == b"extra " + base64.b64encode(p.extra)


def _resign_line(log: Log, index: int, size: int) -> None:
    """Replace checkpoints.jsonl line `index` with a TRUE statement about the log
    (size, root at size) carrying a forged signature."""
    from jail.audit.merkle import MemoryTree

    tree = MemoryTree.from_leaves(log.lines())
    text = Checkpoint(log.verifier.name, size, tree.root(size)).text()
    other_sig = parse_history_line(log.cp_lines()[0]).split(b" ")[-1]  # our key id, another text's signature
    forged = text + b"\n" + f"\u2014 {log.verifier.name} ".encode() + other_sig
    cps = log.cp_lines()
    cps[index] = history_line(forged)
    log.write(F.CHECKPOINTS, b"".join(c + b"\n" for c in cps))


def test_forged_newest_checkpoint_is_caught(log10):
    """The newest checkpoint is what binds the log: its signature is always checked."""
    _resign_line(log10, 10, 10)
    assert "checkpoints.jsonl:11: invalid signature for key" in errors(log10)


def test_forged_true_statement_in_the_middle(log10):
    """The one difference between the modes: a middle line edited into another
    TRUE statement (size 3 with the log's root at 3) with a bad signature.  It
    binds nothing the newest signed checkpoint does not, and is no stronger
    than deleting the line; only --all-signatures reports it."""
    _resign_line(log10, 5, 3)
    rep = log10.verify()
    if log10.all_signatures:
        assert not rep.ok and "checkpoints.jsonl:6: invalid signature for key" in "\n".join(rep.errors)
    else:
        assert "checkpoints.jsonl:6: size 3 follows size 4" in "\n".join(rep.errors)  # still out of order
