"""Which block devices an IO limit applies to.

blk-throttle (v1 blkio.throttle.*, v2 io.max) takes whole disks: a
partition's MAJ:MIN is mapped to its disk through /sys/dev/block.  A path on
a filesystem with an anonymous device number (btrfs subvolumes, overlay)
is mapped through the mount table to the block device it was mounted from.
Filesystems without a disk (tmpfs, proc, 9p, nfs) map to None: there is no
disk IO to throttle.
"""

from __future__ import annotations

import os
import stat


def whole_disk(major: int, minor: int) -> str | None:
    """'MAJ:MIN' of the disk holding this block device, or None if it is none."""
    base = f"/sys/dev/block/{major}:{minor}"
    if not os.path.exists(base):
        return None
    if os.path.exists(base + "/partition"):
        try:
            with open(os.path.join(os.path.realpath(base), "..", "dev")) as f:
                return f.read().strip()
        except OSError:
            return None
    return f"{major}:{minor}"


def _mount_source_dev(path: str, dev: int) -> int | None:
    """The rdev of the block device mounted at the mount holding ``path`` (st_dev == dev)."""
    best, best_len = None, -1
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rf = left.split(), right.split()
        if len(fields) < 5 or len(rf) < 2:
            continue
        mnt = fields[4].replace("\\040", " ")
        maj, _, mi = fields[2].partition(":")
        if (int(maj), int(mi)) != (os.major(dev), os.minor(dev)):
            continue
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > best_len:
            best, best_len = rf[1], len(mnt)
    if best and best.startswith("/dev/"):
        try:
            st = os.stat(best)
        except OSError:
            return None
        if stat.S_ISBLK(st.st_mode):
            return st.st_rdev
    return None


def device_of(path: str) -> str | None:
    """The whole disk behind a path (a block device node, or a file on a disk)."""
    st = os.stat(path)
    if stat.S_ISBLK(st.st_mode):
        return whole_disk(os.major(st.st_rdev), os.minor(st.st_rdev))
    dev = st.st_dev
    if os.major(dev) == 0:
        src = _mount_source_dev(path, dev)
        if src is None:
            return None
        dev = src
    return whole_disk(os.major(dev), os.minor(dev))


def devices_for(paths: list[str]) -> dict[str, str | None]:
    """{path: 'MAJ:MIN' or None} for each path."""
    return {p: device_of(p) for p in paths}
