#!/usr/bin/env python3
"""Audit log benchmark: append+sign+fsync rate, full verify, prove, verify-proof.

    /opt/hivejail/venv/bin/python bench/bench_audit.py [--records 100000] [--appends 2000]

Appends go through the public API (AuditLog.append: lock, state check, one
write+fsync of the record, checkpoint signed, appended and fsynced, latest
checkpoint replaced), once on a disk folder and once on a tmpfs.  The
100,000-record log for verify/prove is built with the bulk helper (same file
contents, one checkpoint per record, fewer fsyncs) so the bench takes minutes,
not hours.  Verify is timed in both signature modes (see jail/audit/verify.py).
Targets (issue 7): >= 300 appends/s, verify(100k) <= 10 s,
prove and verify-proof at 100k <= 50 ms each.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from jail.audit import AuditLog, init_log  # noqa: E402
from jail.audit import files as F  # noqa: E402
from jail.audit.note import parse_vkey  # noqa: E402
from jail.audit.proof import make_proof, verify_proof  # noqa: E402
from jail.audit.verify import verify_log  # noqa: E402


def result(i: int) -> dict:
    return {
        "status": "ok", "exit_code": 0, "signal": None, "reason": "the script exited with code 0",
        "wall_s": 1.234567, "cpu_user_s": 0.5, "cpu_sys_s": 0.125, "memory_peak_bytes": 48_000_000 + i,
        "io_read_bytes": 1 << 20, "io_write_bytes": 4096, "pids_peak": 4, "seccomp": None,
        "alerts": [{"kind": "memory", "severity": "warning", "detail": "82% of the limit"}] if i % 10 == 0 else [],
        "command": ["python3", "/job/tally.py", "--proposal", f"BIP-{i % 97:04d}", "--round", str(i % 7)],
        "script_sha256": "5f" * 32, "policy_sha256": "a3" * 32, "id": f"01JDX{i:021d}",
        "started_at": "2024-11-28T05:09:00.123456Z",
    }


def fs_of(path: str) -> str:
    """'<fstype> on <source> (<mount point>)' for the mount holding path."""
    best = ("?", "?", "/")
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            mnt = parts[4]
            sep = parts.index("-")
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[2]):
                best = (parts[sep + 1], parts[sep + 2], mnt)
    return f"{best[0]} on {best[1]} ({best[2]})"


def cleanup(path: str) -> None:
    for root, _d, files in os.walk(path):
        for n in files:
            F.set_append_only(os.path.join(root, n), False)
    shutil.rmtree(path, ignore_errors=True)


def bench_append(base: str, n: int) -> None:
    d = tempfile.mkdtemp(prefix="hivejail-bench-", dir=base)
    try:
        init_log(os.path.join(d, "audit"), "bench.example/hivejail-audit/append")
        log = AuditLog.open(os.path.join(d, "audit"))
        log.preflight(64 << 20, 5)
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            log.append(result(i))
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        lat.sort()
        print(f"append+sign+fsync  {fs_of(d):<40} {n / total:8.0f} records/s   "
              f"p50 {lat[n // 2] * 1e3:.2f} ms  p99 {lat[int(n * 0.99)] * 1e3:.2f} ms  ({n} appends)")
    finally:
        cleanup(d)


def build(folder: str, n: int) -> str:
    vkey = init_log(folder, "bench.example/hivejail-audit/big")
    log = AuditLog.open(folder)
    t = time.perf_counter()
    batch = 5000
    for start in range(0, n, batch):
        log._append_many([result(i) for i in range(start, min(n, start + batch))])
    size = os.path.getsize(os.path.join(folder, F.LOG))
    print(f"built {n} records in {time.perf_counter() - t:.1f} s (bulk helper): log.jsonl {size / 1e6:.1f} MB, "
          f"checkpoints.jsonl {os.path.getsize(os.path.join(folder, F.CHECKPOINTS)) / 1e6:.1f} MB")
    return vkey


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--appends", type=int, default=2000)
    ap.add_argument("--disk-dir", default=os.path.dirname(REPO), help="folder on the disk to test (default: the "
                    "repository's parent)")
    ap.add_argument("--tmpfs-dir", default="/dev/shm")
    ap.add_argument("--proofs", type=int, default=200)
    args = ap.parse_args()

    debian = open("/etc/debian_version").read().strip() if os.path.exists("/etc/debian_version") else "?"
    print(f"machine: {os.cpu_count()} cores, Linux {platform.release()}, Debian {debian}, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
    for base in (args.disk_dir, args.tmpfs_dir):
        bench_append(base, args.appends)

    d = tempfile.mkdtemp(prefix="hivejail-bench-", dir=args.disk_dir)
    try:
        folder = os.path.join(d, "audit")
        vkey = build(folder, args.records)
        verifier = parse_vkey(vkey)
        subprocess.run(["sync"], check=False)
        for all_sigs in (False, True):
            r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            rep = verify_log(folder, verifier, all_signatures=all_sigs)
            dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
            cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
            assert rep.ok and rep.records == args.records, rep.errors
            mode = "--all-signatures" if all_sigs else "default"
            print(f"verify {mode:<16} {args.records} records, {rep.checkpoints} checkpoints, {rep.signatures} "
                  f"signatures checked: {dt:.2f} s wall, {cpu:.2f} s CPU (load average {os.getloadavg()[0]:.1f})")
        for extra in ([], ["--all-signatures"]):
            t = time.perf_counter()
            cli = subprocess.run([sys.executable, "-c", "import sys; from jail.audit.cli import main; "
                                  "sys.exit(main(sys.argv[1:]))", "verify", "--dir", folder, "--vkey", vkey, *extra],
                                 cwd=REPO, capture_output=True, text=True)
            dt = time.perf_counter() - t
            assert cli.returncode == 0, cli.stderr
            print(f"hivejail audit verify {' '.join(extra) or '(default)'}: {dt:.2f} s (whole process)")

        rnd = random.Random(1)
        seqs = [rnd.randrange(args.records) for _ in range(args.proofs)]
        prove_t, check_t = [], []
        for s in seqs:
            t = time.perf_counter()
            proof = make_proof(folder, s)
            prove_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            assert verify_proof(proof, verifier).seq == s
            check_t.append(time.perf_counter() - t)
        for name, ts in (("prove", prove_t), ("verify-proof", check_t)):
            ts.sort()
            print(f"{name:<12} at {args.records} records (in process, {len(ts)} runs): "
                  f"mean {statistics.mean(ts) * 1e3:.2f} ms  p50 {ts[len(ts) // 2] * 1e3:.2f} ms  "
                  f"max {ts[-1] * 1e3:.2f} ms")
        proof_file = os.path.join(d, "p.tlog-proof")
        for name, argv in (("prove", ["prove", "--dir", folder, str(seqs[0]), "-o", proof_file]),
                           ("verify-proof", ["verify-proof", "--vkey", vkey, proof_file])):
            runs = []
            for _ in range(20):
                t = time.perf_counter()
                cli = subprocess.run([sys.executable, "-c", "import sys; from jail.audit.cli import main; "
                                      "sys.exit(main(sys.argv[1:]))", *argv], cwd=REPO, capture_output=True, text=True)
                runs.append(time.perf_counter() - t)
                assert cli.returncode == 0, cli.stderr
            print(f"hivejail audit {name:<12} whole process (20 runs): mean {statistics.mean(runs) * 1e3:.0f} ms, "
                  f"min {min(runs) * 1e3:.0f} ms")
        runs = []
        for _ in range(20):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            runs.append(time.perf_counter() - t)
        print(f"(bare `python -c pass`: mean {statistics.mean(runs) * 1e3:.0f} ms)")
    finally:
        cleanup(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
