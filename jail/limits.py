"""Resource limits step: the run's own cgroup, made before anything of the jail runs.

    prepare          reap stale runs of dead supervisors; create the run cgroup and
                     write its limits (fail closed: a limit that cannot be set
                     refuses the run); rootless without a delegated cgroup: refuse
                     or run with rlimits only, by limits.require_cgroups
    in_intermediate  join it (plain writes of "0": v1 tasks, v2 cgroup.procs) before the
                     intermediate unshares its namespaces (incl. the cgroup ns),
                     so the whole jail lives in it
    poll             cpu_time of the whole tree (not per process): kill at the limit,
                     status cpu_limit; the first OOM kill stops the whole jail
                     (v2 does so itself with memory.oom.group; v1 has no group OOM)
    finish           usage from the cgroup; memory_limit / pids_limit; alerts
    cleanup          kill whatever is left and remove the cgroup

limits.pids counts the payload's tasks: the jail's own two stages (the
intermediate and PID 1) are added to pids.max and left out of pids_peak.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .ipc import SetupError
from .steps import RunContext, Step

if TYPE_CHECKING:
    from .result import Result


def _fmt_size(n: int) -> str:
    from .units import format_size
    return format_size(n)


class CgroupLimits(Step):
    name = "cgroups"

    def __init__(self, parent: str | None = None, mode: str | None = None) -> None:
        """``parent``/``mode`` override the driver's choice (tests; default: auto)."""
        self.parent, self.mode = parent, mode
        self.cg: Any = None
        self._join: tuple[str, ...] = ()

    # ---- supervisor, before any fork --------------------------------------
    def prepare(self, ctx: RunContext) -> None:
        import cgroups
        from cgroups.base import CgroupError, CgroupUnavailable
        self.cg, self._join = None, ()
        self._cpu_limit_ns = self._cpu_hit = None
        lim = ctx.policy.limits
        require = lim.require_cgroups if lim.require_cgroups is not None else not ctx.rootless
        parent = self.parent or ctx.extra.get("cgroup_parent")
        mode = self.mode or ctx.extra.get("cgroup_mode")
        try:
            driver = cgroups.open_driver(parent, mode)
        except CgroupUnavailable as e:
            if require:
                raise SetupError("supervisor", "use cgroups", e.message, path=e.path,
                                 fix=f"{e.fix}; or set limits.require_cgroups: false to run with "
                                     "rlimits only") from None
            ctx.layers["cgroups"] = None
            ctx.alert("cgroups_unavailable", "warning", reason=e.message,
                      enforced="rlimits only: cpu_time per process (RLIMIT_CPU), open_files, "
                               "file_size; no memory, pids, cpus or io limit",
                      fix=e.fix)
            return
        except CgroupError as e:
            raise SetupError("supervisor", e.op, e.message, path=e.path, fix=e.fix) from None
        try:
            reaped = driver.reap()
            if reaped:
                ctx.alert("cgroups_reaped", "info", runs=reaped,
                          detail="run cgroups of dead supervisors were killed and removed")
            spec = self._spec(ctx)
            cg = driver.run_cgroup(ctx.run_id)
            self.cg = cg                          # cleanup removes a half-made one
            cg.create()
            cg.apply(spec)
        except CgroupError as e:
            raise SetupError("supervisor", e.op, e.message, path=e.path, errno=e.errno,
                             fix=e.fix) from None
        self._join = cg.join_files
        if lim.cpu_time is not None:
            self._cpu_limit_ns = int(lim.cpu_time * 1e9)
        layer = driver.layer()
        if lim.io and (lim.io.read_bps or lim.io.write_bps or lim.io.read_iops or lim.io.write_iops):
            layer += " io:" + (",".join(r.device for r in spec.io) or "no disk behind rw mounts")
        ctx.layers["cgroups"] = layer
        ctx.extra["cgroup"] = cg
        # A supervisor that can fork the intermediate straight into this directory
        # (clone3 CLONE_INTO_CGROUP) sets ctx.extra["cgroup_born_in"] to it first.
        ctx.extra["cgroup_clone_into"] = cg.v2_path

    def _spec(self, ctx: RunContext) -> Any:
        from cgroups.base import CgroupError, IORule, Spec
        from cgroups.io import device_of
        lim = ctx.policy.limits
        io = lim.io
        rules: list[IORule] = []
        if any(v is not None for v in (io.read_bps, io.write_bps, io.read_iops, io.write_iops)):
            named = bool(io.devices)
            paths = list(io.devices) or [m.source for m in ctx.policy.filesystem.mounts
                                         if m.mode == "rw"]
            seen: list[str] = []
            for path in paths:
                try:
                    dev = device_of(path)
                except OSError as e:
                    raise CgroupError("find the block device", e.strerror or str(e), path=path,
                                      fix="limits.io.devices must name existing paths") from None
                if dev is None:
                    if named:
                        raise CgroupError("find the block device", "not on a block device",
                                          path=path, fix="name a disk or a path on a disk in "
                                                         "limits.io.devices")
                    continue                     # tmpfs & co: no disk IO to throttle
                if dev not in seen:
                    seen.append(dev)
            rules = [IORule(d, io.read_bps, io.write_bps, io.read_iops, io.write_iops) for d in seen]
        return Spec(cpus=lim.cpus, memory=lim.memory, pids=lim.pids, io=tuple(rules))

    # ---- intermediate child, before unshare: keep it to plain syscalls -----
    def in_intermediate(self, ctx: RunContext) -> None:
        # The intermediate is single-threaded (a fresh fork): "0" moves all of it.
        born_in = ctx.extra.get("cgroup_born_in")
        for path in self._join:
            if born_in and os.path.dirname(path) == born_in:
                continue                      # forked into it: no migration needed
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            except OSError as e:
                raise SetupError.from_oserror("intermediate", "join the run cgroup", e,
                                              path=path) from None

    # ---- supervisor wait loop ---------------------------------------------
    def poll(self, ctx: RunContext) -> None:
        cg = self.cg
        if cg is None:
            return
        try:
            if self._cpu_limit_ns is not None:
                used = cg.cpu_usage_ns()
                if used is not None and used >= self._cpu_limit_ns:
                    self._cpu_hit = used
                    ctx.terminate("cpu_limit", f"CPU time limit of {self._cpu_limit_ns / 1e9:g}s "
                                               f"reached ({used / 1e9:.2f}s used by the whole jail);"
                                               " the jail was killed")
                    return
            if cg.spec is not None and cg.spec.memory is not None and cg.oom_kills():
                ctx.terminate("memory_limit", self._memory_reason(cg.spec.memory, cg.oom_kills()))
                return
            if cg.needs_sampling:
                cg.sample()
        except OSError:
            pass

    @staticmethod
    def _memory_reason(limit: int, kills: int) -> str:
        return (f"memory limit of {_fmt_size(limit)} reached: the kernel's OOM killer killed "
                f"{kills} process{'es' if kills != 1 else ''}; the whole jail was stopped")

    # ---- supervisor, after the payload ended --------------------------------
    def finish(self, ctx: RunContext, result: "Result") -> None:
        cg = self.cg
        if cg is None:
            return
        u = cg.usage()
        if u.cpu_user_s is not None:
            result.cpu_user_s = round(u.cpu_user_s, 6)
            result.cpu_sys_s = round(u.cpu_sys_s or 0.0, 6)
        result.memory_peak_bytes = u.memory_peak_bytes
        result.io_read_bytes = u.io_read_bytes
        result.io_write_bytes = u.io_write_bytes
        result.pids_peak = u.pids_peak
        lim = ctx.policy.limits
        if self._cpu_hit is not None:
            ctx.alert("cpu_limit", "warning", limit_s=lim.cpu_time,
                      used_s=round(self._cpu_hit / 1e9, 3))
        if u.oom_kills and lim.memory is not None:
            ctx.alert("memory_limit", "warning", limit_bytes=lim.memory, oom_kills=u.oom_kills,
                      peak_bytes=u.memory_peak_bytes)
            result.explain("memory_limit", self._memory_reason(lim.memory, u.oom_kills))
        if u.pids_max_hits and lim.pids is not None:
            ctx.alert("pids_limit", "warning", limit=lim.pids, refused_forks=u.pids_max_hits,
                      peak=u.pids_peak)
            result.explain("pids_limit", f"the process limit of {lim.pids} was reached: "
                                         f"{u.pids_max_hits} fork{'s were' if u.pids_max_hits != 1 else ' was'}"
                                         f" refused and the payload failed")

    # ---- supervisor, always ---------------------------------------------------
    def cleanup(self, ctx: RunContext) -> None:
        cg, self.cg = self.cg, None
        if cg is not None:
            ctx.extra.pop("cgroup", None)
            cg.remove()
