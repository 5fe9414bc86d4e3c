"""Landlock: a second wall that mirrors the mount policy, in the kernel's LSM.

The mount layer already shows the payload only what the policy lists.  If a
mount is ever misconfigured (a read-only bind that ends up writable, an
extra path), Landlock still holds: the payload's domain allows

    read (+exec)          each read-only mount target, /etc, /proc, the workdir
    read + write          each rw mount target, /tmp
    read + write + ioctl  /dev (its few bind-mounted nodes)
    nothing               anywhere else, / itself included

and, where the kernel offers it,

    ABI >= 4   TCP bind only to the network allowlist's ports (in practice:
               nothing in the jail listens on TCP)
    ABI >= 6   no signals to, and no abstract unix sockets of, processes
               outside the payload's domain (PID 1, the host)

TCP connect is left to the network layer (network namespace + nftables in
the jail and on the host).  Landlock can only match ports, and it acts
before nftables: with connect rules, an attempt to an unlisted port fails
with EACCES inside the payload and never reaches the nftables counters, so
network_violation alerts and ``network.on_violation: kill`` would go blind,
and the jail's own loopback would answer EACCES instead of ECONNREFUSED.
``CONNECT_RULES = True`` adds them (connect only to the allowlist's ports).

Landlock rights add up along a path: a read-only mount below an rw one
(or below /tmp) is only read-only in the mount layer.  Policies that nest
that way get one wall there, not two.

Rules use jail paths: PID 1 builds the ruleset after pivot_root (as root in
the user namespace, so every rule path can be opened), the payload inherits
its fd and only calls landlock_restrict_self, after no_new_privs and right
before the seccomp filter.

Policy ``landlock.mode``: ``auto`` uses what the kernel has, ``require``
refuses to run without Landlock (ABI >= 1), ``off`` skips it.  The result's
``layers.landlock`` says what was active, e.g. "abi7: fs+net+scope".
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import stat
from typing import Any

from .ipc import SetupError
from .steps import RunContext, Step

# linux/landlock.h
CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13          # ABI 2
FS_TRUNCATE = 1 << 14       # ABI 3
FS_IOCTL_DEV = 1 << 15      # ABI 5

NET_BIND_TCP = 1 << 0       # ABI 4
NET_CONNECT_TCP = 1 << 1

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0   # ABI 6
SCOPE_SIGNAL = 1 << 1

CONNECT_RULES = False       # see the module docstring

READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
WRITE = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG
         | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_SYM | FS_REFER | FS_TRUNCATE)
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV


def handled_fs(abi: int) -> int:
    mask = (1 << 13) - 1                     # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        mask |= FS_REFER
    if abi >= 3:
        mask |= FS_TRUNCATE
    if abi >= 5:
        mask |= FS_IOCTL_DEV
    return mask


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_nrs: dict[str, int] = {}


def _nr(name: str) -> int:
    if name not in _nrs:
        from .seccomp import resolve_name      # libseccomp's resolver, loaded by soname
        nr = resolve_name(name)
        if nr < 0:
            raise OSError(_errno.ENOSYS, f"libseccomp does not know {name}")
        _nrs[name] = nr
    return _nrs[name]


def _call(name: str, *args: Any) -> int:
    ret = _libc.syscall(ctypes.c_long(_nr(name)), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return int(ret)


def abi_version() -> int:
    """The kernel's Landlock ABI (0: none, disabled, or the syscalls are filtered)."""
    try:
        return _call("landlock_create_ruleset", None, ctypes.c_size_t(0),
                     ctypes.c_uint32(CREATE_RULESET_VERSION))
    except OSError:
        return 0


def handled_net(abi: int) -> int:
    if abi < 4:
        return 0
    return NET_BIND_TCP | (NET_CONNECT_TCP if CONNECT_RULES else 0)


def features(abi: int) -> list[str]:
    out = []
    if abi >= 1:
        out.append("fs")
    if abi >= 4:
        out.append("net" if CONNECT_RULES else "net(bind)")
    if abi >= 6:
        out.append("scope")
    return out


def layer_label(abi: int) -> str:
    """What result.layers["landlock"] says, e.g. "abi7: fs+net(bind)+scope"."""
    return f"abi{abi}: {'+'.join(features(abi))}" if abi else "unavailable"


