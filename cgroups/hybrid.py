"""Drivers: where each concern of a run cgroup lives, and the run cgroup itself.

One Driver per host mode, all built from the same parts:

    v2      one V2Part in the unified hierarchy answers for everything
    v1      one V1Part per controller hierarchy; kill by freezer (or pids.max=0)
    hybrid  V1Parts for the limits (where v1 has the controller, else the
            unified hierarchy if it has it), plus a V2Part in the unified
            hierarchy for kill (cgroup.kill), freeze, population events and
            CPU usage (cpu.stat exists there without any controller)

Where runs live, per hierarchy: below this process's own cgroup when that
one is delegated to it (systemd Delegate=yes, or owned by the caller);
otherwise below a parent of the project's own, ``<mount>/<parent>``, parent
being the driver option, else $HIVEJAIL_CGROUP_PARENT, else "hivejail".
An unprivileged caller without a delegated cgroup cannot use a hierarchy.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time

from . import fs, reaper
from .base import JAIL_TASKS, CgroupError, CgroupUnavailable, Part, Spec, Usage
from .detection import V1_NAMES, V2_NAMES, Hierarchy, HostCgroups, delegated_dir, detect
from .v1 import V1Part
from .v2 import V2Part, prepare_parent

DEFAULT_PARENT = "hivejail"
PARENT_ENV = "HIVEJAIL_CGROUP_PARENT"
MODE_ENV = "HIVEJAIL_CGROUP_MODE"
_PARENT_RE = re.compile(r"^[A-Za-z0-9_.@-]+(/[A-Za-z0-9_.@-]+)*$")

LIMIT_CONCERNS = ("memory", "pids", "cpu", "io")
DELEGATION_HOWTO = ("run hivejail with a delegated cgroup: `systemd-run --scope -p Delegate=yes "
                    "hivejail exec …` (as root), `systemd-run --user --scope -p Delegate=yes "
                    "hivejail exec …` (rootless, cgroup v2), or Delegate=yes in the unit "
                    "(hivejail@.service)")


def parent_name(option: str | None = None) -> str:
    name = option or os.environ.get(PARENT_ENV) or DEFAULT_PARENT
    if not _PARENT_RE.match(name) or ".." in name.split("/"):
        raise CgroupError("choose cgroup parent", f"not a safe relative cgroup name: {name!r}",
                          fix=f"use letters, digits, '_', '-', '.' (set {PARENT_ENV})")
    return name


class Home:
    """One hierarchy a run uses: where its runs go, which concerns it answers for."""

    def __init__(self, h: Hierarchy, concerns: set[str], base: str, delegated: bool) -> None:
        self.h, self.concerns, self.base, self.delegated = h, concerns, base, delegated
        self.ready = False
        self.enabled: set[str] = set()     # v2: controllers enabled for the runs
        self.lock = threading.Lock()

    def prepare(self, need_v2: set[str]) -> None:
        """Create the parent (once per process, again if it vanished)."""
        with self.lock:
            missing = [] if self.delegated else _missing_dirs(self.base, self.h.mount)
            if self.h.version == 2:
                self.enabled = prepare_parent(self.base, need_v2, self.delegated)
            else:
                try:
                    os.makedirs(self.base, 0o755, exist_ok=True)
                except OSError as e:
                    raise CgroupError.from_oserror("create parent cgroup", e, path=self.base,
                                                   fix="run as root, or " + DELEGATION_HOWTO) from None
            if missing:
                _created_here(missing)
            self.ready = True


class Driver:
    """Places run cgroups on one host.  ``open_driver()`` returns a cached one."""

    def __init__(self, host: HostCgroups, parent: str, mode: str | None = None) -> None:
        self.host = host
        self.mode = mode or host.mode
        self.parent = parent
        self.euid = os.geteuid()
        self.homes: list[Home] = []
        self.route: dict[str, Home] = {}          # concern -> home
        self.unusable: dict[str, str] = {}        # concern -> why not
        self._place()

    # ---- placement -----------------------------------------------------------
    def _place(self) -> None:
        host, mode = self.host, self.mode
        if mode not in ("v2", "hybrid", "v1"):
            raise CgroupUnavailable("find cgroups", "no cgroup hierarchy is mounted on this host",
                                    fix="mount cgroup2 at /sys/fs/cgroup (every systemd host has it)")
        if mode in ("v2", "hybrid") and host.unified is None:
            raise CgroupUnavailable("find cgroups", f"mode {mode} needs a cgroup2 mount")
        if mode in ("v1", "hybrid") and not host.v1:
            raise CgroupUnavailable("find cgroups", f"mode {mode} needs cgroup v1 hierarchies")
        wanted: dict[str, Hierarchy | None] = {}
        for concern in ("memory", "pids", "cpu", "io"):
            v1 = host.v1_for(V1_NAMES[concern]) if mode in ("v1", "hybrid") else None
            uni = host.unified if (mode != "v1" and host.unified is not None
                                   and V2_NAMES[concern] in host.unified.controllers) else None
            if mode == "v2":
                uni = host.unified        # availability is checked at the parent
            wanted[concern] = v1 or uni
        if mode == "v1":
            wanted["usage"] = host.v1_for("cpuacct")
            wanted["freeze"] = host.v1_for("freezer")
            wanted["kill"] = wanted["freeze"] or wanted["pids"] or wanted["memory"]
        else:
            for concern in ("usage", "kill", "freeze"):
                wanted[concern] = host.unified
        by_mount: dict[str, Home] = {}
        undelegated: set[str] = set()
        for concern, h in wanted.items():
            if h is None:
                self.unusable[concern] = "no hierarchy on this host has the controller"
                continue
            home = by_mount.get(h.mount)
            if home is None:
                base, delegated = self._base(h)
                if base is None:
                    self.unusable[concern] = delegated_reason(h)
                    undelegated.add(concern)
                    continue
                home = by_mount[h.mount] = Home(h, set(), base, delegated)
            home.concerns.add(concern)
        self.homes = sorted(by_mount.values(), key=lambda x: (x.h.version, x.h.mount))
        self.route = {c: home for home in self.homes for c in home.concerns}
        # Rootless: every limit needs a delegated cgroup; half a jail is no jail.
        blocked = [c for c in LIMIT_CONCERNS + ("kill",) if c in undelegated]
        if not self.homes or blocked:
            if blocked:
                mine: dict[str, list[str]] = {}
                for h in {id(wanted[c]): wanted[c] for c in blocked}.values():
                    mine.setdefault(h.own or "?", []).append(os.path.basename(h.mount))
                why = (f"rootless (uid {self.euid}) and this process's cgroups are not delegated "
                       "to it (" + "; ".join(f"{own} in {', '.join(sorted(ms))}"
                                            for own, ms in sorted(mine.items())) + ")")
            else:
                why = "; ".join(sorted(set(self.unusable.values()))) or "no usable hierarchy"
            raise CgroupUnavailable("find cgroups", why, fix=DELEGATION_HOWTO)

    def _base(self, h: Hierarchy) -> tuple[str | None, bool]:
        d = delegated_dir(h)
        if d is not None:
            return d, True
        if self.euid != 0:
            return None, False
        return os.path.join(h.mount, self.parent), False

    # ---- runs ----------------------------------------------------------------
    def run_cgroup(self, run_id: str) -> "RunCgroup":
        return self._run(reaper.run_name(run_id))

    def _run(self, name: str) -> "RunCgroup":
        parts: list[Part] = [(V2Part if home.h.version == 2 else V1Part)(
            os.path.join(home.base, name), frozenset(home.concerns)) for home in self.homes]
        return RunCgroup(self, name, parts)

    def parents(self) -> list[str]:
        return [home.base for home in self.homes]

    def ensure_parents(self) -> list[str]:
        """Create the parents now (runs create them on demand anyway)."""
        for home in self.homes:
            if not home.ready:
                home.prepare({V2_NAMES[c] for c in home.concerns if c in V2_NAMES})
        return self.parents()

    def reap(self) -> list[str]:
        """Kill and remove the run cgroups of dead supervisors under our parents."""
        done = []
        for name in reaper.stale_runs(self.parents()):
            rc = self._run(name)
            rc.created = [p for p in rc.parts if os.path.isdir(p.path)]
            try:
                rc.remove()
                done.append(name)
            except CgroupError:
                pass
        return done

    def remove_parents(self) -> list[str]:
        """rmdir the (non-delegated) parents if empty; for tests and uninstall."""
        gone = []
        for home in self.homes:
            if home.delegated:
                continue
            try:
                os.rmdir(home.base)
                gone.append(home.base)
            except OSError:
                pass
            home.ready = False
        return gone

    def layer(self) -> str:
        """Short description for the result's layers, e.g. v1:memory,pids,cpu,io+unified:kill…"""
        order = ("memory", "pids", "cpu", "io", "usage", "kill", "freeze")
        merged: dict[str, list[str]] = {}
        for home in self.homes:
            label = ("unified" if self.mode == "hybrid" else "v2") if home.h.version == 2 else "v1"
            merged.setdefault(label, []).extend(c for c in home.concerns if c in order)
        text = "+".join(f"{label}:{','.join(sorted(cs, key=order.index))}"
                        for label, cs in merged.items())
        return text + (" delegated" if any(h.delegated for h in self.homes) else "")


