"""Plain reads and writes of cgroup interface files (no buffering, no locale).

Every cgroup file is tiny; one os.read is the whole file.  Writes are one
os.write each, as the kernel expects (a cgroup file parses one write at a
time).  Errors stay OSError; callers turn them into CgroupError with a fix.
"""

from __future__ import annotations

import os

_RD = os.O_RDONLY | os.O_CLOEXEC
_WR = os.O_WRONLY | os.O_CLOEXEC


def read(path: str) -> str:
    fd = os.open(path, _RD)
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def write(path: str, text: str) -> None:
    fd = os.open(path, _WR)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read_int(path: str) -> int | None:
    """An integer file ("max" and a missing file read as None)."""
    try:
        s = read(path).strip()
    except FileNotFoundError:
        return None
    return None if s == "max" else int(s)


def flat(path: str) -> dict[str, int]:
    """A flat keyed file ("key value" per line): memory.events, cpu.stat, pids.events…"""
    try:
        text = read(path)
    except FileNotFoundError:
        return {}
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            pass
    return out


def procs(path: str) -> list[int]:
    """The pids in a cgroup directory's cgroup.procs ([] when it is gone)."""
    try:
        return [int(x) for x in read(os.path.join(path, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []
