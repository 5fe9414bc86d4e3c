"""What cgroups this host has: unified (v2), hybrid, legacy (v1), or none.

Reads /proc/self/mountinfo (where each hierarchy is mounted, and which
controllers each v1 hierarchy carries), /proc/self/cgroup (where this
process lives in each) and the unified root's cgroup.controllers.  Nothing
is written.  ``detect()`` caches its answer for the process; pass
``fresh=True`` after moving between cgroups.

Modes:
    v2      one cgroup2 hierarchy holds the controllers (or there are no v1 ones)
    hybrid  v1 controller hierarchies plus a cgroup2 mount (systemd's "hybrid")
    v1      v1 controller hierarchies only
    none    no cgroup filesystem is mounted
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

# The controllers hivejail uses, by their generic name -> v1 controller name.
V1_NAMES = {"cpu": "cpu", "usage": "cpuacct", "memory": "memory", "pids": "pids",
            "io": "blkio", "freeze": "freezer"}
V2_NAMES = {"cpu": "cpu", "memory": "memory", "pids": "pids", "io": "io"}

LEAF = "supervisor"        # where a delegated supervisor moves itself (no internal processes)


@dataclass(frozen=True)
class Hierarchy:
    version: int                       # 1 or 2
    mount: str                         # mount point
    root: str                          # the hierarchy path mounted there ("/" usually)
    controllers: frozenset[str]        # v1: from the mount options; v2: root's cgroup.controllers
    own: str | None                    # this process's cgroup in it (hierarchy path)

    def dir(self, cgpath: str) -> str | None:
        """The directory of a hierarchy path, or None if it is outside this mount."""
        root = self.root.rstrip("/")
        if cgpath != root and not cgpath.startswith(root + "/"):
            return None
        rel = cgpath[len(root):].strip("/")
        return os.path.join(self.mount, rel) if rel else self.mount

    @property
    def own_dir(self) -> str | None:
        return self.dir(self.own) if self.own is not None else None


@dataclass(frozen=True)
class HostCgroups:
    mode: str                                          # v2 | hybrid | v1 | none
    v1: tuple[Hierarchy, ...] = ()
    unified: Hierarchy | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    def v1_for(self, controller: str) -> Hierarchy | None:
        for h in self.v1:
            if controller in h.controllers:
                return h
        return None

    @property
    def v1_controllers(self) -> set[str]:
        return {c for h in self.v1 for c in h.controllers}


_cache: HostCgroups | None = None
_lock = threading.Lock()


def detect(fresh: bool = False) -> HostCgroups:
    global _cache
    with _lock:
        if _cache is None or fresh:
            _cache = _detect()
        return _cache


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _known_controllers() -> set[str]:
    try:
        with open("/proc/cgroups") as f:
            return {line.split()[0] for line in f if line.strip() and not line.startswith("#")}
    except OSError:
        return set(V1_NAMES.values())


def _own_cgroups() -> tuple[dict[str, str], str | None]:
    """(v1 controller -> path, unified path) from /proc/self/cgroup."""
    v1: dict[str, str] = {}
    unified = None
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                hid, ctrls, path = line.rstrip("\n").split(":", 2)
                if hid == "0" and ctrls == "":
                    unified = path
                else:
                    for c in ctrls.split(","):
                        if c and not c.startswith("name="):
                            v1[c] = path
    except OSError:
        pass
    return v1, unified


def _detect() -> HostCgroups:
    known = _known_controllers()
    own_v1, own_unified = _own_cgroups()
    v1: dict[frozenset[str], Hierarchy] = {}
    unified: Hierarchy | None = None
    notes: list[str] = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError as e:
        return HostCgroups("none", notes=(f"cannot read /proc/self/mountinfo: {e.strerror}",))
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, superopts = rfields[0], rfields[2]
        root, mount = _unescape(fields[3]), _unescape(fields[4])
        if fstype == "cgroup2":
            if unified is None or (mount == "/sys/fs/cgroup" or
                                   (mount.startswith("/sys/fs/cgroup") and
                                    not unified.mount.startswith("/sys/fs/cgroup"))):
                unified = Hierarchy(2, mount, root, _v2_controllers(mount), own_unified)
        elif fstype == "cgroup":
            ctrls = frozenset(o for o in superopts.split(",") if o in known)
            if not ctrls:
                continue            # a named hierarchy (name=systemd): no controllers, not ours
            if ctrls in v1 and v1[ctrls].mount.startswith("/sys/fs/cgroup/"):
                continue            # a second mount of the same hierarchy
            own = next((own_v1[c] for c in ctrls if c in own_v1), None)
            v1[ctrls] = Hierarchy(1, mount, root, ctrls, own)
    hier = tuple(sorted(v1.values(), key=lambda h: h.mount))
    if unified is not None and not hier:
        mode = "v2"
    elif unified is not None:
        mode = "hybrid"
    elif hier:
        mode = "v1"
    else:
        mode = "none"
        notes.append("no cgroup or cgroup2 filesystem is mounted")
    return HostCgroups(mode, hier, unified, tuple(notes))


def _v2_controllers(mount: str) -> frozenset[str]:
    try:
        with open(os.path.join(mount, "cgroup.controllers")) as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def is_delegated(path: str) -> bool:
    """True if this cgroup directory was handed to this process's user to manage.

    systemd (v251+) marks a unit's cgroup with Delegate=yes by the xattr
    trusted.delegate=1 (system manager) or user.delegate=1 (user manager).
    For an unprivileged caller, a directory it owns whose cgroup.procs it may
    write is delegated by definition (that is how delegation is granted).
    """
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name).strip(b"\0\n ") == b"1":
                return True
        except OSError:
            pass
    euid = os.geteuid()
    if euid != 0:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_uid == euid and os.access(path, os.W_OK)
                and os.access(os.path.join(path, "cgroup.procs"), os.W_OK))
    return False


def delegated_dir(h: Hierarchy | None) -> str | None:
    """This process's delegated cgroup in a hierarchy (its own, or the one above
    its LEAF after it moved itself there), or None."""
    if h is None or h.own is None or h.own == "/":
        return None
    d = h.own_dir
    if d is None:
        return None
    if os.path.basename(d) == LEAF and is_delegated(os.path.dirname(d)):
        return os.path.dirname(d)
    return d if is_delegated(d) else None
