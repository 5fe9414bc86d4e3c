"""`hivejail doctor`'s cgroup section: which case applies here, and why not."""

from __future__ import annotations

import os
from typing import Any

from .base import CgroupError, CgroupUnavailable
from .detection import detect
from .hybrid import DELEGATION_HOWTO, MODE_ENV, PARENT_ENV, open_driver, parent_name

CASES = {
    "parent": "runs get cgroups below hivejail's own parent cgroup",
    "delegated": "runs get cgroups below this process's delegated cgroup",
    "rootless-unavailable": "rootless without a delegated cgroup: by policy, runs are refused "
                            "(limits.require_cgroups: true) or get rlimits only (the rootless "
                            "default; the result's alerts say so)",
    "none": "no cgroups: runs are refused unless limits.require_cgroups is false",
    "broken": "cgroups are present but hivejail cannot use them",
}


def describe(parent: str | None = None) -> dict[str, Any]:
    host = detect()
    rootless = os.geteuid() != 0
    out: dict[str, Any] = {"ok": False, "mode": host.mode}
    if host.notes:
        out["notes"] = list(host.notes)
    mounts = {}
    if host.unified is not None:
        mounts["unified"] = {"mount": host.unified.mount, "own": host.unified.own,
                             "controllers": sorted(host.unified.controllers)}
    for h in host.v1:
        mounts[",".join(sorted(h.controllers))] = {"mount": h.mount, "own": h.own}
    out["hierarchies"] = mounts
    try:
        name = parent_name(parent)
        drv = open_driver(name)
    except CgroupUnavailable as e:
        out["case"] = "none" if host.mode == "none" else "rootless-unavailable" if rootless else "broken"
        out["detail"] = f"{host.mode}: {CASES[out['case']]} ({e.message})"
        out["fix"] = e.fix or DELEGATION_HOWTO
        out["how_to_delegate"] = DELEGATION_HOWTO
        return out
    except CgroupError as e:
        out.update(case="broken", detail=str(e), fix=e.fix)
        return out
    delegated = any(h.delegated for h in drv.homes)
    out["case"] = "delegated" if delegated else "parent"
    out["ok"] = True
    out["layout"] = drv.layer()
    out["run_parents"] = drv.parents()
    out["parent_setting"] = (f"{name} (from ${PARENT_ENV})" if os.environ.get(PARENT_ENV) and not parent
                             else name)
    limits = {}
    for concern, label in (("memory", "memory"), ("pids", "pids"), ("cpu", "cpus"), ("io", "io"),
                           ("usage", "cpu_time")):
        home = drv.route.get(concern)
        limits[label] = (f"{'v2' if home.h.version == 2 else 'v1'} {home.h.mount}" if home
                         else f"unavailable: {drv.unusable.get(concern, '?')}")
    out["limits"] = limits
    kill = drv.route.get("kill")
    out["kill"] = ("cgroup.kill" if kill and kill.h.version == 2 else
                   "freezer + SIGKILL" if kill and "freeze" in kill.concerns else
                   "pids.max=0 + SIGKILL" if kill else "SIGKILL each pid")
    missing = [k for k, v in limits.items() if v.startswith("unavailable")]
    where = ", ".join(drv.parents())
    out["detail"] = (f"{host.mode}: {CASES[out['case']]} ({where}); layout {out['layout']}"
                     + (f"; not available: {', '.join(missing)}" if missing else ""))
    if not delegated:
        own = host.unified.own if host.unified else None
        out["delegation"] = (f"this process's cgroup ({own or 'none'}) is not delegated to it; "
                             "to have runs placed below it, " + DELEGATION_HOWTO)
    if missing:
        out["fix"] = "policies that set " + ", ".join(missing) + " are refused on this host"
    if drv.mode == "hybrid" and any(h.h.version == 2 for h in drv.homes):
        out["note"] = ("each run moves into the unified hierarchy too (for cgroup.kill); the "
                       "kernel makes that move wait an RCU grace period (~10 ms) after an idle "
                       f"spell; {MODE_ENV}=v1 uses the v1 freezer instead (~1 ms per run)")
    return out
