"""The one small interface every driver implements, and the data it trades in.

A run cgroup is made of *parts*: one directory per hierarchy it lives in
(cgroup v2: one part; v1: one per controller hierarchy; hybrid: the v1
parts plus a controller-less part in the unified hierarchy).  Each part
implements the same operations for the concerns it owns; RunCgroup
(hybrid.py) routes every concern to the part that owns it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The jail's own stages that live in the run cgroup beside the payload: the
# intermediate process and the jail's PID 1.  ``limits.pids`` counts the
# payload's processes and threads, so the pids limit written is pids + this,
# and pids_peak is reported without them.
JAIL_TASKS = 2

CPU_PERIOD_US = 100_000


class CgroupError(Exception):
    """A cgroup operation failed: what, where, why, and how to fix it."""

    def __init__(self, op: str, message: str, path: str | None = None,
                 errno: int | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.op, self.message, self.path, self.errno, self.fix = op, message, path, errno, fix

    def __str__(self) -> str:
        where = f" {self.path}" if self.path else ""
        text = f"{self.op}{where}: {self.message}"
        return f"{text} ({self.fix})" if self.fix else text

    @classmethod
    def from_oserror(cls, op: str, e: OSError, path: str | None = None,
                     fix: str | None = None) -> "CgroupError":
        return cls(op, e.strerror or str(e), path=path or e.filename, errno=e.errno, fix=fix)


class CgroupUnavailable(CgroupError):
    """No usable cgroup for this process (no hierarchy, no delegation, no permission)."""


@dataclass(frozen=True)
class IORule:
    device: str                       # "MAJ:MIN" of a whole disk
    read_bps: int | None = None
    write_bps: int | None = None
    read_iops: int | None = None
    write_iops: int | None = None


@dataclass(frozen=True)
class Spec:
    """The limits one run cgroup gets (None: no limit on that resource)."""
    cpus: float | None = None
    memory: int | None = None
    pids: int | None = None           # the payload's tasks; JAIL_TASKS are added
    io: tuple[IORule, ...] = ()

    def controllers(self) -> set[str]:
        """Controllers the limits need (generic names: cpu, memory, pids, io)."""
        need = set()
        if self.cpus is not None:
            need.add("cpu")
        if self.memory is not None:
            need.add("memory")
        if self.pids is not None:
            need.add("pids")
        if self.io:
            need.add("io")
        return need


@dataclass
class Usage:
    """What a run used, read from its cgroup (None: not measured on this host)."""
    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    memory_peak_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    pids_peak: int | None = None
    oom_kills: int = 0
    pids_max_hits: int = 0


class Part:
    """One directory of a run cgroup in one hierarchy.  Subclasses: v1.V1Part, v2.V2Part.

    ``concerns`` are the generic names this part answers for: memory, pids,
    cpu (limit), usage (CPU time), io, kill, freeze.
    """
    version = 0

    def __init__(self, path: str, concerns: frozenset[str]) -> None:
        self.path = path
        self.concerns = concerns

    # setup
    def create(self) -> None: raise NotImplementedError
    def apply(self, spec: Spec) -> None: raise NotImplementedError
    def read_limit(self, concern: str, out: dict) -> None: raise NotImplementedError
    # the running jail
    def cpu_usage_ns(self) -> int | None: raise NotImplementedError
    def oom_kills(self) -> int: raise NotImplementedError
    def pids_current(self) -> int | None: raise NotImplementedError
    def memory_current(self) -> int | None: raise NotImplementedError
    def stats(self, usage: Usage) -> None: raise NotImplementedError
    # the end
    def freeze(self, frozen: bool) -> bool: raise NotImplementedError
    def kill(self) -> bool: raise NotImplementedError
    def populated(self) -> bool: raise NotImplementedError

    @property
    def procs_file(self) -> str:
        return self.path + "/cgroup.procs"

    @property
    def self_join_file(self) -> str:
        """Where a single-threaded process writes "0" to move itself in (see RunCgroup.join_files)."""
        return self.procs_file

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, {sorted(self.concerns)})"
