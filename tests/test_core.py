"""Core behaviour of `hivejail exec`: exit codes, timeout, signals, result record,
setup errors, doctor and the Python API — all against real jails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jailcli import cli_env, SLOW, VENV_PYTHON, Runner

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs as root")

RESULT_FIELDS = {"status", "exit_code", "signal", "reason", "wall_s", "cpu_user_s", "cpu_sys_s",
                 "memory_peak_bytes", "io_read_bytes", "io_write_bytes", "pids_peak", "seccomp",
                 "alerts", "command", "script_sha256", "policy_sha256", "id", "started_at"}


@pytest.fixture
def root():
    r = Runner("root")
    yield r
    r.close()


@pytest.mark.parametrize("argv,code,status", [
    (["/bin/true"], 0, "ok"),
    (["/bin/sh", "-c", "exit 3"], 3, "nonzero_exit"),
    (["/bin/sh", "-c", "kill -TERM $$"], 128 + 15, "signaled"),
    (["no-such-command"], 127, "setup_error"),
    (["/job/in/data.txt"], 126, "setup_error"),
])
def test_exit_codes_follow_the_contract(root, argv, code, status):
    run = root.run(argv=argv, files={"data.txt": "not a program"})
    assert run.returncode == code, run.stderr
    assert run.result["status"] == status
    assert run.result["exit_code"] == code
    if status == "setup_error":
        assert len(run.stderr.strip().splitlines()) == 1
        assert ("not found" if code == 127 else "not executable") in run.stderr


def test_result_record_has_every_field(root):
    run = root.run("print('hi')")
    r = run.result
    assert RESULT_FIELDS <= set(r), RESULT_FIELDS - set(r)
    assert r["status"] == "ok" and r["command"] == ["/usr/bin/python3", "/job/in/payload.py"]
    import hashlib
    assert r["script_sha256"] == hashlib.sha256(b"print('hi')").hexdigest()
    assert len(r["policy_sha256"]) == 64
    assert r["started_at"].endswith("Z") and "T" in r["started_at"]
    assert 0 < r["wall_s"] < 30
    assert run.stdout == "hi\n"


def test_wall_timeout_kills_the_whole_jail(root):
    marker = "hjtest-timeout-child"
    t = time.monotonic()
    run = root.run(argv=["/bin/bash", "-c", f"(exec -a {marker} sleep 100) & sleep 100"],
                   extra="limits: {wall_time: 1s}\n")
    elapsed = time.monotonic() - t
    assert run.result["status"] == "timeout", run.result
    assert run.result["exit_code"] == 128 + signal.SIGKILL and run.returncode == 137
    assert run.result["signal"] == signal.SIGKILL
    assert 0.9 < run.result["wall_s"] < 3 * SLOW and elapsed < 5 * SLOW
    time.sleep(0.1)
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                assert not open(f"/proc/{p}/cmdline", "rb").read().startswith(marker.encode())
            except OSError:
                pass


def test_sigterm_is_forwarded_to_the_payload(root):
    work = root.scratch()
    (work / "in").mkdir()
    (work / "out").mkdir()
    os.chmod(work / "out", 0o777)
    (work / "policy.yml").write_text(root.policy_text(work))
    script = ("trap 'echo got-term > /job/out/term; exit 42' TERM; "
              "echo ready > /job/out/ready; while :; do sleep 0.05; done")
    proc = subprocess.Popen([VENV_PYTHON, "-m", "jail.cli", "exec", "--policy",
                             str(work / "policy.yml"), "--result-file", str(work / "r.json"), "--",
                             "/bin/bash", "-c", script],
                            env=cli_env(root.pkg_dir))
    deadline = time.time() + 10
    while not (work / "out" / "ready").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 42
    assert (work / "out" / "term").read_text() == "got-term\n"
    assert json.loads((work / "r.json").read_text())["status"] == "nonzero_exit"


def test_setup_error_names_the_step_and_path(root, tmp_path):
    """A mount target inside a read-only mount cannot be created: nothing runs."""
    src = root.scratch()
    run = root.run(argv=["/bin/touch", "/job/out/ran"],
                   mounts=f"- {{source: {src}, target: /usr/hj-not-there}}")
    assert run.returncode == 125 and run.result["status"] == "setup_error"
    line = run.stderr.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith("hivejail: init: create mount point /usr/hj-not-there: "
                           "Read-only file system (a mount target must lie in a writable"), line
    assert not (run.workdir / "out" / "ran").exists()


def test_symlink_in_a_bound_tree_cannot_lead_a_target_out(root):
    """A target path through a symlink inside a bound folder resolves in the new root."""
    src = root.scratch()
    (src / "escape").symlink_to("/etc")            # /job/in2/escape -> /etc (the jail's /etc)
    extra = root.scratch()
    (extra / "inside").write_text("bound")
    try:
        run = root.run(argv=["/bin/cat", "/etc/hj-x/inside"],
                       mounts=f"- {{source: {src}, target: /job/in2, mode: rw}}\n"
                              f"- {{source: {extra}, target: /job/in2/escape/hj-x}}")
        # Resolved inside the new root: the mount landed on the jail's own /etc.
        assert run.result["status"] == "ok", run.result["reason"]
        assert run.stdout == "bound"
        assert not os.path.exists("/etc/hj-x"), "a bind target escaped to the host's /etc"
    finally:
        if os.path.isdir("/etc/hj-x"):
            os.rmdir("/etc/hj-x")


def test_doctor_reports_this_host():
    r = subprocess.run([VENV_PYTHON, "-m", "jail.cli", "doctor", "--json"], capture_output=True,
                       text=True, env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
                       timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert all(v["ok"] for v in report["namespaces"].values()), report["namespaces"]
    assert report["seccomp"]["ok"]
    for section in ("cgroups", "landlock", "network", "audit", "id_maps"):
        assert section in report


def test_python_api_returns_a_result():
    from jail import Jail, default_policy
    import dataclasses
    policy = default_policy()
    policy = dataclasses.replace(policy, audit=dataclasses.replace(policy.audit, dir=None))
    result = Jail(policy).run(["/bin/sh", "-c", "exit 7"])
    assert result.status == "nonzero_exit" and result.exit_code == 7
    assert result.to_dict()["policy_sha256"] == policy.sha256


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2])
def test_sigterm_at_any_moment_reaches_the_payload(root, delay):
    """A SIGTERM during setup is queued and delivered, never lost and never fatal
    to the supervisor: the payload dies of it and the result record is written."""
    work = root.scratch()
    (work / "in").mkdir()
    (work / "out").mkdir()
    (work / "policy.yml").write_text(root.policy_text(work))
    proc = subprocess.Popen([VENV_PYTHON, "-m", "jail.cli", "exec", "--policy",
                             str(work / "policy.yml"), "--result-file", str(work / "r.json"), "--",
                             "/bin/sleep", "30"],
                            env=cli_env(root.pkg_dir))
    time.sleep(0.08 + delay)          # the CLI's own imports take ~60 ms before setup starts
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20 * SLOW) == 128 + signal.SIGTERM
    result = json.loads((work / "r.json").read_text())
    assert result["status"] == "signaled" and result["signal"] == signal.SIGTERM, result


def test_signal_to_init_during_setup_reaches_the_payload():
    """A SIGTERM that reaches PID 1 while it is still building the root is queued
    and delivered to the payload once it exists (not ignored, not lost)."""
    import dataclasses
    from jail import Jail, default_policy
    from jail.steps import Step
    from jail.supervisor import default_steps

    class SignalDuringSetup(Step):
        name = "test-signal"

        def in_init(self, ctx):
            os.kill(os.getpid(), signal.SIGTERM)

    policy = default_policy()
    policy = dataclasses.replace(policy, audit=dataclasses.replace(policy.audit, dir=None))
    steps = default_steps(policy)
    steps.insert(0, SignalDuringSetup())
    result = Jail(policy, steps=steps).run(["/bin/sleep", "30"])
    assert result.status == "signaled" and result.signal == signal.SIGTERM, result.reason
    assert result.wall_s < 10 * SLOW
