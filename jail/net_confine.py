"""Confinement for slirp4netns when hivejail starts it for a rootless allowlist run.

slirp4netns's own --enable-sandbox cannot be used here: it joins the jail's
user namespace and calls setegid(0)/seteuid(0) there, but a rootless jail
maps only the policy's run_as ids (run_as -> the caller), so 0 does not
exist inside (and with --netns-type=path it does not join the namespace at
all and fails the same way).  It must also stay in the host's user
namespace, where the caller's uid owns the jail's namespace, to create the
tap device.  So hivejail confines it itself, right before execve:

  no_new_privs
  Landlock (as far as the kernel offers it), a domain that allows
      read + execute   /usr (and /lib* where they are not links into /usr):
                       the program and its libraries
      read             /etc/ld.so.cache; /etc/resolv.conf (its target) only
                       when slirp's DNS forwarder is on
      read + write (+ ioctl, ABI >= 5)   /dev/net/tun
      nothing else     no other file can be opened, written or created
      ABI >= 4         TCP connect only to the allowlist's TCP ports, no TCP bind:
                       a second gate behind the in-jail filter (ports only)
      ABI >= 6         no signals to, and no abstract unix sockets of,
                       processes outside its domain
  --enable-seccomp     slirp4netns's own system-call filter.

The namespace files it opens (/proc/self/fd/N) are on nsfs, an internal
filesystem Landlock never restricts.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Iterable

from . import libc
# The Landlock ABI lives in one place: jail/landlock.py (syscall numbers from libseccomp).
from .landlock import (FS_EXECUTE, FS_IOCTL_DEV, FS_READ_DIR, FS_READ_FILE, FS_WRITE_FILE,
                       NET_BIND_TCP, NET_CONNECT_TCP, RULE_NET_PORT, RULE_PATH_BENEATH,
                       SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL, _NetPort, _PathBeneath,
                       _RulesetAttr)
from .landlock import _call as _sys
from .landlock import handled_fs as _fs_handled

TUN = "/dev/net/tun"


def abi() -> int:
    """The kernel's Landlock ABI version, 0 if Landlock is missing or disabled."""
    from .landlock import abi_version
    try:
        return abi_version()
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
            return 0
        raise


class Ruleset:
    """A Landlock ruleset fd, built in the supervisor; the child only restricts itself."""

    def __init__(self, fd: int | None, version: int, description: str) -> None:
        self.fd, self.version, self.description = fd, version, description

    def restrict_self(self) -> None:
        """In the forked child, right before execve (no_new_privs first)."""
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        if self.fd is not None:
            _sys("landlock_restrict_self", ctypes.c_int(self.fd), ctypes.c_uint32(0))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _add_path(ruleset: int, path: str, access: int) -> bool:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        attr = _PathBeneath(access, fd)
        _sys("landlock_add_rule", ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
             ctypes.byref(attr), ctypes.c_uint32(0))
    finally:
        os.close(fd)
    return True


def slirp_ruleset(exe: str, tcp_ports: Iterable[int], dns: bool) -> Ruleset:
    """The domain described in the module docstring, for this kernel's ABI."""
    version = abi()
    if version <= 0:
        return Ruleset(None, 0, "no_new_privs + seccomp (no Landlock in this kernel)")
    from .landlock import _nr
    _nr("landlock_restrict_self")       # resolved here; the child only makes the call
    fs = _fs_handled(version)
    attr = _RulesetAttr(fs, (NET_BIND_TCP | NET_CONNECT_TCP) if version >= 4 else 0,
                        (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if version >= 6 else 0)
    size = ctypes.sizeof(ctypes.c_uint64) * (3 if version >= 6 else 2 if version >= 4 else 1)
    fd = _sys("landlock_create_ruleset", ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        rx = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
        dirs = {"/usr", os.path.dirname(os.path.realpath(exe))}
        for d in ("/lib", "/lib64", "/lib32", "/libx32"):
            real = os.path.realpath(d)
            if os.path.isdir(real) and not real.startswith("/usr/"):
                dirs.add(real)
        for d in sorted(dirs):
            _add_path(fd, d, rx)
        files = [("/etc/ld.so.cache", FS_READ_FILE)]
        if dns:
            files.append((os.path.realpath("/etc/resolv.conf"), FS_READ_FILE))
        tun = FS_READ_FILE | FS_WRITE_FILE | (FS_IOCTL_DEV if version >= 5 else 0)
        files.append((TUN, tun))
        for path, access in files:
            _add_path(fd, path, access)
        ports = sorted(set(int(p) for p in tcp_ports))
        if version >= 4:
            for port in ports:
                rule = _NetPort(NET_CONNECT_TCP, port)
                _sys("landlock_add_rule", ctypes.c_int(fd), ctypes.c_int(RULE_NET_PORT),
                     ctypes.byref(rule), ctypes.c_uint32(0))
    except BaseException:
        os.close(fd)
        raise
    parts = ["fs"]
    if version >= 4:
        parts.append("tcp connect to " + (",".join(map(str, ports)) if ports else "no port"))
    if version >= 6:
        parts.append("scope")
    return Ruleset(fd, version, f"no_new_privs + landlock abi{version} ({'; '.join(parts)}) + seccomp")
