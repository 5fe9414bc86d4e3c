"""Cost of the seccomp layer: building and loading the filter, and per-syscall overhead.

    sudo /opt/hivejail/venv/bin/python bench/bench_seccomp.py [--quick] [--json]

1. Build: the default filter compiled by libseccomp (cold, in a fresh
   process: pyseccomp import + compile), read from the disk cache, and
   from the in-process cache.
2. Load: seccomp(SET_MODE_FILTER, NEW_LISTENER) in a forked child.
3. Overhead, same run, interleaved rounds (median of rounds):
   a. a C loop: `dd if=/dev/zero of=/dev/null bs=1 count=N` (2 syscalls per byte)
      in a child with the default filter vs none;
   b. a Python loop of os.getppid() and os.stat("/") in a child, filter vs none;
   c. the whole jail: the same Python loop as a payload under
      `seccomp: {profile: default}` vs `{profile: none}` (Landlock off in both).
   Each in-process case also runs under a one-instruction "allow everything"
   filter: the kernel's fixed price for a task having any seccomp filter at
   all (the slow syscall entry path), which no filter can go below.  The
   default filter's own work is the difference between the two: the kernel's
   per-filter action cache answers unconditional allows without running BPF.
Target: the default filter costs at most 10% on the syscall-heavy loops.
"""

from __future__ import annotations

import json
import os
import struct
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jail import seccomp as S  # noqa: E402
from jail.policy import Seccomp as SeccompPolicy  # noqa: E402


def build_costs(reps: int) -> dict[str, float]:
    code = textwrap.dedent(f"""
        import sys, time, os
        sys.path.insert(0, {str(ROOT)!r})
        import jail.policy, jail.steps, jail.ipc          # already loaded in a real run
        t0 = time.perf_counter()
        from jail import seccomp as S
        t1 = time.perf_counter()
        plan = S.make_plan(jail.policy.Seccomp())
        t2 = time.perf_counter()
        bpf = S.compile_bpf(S.filter_spec(plan), use_disk=sys.argv[1] == "disk")
        t3 = time.perf_counter()
        t4 = time.perf_counter(); S.compile_bpf(S.filter_spec(plan)); t5 = time.perf_counter()
        print((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t5 - t4) * 1e3, len(bpf) // 8)
        """)
    out: dict[str, list[float]] = {}
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as cache:
        env["HIVEJAIL_CACHE_DIR"] = cache
        subprocess.run([sys.executable, "-c", code, "disk"], env=env, check=True,
                       capture_output=True)                      # fill pyc + disk cache
        for _ in range(reps):
            for mode in ("nodisk", "disk"):
                r = subprocess.run([sys.executable, "-c", code, mode], env=env, check=True,
                                   capture_output=True, text=True)
                imp, plan, build, warm, insns = (float(x) for x in r.stdout.split())
                out.setdefault("import_ms", []).append(imp)
                out.setdefault("plan_ms", []).append(plan)
                out.setdefault(f"filter_{mode}_ms", []).append(build)
                out.setdefault("in_process_cache_ms", []).append(warm)
                out["insns"] = [insns]
    return {k: round(statistics.median(v), 3) for k, v in out.items()}


def default_program() -> S.LoadedProgram:
    plan = S.make_plan(SeccompPolicy())
    plan.mode = "kill"
    return S.LoadedProgram(S.compile_bpf(S.filter_spec(plan), use_disk=False))


