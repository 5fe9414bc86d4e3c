"""cgroup v2: one directory per run in the unified hierarchy.

Limits: cpu.max, memory.max + memory.swap.max=0 + memory.oom.group=1 (the
whole group is OOM-killed together), pids.max, io.max.  Stats: cpu.stat,
memory.peak (5.19+; else the caller polls memory.current), memory.events
oom_kill, pids.peak (6.12+; else polled pids.current), pids.events max,
io.stat.  Kill: cgroup.kill (5.14+), else freeze + SIGKILL every pid + thaw.

On a hybrid host the same class serves the controller-less unified part:
it then only answers for kill, freeze, events and CPU usage (cpu.stat is
always there, with or without the cpu controller).

Parents: the run's parent must have the controllers it needs enabled in its
cgroup.subtree_control; ``prepare_parent`` does that for a parent of our
own, moving any processes in it into a leaf first (no internal processes).
"""

from __future__ import annotations

import errno
import os
import signal
import time

from . import fs
from .base import CPU_PERIOD_US, JAIL_TASKS, CgroupError, Part, Spec, Usage

ENABLE_FIX = ("enable the controller for hivejail's parent cgroup: on a systemd host run "
              "hivejail in a unit with Delegate=yes (see `hivejail doctor`), or as root "
              "write +CONTROLLER to the cgroup.subtree_control files above the parent")


