"""libseccomp through ctypes: syscall names and numbers, and what this host offers.

Every syscall name the jail handles -- in the profiles, in a policy, in a
report -- is resolved here, by libseccomp's own tables, so the jail keeps no
syscall table of its own.  ctypes rather than pyseccomp: it is fast to load
and names are needed on every run; pyseccomp is only imported to build a
filter that is in neither cache (see ``build``).

The library is loaded on first use, by soname, with the signatures of every
call the package makes (the listener's notify calls included), so a missing
libseccomp fails where it is used, with an OSError the caller turns into a
SetupError or a doctor line.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

# Kernel ABI (linux/audit.h) and libseccomp's token for the x32 ABI.
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
SCMP_ARCH_X32 = 0x4000003E
X32_SYSCALL_BIT = 0x40000000


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


@functools.lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL:
    """libseccomp, loaded by soname (ctypes.util.find_library costs ~13 ms: it runs ldconfig)."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        from ctypes import util as ctypes_util
        found = ctypes_util.find_library("seccomp")
        if not found:
            raise
        lib = ctypes.CDLL(found)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_num_arch.argtypes = (ctypes.c_uint32, ctypes.c_int)
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    lib.seccomp_api_get.restype = ctypes.c_uint
    lib.seccomp_notify_receive.argtypes = (ctypes.c_int, ctypes.c_void_p)
    lib.seccomp_notify_receive.restype = ctypes.c_int
    lib.seccomp_notify_respond.argtypes = (ctypes.c_int, ctypes.c_void_p)
    lib.seccomp_notify_respond.restype = ctypes.c_int
    lib.seccomp_notify_id_valid.argtypes = (ctypes.c_int, ctypes.c_uint64)
    lib.seccomp_notify_id_valid.restype = ctypes.c_int
    return lib


_name_cache: dict[str, int] = {}


def resolve_name(name: str) -> int:
    """Native syscall number of ``name`` from libseccomp (negative if unknown)."""
    nr = _name_cache.get(name)
    if nr is None:
        nr = _name_cache[name] = _lib().seccomp_syscall_resolve_name(name.encode())
    return nr


def resolve_number(nr: int, arch: int = AUDIT_ARCH_X86_64) -> str | None:
    """Name of syscall ``nr`` on ``arch`` (an AUDIT_ARCH / SCMP_ARCH token) from libseccomp."""
    lib = _lib()
    p = lib.seccomp_syscall_resolve_num_arch(ctypes.c_uint32(arch), ctypes.c_int(nr))
    if not p:
        return None
    try:
        return ctypes.string_at(p).decode()
    finally:
        _libc.free(ctypes.c_void_p(p))


def describe_call(arch: int, nr: int) -> tuple[str, str | None]:
    """(name as reported, ABI if not native) for a call seen by the filter.

    Non-native calls are named "x32:getpid" / "i386:getpid", so a report can
    never mistake i386's getpid (20) for x86_64's writev (20).
    """
    if arch == AUDIT_ARCH_X86_64 and nr & X32_SYSCALL_BIT:
        name = resolve_number(nr, SCMP_ARCH_X32) or f"nr{nr & ~X32_SYSCALL_BIT}"
        return f"x32:{name}", "x32"
    if arch == AUDIT_ARCH_X86_64:
        return resolve_number(nr) or f"unknown_{nr}", None
    abi = "i386" if arch == AUDIT_ARCH_I386 else f"arch{arch:#x}"
    return f"{abi}:{resolve_number(nr, arch) or f'nr{nr}'}", abi


def actions_available() -> set[str]:
    """The filter return actions this kernel implements (empty if it has no seccomp)."""
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            return set(f.read().split())
    except OSError:
        return set()


@functools.lru_cache(maxsize=None)
def notify_supported() -> bool:
    """User notification with CONTINUE needs kernel >= 5.5 and libseccomp API level >= 6."""
    if "user_notif" not in actions_available():
        return False
    try:
        return _lib().seccomp_api_get() >= 6
    except (OSError, AttributeError):
        return False


def doctor() -> dict[str, Any]:
    """What `hivejail doctor` reports about seccomp on this host (ok, detail, fix, facts)."""
    out: dict[str, Any] = {"arch": os.uname().machine}
    try:
        v = _lib().seccomp_version().contents
        out["libseccomp"] = f"{v.major}.{v.minor}.{v.micro}"
        out["api_level"] = int(_lib().seccomp_api_get())
    except OSError as e:
        out["libseccomp"] = None
        out["error"] = str(e)
    out["actions"] = sorted(actions_available())
    out["user_notification"] = bool(out.get("libseccomp")) and notify_supported()
    out["reporting"] = ("user notification: name, number and arguments of every refused call"
                        if out["user_notification"] else
                        "the kernel kills alone; errno/log modes uncounted, log acts as errno")
    out["ok"] = bool(out.get("libseccomp")) and "kill_process" in out["actions"]
    out["detail"] = (f"libseccomp {out.get('libseccomp')}, {out['reporting']}" if out["ok"]
                     else "no usable seccomp")
    if not out["ok"]:
        out["fix"] = "a kernel with CONFIG_SECCOMP_FILTER and libseccomp2 >= 2.5"
    elif out["arch"] != "x86_64":
        out["ok"], out["detail"] = False, f"the profiles are written for x86_64, not {out['arch']}"
    return out


describe = doctor
