"""The privileged cgroup v2 test set: fixtures and the fitness gate.

These tests run in two places:

- in the guest that `python3 -m integration` boots (HIVEJAIL_VM=1): Debian's
  6.1 kernel, cgroup2 the only hierarchy, every controller enabled in the
  root's subtree, a scratch ext4 disk; there an unfit environment is an
  ERROR of every test, so a broken guest or driver fails the VM suite;
- directly on a cgroup v2 host, as root (`pytest integration/tests`): there
  an unfit machine (not root, no cgroup2 with cpu, memory, pids and io in the
  root's subtree_control) SKIPS every test with the reason.

Fixtures:
  in_vm           bool, True in the guest
  kernel_release  the running kernel's `uname -r` (in the guest: the booted
                  Debian kernel, also in $HIVEJAIL_VM_KERNEL)
  cgroup_root     Path of the cgroup2 mount (/sys/fs/cgroup)
  cgroup_parent   a session-wide cgroup of the test set's own
                  (<root>/hivejail-itest-<pid>, cpu memory pids io enabled
                  for its children), removed at the end
  make_cgroup     make_cgroup(**files) -> Path: a new child of cgroup_parent
                  with interface files written in order, e.g.
                  make_cgroup(**{"memory.max": "50M", "memory.swap.max": "0"});
                  everything in it is killed and it is removed after the test
  scratch_dev     block device for io tests ($HIVEJAIL_SCRATCH_DEV: /dev/vda
                  in the guest; on a host without it, a loop device over a
                  sparse file, set up and torn down here)
  scratch_devnum  its "MAJ:MIN", as io.max and io.stat spell it
  scratch_dir     Path of an ext4 filesystem mounted from scratch_dev
                  ($HIVEJAIL_SCRATCH_DIR in the guest); writes there with
                  O_DIRECT go to scratch_dev
Helpers for the tests are in integration/tests/cgutil.py.
"""
from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from integration.tests import cgutil

_counter = itertools.count()


def _unfit(reason: str):
    if cgutil.in_vm():
        pytest.fail(f"the guest is not fit for the cgroup v2 tests: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _fit_environment() -> None:
    problem = cgutil.environment_problem()
    if problem:
        _unfit(problem)


@pytest.fixture(scope="session")
def in_vm() -> bool:
    return cgutil.in_vm()


@pytest.fixture(scope="session")
def kernel_release() -> str:
    return os.uname().release


@pytest.fixture(scope="session")
def cgroup_root() -> Path:
    root = cgutil.cgroup2_mount()
    assert root is not None
    return root


@pytest.fixture(scope="session")
def cgroup_parent(cgroup_root: Path):
    parent = cgroup_root / f"hivejail-itest-{os.getpid()}"
    parent.mkdir()
    try:
        cgutil.write(parent, "cgroup.subtree_control",
                     " ".join(f"+{c}" for c in cgutil.REQUIRED_CONTROLLERS))
        yield parent
    finally:
        cgutil.kill_and_remove(parent)


@pytest.fixture
def make_cgroup(cgroup_parent: Path, request):
    made: list[Path] = []
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:60]

    def make(**files: str) -> Path:
        cg = cgroup_parent / f"{base}-{next(_counter)}"
        cg.mkdir()
        made.append(cg)
        for name, value in files.items():
            cgutil.write(cg, name, value)
        return cg

    yield make
    for cg in reversed(made):
        cgutil.kill_and_remove(cg)


# ---------------------------------------------------------------- scratch disk

def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="session")
def _scratch():
    """(device, mounted dir): the guest's, or a loop device made here."""
    dev, mnt = os.environ.get("HIVEJAIL_SCRATCH_DEV"), os.environ.get("HIVEJAIL_SCRATCH_DIR")
    if dev:
        if not (os.path.exists(dev) and stat.S_ISBLK(os.stat(dev).st_mode)):
            _unfit(f"HIVEJAIL_SCRATCH_DEV={dev} is not a block device")
        if not mnt or not os.path.ismount(mnt):
            _unfit(f"HIVEJAIL_SCRATCH_DIR={mnt} is not a mount point")
        if os.stat(mnt).st_dev != os.stat(dev).st_rdev:
            _unfit(f"{mnt} is not mounted from {dev}")
        yield dev, Path(mnt)
        return
    if cgutil.in_vm():
        _unfit("the runner gave no scratch disk (HIVEJAIL_SCRATCH_DEV)")
    # A host: a loop device over a sparse file, ext4 on it.
    tmp = Path(tempfile.mkdtemp(prefix="hivejail-scratch-"))
    img, mnt_dir, loop = tmp / "scratch.img", tmp / "mnt", None
    try:
        with open(img, "wb") as f:
            f.truncate(256 << 20)
        mnt_dir.mkdir()
        try:
            loop = _sh("losetup", "--find", "--show", str(img))
            _sh("mkfs.ext4", "-q", "-F", "-m", "0", loop)
            _sh("mount", "-t", "ext4", loop, str(mnt_dir))
        except (OSError, subprocess.CalledProcessError) as e:
            pytest.skip(f"cannot set up a loop device for the io tests: {e}")
        os.chmod(mnt_dir, 0o1777)
        yield loop, mnt_dir
    finally:
        if os.path.ismount(mnt_dir):
            subprocess.run(["umount", str(mnt_dir)], check=False)
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def scratch_dev(_scratch) -> str:
    return _scratch[0]


@pytest.fixture(scope="session")
def scratch_devnum(scratch_dev: str) -> str:
    return cgutil.devnum(scratch_dev)


@pytest.fixture(scope="session")
def scratch_dir(_scratch) -> Path:
    return _scratch[1]