class V2Part(Part):
    version = 2

    def create(self) -> None:
        os.mkdir(self.path, 0o755)

    def apply(self, spec: Spec) -> None:
        p = self.path
        c = self.concerns
        writes: list[tuple[str, str]] = []
        if "cpu" in c and spec.cpus is not None:
            quota = max(1000, int(spec.cpus * CPU_PERIOD_US))
            writes.append(("cpu.max", f"{quota} {CPU_PERIOD_US}"))
        if "memory" in c and spec.memory is not None:
            writes.append(("memory.max", str(spec.memory)))
            if os.path.exists(p + "/memory.swap.max"):
                writes.append(("memory.swap.max", "0"))
            writes.append(("memory.oom.group", "1"))
        if "pids" in c and spec.pids is not None:
            writes.append(("pids.max", str(spec.pids + JAIL_TASKS)))
        if "io" in c:
            for r in spec.io:
                keys = [f"{k}={v}" for k, v in (("rbps", r.read_bps), ("wbps", r.write_bps),
                                                  ("riops", r.read_iops), ("wiops", r.write_iops))
                        if v is not None]
                if keys:
                    writes.append(("io.max", f"{r.device} {' '.join(keys)}"))
        for name, value in writes:
            try:
                fs.write(f"{p}/{name}", value)
            except OSError as e:
                fix = None
                if e.errno == errno.ENOENT:
                    fix = ENABLE_FIX.replace("CONTROLLER", name.split(".")[0])
                elif name == "io.max" and e.errno in (errno.ENODEV, errno.EINVAL):
                    fix = "name a whole disk (not a partition) that exists on this host in limits.io.devices"
                raise CgroupError(f"set {name}={value}", e.strerror or str(e), path=f"{p}/{name}",
                                  errno=e.errno, fix=fix) from None

    def read_limit(self, concern: str, out: dict) -> None:
        if concern == "memory":
            out["memory"] = fs.read_int(self.path + "/memory.max")
        elif concern == "pids":
            out["pids"] = fs.read_int(self.path + "/pids.max")
        elif concern == "cpu":
            try:
                q, per = fs.read(self.path + "/cpu.max").split()
            except FileNotFoundError:
                return
            out["cpus"] = None if q == "max" else int(q) / int(per)

    # ---- the running jail -------------------------------------------------
    def cpu_usage_ns(self) -> int | None:
        st = fs.flat(self.path + "/cpu.stat")
        u = st.get("usage_usec")
        return None if u is None else u * 1000

    def oom_kills(self) -> int:
        return fs.flat(self.path + "/memory.events").get("oom_kill", 0)

    def pids_current(self) -> int | None:
        return fs.read_int(self.path + "/pids.current")

    def memory_current(self) -> int | None:
        return fs.read_int(self.path + "/memory.current")

    def stats(self, usage: Usage) -> None:
        p, c = self.path, self.concerns
        if "usage" in c:
            st = fs.flat(p + "/cpu.stat")
            if "user_usec" in st:
                usage.cpu_user_s = st["user_usec"] / 1e6
                usage.cpu_sys_s = st.get("system_usec", 0) / 1e6
        if "memory" in c:
            ev = fs.flat(p + "/memory.events")
            usage.oom_kills = ev.get("oom_kill", 0)
            peak = fs.read_int(p + "/memory.peak")
            if peak is not None:
                usage.memory_peak_bytes = peak
        if "pids" in c:
            usage.pids_max_hits = fs.flat(p + "/pids.events").get("max", 0)
            peak = fs.read_int(p + "/pids.peak")
            if peak is not None:
                usage.pids_peak = peak
        if "io" in c:
            r = w = 0
            try:
                text = fs.read(p + "/io.stat")
            except FileNotFoundError:
                text = None
            if text is not None:
                for line in text.splitlines():
                    for kv in line.split()[1:]:
                        k, _, v = kv.partition("=")
                        if k == "rbytes":
                            r += int(v)
                        elif k == "wbytes":
                            w += int(v)
                usage.io_read_bytes, usage.io_write_bytes = r, w

    # ---- the end ----------------------------------------------------------
    def populated(self) -> bool:
        try:
            return fs.flat(self.path + "/cgroup.events").get("populated", 0) == 1
        except OSError:
            return False

    def freeze(self, frozen: bool) -> bool:
        try:
            fs.write(self.path + "/cgroup.freeze", "1" if frozen else "0")
        except FileNotFoundError:
            return False
        if frozen:            # wait (briefly) until every task is frozen
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                if fs.flat(self.path + "/cgroup.events").get("frozen", 1) == 1:
                    break
                time.sleep(0.001)
        return True

    def kill(self) -> bool:
        """cgroup.kill (5.14+), else freeze, SIGKILL each pid, thaw.  True if it was sent."""
        try:
            fs.write(self.path + "/cgroup.kill", "1")
            return True
        except FileNotFoundError:
            if not os.path.isdir(self.path):
                return True
        frozen = self.freeze(True)
        for pid in fs.procs(self.path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if frozen:
            self.freeze(False)
        return True


def prepare_parent(path: str, controllers: set[str], delegated: bool) -> set[str]:
    """Make ``path`` a parent for run cgroups that enables ``controllers`` for them.

    Returns the controllers that are enabled there.  A parent that holds
    processes (a delegated cgroup we run in) first has them moved into its
    LEAF child: cgroup v2 allows controllers in subtree_control only on a
    cgroup without processes of its own.
    """
    from .detection import LEAF
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as e:
        raise CgroupError.from_oserror("create parent cgroup", e, path=path,
                                       fix="run as root, or in a delegated cgroup (hivejail doctor)") from None
    try:
        available = set(fs.read(path + "/cgroup.controllers").split())
        enabled = set(fs.read(path + "/cgroup.subtree_control").split())
    except OSError as e:
        raise CgroupError.from_oserror("read parent cgroup", e, path=path) from None
    missing = (controllers & available) - enabled
    if not missing:
        return enabled
    for _ in range(10):
        if delegated:
            _move_into_leaf(path, path + "/" + LEAF)
        try:
            fs.write(path + "/cgroup.subtree_control", " ".join("+" + c for c in sorted(missing)))
            return enabled | missing
        except OSError as e:
            if e.errno == errno.EBUSY and delegated:
                continue          # a process appeared meanwhile: move it too
            raise CgroupError.from_oserror(
                f"enable {' '.join(sorted(missing))}", e, path=path + "/cgroup.subtree_control",
                fix="the parent cgroup holds processes; move them into a child cgroup"
                if e.errno == errno.EBUSY else None) from None
    raise CgroupError("enable controllers", "processes keep appearing in the delegated cgroup",
                      path=path)


def _move_into_leaf(path: str, leaf: str) -> None:
    pids = fs.procs(path)
    if not pids:
        return
    try:
        os.mkdir(leaf, 0o755)
    except FileExistsError:
        pass
    for pid in pids:
        try:
            fs.write(leaf + "/cgroup.procs", str(pid))
        except ProcessLookupError:
            pass
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise CgroupError.from_oserror("move into leaf cgroup", e, path=leaf) from None