class RunCgroup:
    """One run's cgroup: create, apply, join, sample, stats, freeze, kill_all, remove."""

    def __init__(self, driver: Driver, name: str, parts: list[Part]) -> None:
        self.driver, self.name, self.parts = driver, name, parts
        self.route: dict[str, Part] = {c: p for p in parts for c in p.concerns}
        self.created: list[Part] = []
        self.spec: Spec | None = None
        self._pids_seen = 0
        self._mem_seen = 0
        self._sample_pids = self._sample_mem = False

    @property
    def paths(self) -> list[str]:
        return [p.path for p in self.parts]

    @property
    def v2_path(self) -> str | None:
        """The run's directory in the unified hierarchy (for clone3 CLONE_INTO_CGROUP)."""
        return next((p.path for p in self.parts if p.version == 2), None)

    @property
    def join_files(self) -> tuple[str, ...]:
        """Files a single-threaded process writes "0" to, to move itself into the run:
        v1 "tasks" (no global lock, ~0.05 ms each), v2 "cgroup.procs" (the kernel's
        first migration after an idle spell waits an RCU grace period, ~10 ms)."""
        return tuple(p.self_join_file for p in self.parts)

    def create(self) -> None:
        reaper.opened(self.name)
        for home, part in zip(self.driver.homes, self.parts):
            for _attempt in range(3):
                if not home.ready:
                    home.prepare({V2_NAMES[c] for c in home.concerns if c in V2_NAMES})
                try:
                    part.create()
                    self.created.append(part)
                    break
                except FileNotFoundError:
                    home.ready = False           # the parent vanished: make it again
                except OSError as e:
                    raise CgroupError.from_oserror("create run cgroup", e, path=part.path) from None
            else:
                raise CgroupError("create run cgroup", "its parent keeps disappearing", path=part.path)
            if home.h.version == 2:
                self._check_enabled(home, part)

    def _check_enabled(self, home: Home, part: Part) -> None:
        """A v2 part answers only for controllers that are enabled for it."""
        drop = {c for c in ("memory", "pids", "cpu", "io")
                if c in part.concerns and V2_NAMES[c] not in home.enabled}
        if drop:
            part.concerns = part.concerns - drop
            for c in drop:
                self.route.pop(c, None)
                self.driver.unusable.setdefault(
                    c, f"the {V2_NAMES[c]} controller is not available in {home.base}")

    def apply(self, spec: Spec) -> None:
        self.spec = spec
        for concern in sorted(spec.controllers()):
            if concern not in self.route:
                raise CgroupError(f"set the {concern} limit", "this host offers no usable "
                                  f"{concern} controller: " + self.driver.unusable.get(concern, "?"),
                                  fix=f"enable the {V2_NAMES[concern]} controller (cgroup v2) or "
                                      f"mount the {V1_NAMES[concern]} hierarchy (v1), or drop "
                                      f"limits.{'cpus' if concern == 'cpu' else concern} from the policy")
        for part in self.parts:
            part.apply(spec)
        pp = self.route.get("pids")
        mp = self.route.get("memory")
        self._sample_pids = pp is not None and not os.path.exists(pp.path + "/pids.peak")
        self._sample_mem = mp is not None and (
            not os.path.exists(mp.path + ("/memory.peak" if mp.version == 2
                                          else "/memory.max_usage_in_bytes")))

    def add_process(self, pid: int) -> None:
        """Move a process, all its threads, into every part (cgroup.procs)."""
        data = str(pid).encode()
        for f in (p.procs_file for p in self.parts):
            fd = os.open(f, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def read_limits(self) -> dict[str, float | int | None]:
        """The limits the kernel holds for this run, as the policy spells them."""
        out: dict[str, float | int | None] = {}
        for concern in ("memory", "pids", "cpu"):
            part = self.route.get(concern)
            if part is not None:
                part.read_limit(concern, out)
        if out.get("pids") is not None:
            out["pids"] = int(out["pids"]) - JAIL_TASKS
        return out

    # ---- while it runs -------------------------------------------------------
    def cpu_usage_ns(self) -> int | None:
        p = self.route.get("usage")
        return p.cpu_usage_ns() if p else None

    def oom_kills(self) -> int:
        p = self.route.get("memory")
        return p.oom_kills() if p else 0

    @property
    def needs_sampling(self) -> bool:
        return self._sample_pids or self._sample_mem

    def sample(self) -> None:
        """Poll the current use where the kernel keeps no peak (older kernels)."""
        if self._sample_pids:
            n = self.route["pids"].pids_current()
            if n is not None and n > self._pids_seen:
                self._pids_seen = n
        if self._sample_mem:
            n = self.route["memory"].memory_current()
            if n is not None and n > self._mem_seen:
                self._mem_seen = n

    def usage(self) -> Usage:
        u = Usage()
        for part in self.parts:
            try:
                part.stats(u)
            except OSError:
                pass
        if self._sample_pids or self._sample_mem:
            self.sample()
        if u.pids_peak is None and "pids" in self.route:
            u.pids_peak = self._pids_seen or None
            if u.pids_max_hits and self.spec and self.spec.pids is not None:
                u.pids_peak = max(u.pids_peak or 0, self.spec.pids + JAIL_TASKS)  # it hit the max
        if u.memory_peak_bytes is None and "memory" in self.route:
            u.memory_peak_bytes = self._mem_seen or None
        if u.pids_peak is not None:
            u.pids_peak = max(0, u.pids_peak - JAIL_TASKS)
        return u

    # ---- the end -------------------------------------------------------------
    def freeze(self, frozen: bool = True) -> bool:
        p = self.route.get("freeze")
        return p.freeze(frozen) if p else False

    def populated(self) -> bool:
        return any(p.populated() for p in self.created)

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the run cgroup, until it is empty.

        With cgroup.kill (v2, or the unified part on hybrid) the kernel does
        it; v1 freezes first (no pid can exit and be reused while we signal),
        else stops forks with pids.max = 0, and signals each pid.
        """
        start = time.monotonic()
        killer = self.route.get("kill")
        if killer not in self.created:
            killer = None
        delay = 0.0005
        while self.populated():
            now = time.monotonic()
            if now > start + timeout:
                left = sorted({pid for p in self.created for pid in fs.procs(p.path)})
                raise CgroupError("kill the run cgroup", f"processes survive: {left[:10]}",
                                  path=self.created[0].path if self.created else None)
            if killer is not None:
                killer.kill()
            if killer is None or now > start + 0.2:      # something is not in the killer's part
                for part in self.created:
                    if part is not killer:
                        part.kill()
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left, then rmdir every part.  Idempotent."""
        try:
            if self.created:
                self.kill_all(timeout)
            deadline = time.monotonic() + timeout
            for part in reversed(self.created[:]):
                delay = 0.0005
                while True:
                    try:
                        os.rmdir(part.path)
                        break
                    except FileNotFoundError:
                        break
                    except OSError as e:
                        if e.errno != errno.EBUSY or time.monotonic() > deadline:
                            raise CgroupError.from_oserror("remove run cgroup", e, path=part.path) from None
                        self.kill_all(max(0.0, deadline - time.monotonic()))
                        time.sleep(delay)
                        delay = min(delay * 2, 0.02)
                self.created.remove(part)
        finally:
            if not self.created:
                reaper.closed(self.name)


def _missing_dirs(path: str, top: str) -> list[str]:
    out = []
    while path != top and not os.path.isdir(path):
        out.append(path)
        path = os.path.dirname(path)
    return out


_made: list[str] = []


def _created_here(dirs: list[str]) -> None:
    """Parents this process made are removed when it exits, if they are empty then.

    A parent someone else made (an operator's, another supervisor's) stays;
    a busy one stays (rmdir refuses); delegated cgroups are never removed.
    """
    if not _made:
        import atexit
        atexit.register(_remove_made)
    _made.extend(dirs)           # deepest first


def _remove_made() -> None:
    if os.getpid() != _made_pid:
        return
    for d in _made:
        try:
            os.rmdir(d)
        except OSError:
            pass


_made_pid = os.getpid()
_drivers: dict[tuple[str, str | None, int], Driver] = {}
_dlock = threading.Lock()


def open_driver(parent: str | None = None, mode: str | None = None,
                host: HostCgroups | None = None) -> Driver:
    """The driver for this host (cached per parent/mode/euid).

    ``mode`` (else $HIVEJAIL_CGROUP_MODE) forces a layout: "v1" on a hybrid
    host uses the v1 hierarchies only, as a legacy host would (kill through
    the freezer; no v2 migration, so no RCU grace period per run).  Raises
    CgroupUnavailable when no cgroup can be used (no hierarchy; rootless
    without delegation).
    """
    name = parent_name(parent)
    mode = mode or os.environ.get(MODE_ENV) or None
    if mode is not None and mode not in ("v2", "hybrid", "v1"):
        raise CgroupError("choose cgroup mode", f"unknown mode {mode!r}",
                          fix=f"set {MODE_ENV} to v2, hybrid or v1, or unset it")
    key = (name, mode, os.geteuid())
    with _dlock:
        d = _drivers.get(key) if host is None else None
        if d is None:
            d = Driver(host or detect(), name, mode)
            if host is None:
                _drivers[key] = d
        return d


def delegated_reason(h: Hierarchy) -> str:
    return f"{h.own or '?'} in {h.mount} is not delegated to uid {os.geteuid()}"
