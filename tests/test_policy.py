"""Policy loading: strict schema, FILE:LINE:COL errors, canonical hash, defaults.

Pure logic (no jail); the CLI tests at the bottom run the real command and
check that a bad policy runs nothing (exit 125) and `policy check` exits 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jail.policy import PolicyError, default_policy, load_policy, parse_policy_text
from jail.units import parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "security_policy.yml"
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(PolicyError) as ei:
        load_policy(write(tmp_path, text))
    return str(ei.value)


def test_units():
    assert parse_size("256M") == 256 << 20
    assert parse_size("1.5G") == int(1.5 * (1 << 30))
    assert parse_size("64KiB") == 64 << 10
    assert parse_size(1000) == 1000
    assert parse_duration("30s") == 30.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120.0
    for bad in ("lots", "-1M", True, "12X"):
        with pytest.raises(ValueError):
            parse_size(bad)
    for bad in ("soon", "1d", False):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_size_error_names_file_line_col_and_path(tmp_path):
    msg = error_of(tmp_path, """\
        version: 1
        name: t
        limits:
          cpus: 0.5
          memory: lots
        """)
    assert msg == (f"{tmp_path}/security_policy.yml:5:11: limits.memory: "
                   "expected a size like 256M, got 'lots'")


@pytest.mark.parametrize("text,where,fragment", [
    ("version: 1\nname: t\nlimts: {}\n", ":3:1: limts:", "unknown key"),
    ("version: 1\nname: t\nlimits: {memory: 1G, wall_time: forever}\n", ":3:33: limits.wall_time:",
     "expected a duration"),
    ("version: 1\nname: t\nlimits: {pids: many}\n", ":3:16: limits.pids:", "expected an integer"),
    ("version: 1\nname: [a]\n", ":2:7: name:", "expected a non-empty string"),
    ("version: 2\n", ":1:10: version:", "unsupported policy version 2"),
    ("name: t\n", ":1:1: version:", "missing"),
    ("version: 1\nversion: 1\n", ":2:1: version:", "duplicate key"),
    ("version: 1\nnetwork: {mode: open}\n", ":2:17: network.mode:", "expected one of none, allowlist"),
    ("version: 1\nnetwork: {mode: allowlist, allow: [{host: a.example, ports: [99999]}]}\n",
     "network.allow[0].ports[0]:", "from 1 to 65535"),
    ("version: 1\nnetwork: {mode: allowlist, allow: [{host: a, cidr: 10.0.0.0/8, ports: [1]}]}\n",
     "network.allow[0]:", "exactly one of"),
    ("version: 1\nseccomp: {profile: default, on_violation: shrug}\n", "seccomp.on_violation:",
     "expected one of kill, errno, log"),
    ("version: 1\nfilesystem:\n  mounts:\n    - {source: /usr, target: usr}\n",
     ":4:30: filesystem.mounts[0].target:", "must be an absolute path"),
    ("version: 1\nfilesystem:\n  mounts:\n    - {source: /nonexistent-hj, target: /x}\n",
     ":4:16: filesystem.mounts[0].source:", "does not exist on this host"),
    ("version: 1\nfilesystem:\n  mounts:\n    - {source: /usr, target: /a/../b}\n",
     "filesystem.mounts[0].target:", "must not contain '..'"),
    ("version: 1\nfilesystem:\n  mounts:\n    - {source: /usr, target: /proc/x}\n",
     "filesystem.mounts[0].target:", "provided by the jail itself"),
    ("version: 1\nfilesystem:\n  mounts:\n    - {source: /usr, target: /u, mode: rwx}\n",
     "filesystem.mounts[0].mode:", "expected one of ro, rw"),
    ("version: 1\nfilesystem:\n  mounts:\n    - {source: /usr, target: /u}\n    - {source: /etc, target: /u}\n",
     "filesystem.mounts[1].target:", "already the target of mounts[0]"),
    ("version: 1\nenvironment: {set: {A: [1]}}\n", "environment.set.A:", "expected a string value"),
    ("version: 1\nseccomp: {allow: [read, mount]}\n", ":2:25: seccomp.allow[1]:",
     "escape class"),
    ("version: 1\nseccomp: {allow: [frobnicate]}\n", "seccomp.allow[0]:", "knows no syscall"),
    ("version: 1\nseccomp: {deny: [{syscall: nosuchcall}]}\n", "seccomp.deny[0]:", "knows no syscall"),
    ("version: 1\naudit: {dir: null, required: true}\n", "audit.dir:", "no audit dir is set"),
    ("version: 1\nlimits: {memory: 1M}\n", "limits.memory:", "too small"),
    ("version: 1\nname: t\n  bad: indent\n", "(yaml):", ""),
    ("- just\n- a list\n", "(top level):", "expected a mapping"),
    ("", "(top level):", "empty"),
])
def test_bad_policies(tmp_path, text, where, fragment):
    msg = error_of(tmp_path, text)
    assert msg.startswith(str(tmp_path / "security_policy.yml") + ":"), msg
    assert where in msg and fragment in msg, msg


def test_relative_sources_resolve_against_policy_folder(tmp_path):
    (tmp_path / "data").mkdir()
    p = load_policy(write(tmp_path, """\
        version: 1
        filesystem:
          mounts:
            - {source: data, target: /job/data}
            - {source: /usr, target: /usr}
        """))
    assert p.filesystem.mounts[0].source == str(tmp_path / "data")
    assert p.filesystem.mounts[0].mode == "ro"


def test_canonical_hash_is_stable_and_sensitive(tmp_path):
    a = parse_policy_text("version: 1\nname: t\nlimits: {memory: 256M}\n")
    b = parse_policy_text("name: t\nlimits: {memory: 268435456}\nversion: 1\n")
    c = parse_policy_text("version: 1\nname: t\nlimits: {memory: 257M}\n")
    assert a.sha256 == b.sha256          # same effective policy, other spelling
    assert a.sha256 != c.sha256
    assert len(a.sha256) == 64


def test_default_policy_runs_interpreters_without_network():
    p = default_policy()
    targets = {m.target: m for m in p.filesystem.mounts}
    assert targets["/usr"].mode == "ro"
    assert p.network.mode == "none"
    assert p.seccomp.profile == "default"
    assert p.run_as.uid == 65534
    assert p.limits.memory and p.limits.pids and p.limits.wall_time


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jail.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_cli_policy_check_and_show(tmp_path):
    bad = write(tmp_path, "version: 1\nlimits: {memory: lots}\n")
    r = _cli("policy", "check", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == f"{bad}:2:18: limits.memory: expected a size like 256M, got 'lots'"
    good = tmp_path / "good.yml"
    good.write_text("version: 1\nname: t\n")
    r = _cli("policy", "check", str(good))
    assert r.returncode == 0 and "ok" in r.stdout
    shown = json.loads(_cli("policy", "show", str(good)).stdout)
    assert shown["policy"]["name"] == "t" and len(shown["policy_sha256"]) == 64
    assert shown["policy"]["limits"]["memory"] == 512 << 20     # defaults are filled in


@pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs as root")
def test_cli_bad_policy_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    bad = write(tmp_path, "version: 1\nlimits: {memory: lots}\n")
    r = _cli("exec", "--policy", str(bad), "--", "/bin/touch", str(marker))
    assert r.returncode == 125
    assert "limits.memory" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_shipped_policies_are_valid():
    (ROOT / "demo-out").mkdir(exist_ok=True)     # the demo creates it; sources must exist
    for f in sorted((ROOT / "policies").glob("*.yml")):
        p = load_policy(str(f))
        assert p.version == 1, f