def describe() -> dict[str, Any]:
    """What `hivejail doctor` reports about Landlock (its ``_optional`` check)."""
    abi = abi_version()
    out: dict[str, Any] = {"ok": abi >= 1, "abi": abi, "features": features(abi),
                           "detail": f"ABI {abi}: {', '.join(features(abi))}" if abi else
                           "no Landlock in this kernel (or disabled at boot)"}
    if abi == 0:
        out["fix"] = "Linux >= 5.13 with CONFIG_SECURITY_LANDLOCK, and landlock in lsm= at boot"
    elif abi < 6:
        out["detail"] += ("; no TCP rules (ABI 4)" if abi < 4 else "") + \
            "; no signal/abstract-socket scoping (ABI 6)"
    return out


doctor = describe


def rules_for(ctx: RunContext) -> list[tuple[str, int]]:
    """(jail path, allowed access) pairs mirroring the policy's mount view."""
    fs = ctx.policy.filesystem
    rules: dict[str, int] = {"/etc": READ, "/proc": READ, "/tmp": READ | WRITE,
                             "/dev": FS_READ_FILE | FS_READ_DIR | FS_WRITE_FILE | FS_IOCTL_DEV,
                             fs.workdir: READ}
    for m in fs.mounts:
        rules[m.target] = rules.get(m.target, 0) | READ | (WRITE if m.mode == "rw" else 0)
    return sorted(rules.items())


def net_ports(ctx: RunContext) -> list[int]:
    net = ctx.policy.network
    if net.mode != "allowlist":
        return []
    return sorted({p for a in net.allow if a.proto == "tcp" for p in a.ports})


class Landlock(Step):
    name = "landlock"

    def __init__(self) -> None:
        self.abi = 0
        self.ruleset_fd = -1

    def prepare(self, ctx: RunContext) -> None:
        mode = ctx.policy.landlock.mode
        if mode == "off":
            ctx.layers["landlock"] = "off"
            return
        self.abi = abi_version()
        if self.abi < 1:
            if mode == "require":
                raise SetupError("supervisor", "landlock", "this kernel offers no Landlock",
                                 fix="boot with lsm=...,landlock (Linux >= 5.13), or set "
                                     "landlock: auto")
            ctx.layers["landlock"] = "unavailable"
            return
        ctx.layers["landlock"] = layer_label(self.abi)
        for name in ("landlock_add_rule", "landlock_restrict_self"):
            _nr(name)                  # resolved here, inherited by PID 1 and the payload

    def after_pivot(self, ctx: RunContext) -> None:
        if self.abi < 1:
            return
        fs_mask = handled_fs(self.abi)
        net_mask = handled_net(self.abi)
        attr = _RulesetAttr(fs_mask, net_mask,
                            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if self.abi >= 6 else 0)
        size = ctypes.sizeof(_RulesetAttr) if self.abi >= 6 else (16 if self.abi >= 4 else 8)
        try:
            fd = _call("landlock_create_ruleset", ctypes.byref(attr), ctypes.c_size_t(size),
                       ctypes.c_uint32(0))
        except OSError as e:
            raise SetupError.from_oserror("init", "landlock_create_ruleset", e) from None
        try:
            for path, access in rules_for(ctx):
                self._add_path(fd, path, access & fs_mask)
            if net_mask:
                for port in net_ports(ctx):
                    rule = _NetPort(net_mask, port)
                    _call("landlock_add_rule", ctypes.c_int(fd), ctypes.c_int(RULE_NET_PORT),
                          ctypes.byref(rule), ctypes.c_uint32(0))
        except OSError as e:
            os.close(fd)
            raise SetupError.from_oserror("init", "landlock_add_rule", e) from None
        except SetupError:
            os.close(fd)
            raise
        self.ruleset_fd = fd

    @staticmethod
    def _add_path(fd: int, path: str, access: int) -> None:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            raise SetupError.from_oserror("init", "landlock rule", e, path=path) from None
        try:
            if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                access &= FILE_RIGHTS
            rule = _PathBeneath(access, pfd)
            _call("landlock_add_rule", ctypes.c_int(fd), ctypes.c_int(RULE_PATH_BENEATH),
                  ctypes.byref(rule), ctypes.c_uint32(0))
        except OSError as e:
            raise SetupError.from_oserror("init", "landlock_add_rule", e, path=path) from None
        finally:
            os.close(pfd)

    def in_payload(self, ctx: RunContext) -> None:
        if self.ruleset_fd < 0:
            return
        try:
            _call("landlock_restrict_self", ctypes.c_int(self.ruleset_fd), ctypes.c_uint32(0))
        except OSError as e:
            raise SetupError.from_oserror("payload", "landlock_restrict_self", e) from None
        finally:
            os.close(self.ruleset_fd)
            self.ruleset_fd = -1
