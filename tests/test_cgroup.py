"""The cgroups package on this host: detection, the doctor's view, the v1 driver.

The limit tests proper (shared with the cgroup-v2 guest) are in
test_limits.py; these check what only this host can show: that detection
agrees with the mount table, that the pure-v1 driver (forced on a hybrid
host) limits, kills and cleans up for real, and that a missing controller
refuses the run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
from test_limits import PARENT, driver, jail_cgroup_parent, jailrun, runs_left  # noqa: F401

import cgroups
from cgroups import reaper
from cgroups.base import CgroupError, IORule, Spec
from cgroups.detection import HostCgroups, detect
from cgroups.hybrid import Driver, open_driver

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs as root")

MODE = detect().mode
needs_v1 = pytest.mark.skipif(MODE not in ("v1", "hybrid"), reason=f"this host is {MODE}")


def _mount_table() -> tuple[set[str], str | None]:
    v1, unified = set(), None
    known = {line.split()[0] for line in open("/proc/cgroups") if not line.startswith("#")}
    for line in open("/proc/self/mounts"):
        _src, mnt, fstype, opts = line.split()[:4]
        if fstype == "cgroup":
            v1 |= {o for o in opts.split(",") if o in known}
        elif fstype == "cgroup2" and unified is None:
            unified = mnt
    return v1, unified


def test_detection_agrees_with_the_mount_table():
    v1, unified = _mount_table()
    host = detect(fresh=True)
    expect = ("hybrid" if v1 and unified else "v1" if v1 else "v2" if unified else "none")
    assert host.mode == expect
    assert host.v1_controllers == v1
    assert (host.unified.mount if host.unified else None) == unified
    for h in host.v1:       # /proc/self/cgroup says where we are in each hierarchy
        assert h.own is not None and h.own_dir is not None and os.path.isdir(h.own_dir)


def test_describe_says_which_case_applies():
    d = cgroups.describe(PARENT)
    assert d["ok"] is True and d["mode"] == MODE and d["case"] == "parent"
    assert all(p.endswith("/" + PARENT) for p in d["run_parents"])
    assert set(d["limits"]) == {"memory", "pids", "cpus", "io", "cpu_time"}
    assert "Delegate=yes" in d["delegation"]
    out = subprocess.run([sys.executable, "-m", "jail.cli", "doctor", "--json"],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    section = json.loads(out.stdout)["cgroups"]
    assert section["ok"] is True and section["mode"] == MODE


def test_layers_name_the_driver(jailrun):
    res = jailrun(["/bin/true"], limits="memory: 64M")
    layer, mode = res.layers["cgroups"], driver().mode
    if mode == "hybrid":
        assert re.fullmatch(r"v1:memory,pids,cpu,io\+unified:usage,kill,freeze", layer), layer
    elif mode == "v1":
        assert layer == "v1:memory,pids,cpu,io,usage,kill,freeze", layer
    else:
        assert layer.startswith("v2:memory,pids"), layer


# ---- the pure v1 driver (a legacy host), forced on this host ------------------------

@needs_v1
def test_v1_driver_memory_and_pids(jailrun):
    opts = {"cgroup_mode": "v1"}
    mem = jailrun(["/usr/bin/python3", "-c", "x = 'a' * (500 << 20)"], limits="memory: 100M",
                  options=opts)
    assert mem.status == "memory_limit", mem.reason
    assert "kill" in mem.layers["cgroups"] and "unified" not in mem.layers["cgroups"]
    assert all("/unified/" not in p for p in mem.cgroup)
    forks = jailrun(["/usr/bin/python3", "-c", "import os, time\nwhile True:\n"
                     "    if os.fork() == 0: time.sleep(2); os._exit(0)"],
                    limits="pids: 8", options=opts)
    assert forks.status == "pids_limit" and forks.pids_peak == 8, forks.reason
    busy = jailrun(["/usr/bin/python3", "-c", "while True: pass"], limits="cpu_time: 0.5s",
                   options=opts)
    assert busy.status == "cpu_limit" and busy.cpu_user_s > 0.3, busy.reason   # cpuacct
    assert runs_left() == []


@needs_v1
def test_v1_driver_kills_strays_through_the_freezer():
    cg = open_driver(PARENT, mode="v1").run_cgroup("0badcafe03")
    cg.create()
    cg.apply(Spec(pids=8))
    if detect().v1_for("freezer") is not None:       # freeze, kill, thaw: no pid can be reused
        assert "freeze" in cg.route["kill"].concerns
    strays = [subprocess.Popen(["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
                               start_new_session=True) for _ in range(3)]
    try:
        for p in strays:
            cg.add_process(p.pid)
        cg.remove()
        for p in strays:
            assert p.wait(timeout=5) == -signal.SIGKILL
        assert not any(os.path.exists(x) for x in cg.paths)
    finally:
        for p in strays:
            if p.poll() is None:
                p.kill()
                p.wait()


# ---- fail closed --------------------------------------------------------------------

@needs_v1
def test_a_limit_without_its_controller_refuses_the_run():
    host = detect()
    without_blkio = HostCgroups("v1", tuple(h for h in host.v1 if "blkio" not in h.controllers),
                                None)
    drv = Driver(without_blkio, PARENT, "v1")
    cg = drv.run_cgroup("deadbeef04")
    try:
        cg.create()
        with pytest.raises(CgroupError) as e:
            cg.apply(Spec(io=(IORule("254:0", write_bps=1 << 20),)))
        assert "io" in e.value.op and "blkio" in e.value.fix
    finally:
        cg.remove()
    assert not any(os.path.exists(p) for p in cg.paths)


def test_a_vanished_parent_is_made_again(jailrun):
    drv = driver()
    drv.ensure_parents()
    assert drv.remove_parents()                     # e.g. an operator cleaned up
    res = jailrun(["/bin/true"], limits="memory: 64M")
    assert res.status == "ok", res.reason
    assert all(os.path.isdir(p) for p in drv.parents())


def test_run_names_identify_their_supervisor():
    name = reaper.run_name("5f0c2a9e-1d2b-4c3d-8e4f-001122334455")
    m = reaper.NAME_RE.match(name)
    assert m and int(m.group(1)) == os.getpid()
    assert int(m.group(2)) == reaper.proc_starttime(os.getpid())
    assert m.group(3) == "5f0c2a9e1d2b"
    reaper.opened(name)
    assert not reaper.is_stale(name)          # ours and open
    reaper.closed(name)
    assert reaper.is_stale(name)              # ours, but no run of this process has it open
    assert not reaper.is_stale(f"run-{os.getpid()}.{m.group(2)}-zz")   # not our name form
    assert not reaper.is_stale("hivejail") and not reaper.is_stale("run-1-abcdef")


def test_bad_parent_names_are_refused():
    for bad in ("../etc", "/abs", "a/../b", "sp ace", "a//b"):
        with pytest.raises(CgroupError):
            open_driver(bad)


def test_cgroups_import_is_cheap():
    code = textwrap.dedent("""\
        import sys, time
        t = time.perf_counter()
        import cgroups
        print(f"{(time.perf_counter() - t) * 1000:.3f}", sorted(m for m in sys.modules if m.startswith("cgroups")))
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)), check=True).stdout
    ms, mods = out.split(" ", 1)
    assert mods.strip() == "['cgroups']", mods


def test_public_names_stay_functions_after_every_submodule_is_imported():
    import importlib
    import types
    for mod in ("base", "detection", "doctor", "fs", "hybrid", "io", "reaper", "v1", "v2"):
        importlib.import_module(f"cgroups.{mod}")
    for name in cgroups.__all__:
        assert not isinstance(getattr(cgroups, name), types.ModuleType), name
    assert cgroups.detect().mode == MODE
