"""Startup cost of `hivejail exec -- /bin/true` next to bwrap, unshare and a bare run.

All commands run in the same process, interleaved round by round, so machine
noise hits them alike.  Reported: median and mean wall time, and ratios.
"The jail's own setup" is measured two ways:
  - in-process: Jail(policy).run(["/bin/true"]) repeated in one Python
    process (no interpreter start-up, no imports);
  - CLI minus `python -c "import jail.cli"` (interpreter start-up and the
    CLI's imports taken out).
Usage: python bench/bench_startup.py [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def spawn_time(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env)
    _, status = os.waitpid(pid, 0)
    dt = time.perf_counter() - t
    if status != 0:
        raise SystemExit(f"{argv} failed with status {status}")
    return dt


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    distro = ""
    try:
        distro = dict(l.rstrip().split("=", 1) for l in open("/etc/os-release") if "=" in l) \
            .get("PRETTY_NAME", "").strip('"')
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}, "
            f"{distro}, Python {platform.python_version()}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="hjbench-"))
    policy_file = work / "policy.yml"
    policy_file.write_text("version: 1\nname: bench\naudit: {dir: null}\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    true = "/bin/true"
    cmds: dict[str, list[str]] = {
        "bare /bin/true": [true],
        "unshare -U -r -m -p -f -i -u -C -n": [shutil.which("unshare") or "/usr/bin/unshare",
                                              "-U", "-r", "-m", "-p", "-f", "-i", "-u", "-C", "-n",
                                              true],
    }
    bwrap = shutil.which("bwrap")
    if bwrap:
        cmds["bwrap --unshare-all (ro /usr, proc, dev, tmpfs)"] = [
            bwrap, "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/bin", "/bin", "--proc", "/proc",
            "--dev", "/dev", "--tmpfs", "/tmp", "--die-with-parent", "--new-session", true]
    cmds["python3 -c pass"] = [py, "-c", "pass"]
    cmds["python3 -c 'import jail.cli'"] = [py, "-c", "import jail.cli"]
    cmds["hivejail exec -- /bin/true"] = [py, "-m", "jail.cli", "exec", "--policy",
                                          str(policy_file), "--", true]
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(3):
        for argv in cmds.values():
            spawn_time(argv, env)
    for _ in range(args.rounds):
        for name, argv in cmds.items():
            times[name].append(spawn_time(argv, env))

    # In-process: the jail's own setup without interpreter start-up or imports.
    from jail import Jail
    from jail.policy import load_policy
    policy = load_policy(str(policy_file))
    jail = Jail(policy)
    for _ in range(5):
        jail.run([true])
    inproc = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        r = jail.run([true])
        inproc.append(time.perf_counter() - t)
        assert r.status == "ok", r.reason
    times["Jail.run([/bin/true]) in-process"] = inproc
    shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    mean = {k: statistics.fmean(v) * 1000 for k, v in times.items()}
    cli_own = med["hivejail exec -- /bin/true"] - med["python3 -c 'import jail.cli'"]
    report = {"machine": machine(), "rounds": args.rounds, "median_ms": med, "mean_ms": mean,
              "hivejail_cli_minus_imports_ms": cli_own}
    if bwrap:
        b = med["bwrap --unshare-all (ro /usr, proc, dev, tmpfs)"]
        report["ratio_inprocess_to_bwrap"] = med["Jail.run([/bin/true]) in-process"] / b
        report["ratio_cli_minus_imports_to_bwrap"] = cli_own / b
        report["ratio_cli_to_bwrap"] = med["hivejail exec -- /bin/true"] / b
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"machine: {report['machine']}")
    print(f"rounds: {args.rounds} (interleaved)\n")
    print(f"{'command':52} {'median ms':>10} {'mean ms':>9}")
    for k in times:
        print(f"{k:52} {med[k]:10.2f} {mean[k]:9.2f}")
    print(f"\nhivejail CLI minus `import jail.cli`: {cli_own:.2f} ms")
    if bwrap:
        print(f"ratio in-process jail setup / bwrap:      {report['ratio_inprocess_to_bwrap']:.2f}x")
        print(f"ratio CLI minus imports / bwrap:          {report['ratio_cli_minus_imports_to_bwrap']:.2f}x")
        print(f"ratio full CLI / bwrap:                   {report['ratio_cli_to_bwrap']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
