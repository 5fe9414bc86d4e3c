"""Shared fixtures and helpers for the audit tests (imported by test_audit_*.py).

The evidence files get the append-only inode flag, which even root cannot
unlink past: every fixture clears the flags on teardown, and tamper helpers
clear them first, as an attacker with root would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterator, Optional

import pytest

from jail.audit import AuditLog, init_log
from jail.audit import files as F
from jail.audit.cache import rebuild
from jail.audit.checkpoint import Checkpoint, history_line, sign_checkpoint
from jail.audit.merkle import MemoryTree, leaf_hash
from jail.audit.note import Signer, Verifier, parse_skey, parse_vkey
from jail.audit.verify import Report, verify_log


def unprotect(path: str) -> None:
    """Clear the append-only flag on every file under `path` (root attacker / cleanup)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if os.path.isfile(p) and not os.path.islink(p):
                F.set_append_only(p, False)


@dataclass
class Log:
    dir: str
    vkey: str
    all_signatures: bool = False

    @property
    def verifier(self) -> Verifier:
        return parse_vkey(self.vkey)

    @property
    def signer(self) -> Signer:
        """The signing key, as a thief who copied D/key would have it."""
        with open(self.p(F.KEY)) as f:
            return parse_skey(f.read().strip())

    def p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def lines(self) -> list[bytes]:
        with open(self.p(F.LOG), "rb") as f:
            return f.read().split(b"\n")[:-1]

    def cp_lines(self) -> list[bytes]:
        with open(self.p(F.CHECKPOINTS), "rb") as f:
            return f.read().split(b"\n")[:-1]

    def verify(self, trusted: Optional[bytes] = None) -> Report:
        return verify_log(self.dir, self.verifier, trusted, all_signatures=self.all_signatures)

    def write(self, name: str, data: bytes) -> None:
        """Overwrite a file of the folder (clears the append-only flag first)."""
        F.set_append_only(self.p(name), False)
        with open(self.p(name), "wb") as f:
            f.write(data)

    def append_raw(self, name: str, data: bytes) -> None:
        with open(self.p(name), "ab") as f:
            f.write(data)

    def write_lines(self, lines: list[bytes]) -> None:
        self.write(F.LOG, b"".join(line + b"\n" for line in lines))


def result(i: int = 0, **over: object) -> dict:
    """A plausible result record as the supervisor passes it."""
    r = {
        "status": "ok" if i % 3 else "nonzero_exit",
        "exit_code": 0 if i % 3 else 3,
        "signal": None,
        "reason": "the script exited with code 0" if i % 3 else "the script exited with code 3",
        "wall_s": 0.25 + i / 1000,
        "cpu_user_s": 0.125,
        "cpu_sys_s": 0.0625,
        "memory_peak_bytes": 12_345_678 + i,
        "io_read_bytes": 4096,
        "io_write_bytes": 0,
        "pids_peak": 3,
        "seccomp": None,
        "alerts": [] if i % 4 else [{"kind": "memory", "severity": "warning", "detail": "near the limit", "ratio": 0.93}],
        "command": ["python3", "/job/tally.py", f"--round={i}", "caf\u00e9", "raw\udcff\udcfebytes"],
        "script_sha256": "ab" * 32,
        "policy_sha256": "cd" * 32,
        "id": f"run-{i:04d}",
        "started_at": "2024-11-28T05:09:00.123456Z",
    }
    r.update(over)
    return r


def make_log(folder: str, n: int, origin: str = "test.example/hivejail-audit/a") -> Log:
    vkey = init_log(folder, origin)
    log = AuditLog.open(folder)
    for i in range(n):
        assert log.append(result(i)) == i
    return Log(folder, vkey)


@pytest.fixture
def audit_root(tmp_path) -> Iterator[str]:
    """A scratch folder whose append-only flags are cleared afterwards."""
    yield str(tmp_path)
    unprotect(str(tmp_path))


@pytest.fixture
def log10(audit_root) -> Log:
    """A log of 10 records."""
    return make_log(os.path.join(audit_root, "audit"), 10)


def forge(log: Log, lines: list[bytes], signer: Signer) -> None:
    """Rewrite log.jsonl and every checkpoint consistently with `signer`
    (a thief with the key, or a second key): the log then verifies by itself."""
    tree = MemoryTree()
    notes = [sign_checkpoint(Checkpoint(signer.name, 0, tree.root()), signer)]
    for line in lines:
        tree.add_hash(leaf_hash(line))
        notes.append(sign_checkpoint(Checkpoint(signer.name, tree.size, tree.root()), signer))
    log.write_lines(lines)
    log.write(F.CHECKPOINTS, b"".join(history_line(n) + b"\n" for n in notes))
    log.write(F.LATEST, notes[-1])
    rebuild(log.dir, tree.size, tree.root())


def edit_record(line: bytes, **changes: object) -> bytes:
    """The canonical line with fields changed (what a careful forger writes)."""
    import rfc8785

    obj = json.loads(line)
    obj.update(changes)
    return rfc8785.dumps(obj)


@pytest.fixture
def small_tmpfs(tmp_path) -> Iterator[str]:
    """A 1 MiB tmpfs (for disk-full and read-only tests); unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)], check=True,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)
