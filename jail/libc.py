"""Thin ctypes layer over the libc calls Python 3.11 lacks.

Every wrapper raises ``OSError`` whose message names the call and its
arguments, so a failure deep in a child stage can be reported as
"mount_setattr('/job/out', RDONLY|NOSUID|NODEV): Operation not permitted"
rather than a bare errno.  Nothing here decides policy; callers do.

Syscall numbers for calls glibc does not wrap (pivot_root) come from
libseccomp's resolver, not from a table kept here.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

# Sonames, not ctypes.util.find_library: that runs `ldconfig -p` (~10 ms).
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
LIBSECCOMP = "libseccomp.so.2"

# Namespace flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags (linux/mount.h).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

# New mount API.
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

# openat2 resolve flags.
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# prctl options.
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECUREBITS = 28

_MOUNT_ATTR_NAMES = {MOUNT_ATTR_RDONLY: "RDONLY", MOUNT_ATTR_NOSUID: "NOSUID",
                     MOUNT_ATTR_NODEV: "NODEV", MOUNT_ATTR_NOEXEC: "NOEXEC"}


def _fail(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


def _check(ret: int, call: str) -> int:
    if ret < 0:
        raise _fail(call)
    return ret


def _b(path: str | bytes | None) -> bytes | None:
    if path is None:
        return None
    return os.fsencode(path)


_syscall_numbers: dict[str, int] = {}


def syscall_number(name: str) -> int:
    """Number of syscall ``name`` on the native ABI, from libseccomp.

    Cached per process; the supervisor resolves what the children need before
    it forks (see ``preload``), so children inherit the cache.
    """
    if name not in _syscall_numbers:
        lib = ctypes.CDLL(LIBSECCOMP)
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            raise OSError(0, f"libseccomp does not know syscall {name!r}")
        _syscall_numbers[name] = nr
    return _syscall_numbers[name]


def preload() -> None:
    """Resolve, in the supervisor, the syscall numbers the child stages use."""
    for name in ("pivot_root", "openat2"):
        syscall_number(name)


CLONE_INTO_CGROUP = 0x200000000


class _CloneArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def fork_into_cgroup(path: str) -> int:
    """fork(), but the child is born in the (v2) cgroup at ``path``: clone3 with
    CLONE_INTO_CGROUP.  Moving a running process into a cgroup takes a kernel
    lock whose first use after an idle spell waits an RCU grace period (~10 ms);
    a child born there never moves.  Only for a single-threaded caller: the raw
    syscall skips glibc's fork handlers (Python's own are run here)."""
    import signal
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=fd)
        nr = syscall_number("clone3")
        ctypes.pythonapi.PyOS_BeforeFork()
        pid = _libc.syscall(ctypes.c_long(nr), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
        if pid == 0:
            ctypes.pythonapi.PyOS_AfterFork_Child()
            return 0
        err = ctypes.get_errno()
        ctypes.pythonapi.PyOS_AfterFork_Parent()
        if pid < 0:
            raise OSError(err, f"clone3(CLONE_INTO_CGROUP, {path!r}): {os.strerror(err)}")
        return pid
    finally:
        os.close(fd)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns(fd {fd}, {nstype:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    ret = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(ret, f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount2({target!r}, {flags:#x})")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = syscall_number("pivot_root")
    _check(_libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)),
           f"pivot_root({new_root!r}, {put_old!r})")


def open_tree(dirfd: int, path: str, flags: int, what: str = "") -> int:
    return _check(_libc.open_tree(ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags)),
                  f"open_tree({what or path!r})")


def move_mount(from_fd: int, to_fd: int, what: str = "") -> None:
    ret = _libc.move_mount(ctypes.c_int(from_fd), b"", ctypes.c_int(to_fd), b"",
                           ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH))
    _check(ret, f"move_mount(onto {what!r})")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(fd: int, attr_set: int, propagation: int = 0, what: str = "") -> None:
    """Set mount attributes on the whole tree at ``fd`` (recursively)."""
    attr = _MountAttr(attr_set, 0, propagation, 0)
    names = "|".join(n for bit, n in _MOUNT_ATTR_NAMES.items() if attr_set & bit)
    ret = _libc.mount_setattr(ctypes.c_int(fd), b"", ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
                              ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(ret, f"mount_setattr({what!r}, {names})")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): used to resolve paths inside the new root without escaping it."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    nr = syscall_number("openat2")
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(dirfd), _b(path), ctypes.byref(how),
                        ctypes.c_size_t(ctypes.sizeof(how)))
    return _check(ret, f"openat2({path!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    ret = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                      ctypes.c_ulong(arg4), ctypes.c_ulong(arg5))
    return _check(ret, f"prctl({option}, {arg2})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset_zero() -> None:
    """Clear the effective, permitted and inheritable capability sets."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(hdr), ctypes.byref(data)), "capset(all zero)")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname({name!r})")


def close_range(first: int, last: int = 0xFFFFFFFF) -> None:
    _check(_libc.close_range(ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_int(0)),
           f"close_range({first}, {last})")


def errno_name(err: int) -> str:
    import errno
    return errno.errorcode.get(err, str(err))


def call(fn: Any, *args: Any, what: str) -> Any:
    """Run an os.* call and re-raise its OSError with ``what`` named."""
    try:
        return fn(*args)
    except OSError as e:
        raise OSError(e.errno, f"{what}: {os.strerror(e.errno or 0)}") from None
