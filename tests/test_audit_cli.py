"""`hivejail audit ...` through jail.audit.cli.main (exit codes, output, no sys.exit)."""

from __future__ import annotations

import json
import os

from jail.audit import AuditLog
from jail.audit import files as F
from jail.audit.cli import main, shell_word

try:
    from .test_audit_support import audit_root, log10, result  # noqa: F401
except ImportError:
    from test_audit_support import audit_root, log10, result  # noqa: F401


def test_init_prints_the_verifier_key(audit_root, capsys):
    d = os.path.join(audit_root, "audit")
    assert main(["init", "--dir", d, "--origin", "gov.example/hivejail-audit/host1"]) == 0
    out, err = capsys.readouterr()
    vkey = out.strip()
    assert vkey.startswith("gov.example/hivejail-audit/host1+") and "OUTSIDE this folder" in err
    assert oct(os.stat(os.path.join(d, F.KEY)).st_mode & 0o777) == "0o600"
    assert oct(os.stat(d).st_mode & 0o777) == "0o700"
    assert not any(vkey in open(os.path.join(d, n), errors="replace").read() for n in os.listdir(d)
                   if os.path.isfile(os.path.join(d, n)))  # the verifier key is not stored beside the log
    assert main(["init", "--dir", d]) == 2
    assert "already holds an audit log" in capsys.readouterr().err
    assert main(["init", "--dir", os.path.join(audit_root, "x"), "--origin", "bad name"]) == 2


def test_verify_ok_and_failed(log10, tmp_path, capsys):
    keyfile = tmp_path / "vkey"
    keyfile.write_text(log10.vkey + "\n")
    assert main(["verify", "--dir", log10.dir, "--vkey", str(keyfile)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 10 records, 11 checkpoints agree with the log (1 signature(s) checked)")
    assert "no outside anchor" in out
    assert main(["verify", "--dir", log10.dir, "--vkey", str(keyfile), "--all-signatures"]) == 0
    assert "(11 signature(s) checked)" in capsys.readouterr().out
    log10.write_lines(log10.lines()[:9])
    assert main(["verify", "--dir", log10.dir, "--vkey", log10.vkey]) == 1
    err = capsys.readouterr().err
    assert "error: checkpoints.jsonl:11: signed checkpoint of size 10" in err and err.rstrip().endswith("cannot be trusted")
    assert main(["verify", "--dir", log10.dir, "--vkey", "not-a-key"]) == 2


def test_show_escapes_terminal_control(log10, capsys):
    AuditLog.open(log10.dir).append(result(11, command=["sh", "-c", "\x1b[2J\x07pwned", "ok"], status="seccomp\x1b[31m"))
    assert main(["show", "--dir", log10.dir, "--since", "9"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "$'\\x1b[2J\\x07pwned'" in out and "seccomp\\x1b[31m" in out
    assert "$'raw\\xff\\xfebytes'" in out and out.count("\n") == 2
    assert main(["show", "--dir", log10.dir, "--json", "--since", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["seq"] == 10
    assert shell_word(b"plain") == "plain" and shell_word(b"it's") == "$'it\\'s'"


def test_prove_and_verify_proof(log10, tmp_path, capsys):
    proof = tmp_path / "run3.tlog-proof"
    assert main(["prove", "--dir", log10.dir, "3", "-o", str(proof)]) == 0
    assert main(["verify-proof", "--vkey", log10.vkey, str(proof)]) == 0
    assert "ok: seq 3 (run run-0003, status nonzero_exit" in capsys.readouterr().out
    assert main(["verify-proof", "--vkey", log10.vkey, "--json", str(proof)]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "run-0003"
    proof.write_bytes(proof.read_bytes().replace(b"index 3", b"index 4"))
    assert main(["verify-proof", "--vkey", log10.vkey, str(proof)]) == 1
    assert "FAILED" in capsys.readouterr().err
    assert main(["prove", "--dir", log10.dir, "10"]) == 2
    assert "is not covered by the latest checkpoint" in capsys.readouterr().err


def test_witness_consistency_recover_status(log10, tmp_path, capsys):
    state = str(tmp_path / "witness.state")
    assert main(["witness", "--state", state, "--vkey", log10.vkey, log10.p(F.LATEST)]) == 0
    AuditLog.open(log10.dir).append(result(20))
    body = tmp_path / "body"
    assert main(["consistency", "--dir", log10.dir, "10", "-o", str(body)]) == 0
    assert body.read_bytes().startswith(b"old 10\n")
    assert main(["witness", "--state", state, "--vkey", log10.vkey, str(body)]) == 0
    assert "grew from size 10 to 11" in capsys.readouterr().out
    assert main(["witness", "--state", state, "--vkey", log10.vkey, str(body)]) == 0  # unchanged size
    old = tmp_path / "old"
    old.write_bytes(json.loads(log10.cp_lines()[3])["note"].encode())
    assert main(["witness", "--state", state, "--vkey", log10.vkey, str(old)]) == 1
    assert "REFUSED (rollback)" in capsys.readouterr().err
    AuditLog.open(log10.dir).append(result(21))
    assert main(["witness", "--state", state, "--vkey", log10.vkey, log10.p(F.LATEST)]) == 2
    assert "a consistency proof from the witnessed size 11 is needed" in capsys.readouterr().err
    assert main(["witness", "--state", state, "--vkey", log10.vkey, "--dir", log10.dir, log10.p(F.LATEST)]) == 0
    assert main(["verify", "--dir", log10.dir, "--vkey", log10.vkey, "--trusted-checkpoint", state]) == 0
    capsys.readouterr()
    assert main(["recover", "--dir", log10.dir]) == 0
    assert "nothing to recover" in capsys.readouterr().out
    assert main(["status", "--dir", log10.dir, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["size"] == 12 and st["append_only"]["log.jsonl"] is True


def test_usage_errors_never_exit(capsys):
    assert main([]) == 2
    assert main(["verify", "--dir", "/x"]) == 2
    assert "required: --vkey" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "hivejail audit" in capsys.readouterr().out
    assert main(["prove", "--dir", "/nonexistent", "0"]) == 2
    assert "hivejail audit: cannot read /nonexistent/checkpoints.jsonl" in capsys.readouterr().err


def test_anchors_inside_the_log_folder_are_refused(log10, capsys):
    planted = log10.p("trusted")
    with open(planted, "wb") as f:
        f.write(open(log10.p(F.LATEST), "rb").read())
    assert main(["verify", "--dir", log10.dir, "--vkey", log10.vkey, "--trusted-checkpoint", planted]) == 2
    assert "must be kept outside the log folder" in capsys.readouterr().err
    assert main(["witness", "--state", log10.p("w"), "--vkey", log10.vkey, "--dir", log10.dir,
                 log10.p(F.LATEST)]) == 2
    assert "witness state must be kept outside" in capsys.readouterr().err
