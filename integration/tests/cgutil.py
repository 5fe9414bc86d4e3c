"""Small helpers over the cgroup v2 files, for the privileged test set.

Plain functions on paths; no hivejail code, so the test set can check the
kernel's cgroup v2 behaviour on its own as well as the jail's use of it.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

REQUIRED_CONTROLLERS = ("cpu", "memory", "pids", "io")


def in_vm() -> bool:
    """True inside the guest that `python -m integration` booted."""
    return os.environ.get("HIVEJAIL_VM") == "1"


def cgroup2_mount() -> Path | None:
    """Where cgroup2 is mounted (/sys/fs/cgroup preferred), or None."""
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split()[:1] == ["cgroup2"]:
                    found.append(Path(left.split()[4].replace("\\040", " ")))
    except OSError:
        return None
    for p in found:
        if p == Path("/sys/fs/cgroup"):
            return p
    return found[0] if found else None


def controllers(path: Path, name: str = "cgroup.subtree_control") -> set[str]:
    try:
        return set((path / name).read_text().split())
    except OSError:
        return set()


def environment_problem() -> str | None:
    """Why this machine cannot run the privileged cgroup v2 tests, or None."""
    if os.geteuid() != 0:
        return "needs root (these tests create cgroups, mounts and devices)"
    root = cgroup2_mount()
    if root is None:
        return "no cgroup2 mount on this machine"
    missing = [c for c in REQUIRED_CONTROLLERS if c not in controllers(root)]
    if missing:
        have = " ".join(sorted(controllers(root))) or "none"
        hint = "" if in_vm() else "; run `python3 -m integration` for a cgroup v2 guest"
        return (f"cgroup2 at {root} has no {', '.join(missing)} controller(s) in its "
                f"subtree_control (enabled: {have}){hint}")
    return None


def read_flat(path: Path) -> dict[str, int]:
    """A flat-keyed file ("key value" lines: memory.events, pids.events, cpu.stat).

    Parsed by the package's own reader (cgroups/fs.py); unlike it, a missing
    file is an error here: a guest that lacks one is unfit.
    """
    from cgroups import fs
    if not Path(path).exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    return fs.flat(str(path))


def read_nested(path: Path) -> dict[str, dict[str, str]]:
    """A nested-keyed file ("254:0 rbytes=1 wbytes=2": io.stat, io.max)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        key, *pairs = line.split()
        out[key] = dict(p.split("=", 1) for p in pairs if "=" in p)
    return out


def devnum(path: str | os.PathLike) -> str:
    """"MAJ:MIN" of a block device node."""
    rdev = os.stat(path).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def write(cg: Path, name: str, value: str) -> None:
    with open(cg / name, "w") as f:
        f.write(value)


def _join(cg: Path):
    def enter() -> None:  # in the child, before exec: move ourselves in
        with open(cg / "cgroup.procs", "w") as f:
            f.write("0")
    return enter


def spawn(cg: Path, argv: list[str], **kw) -> subprocess.Popen:
    """Start argv as a plain subprocess inside cgroup cg."""
    return subprocess.Popen(argv, preexec_fn=_join(cg), **kw)


def run(cg: Path, argv: list[str], timeout: float = 120, **kw) -> tuple[subprocess.CompletedProcess, float]:
    """Run argv inside cg; return (completed process, wall seconds)."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    t0 = time.monotonic()
    with spawn(cg, argv, text=True, **kw) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise
    return subprocess.CompletedProcess(argv, p.returncode, out, err), time.monotonic() - t0


def populated(cg: Path) -> bool:
    return read_flat(cg / "cgroup.events").get("populated", 0) == 1


def kill_and_remove(cg: Path, timeout: float = 20) -> None:
    """Kill everything in cg (and below), wait until it is empty, remove it."""
    if not cg.exists():
        return
    for child in sorted((p for p in cg.iterdir() if p.is_dir()), reverse=True):
        kill_and_remove(child, timeout)
    deadline = time.monotonic() + timeout
    while True:
        if (cg / "cgroup.kill").exists():
            write(cg, "cgroup.kill", "1")
        else:  # kernels before 5.14
            for pid in (cg / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
        if not populated(cg):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{cg} still populated after {timeout} s")
        time.sleep(0.05)
    while True:
        try:
            cg.rmdir()
            return
        except OSError:  # EBUSY for a moment after the last task exits
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
