"""Is this machine fit to test the jail's cgroup v2 limits?

Checks the kernel itself, with plain subprocesses and no hivejail code:
cgroup2 is the only hierarchy, the controllers are enabled, and memory.max,
pids.max, cpu.max and io.max really limit a process; cgroup.kill empties a
cgroup. If these fail, the jail's limit tests could not mean anything.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integration.tests import cgutil

PY = sys.executable


def test_kernel_release(kernel_release, in_vm):
    if in_vm:
        assert kernel_release == os.environ["HIVEJAIL_VM_KERNEL"], "the guest booted another kernel"
    major, minor = (int(x) for x in kernel_release.split(".")[:2])
    assert (major, minor) >= (5, 14), "cgroup.kill needs Linux 5.14 or newer"


def test_cgroup2_is_the_only_hierarchy(cgroup_root):
    with open("/proc/self/mounts") as f:
        v1 = [line.split()[1] for line in f if line.split()[2] == "cgroup"]
    assert v1 == [], f"cgroup v1 hierarchies are mounted: {v1}"
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("0::"), lines
    # /proc/cgroups: no controller is bound to a v1 hierarchy.
    rows = [ln.split() for ln in Path("/proc/cgroups").read_text().splitlines()[1:]]
    bound = [r[0] for r in rows if r[1] != "0"]
    assert bound == [], f"controllers on v1 hierarchies: {bound}"


def test_v1_controllers_cannot_be_mounted(in_vm, tmp_path):
    if not in_vm:
        pytest.skip("tries a v1 mount: only inside the guest")
    target = tmp_path / "v1"
    target.mkdir()
    p = subprocess.run(["mount", "-t", "cgroup", "-o", "memory", "none", str(target)],
                       capture_output=True, text=True)
    if p.returncode == 0:
        subprocess.run(["umount", str(target)])
    assert p.returncode != 0, "a v1 memory hierarchy could be mounted (cgroup_no_v1=all missing?)"


def test_controllers_enabled(cgroup_root, cgroup_parent):
    for c in cgutil.REQUIRED_CONTROLLERS:
        assert c in cgutil.controllers(cgroup_root, "cgroup.controllers")
        assert c in cgutil.controllers(cgroup_root), f"{c} not in the root's subtree_control"
        assert c in cgutil.controllers(cgroup_parent, "cgroup.controllers")
    probe = cgroup_parent / "probe"
    probe.mkdir()
    try:
        for name in ("memory.max", "memory.events", "pids.max", "pids.events", "cpu.max",
                     "cpu.stat", "io.max", "io.stat", "cgroup.kill", "cgroup.freeze"):
            assert (probe / name).exists(), f"{name} missing in a child cgroup"
    finally:
        probe.rmdir()


def test_memory_max_oom_kills_big_allocation(make_cgroup):
    files = {"memory.max": "50M"}
    cg = make_cgroup(**files)
    if (cg / "memory.swap.max").exists():
        cgutil.write(cg, "memory.swap.max", "0")
    assert (cg / "memory.max").read_text().strip() == str(50 << 20)
    small, _ = cgutil.run(cg, [PY, "-c", "x = b'\\x01' * (10 << 20)"])
    assert small.returncode == 0, f"10 MB under a 50 MB limit failed: {small.stderr}"
    assert cgutil.read_flat(cg / "memory.events")["oom_kill"] == 0
    big, _ = cgutil.run(cg, [PY, "-c", "x = b'\\x01' * (200 << 20); print('survived')"])
    assert big.returncode == -9, f"200 MB under a 50 MB limit: status {big.returncode}, {big.stdout!r}"
    events = cgutil.read_flat(cg / "memory.events")
    assert events["oom_kill"] >= 1, events
    assert events["max"] >= 1, events
    if (cg / "memory.peak").exists():
        assert int((cg / "memory.peak").read_text()) <= 50 << 20


FORKER = r"""
import os, sys
r, w = os.pipe()
ok = 0
err = None
for _ in range(20):
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # wait until the parent closes the pipe
        os._exit(0)
    ok += 1
os.close(w)
for _ in range(ok):
    os.wait()
print(ok, err)
"""


def test_pids_max_stops_forks(make_cgroup):
    cg = make_cgroup(**{"pids.max": "5"})
    p, _ = cgutil.run(cg, [PY, "-c", FORKER])
    assert p.returncode == 0, p.stderr
    ok, err = p.stdout.split()
    assert (int(ok), err) == (4, "11"), f"forks before EAGAIN: {p.stdout!r} (want 4 and errno 11)"
    assert cgutil.read_flat(cg / "pids.events")["max"] >= 1


def test_cpu_max_throttles(make_cgroup):
    cg = make_cgroup(**{"cpu.max": "20000 100000"})  # 20 % of one CPU
    spin = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 3: pass"
    before = cgutil.read_flat(cg / "cpu.stat")
    p, wall = cgutil.run(cg, [PY, "-c", spin])
    assert p.returncode == 0, p.stderr
    stat = cgutil.read_flat(cg / "cpu.stat")
    used = (stat["usage_usec"] - before["usage_usec"]) / 1e6
    assert stat["nr_throttled"] >= 10, stat
    assert used / wall < 0.35, f"{used:.2f} s of CPU in {wall:.2f} s under a 20 % quota"
    assert used / wall > 0.05, f"only {used:.2f} s of CPU in {wall:.2f} s"


def _direct_write(cg: Path, target: Path, mb: int) -> float:
    p, wall = cgutil.run(cg, ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mb}",
                              "oflag=direct", "conv=fsync"])
    assert p.returncode == 0, p.stderr
    return wall


def test_io_max_throttles_direct_writes(make_cgroup, scratch_dir, scratch_devnum):
    free = make_cgroup()
    fast = _direct_write(free, scratch_dir / f"free-{os.getpid()}", 4)
    cg = make_cgroup(**{"io.max": f"{scratch_devnum} wbps={1 << 20}"})
    assert f"wbps={1 << 20}" in (cg / "io.max").read_text()
    target = scratch_dir / f"throttled-{os.getpid()}"
    slow = _direct_write(cg, target, 4)
    try:
        assert fast < 2.0, f"4 MB of unthrottled direct writes took {fast:.1f} s"
        assert slow >= 2.5, f"4 MB at 1 MiB/s took only {slow:.1f} s (unthrottled: {fast:.1f} s)"
        wbytes = int(cgutil.read_nested(cg / "io.stat").get(scratch_devnum, {}).get("wbytes", 0))
        assert wbytes >= 4 << 20, f"io.stat counts {wbytes} bytes written to {scratch_devnum}"
    finally:
        target.unlink(missing_ok=True)
        (scratch_dir / f"free-{os.getpid()}").unlink(missing_ok=True)


def test_cgroup_kill_empties_and_removes(make_cgroup):
    cg = make_cgroup()
    procs = [cgutil.spawn(cg, ["sleep", "600"]) for _ in range(3)]
    deadline = time.monotonic() + 30
    while len((cg / "cgroup.procs").read_text().split()) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert cgutil.populated(cg)
    cgutil.kill_and_remove(cg)
    assert [p.wait(timeout=30) for p in procs] == [-9, -9, -9]
    assert not cg.exists()