def in_child(fn, *args) -> float:
    """Run fn in a forked child (which may load a filter); return what it reports."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            val = fn(*args)
            os.write(w, repr(val).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return float(data or b"nan")


def _prep_child(prog: S.LoadedProgram | None) -> None:
    import ctypes
    ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)         # PR_SET_NO_NEW_PRIVS
    if prog is not None:
        fd = prog.load(listener=True)
        os.close(fd)            # no listener: a refused call would fail with ENOSYS


def load_cost(prog: S.LoadedProgram) -> float:
    import ctypes
    ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)
    t = time.perf_counter()
    fd = prog.load(listener=True)
    dt = time.perf_counter() - t
    os.close(fd)
    return dt * 1e3


def py_loop(prog: S.LoadedProgram | None, n: int, which: str) -> float:
    _prep_child(prog)
    call = os.getppid if which == "getppid" else (lambda: os.stat("/"))
    t = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - t) / n * 1e9          # ns per call


def dd_loop(prog: S.LoadedProgram | None, n: int) -> float:
    _prep_child(prog)
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        fd = os.open("/dev/null", os.O_WRONLY)
        os.dup2(fd, 2)
        os.execv("/bin/dd", ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={n}"])
    os.waitpid(pid, 0)
    return (time.perf_counter() - t) / (2 * n) * 1e9     # ns per syscall


ALLOW_ALL = struct.pack("HBBI", 0x06, 0, 0, S.RET_ALLOW)      # BPF_RET|BPF_K ALLOW


def compare(label: str, fn, rounds: int, prog: S.LoadedProgram, *args) -> dict[str, float]:
    allow_all = S.LoadedProgram(ALLOW_ALL)
    base, floor, filt = [], [], []
    for _ in range(rounds):
        base.append(in_child(fn, None, *args))
        floor.append(in_child(fn, allow_all, *args))
        filt.append(in_child(fn, prog, *args))
    b, a, f = statistics.median(base), statistics.median(floor), statistics.median(filt)
    return {"case": label, "none_ns": round(b, 1), "allow_all_ns": round(a, 1),
            "default_ns": round(f, 1), "overhead_pct": round((f - b) / b * 100, 1),
            "floor_pct": round((a - b) / b * 100, 1)}


def jail_loop(rounds: int, n: int) -> dict[str, float]:
    from jail import Jail
    from jail.policy import parse_policy_text
    code = f"import os, time\nt = time.perf_counter()\nfor _ in range({n}): os.getppid()\n" \
           f"print((time.perf_counter() - t) / {n} * 1e9)\n"
    times: dict[str, list[float]] = {"none": [], "default": []}
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o777)
        Path(d, "loop.py").write_text(code)
        for _ in range(rounds):
            for profile in ("none", "default"):
                text = textwrap.dedent(f"""\
                    version: 1
                    filesystem:
                      mounts:
                        - {{source: /usr, target: /usr}}
                        - {{source: {d}, target: /job/b, mode: rw}}
                      symlinks: {{/bin: usr/bin, /lib: usr/lib, /lib64: usr/lib64}}
                    seccomp: {{profile: {profile}}}
                    landlock: {{mode: "off"}}
                    limits: {{cpu_time: 120s, wall_time: 120s}}
                    audit: {{dir: null}}
                    """)
                pol = parse_policy_text(text)
                res = Jail(pol).run(["/bin/sh", "-c", "exec python3 /job/b/loop.py > /job/b/out",
                                     "sh"])
                assert res.status == "ok", res.reason
                times[profile].append(float(Path(d, "out").read_text()))
    b, f = statistics.median(times["none"]), statistics.median(times["default"])
    return {"case": f"jail: python getppid x{n}", "none_ns": round(b, 1), "default_ns": round(f, 1),
            "overhead_pct": round((f - b) / b * 100, 1)}


def main() -> None:
    quick = "--quick" in sys.argv
    rounds = 3 if quick else 7
    n = 200_000 if quick else 1_000_000
    prog = default_program()
    report: dict[str, object] = {"build": build_costs(3 if quick else 7)}
    report["load_ms"] = round(statistics.median(in_child(load_cost, prog) for _ in range(15)), 3)
    rows = [compare(f"C: dd bs=1 count={n}", dd_loop, rounds, prog, n),
            compare(f"python: os.getppid() x{n}", py_loop, rounds, prog, n, "getppid"),
            compare(f"python: os.stat('/') x{n}", py_loop, rounds, prog, n, "stat")]
    if os.geteuid() == 0:
        rows.append(jail_loop(rounds, n))
    report["overhead"] = rows
    if "--json" in sys.argv:
        print(json.dumps(report, indent=2))
        return
    b = report["build"]
    print(f"default filter: {int(b['insns'])} BPF instructions")
    print(f"  import jail.seccomp {b['import_ms']} ms, plan (profiles) {b['plan_ms']} ms")
    print(f"  filter: libseccomp build {b['filter_nodisk_ms']} ms (incl. pyseccomp import), "
          f"disk cache {b['filter_disk_ms']} ms, in-process cache {b['in_process_cache_ms']} ms")
    print(f"  load in the payload: {report['load_ms']} ms")
    print(f"{'case':34} {'no filter':>11} {'allow-all':>11} {'default':>11} {'default':>9}"
          f" {'allow-all':>9}")
    for r in rows:
        aa = f"{r['allow_all_ns']:>8} ns" if "allow_all_ns" in r else f"{'-':>11}"
        fl = f"{r['floor_pct']:>8}%" if "floor_pct" in r else f"{'-':>9}"
        print(f"{r['case']:34} {r['none_ns']:>8} ns {aa} {r['default_ns']:>8} ns"
              f" {r['overhead_pct']:>8}% {fl}")


if __name__ == "__main__":
    main()
