"""Files of an audit folder, the append-only inode flag, the writer lock.

Layout of an audit folder D (mode 0700, never mounted into a jail):

    key                Ed25519 signing key, Go note format, mode 0600
    log.jsonl          records, one canonical JSON object per line      [append-only]
    checkpoints.jsonl  every signed checkpoint, {"note": ...} per line  [append-only]
    checkpoint         the latest signed checkpoint, verbatim (for witnesses)
    tree, index        caches: stored Merkle hashes, end offset of each line
    lock               flock(2) target; holds the pid of the current writer

Only log.jsonl and checkpoints.jsonl are evidence (written with O_APPEND and
fsynced).  `tree` and `index` are derived, never trusted by `verify`, and are
trimmed or rebuilt by the writer; `checkpoint` is a convenience copy replaced
by rename without fsync, so it cannot carry the append-only flag and may be
stale or empty after a crash until the next append.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import time
from typing import Optional

from . import AuditError

KEY = "key"
LOG = "log.jsonl"
CHECKPOINTS = "checkpoints.jsonl"
LATEST = "checkpoint"
TREE = "tree"
INDEX = "index"
LOCK = "lock"
EVIDENCE = (LOG, CHECKPOINTS)

# linux/fs.h: _IOR('f', 1, long) / _IOW('f', 2, long); the kernel moves an int.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_APPEND_FL = 0x00000020


def _flags_fd(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)


def get_append_only(path: str) -> Optional[bool]:
    """True/False, or None when the filesystem has no inode flags."""
    fd = _flags_fd(path)
    try:
        buf = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        return bool(buf[0] & FS_APPEND_FL)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return None
        raise
    finally:
        os.close(fd)


def set_append_only(path: str, on: bool = True) -> Optional[str]:
    """Set or clear FS_APPEND_FL; returns None on success, else why not.

    Needs CAP_LINUX_IMMUTABLE and a filesystem with inode flags (ext4, xfs,
    btrfs, tmpfs >= 6.0).  Append-only forbids truncation, rename and unlink
    even for root until the flag is cleared, which is why crash recovery
    appends a recovery record instead of cutting a torn line.
    """
    try:
        fd = _flags_fd(path)
    except OSError as e:
        return f"{path}: {e.strerror}"
    try:
        buf = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        new = (buf[0] | FS_APPEND_FL) if on else (buf[0] & ~FS_APPEND_FL)
        if new != buf[0]:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, array.array("i", [new]))
        return None
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return "the filesystem has no inode flags"
        if e.errno == errno.EPERM:
            return "needs CAP_LINUX_IMMUTABLE (run as root)"
        return e.strerror or str(e)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until done (a short write on a regular file means ENOSPC/EIO next)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "write returned 0")
        view = view[n:]


def atomic_write(path: str, data: bytes, mode: int = 0o600, sync_dir: bool = False) -> None:
    """Replace `path` with `data`: write a temp file, fsync, rename."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(os.path.dirname(path) or ".")


def read_last_line(path: str) -> tuple[bytes, bytes]:
    """(last complete line without its newline, bytes after it), reading only the tail."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        chunk = 4096
        while True:
            start = max(0, size - chunk)
            f.seek(start)
            data = f.read(size - start)
            end = data.rfind(b"\n")
            if end >= 0:
                prev = data.rfind(b"\n", 0, end)
                if prev >= 0 or start == 0:
                    return data[prev + 1:end], data[end + 1:]
            elif start == 0:
                return b"", data
            chunk *= 4


class FileLock:
    """Exclusive flock(2) on D/lock with a timeout; the holder's pid is written in it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self, timeout_s: float) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise AuditError(f"cannot open the audit lock {self.path}: {e.strerror}") from None
        deadline = time.monotonic() + max(0.0, timeout_s)
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    raise AuditError(
                        f"could not lock {self.path} within {timeout_s:g}s (held by {holder}): another "
                        "hivejail run is appending or a writer hung; retry, or raise the lock timeout") from None
                time.sleep(delay * (0.5 + (time.monotonic_ns() % 1000) / 1000))  # jitter: no lockstep retries
                delay = min(delay * 2, 0.02)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # diagnostics only (e.g. disk full)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return f"pid {int(text)}" if text else "an unknown process"
    except (OSError, ValueError):
        return "an unknown process"
