"""hivejail's cgroups: detection, drivers for v2 / v1 / hybrid hosts, reaping.

    import cgroups
    cgroups.detect().mode                 # "v2" | "hybrid" | "v1" | "none"
    cgroups.describe()                    # for `hivejail doctor`
    drv = cgroups.open_driver()           # raises CgroupUnavailable (rootless, no delegation…)
    drv.reap()                            # stale runs of dead supervisors
    cg = drv.run_cgroup(run_id)
    cg.create(); cg.apply(cgroups.Spec(memory=100 << 20, pids=16))
    cg.add_process(0)                     # in the child: plain writes to each cgroup.procs
    cg.cpu_usage_ns(); cg.usage(); cg.freeze(); cg.kill_all(); cg.remove()

Run parents: $HIVEJAIL_CGROUP_PARENT or the ``parent`` option (default
"hivejail"), or this process's own cgroup when it is delegated to it.
Nothing here touches a cgroup hivejail did not create (or was not handed).

This module is cheap to import: everything loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["CgroupError", "CgroupUnavailable", "Driver", "HostCgroups", "IORule", "RunCgroup",
           "Spec", "Usage", "describe", "detect", "devices_for", "open_driver", "reap"]

if TYPE_CHECKING:
    from .base import CgroupError, CgroupUnavailable, IORule, Spec, Usage
    from .detection import HostCgroups, detect
    from .doctor import describe
    from .hybrid import Driver, RunCgroup, open_driver
    from .io import devices_for

_WHERE = {"CgroupError": "base", "CgroupUnavailable": "base", "IORule": "base", "Spec": "base",
          "Usage": "base", "HostCgroups": "detection", "detect": "detection", "describe": "doctor",
          "Driver": "hybrid", "RunCgroup": "hybrid", "open_driver": "hybrid",
          "devices_for": "io"}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(name)
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


def reap(parent: str | None = None, mode: str | None = None) -> list[str]:
    """Remove the run cgroups of dead supervisors; returns their names."""
    from .hybrid import open_driver
    return open_driver(parent, mode).reap()
