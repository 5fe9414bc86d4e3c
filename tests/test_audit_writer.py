"""The writer: preflight messages, fail-closed appends, crash recovery,
concurrency, the append-only flag, and a cheap import."""

from __future__ import annotations

import errno
import json
import fcntl
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from jail.audit import AuditError, AuditLog, init_log, status
from jail.audit import files as F
from jail.audit import log as L

try:
    from .test_audit_support import (Log, audit_root, edit_record, log10, make_log, result,  # noqa: F401
                                     small_tmpfs, unprotect)
except ImportError:
    from test_audit_support import (Log, audit_root, edit_record, log10, make_log, result,  # noqa: F401
                                    small_tmpfs, unprotect)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_is_cheap():
    """`hivejail exec` with audit off must not load cryptography or rfc8785."""
    code = ("import sys; from jail.audit import AuditError, AuditLog; AuditLog.open('/nonexistent'); "
            "bad = [m for m in ('cryptography', 'rfc8785') if m in sys.modules]; "
            "sys.exit(f'loaded: {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# -- preflight -------------------------------------------------------------------------------------


def test_preflight_missing_dir_and_key(audit_root):
    d = os.path.join(audit_root, "nowhere")
    with pytest.raises(AuditError, match=f"audit dir {d} does not exist: run `hivejail audit init --dir {d}`"):
        AuditLog.open(d).preflight(0, 1)
    with pytest.raises(AuditError, match="does not exist"):
        AuditLog.open(d).append(result())
    log = make_log(os.path.join(audit_root, "a"), 0)
    os.unlink(log.p(F.KEY))
    with pytest.raises(AuditError, match="has no signing key .*: run `hivejail audit init --dir"):
        AuditLog.open(log.dir).preflight(0, 1)


def test_preflight_key_mode_owner_and_missing_log(log10):
    key = log10.p(F.KEY)
    os.chmod(key, 0o644)
    with pytest.raises(AuditError, match=f"signing key {key} has mode 0644; it must be 0600: run `chmod 600 {key}`"):
        AuditLog.open(log10.dir).preflight(0, 1)
    os.chmod(key, 0o600)
    os.chown(key, 65534, 65534)
    with pytest.raises(AuditError, match="is owned by uid 65534, not by the writer"):
        AuditLog.open(log10.dir).preflight(0, 1)
    os.chown(key, 0, 0)
    os.chmod(log10.dir, 0o777)
    with pytest.raises(AuditError, match="writable by group or others"):
        AuditLog.open(log10.dir).preflight(0, 1)
    os.chmod(log10.dir, 0o700)
    unprotect(log10.dir)
    os.unlink(log10.p(F.LOG))
    with pytest.raises(AuditError, match="log.jsonl is missing: the log was removed"):
        AuditLog.open(log10.dir).preflight(0, 1)


def test_preflight_lock_timeout(log10):
    fd = os.open(log10.p(F.LOCK), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, b"4242\n", 0)
    try:
        t = time.monotonic()
        with pytest.raises(AuditError, match=r"could not lock .*lock within 0.2s \(held by pid 4242\)"):
            AuditLog.open(log10.dir).preflight(0, 0.2)
        assert time.monotonic() - t < 2
        with pytest.raises(AuditError, match="could not lock"):
            AuditLog.open(log10.dir).append(result(), lock_timeout_s=0.1)
    finally:
        os.close(fd)
    assert AuditLog.open(log10.dir).append(result()) == 10


def test_read_only_filesystem_fails_closed(small_tmpfs):
    d = os.path.join(small_tmpfs, "audit")
    init_log(d, "test.example/ro")
    subprocess.run(["mount", "-o", "remount,ro", small_tmpfs], check=True)
    try:
        with pytest.raises(AuditError, match="is on a read-only filesystem: remount it read-write"):
            AuditLog.open(d).preflight(0, 1)
        with pytest.raises(AuditError, match="not durable|lock"):
            AuditLog.open(d).append(result())
    finally:
        subprocess.run(["mount", "-o", "remount,rw", small_tmpfs], check=True)


def test_disk_full_fails_closed_then_recovers(small_tmpfs):
    d = os.path.join(small_tmpfs, "audit")
    vkey = init_log(d, "test.example/full")
    log = AuditLog.open(d)
    log.append(result(0))
    filler = os.path.join(small_tmpfs, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    chunk = 65536
    while chunk:
        try:
            os.write(fd, b"\0" * chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
            chunk //= 2
    os.close(fd)
    with pytest.raises(AuditError, match=r"free on the filesystem of .* below the audit reserve of 0\.1 MiB"):
        log.preflight(100_000, 1)
    with pytest.raises(AuditError, match="No space left on device") as exc:
        for i in range(50):  # the first appends may still fit in a partly used page
            log.append(result(i + 1))
    assert "not durable" in str(exc.value) or "not covered by a signed checkpoint" in str(exc.value)
    os.unlink(filler)
    log.preflight(100_000, 1)  # recovers what the failed append left
    seq = log.append(result(99))
    rep = Log(d, vkey).verify()
    assert rep.ok, rep.errors
    assert rep.records == seq + 1


# -- crash recovery --------------------------------------------------------------------------------


def _killed_at(folder: str, stage: str, torn: bool = False) -> None:
    """Fork a writer that SIGKILLs itself at `stage` of an append."""
    pid = os.fork()
    if pid == 0:
        try:
            def hook(at: str, **info: object) -> None:
                if at == stage:
                    if torn:
                        data = info["data"]
                        os.write(info["fd"], data[: len(data) // 2])  # type: ignore[index,arg-type]
                    os.kill(os.getpid(), signal.SIGKILL)

            L._fault = hook
            AuditLog.open(folder).append(result(50))
        finally:
            os._exit(3)
    _, st = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL


@pytest.mark.parametrize("stage,torn,before,after", [
    ("log-write", False, None, None),
    ("log-write", True, "torn last line", "torn line"),
    ("log-synced", False, "after the last signed checkpoint", "adopted by the recovery record"),
    ("cache-written", False, "after the last signed checkpoint", "adopted by the recovery record"),
    ("checkpoint-write", True, "torn last line", "torn checkpoint line closed"),
    ("checkpoint-appended", False, None, "older than the last"),
])
def test_writer_killed_mid_append(log10, stage, torn, before, after):
    _killed_at(log10.dir, stage, torn)
    rep = log10.verify()
    if before is None:
        assert rep.ok, rep.errors
    else:
        assert not rep.ok and before in "\n".join(rep.errors)
    AuditLog.open(log10.dir).recover()
    rep = log10.verify()
    assert rep.ok, rep.errors
    if after:
        assert after in "\n".join(rep.warnings)
    seq = AuditLog.open(log10.dir).append(result(60))
    rep = log10.verify()
    assert rep.ok and rep.records == seq + 1, rep.errors


def test_writer_killed_at_random_times(log10):
    rnd = random.Random(1)
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            try:
                log = AuditLog.open(log10.dir)
                for i in range(10_000):
                    log.append(result(i))
            finally:
                os._exit(3)
        time.sleep(rnd.uniform(0.02, 0.12))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    AuditLog.open(log10.dir).recover()
    rep = log10.verify()
    assert rep.ok, rep.errors
    assert rep.records > 10


def test_writer_refuses_what_a_crash_cannot_explain(log10):
    filler = edit_record(log10.lines()[-1], seq=10)
    log10.append_raw(F.LOG, (filler + b"\n") * (L.MAX_ADOPT + 1))
    with pytest.raises(AuditError, match="unsigned records after the last checkpoint .*refusing to adopt"):
        AuditLog.open(log10.dir).append(result())


def test_writer_refuses_a_truncated_or_rewritten_log(log10, audit_root):
    log10.write_lines(log10.lines()[:5])
    with pytest.raises(AuditError, match="records were removed|shorter"):
        AuditLog.open(log10.dir).append(result())
    other = make_log(os.path.join(audit_root, "b"), 3)
    lines = other.lines()
    lines[1] = edit_record(lines[1], reason="edited")
    other.write_lines(lines)
    os.unlink(other.p(F.TREE))
    with pytest.raises(AuditError, match="does not match the last signed checkpoint .*refuses to sign over it"):
        AuditLog.open(other.dir).append(result())
    other.append_raw(F.CHECKPOINTS, b'{"note":"planted"}\n')
    with pytest.raises(AuditError, match="the last checkpoint is not valid for this log's key"):
        AuditLog.open(other.dir).append(result())


def test_stale_caches_are_rebuilt(log10):
    with open(log10.p(F.TREE), "r+b") as f:
        f.write(b"\0" * 64)
    os.truncate(log10.p(F.INDEX), 8)
    assert AuditLog.open(log10.dir).append(result()) == 10
    assert log10.verify().ok


# -- concurrency -----------------------------------------------------------------------------------


def test_50_concurrent_writer_processes(audit_root):
    log = make_log(os.path.join(audit_root, "audit"), 0)
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()

    def child(i: int) -> None:
        start.wait(30)
        try:
            out.put(("ok", AuditLog.open(log.dir).append(result(i), lock_timeout_s=60)))
        except Exception as e:  # reported to the parent
            out.put(("error", repr(e)))

    procs = [ctx.Process(target=child, args=(i,)) for i in range(50)]
    for p in procs:
        p.start()
    start.set()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert [r for r in got if r[0] != "ok"] == []
    assert sorted(seq for _, seq in got) == list(range(50))
    rep = log.verify()
    assert rep.ok, rep.errors
    assert rep.records == 50 and rep.checkpoints == 51
    ids = sorted(json.loads(line)["id"] for line in log.lines())
    assert ids == sorted(f"run-{i:04d}" for i in range(50))


# -- append-only flag ------------------------------------------------------------------------------


def test_append_only_flag_is_set_and_reported(log10):
    for name in F.EVIDENCE:
        assert F.get_append_only(log10.p(name)) is True
    with pytest.raises(PermissionError):
        os.truncate(log10.p(F.LOG), 0)
    with pytest.raises(PermissionError):
        open(log10.p(F.CHECKPOINTS), "r+b").close()  # writing without O_APPEND is refused too
    st = status(log10.dir)
    assert st["append_only"] == {"log.jsonl": True, "checkpoints.jsonl": True} and st["problems"] == []
    assert st["size"] == 10 and st["origin"] == log10.verifier.name and st["key_mode"] == "0600"
    F.set_append_only(log10.p(F.LOG), False)
    assert any("is not append-only" in p for p in status(log10.dir)["problems"])
    AuditLog.open(log10.dir).preflight(0, 1)  # puts the flag back
    assert F.get_append_only(log10.p(F.LOG)) is True
