"""cgroup v1 (legacy, and the limit half of hybrid): one directory per hierarchy.

A V1Part is the run's directory in one v1 hierarchy; co-mounted controllers
(cpu,cpuacct) share it.  Limits: cpu.cfs_quota_us, memory.limit_in_bytes +
memory.memsw.limit_in_bytes (no swap; swappiness 0 where memsw is missing),
pids.max, blkio.throttle.{read,write}_{bps,iops}_device.  Stats:
cpuacct.usage_user/usage_sys, memory.max_usage_in_bytes, ``oom_kill N`` in
memory.oom_control (memory.failcnt is unreliable), pids.peak where present,
pids.events ``max N``, blkio.throttle.io_service_bytes.

v1 has no cgroup.kill and no group OOM: kill freezes (freezer) or closes the
fork door (pids.max = 0), SIGKILLs every pid, thaws, and the caller repeats
until the group is empty; the step stops the whole jail at the first OOM kill.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from . import fs
from .base import CPU_PERIOD_US, JAIL_TASKS, CgroupError, Part, Spec, Usage


class V1Part(Part):
    version = 1

    def create(self) -> None:
        os.mkdir(self.path, 0o755)

    @property
    def self_join_file(self) -> str:
        # A thread moving itself through "tasks" skips the kernel's global
        # cgroup_threadgroup_rwsem (an RCU grace period, ~10 ms, after an idle
        # spell); for a single-threaded process that moves the whole process.
        return self.path + "/tasks"

    def _write(self, name: str, value: str) -> None:
        path = f"{self.path}/{name}"
        try:
            fs.write(path, value)
        except OSError as e:
            fix = None
            if name.startswith("blkio.") and e.errno in (errno.ENODEV, errno.EINVAL):
                fix = "name a whole disk (not a partition) that exists on this host in limits.io.devices"
            raise CgroupError(f"set {name}={value}", e.strerror or str(e), path=path,
                              errno=e.errno, fix=fix) from None

    def apply(self, spec: Spec) -> None:
        c = self.concerns
        if "memory" in c and spec.memory is not None:
            self._write("memory.limit_in_bytes", str(spec.memory))
            if os.path.exists(self.path + "/memory.memsw.limit_in_bytes"):
                self._write("memory.memsw.limit_in_bytes", str(spec.memory))   # memory + swap = memory
            else:
                self._write("memory.swappiness", "0")
        if "pids" in c and spec.pids is not None:
            self._write("pids.max", str(spec.pids + JAIL_TASKS))
        if "cpu" in c and spec.cpus is not None:
            period = fs.read_int(self.path + "/cpu.cfs_period_us") or CPU_PERIOD_US
            if period != CPU_PERIOD_US:
                self._write("cpu.cfs_period_us", str(CPU_PERIOD_US))
            self._write("cpu.cfs_quota_us", str(max(1000, int(spec.cpus * CPU_PERIOD_US))))
        if "io" in c:
            for r in spec.io:
                for name, v in (("read_bps", r.read_bps), ("write_bps", r.write_bps),
                                ("read_iops", r.read_iops), ("write_iops", r.write_iops)):
                    if v is not None:
                        self._write(f"blkio.throttle.{name}_device", f"{r.device} {v}")

    def read_limit(self, concern: str, out: dict) -> None:
        if concern == "memory":
            v = fs.read_int(self.path + "/memory.limit_in_bytes")
            out["memory"] = None if v is None or v >= (1 << 62) else v
        elif concern == "pids":
            out["pids"] = fs.read_int(self.path + "/pids.max")
        elif concern == "cpu":
            q = fs.read_int(self.path + "/cpu.cfs_quota_us")
            per = fs.read_int(self.path + "/cpu.cfs_period_us") or CPU_PERIOD_US
            out["cpus"] = None if q is None or q < 0 else q / per

    # ---- the running jail -------------------------------------------------
    def cpu_usage_ns(self) -> int | None:
        return fs.read_int(self.path + "/cpuacct.usage")

    def oom_kills(self) -> int:
        return fs.flat(self.path + "/memory.oom_control").get("oom_kill", 0)

    def pids_current(self) -> int | None:
        return fs.read_int(self.path + "/pids.current")

    def memory_current(self) -> int | None:
        return fs.read_int(self.path + "/memory.usage_in_bytes")

    def stats(self, usage: Usage) -> None:
        p, c = self.path, self.concerns
        if "usage" in c:
            user = fs.read_int(p + "/cpuacct.usage_user")
            if user is not None:
                usage.cpu_user_s = user / 1e9
                usage.cpu_sys_s = (fs.read_int(p + "/cpuacct.usage_sys") or 0) / 1e9
        if "memory" in c:
            usage.oom_kills = self.oom_kills()
            peak = fs.read_int(p + "/memory.max_usage_in_bytes")
            if peak is not None:
                usage.memory_peak_bytes = peak
        if "pids" in c:
            usage.pids_max_hits = fs.flat(p + "/pids.events").get("max", 0)
            peak = fs.read_int(p + "/pids.peak")
            if peak is not None:
                usage.pids_peak = peak
        if "io" in c:
            try:
                text = fs.read(p + "/blkio.throttle.io_service_bytes")
            except FileNotFoundError:
                text = None
            if text is not None:
                r = w = 0
                for line in text.splitlines():
                    parts = line.split()
                    if len(parts) == 3 and parts[1] == "Read":
                        r += int(parts[2])
                    elif len(parts) == 3 and parts[1] == "Write":
                        w += int(parts[2])
                usage.io_read_bytes, usage.io_write_bytes = r, w

    # ---- the end ----------------------------------------------------------
    def populated(self) -> bool:
        return bool(fs.procs(self.path))

    def freeze(self, frozen: bool) -> bool:
        state = self.path + "/freezer.state"
        try:
            fs.write(state, "FROZEN" if frozen else "THAWED")
        except FileNotFoundError:
            return False
        if frozen:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and fs.read(state).strip() != "FROZEN":
                time.sleep(0.001)
        return True

    def kill(self) -> bool:
        """One round: freeze (freezer) or stop forks (pids), SIGKILL each pid, thaw."""
        if "freeze" in self.concerns:
            frozen = self.freeze(True)
        else:
            frozen = False
            if "pids" in self.concerns:
                try:
                    fs.write(self.path + "/pids.max", "0")
                except OSError:
                    pass
        for pid in fs.procs(self.path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if frozen:
            self.freeze(False)
        return True
