"""Run cgroup names, and the reaper of runs whose supervisor died.

A run cgroup is named ``run-<supervisor pid>.<its start time>-<run id>``:
the start time (clock ticks since boot, field 22 of /proc/PID/stat) makes
the owner unique for this boot, so a recycled pid cannot make a dead
supervisor's run look alive, nor a live one's look dead.  The reaper only
looks inside hivejail's own parents, only at names of exactly this form, and
only takes a run whose owner is gone (or is this very process and no longer
has the run open).  It kills what is left in it and removes it.
"""

from __future__ import annotations

import os
import re
import threading

NAME_RE = re.compile(r"^run-(\d+)\.(\d+)-([0-9a-f]{6,32})$")

_me: tuple[int, int] | None = None
_active: set[str] = set()           # run names this process has open
_lock = threading.Lock()


def proc_starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def me() -> tuple[int, int]:
    """(pid, start time) of this process (recomputed after a fork)."""
    global _me
    pid = os.getpid()
    if _me is None or _me[0] != pid:
        _me = (pid, proc_starttime(pid) or 0)
    return _me


def run_name(run_id: str) -> str:
    pid, start = me()
    tag = "".join(ch for ch in run_id.lower() if ch in "0123456789abcdef")[:12] or "0"
    tag = tag.ljust(6, "0")
    return f"run-{pid}.{start}-{tag}"


def opened(name: str) -> None:
    with _lock:
        _active.add(name)


def closed(name: str) -> None:
    with _lock:
        _active.discard(name)


def is_stale(name: str) -> bool:
    """True for a well-formed run name whose supervisor is gone."""
    m = NAME_RE.match(name)
    if not m:
        return False
    pid, start = int(m.group(1)), int(m.group(2))
    if (pid, start) == me():
        with _lock:
            return name not in _active
    return proc_starttime(pid) != start


def stale_runs(parent_dirs: list[str]) -> list[str]:
    """Names of stale runs under any of the parent directories."""
    names: set[str] = set()
    for d in parent_dirs:
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        names.update(e for e in entries if e.startswith("run-"))
    return sorted(n for n in names if is_stale(n))
