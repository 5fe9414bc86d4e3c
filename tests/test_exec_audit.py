"""`hivejail exec` and the audit log together: every run recorded, fail closed.

The log itself (tamper detection, proofs, witness, crash recovery) is tested
in tests/test_audit_*.py; here the jail's runs go through it for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from jailcli import cli_env, VENV_PYTHON, Runner

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs as root")
ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([VENV_PYTHON, "-m", "jail.cli", *args], capture_output=True, text=True,
                          env=cli_env(ROOT), timeout=120, **kw)


@pytest.fixture
def audit_dir():
    base = Path(tempfile.mkdtemp(prefix="hjtest-audit-"))
    d = base / "log"
    r = _cli("audit", "init", "--dir", str(d))
    assert r.returncode == 0, r.stderr
    vkey = base / "verifier.key"          # kept outside the log folder
    vkey.write_text(r.stdout.strip().splitlines()[0])
    yield d, vkey
    subprocess.run(["chattr", "-R", "-a", str(base)], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def _policy(tmp: Path, audit: str) -> Path:
    p = tmp / "policy.yml"
    p.write_text(f"version: 1\nname: audited\naudit: {audit}\n")
    return p


def test_every_exec_is_recorded_and_verifies(audit_dir, tmp_path):
    log, vkey = audit_dir
    policy = _policy(tmp_path, f"{{dir: {log}, required: true}}")
    codes = [_cli("exec", "--policy", str(policy), "--", *argv).returncode
             for argv in (["/bin/true"], ["/bin/sh", "-c", "exit 5"], ["no-such-cmd"])]
    assert codes == [0, 5, 127]
    v = _cli("audit", "verify", "--dir", str(log), "--vkey", str(vkey))
    assert v.returncode == 0, v.stdout + v.stderr
    shown = [json.loads(l) for l in (log / "log.jsonl").read_text().splitlines()]
    statuses = [r["status"] for r in shown]
    assert statuses == ["ok", "nonzero_exit", "setup_error"], statuses
    assert all(len(r["policy_sha256"]) == 64 for r in shown)


def test_required_audit_refuses_to_run_without_a_log(tmp_path):
    marker = tmp_path / "ran"
    policy = _policy(tmp_path, f"{{dir: {tmp_path}/no-log-here, required: true}}")
    r = _cli("exec", "--policy", str(policy), "--", "/bin/touch", str(marker))
    assert r.returncode == 125
    assert "UNAUDITED" in r.stderr and "hivejail audit init" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_optional_audit_runs_with_an_alert(tmp_path):
    policy = _policy(tmp_path, f"{{dir: {tmp_path}/no-log-here, required: false}}")
    rfile = tmp_path / "r.json"
    r = _cli("exec", "--policy", str(policy), "--result-file", str(rfile), "--", "/bin/true")
    assert r.returncode == 0
    alerts = json.loads(rfile.read_text())["alerts"]
    assert any(a["kind"] == "unaudited" and a["severity"] == "warning" for a in alerts), alerts


def test_fifty_concurrent_execs_make_fifty_records(audit_dir, tmp_path):
    log, vkey = audit_dir
    policy = _policy(tmp_path, f"{{dir: {log}, required: true}}\nlimits: {{pids: 16}}")
    with ThreadPoolExecutor(max_workers=25) as pool:
        codes = list(pool.map(lambda i: _cli("exec", "--policy", str(policy), "--",
                                             "/bin/sh", "-c", f"exit {i % 7}").returncode,
                              range(50)))
    assert codes == [i % 7 for i in range(50)]
    lines = (log / "log.jsonl").read_text().splitlines()
    assert len(lines) == 50
    assert sorted(json.loads(l)["seq"] for l in lines) == list(range(50))
    v = _cli("audit", "verify", "--dir", str(log), "--vkey", str(vkey), "--all-signatures")
    assert v.returncode == 0, v.stdout + v.stderr
