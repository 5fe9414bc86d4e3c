"""Per-run cost of the cgroup step (run as root).

    /opt/hivejail/venv/bin/python bench/bench_cgroup.py [--runs N] [--gaps 0,100]

In one process, N runs of /bin/true with and without the cgroup step,
interleaved round by round, for each gap (milliseconds of idle time
before every run).  Reported per gap: the run's median and mean wall time
both ways, and the step's own hooks: prepare (reap, mkdir, limits), join
(the intermediate's writes to cgroup.procs, timed in the child), finish
(stats) and cleanup (kill, rmdir).

Why the gap: moving a process into a cgroup write-locks the kernel's
cgroup_threadgroup_rwsem, whose first writer after an idle spell waits for
an RCU grace period (~5–20 ms here; no other cost of the step comes close).
Back-to-back runs find the lock still "warm"; a run after an idle spell
(like a fresh `hivejail exec`) pays the grace period.  Runs use the parent
hjbench-<pid>, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POLICY = """\
version: 1
name: bench-cgroup
filesystem:
  mounts: [{source: /usr, target: /usr}]
  symlinks: {/bin: usr/bin, /lib: usr/lib, /lib64: usr/lib64}
limits: {memory: 256M, pids: 32, cpus: 1, cpu_time: 10s}
audit: {dir: null}
"""
SLOW_JOIN_MS = 2.0


def _timed_step(spent: dict[str, list[float]], pipe_w: int):
    from jail.limits import CgroupLimits

    class Timed(CgroupLimits):
        def prepare(self, ctx):
            t = time.perf_counter()
            try:
                return super().prepare(ctx)
            finally:
                spent["prepare"].append(time.perf_counter() - t)

        def in_intermediate(self, ctx):          # the child: report through the pipe
            t = time.perf_counter()
            super().in_intermediate(ctx)
            os.write(pipe_w, f"{time.perf_counter() - t:.9f}\n".encode())

        def finish(self, ctx, result):
            t = time.perf_counter()
            try:
                return super().finish(ctx, result)
            finally:
                spent["finish"].append(time.perf_counter() - t)

        def cleanup(self, ctx):
            t = time.perf_counter()
            try:
                return super().cleanup(ctx)
            finally:
                spent["cleanup"].append(time.perf_counter() - t)
    return Timed


def _ms(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    xs = sorted(xs)
    return {"median": round(statistics.median(xs) * 1000, 3),
            "mean": round(statistics.mean(xs) * 1000, 3),
            "p90": round(xs[int(len(xs) * 0.9) - 1] * 1000, 3),
            "max": round(xs[-1] * 1000, 3)}


def bench(runs: int, gap_ms: float) -> dict:
    from jail import Jail
    from jail.policy import parse_policy_text
    from jail.supervisor import default_steps
    policy = parse_policy_text(POLICY)
    r_fd, w_fd = os.pipe()
    spent: dict[str, list[float]] = {"prepare": [], "finish": [], "cleanup": []}
    joins: list[float] = []
    timed = _timed_step(spent, w_fd)
    walls: dict[str, list[float]] = {"with cgroups": [], "without": []}
    for i in range(runs + 1):
        for label in walls:
            steps = default_steps(policy)
            if label == "without":
                steps = [s for s in steps if s.name != "cgroups"]
            else:
                steps = [timed() if s.name == "cgroups" else s for s in steps]
            time.sleep(gap_ms / 1000)
            t = time.perf_counter()
            r = Jail(policy, steps=steps).run(["/bin/true"])
            dt = time.perf_counter() - t
            assert r.status == "ok", r.reason
            if label == "with cgroups":
                joins.append(float(os.read(r_fd, 64).decode()))
            if i:                               # the first round warms up imports
                walls[label].append(dt)
        if i == 0:
            for v in spent.values():
                v.clear()
            joins.clear()
    os.close(r_fd)
    os.close(w_fd)
    slow = [j for j in joins if j * 1000 >= SLOW_JOIN_MS]
    return {
        "run_wall_ms": {k: _ms(v) for k, v in walls.items()},
        "added_by_cgroups_ms (mean)": round((statistics.mean(walls["with cgroups"])
                                             - statistics.mean(walls["without"])) * 1000, 3),
        "step_ms": {k: _ms(v) for k, v in spent.items()} | {"join": _ms(joins)},
        "join_slow_path": f"{len(slow)}/{len(joins)} runs >= {SLOW_JOIN_MS} ms "
                          f"(median {statistics.median(slow) * 1000:.1f} ms)" if slow else
                          f"0/{len(joins)}",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--gaps", default="0,100", help="idle ms before each run, comma-separated")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_cgroup: run as root")
    import cgroups
    from cgroups.hybrid import PARENT_ENV
    parent = f"hjbench-{os.getpid()}"
    os.environ[PARENT_ENV] = parent
    report = {"host": cgroups.detect().mode, "layout": cgroups.open_driver(parent).layer()}
    try:
        for gap in (float(g) for g in args.gaps.split(",")):
            report[f"gap {gap:g} ms"] = bench(args.runs, gap)
    finally:
        drv = cgroups.open_driver(parent)
        drv.reap()
        drv.remove_parents()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
