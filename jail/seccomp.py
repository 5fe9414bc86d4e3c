"""seccomp: the payload's last wall, loaded right before execve.

Only the payload runs under the filter; the supervisor, the jail's PID 1 and
the audit writer never do.

    supervisor  prepare       profile + policy -> filter, compiled once by
                              libseccomp (pyseccomp) to BPF bytes (cached);
                              a socketpair for the listener fd
                from_parent   starts the listener thread (no fork follows)
    payload     in_payload    seccomp(SET_MODE_FILTER, NEW_LISTENER): the BPF
                              bytes are inherited from the supervisor, so this
                              is one syscall; the listener fd goes to the
                              supervisor over SCM_RIGHTS, then closes here
    supervisor  listener      every refused call arrives as a user
                              notification (arch, nr, args, pid): it decides,
                              counts, answers
                poll/finish   kill mode ends the run; result.seccomp, alerts

The filter: allowed calls return ALLOW inside the kernel (unconditional ones
hit the kernel's per-filter action cache, so they cost almost nothing);
clone3 returns ENOSYS (libc falls back to clone, whose flags are checked);
everything else -- unlisted calls, escape classes, refused argument variants,
and every call from another ABI (x32, i386) -- is sent to the listener, which
knows the name from libseccomp's resolver and acts per ``on_violation``:

    kill   the calling process is SIGKILLed at once, the run is ended as
           seccomp_violation, result.seccomp = {syscall, nr, args}
    errno  escape classes answer EPERM, unlisted calls ENOSYS (libc treats
           them as absent); each name is counted into an alert
    log    escape classes answer EPERM; unlisted calls run
           (SECCOMP_USER_NOTIF_FLAG_CONTINUE) and are counted

A policy ``deny`` entry answers its own errno (counted) or kills.  If the
listener cannot run, refused calls fail with ENOSYS (the kernel's answer
when no listener exists): the filter fails closed.

Learning mode (``ctx.extra["seccomp_learn"] = FILE``): every call but a
handful the jail itself needs goes to the listener, which lets it run and
counts it; escape classes are still refused.  At the end FILE receives a
policy fragment: ``profile: strict`` plus the calls the run used beyond it.

Hosts without user notification (kernel < 5.5 or libseccomp < 2.5) get a
plain filter: the kernel kills (KILL_PROCESS) or answers EPERM by itself, log
mode acts as errno (RET_LOG would let refused argument variants run), and
nothing is counted.  PID 1 reads /proc/PID/syscall of a SIGSYS-killed payload
before reaping it (``inspect_exit``, nsjail's way); kernels that free a dead
task's stack show -1 there, and the reason points to the kernel audit log.

Compiled filters are cached in this process and on disk (``_DiskCache``),
so a one-shot ``hivejail exec`` does not pay for libseccomp (~6 ms).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import functools
import hashlib
import os
import re
import select
import signal
import socket
import stat
import sys
import threading
from typing import Any, Iterable

from .ipc import SetupError
from .steps import RunContext, Step

PROFILE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")
PROFILES = ("default", "strict")

# Kernel ABI (linux/seccomp.h, linux/audit.h).
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_NOTIF_SIZES = 3
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
SCMP_ARCH_X32 = 0x4000003E
X32_SYSCALL_BIT = 0x40000000
ATTR_ACT_BADARCH = 2
ATTR_CTL_NNP = 3
ATTR_CTL_OPTIMIZE = 8
CMP_MASKED_EQ = 7
PIDFD_THREAD = os.O_EXCL

# The payload's own steps between loading the filter and execve: always
# allowed, in every profile (and never recorded in learning mode).
BOOTSTRAP = ("execve", "brk", "mmap", "munmap", "mremap", "madvise", "close",
             "rt_sigprocmask", "rt_sigreturn", "exit", "exit_group")
# The one sendmsg that hands the listener fd to the supervisor is allowed by
# its flags, a combination no program has a reason to use (MSG_CONFIRM and
# MSG_EOR mean nothing on a unix socket); the filter then does not depend on
# an fd number and can be cached.
HANDOFF_FLAGS = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT | socket.MSG_CONFIRM | socket.MSG_EOR


# ---- profiles as data -------------------------------------------------------

_ENTRY = re.compile(r"^([a-z0-9_]+)(?:\(arg([0-5])&(0x[0-9a-f]+|[0-9]+)(==|!=)"
                    r"((?:0x[0-9a-f]+|[0-9]+)(?:\|(?:0x[0-9a-f]+|[0-9]+))*)\))?$")


class Cond(tuple):
    """(argument ``arg`` & ``mask``) == value (op "==") or is none of ``values`` (op "!=").

    A tuple (hashable, cheap to define: this module is imported on every run).
    """
    __slots__ = ()

    def __new__(cls, arg: int, mask: int, op: str, values: tuple[int, ...]) -> "Cond":
        return tuple.__new__(cls, (arg, mask, op, tuple(values)))

    arg = property(lambda self: self[0])
    mask = property(lambda self: self[1])
    op = property(lambda self: self[2])
    values = property(lambda self: self[3])

    def holds(self, args: Iterable[int]) -> bool:
        v = list(args)[self.arg] & self.mask
        return v in self.values if self.op == "==" else v not in self.values

    def masked_eq(self) -> list[tuple[int, int]]:
        """The condition as alternatives of (mask, value) for SCMP_CMP_MASKED_EQ.

        "!=" becomes the complement of the excluded values inside the mask:
        a prefix split over the mask's bits (about 32 pairs per value).
        """
        if self.op == "==":
            return [(self.mask, v) for v in self.values]
        bits = [b for b in range(63, -1, -1) if self.mask >> b & 1]
        out: list[tuple[int, int]] = []

        def split(depth: int, prefix_mask: int, prefix: int, excluded: list[int]) -> None:
            if not excluded:
                out.append((prefix_mask, prefix))
                return
            if depth == len(bits):
                return          # exactly an excluded value
            bit = 1 << bits[depth]
            for side in (0, bit):
                split(depth + 1, prefix_mask | bit, prefix | side,
                      [v for v in excluded if v & bit == side])
        split(0, 0, 0, sorted(set(self.values)))
        return out

    def __str__(self) -> str:
        vals = "|".join(hex(v) for v in self.values)
        return f"arg{self.arg}&{self.mask:#x}{self.op}{vals}"

    def __repr__(self) -> str:
        return f"Cond({self})"


class Profile:
    def __init__(self, name: str) -> None:
        self.name = name
        self.groups: dict[str, list[str]] = {}                 # group -> names, file order
        self.rules: dict[str, list[Cond] | None] = {}          # None: unconditional

    def group_of(self, name: str) -> str | None:
        for g, names in self.groups.items():
            if name in names:
                return g
        return None


def _parse_lines(path: str) -> Iterable[tuple[int, str, list[str]]]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        group, sep, rest = line.partition(":")
        if not sep or not re.fullmatch(r"[a-z0-9_]+", group.strip()):
            raise ValueError(f"{path}:{lineno}: expected 'group: syscall ...'")
        yield lineno, group.strip(), rest.split()


@functools.lru_cache(maxsize=None)
def escape_classes() -> dict[str, str]:
    """syscall name -> escape class, from profiles/escape.txt."""
    out: dict[str, str] = {}
    for _lineno, group, names in _parse_lines(os.path.join(PROFILE_DIR, "escape.txt")):
        for n in names:
            out[n] = group
    return out


@functools.lru_cache(maxsize=None)
def load_profile(name: str) -> Profile:
    """Parse profiles/NAME.txt; every name is checked against libseccomp."""
    if name not in PROFILES:
        raise ValueError(f"unknown seccomp profile {name!r} (known: {', '.join(PROFILES)})")
    path = os.path.join(PROFILE_DIR, f"{name}.txt")
    prof = Profile(name)
    escapes = escape_classes()
    for lineno, group, entries in _parse_lines(path):
        names = prof.groups.setdefault(group, [])
        for entry in entries:
            m = _ENTRY.match(entry)
            if not m:
                raise ValueError(f"{path}:{lineno}: cannot read entry {entry!r}")
            sc = m.group(1)
            if resolve_name(sc) < 0:
                raise ValueError(f"{path}:{lineno}: libseccomp does not know syscall {sc!r}")
            if sc not in names:
                names.append(sc)
            if m.group(2) is None:
                if sc in escapes:
                    raise ValueError(f"{path}:{lineno}: {sc} is an escape class "
                                     f"({escapes[sc]}); only a conditional entry may allow it")
                if prof.rules.get(sc, None) is not None:
                    raise ValueError(f"{path}:{lineno}: {sc} is both conditional and unconditional")
                prof.rules[sc] = None
            else:
                cond = Cond(int(m.group(2)), int(m.group(3), 0), m.group(4),
                            tuple(int(v, 0) for v in m.group(5).split("|")))
                if sc in prof.rules and prof.rules[sc] is None:
                    raise ValueError(f"{path}:{lineno}: {sc} is both conditional and unconditional")
                prof.rules.setdefault(sc, []).append(cond)      # type: ignore[union-attr]
    for sc in BOOTSTRAP:
        if prof.rules.get(sc, 0) is not None:
            raise ValueError(f"{path}: profile {name} must allow {sc} (the jail's exec path needs it)")
    return prof


# ---- libseccomp through ctypes (fast to load; pyseccomp builds the filter) ---

class _Data(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_int), ("arch", ctypes.c_uint32),
                ("instruction_pointer", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6)]


class _Notif(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("data", _Data)]


class _Resp(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("val", ctypes.c_int64), ("error", ctypes.c_int32),
                ("flags", ctypes.c_uint32)]


class _NotifSizes(ctypes.Structure):
    _fields_ = [("notif", ctypes.c_uint16), ("resp", ctypes.c_uint16), ("data", ctypes.c_uint16)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


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


def _pyseccomp() -> Any:
    """Import pyseccomp without its two find_library() calls (~15 ms of ldconfig)."""
    mod = sys.modules.get("pyseccomp")
    if mod is not None:
        return mod
    from ctypes import util as ctypes_util
    real = ctypes_util.find_library
    known = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}

    def quick(name: str) -> str | None:
        so = known.get(name)
        if so:
            try:
                ctypes.CDLL(so)
                return so
            except OSError:
                pass
        return real(name)

    ctypes_util.find_library = quick
    try:
        import pyseccomp
    finally:
        ctypes_util.find_library = real
    return pyseccomp


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


# ---- the filter -------------------------------------------------------------

class FilterSpec(tuple):
    """Everything the BPF depends on (a tuple: hashable, the compile cache key).

    allow: ((name, (Cond, ...) | None), ...); refuse: ((name, action), ...)
    (explicit actions, hosts without notification only); default_action;
    handoff: allow the listener-fd handoff sendmsg.
    """
    __slots__ = ()

    def __new__(cls, allow: tuple, refuse: tuple, default_action: int, handoff: bool) -> "FilterSpec":
        return tuple.__new__(cls, (allow, refuse, default_action, handoff))

    allow = property(lambda self: self[0])
    refuse = property(lambda self: self[1])
    default_action = property(lambda self: self[2])
    handoff = property(lambda self: self[3])

    def __repr__(self) -> str:
        return f"FilterSpec{tuple(self)!r}"


class Plan:
    """The resolved filter and the listener's decision table for one run."""

    def __init__(self, profile: Profile, mode: str, allow: dict[str, list[Cond] | None],
                 denies: dict[str, tuple[str, int]], escapes: dict[str, str], notify: bool) -> None:
        self.profile = profile
        self.mode = mode                   # kill | errno | log | learn
        self.allow = allow
        self.denies = denies               # policy deny: name -> (kill|errno, errno)
        self.escapes = escapes
        self.notify = notify

    def decide(self, name: str, abi: str | None, args: list[int]) -> tuple[str, str, int]:
        """(category, action, errno) for a call that reached the listener.

        category: abi | policy | escape | variant (refused arguments of an allowed call) |
                  unlisted | used (learning: allowed, ran)
        action:   kill | errno | continue
        """
        if abi is not None:
            return ("abi", "kill", 0) if self.mode == "kill" else ("abi", "errno", _errno.ENOSYS)
        if name in self.denies:
            action, err = self.denies[name]
            return "policy", action, err
        conds = self.allow.get(name, False)
        if self.mode == "learn":
            if name in self.escapes and not (conds and any(c.holds(args) for c in conds)):
                return "escape", "errno", _errno.EPERM
            return "used", "continue", 0
        if name in self.escapes or conds:      # escape class, or a refused argument variant
            cat = "escape" if name in self.escapes else "variant"
            return (cat, "kill", 0) if self.mode == "kill" else (cat, "errno", _errno.EPERM)
        if self.mode == "kill":
            return "unlisted", "kill", 0
        if self.mode == "errno":
            return "unlisted", "errno", _errno.ENOSYS
        return "unlisted", "continue", 0


def make_plan(policy_seccomp: Any, learn: bool = False, notify: bool | None = None) -> Plan:
    """Profile + policy allow/deny -> Plan; raises ValueError for a policy the jail refuses."""
    prof = load_profile(policy_seccomp.profile)
    escapes = escape_classes()
    allow: dict[str, list[Cond] | None] = {k: (list(v) if v is not None else None)
                                           for k, v in prof.rules.items()}
    for name in policy_seccomp.allow:
        if resolve_name(name) < 0:
            raise ValueError(f"seccomp.allow: libseccomp does not know syscall {name!r}")
        if name in escapes:
            raise ValueError(f"seccomp.allow: {name} is an escape class ({escapes[name]}) "
                             "and is never allowed")
        allow[name] = None
    denies: dict[str, tuple[str, int]] = {}
    for d in policy_seccomp.deny:
        if resolve_name(d.syscall) < 0:
            raise ValueError(f"seccomp.deny: libseccomp does not know syscall {d.syscall!r}")
        if d.syscall in BOOTSTRAP:
            raise ValueError(f"seccomp.deny: {d.syscall} is needed by the jail to start the payload")
        allow.pop(d.syscall, None)
        denies[d.syscall] = (d.action, getattr(_errno, d.errno, _errno.EPERM))
    mode = "learn" if learn else policy_seccomp.on_violation
    if notify is None:
        notify = notify_supported()
    return Plan(prof, mode, allow, denies, escapes, notify)


def filter_spec(plan: Plan) -> FilterSpec:
    if plan.mode == "learn":
        allow: dict[str, list[Cond] | None] = {n: None for n in BOOTSTRAP}
    else:
        allow = dict(plan.allow)
    refuse: dict[str, int] = {}
    if plan.notify:
        default = RET_USER_NOTIF
    else:
        # No listener: the kernel acts alone.  Log mode degrades to errno here,
        # since RET_LOG would also let refused argument variants (TIOCSTI) run.
        default = RET_KILL_PROCESS if plan.mode == "kill" else RET_ERRNO | _errno.EPERM
        for name, (action, err) in plan.denies.items():
            act = RET_KILL_PROCESS if action == "kill" else RET_ERRNO | err
            if act != default:
                refuse[name] = act
    items = tuple(sorted((n, tuple(c) if c is not None else None) for n, c in allow.items()))
    return FilterSpec(items, tuple(sorted(refuse.items())), default, plan.notify)


_bpf_cache: dict[FilterSpec, bytes] = {}
MAX_BPF = 4096 * 8


def compile_bpf(spec: FilterSpec, use_disk: bool = True) -> bytes:
    """The filter's BPF program: from this process's cache, the disk cache, or libseccomp."""
    cached = _bpf_cache.get(spec)
    if cached is not None:
        return cached
    cache = _DiskCache.open() if use_disk else None
    key = cache.key(spec) if cache else ""
    bpf = cache.get(key) if cache else None
    if bpf is None:
        bpf = build_bpf(spec)
        if cache:
            cache.put(key, bpf)
    _bpf_cache[spec] = bpf
    return bpf


def build_bpf(spec: FilterSpec) -> bytes:
    """Build the filter with libseccomp (via pyseccomp) and export its BPF program."""
    sc = _pyseccomp()
    f = sc.SyscallFilter(spec.default_action)
    f.set_attr(ATTR_ACT_BADARCH, spec.default_action)   # x32 and i386 are refused like the rest
    f.set_attr(ATTR_CTL_NNP, 0)                          # we load it ourselves, after no_new_privs
    try:
        f.set_attr(ATTR_CTL_OPTIMIZE, 2)                 # binary tree over syscall numbers
    except OSError:
        pass
    for name, conds in spec.allow:
        if conds is None:
            f.add_rule(RET_ALLOW, name)
            continue
        for cond in conds:
            for mask, value in cond.masked_eq():
                f.add_rule(RET_ALLOW, name, sc.Arg(cond.arg, CMP_MASKED_EQ, mask, value))
    for name, action in spec.refuse:
        f.add_rule(action, name)
    # clone3 passes its flags in memory the filter cannot read: "not implemented".
    f.add_rule(RET_ERRNO | _errno.ENOSYS, "clone3")
    if spec.handoff and dict(spec.allow).get("sendmsg", 0) is not None:
        f.add_rule(RET_ALLOW, "sendmsg", sc.Arg(2, CMP_MASKED_EQ, 0xFFFFFFFF, HANDOFF_FLAGS))
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb", closefd=True) as wf:
            f.export_bpf(wf)
        chunks = []
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
    bpf = b"".join(chunks)
    if not bpf or len(bpf) % 8 or len(bpf) > MAX_BPF:
        raise OSError(_errno.EINVAL, f"libseccomp produced an unusable filter ({len(bpf)} bytes)")
    return bpf


class _DiskCache:
    """Compiled filters on disk, so a one-shot `hivejail exec` skips libseccomp (~5 ms).

    The key hashes the filter spec, this module's source and libseccomp's
    version.  The folder (root: /var/cache/hivejail/seccomp, others:
    $XDG_CACHE_HOME/hivejail/seccomp; HIVEJAIL_CACHE_DIR overrides, empty
    disables) must belong to the caller and be closed to everyone else, and
    so must each file; otherwise the cache is not used.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    @classmethod
    def open(cls) -> "_DiskCache | None":
        base = os.environ.get("HIVEJAIL_CACHE_DIR")
        if base is None:
            base = ("/var/cache/hivejail" if os.geteuid() == 0 else os.path.join(
                os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hivejail"))
        if not base:
            return None
        folder = os.path.join(base, "seccomp")
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            st, parent = os.lstat(folder), os.lstat(base)
        except OSError:
            return None
        me = os.geteuid()
        if (not stat.S_ISDIR(st.st_mode) or st.st_uid != me or st.st_mode & 0o077
                or parent.st_uid not in (me, 0) or parent.st_mode & 0o022):
            return None
        return cls(folder)

    @staticmethod
    def key(spec: FilterSpec) -> str:
        h = hashlib.sha256(repr(spec).encode())
        h.update(_module_digest())
        v = _lib().seccomp_version().contents
        h.update(f"{v.major}.{v.minor}.{v.micro}".encode())
        return h.hexdigest()

    def get(self, key: str) -> bytes | None:
        try:
            fd = os.open(os.path.join(self.folder, key + ".bpf"),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077
                    or not 0 < st.st_size <= MAX_BPF or st.st_size % 8):
                return None
            data = os.read(fd, MAX_BPF + 1)
            return data if len(data) == st.st_size else None
        finally:
            os.close(fd)

    KEEP = 64

    def put(self, key: str, bpf: bytes) -> None:
        self._prune()
        tmp = os.path.join(self.folder, f".{key}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            try:
                os.write(fd, bpf)
            finally:
                os.close(fd)
            os.replace(tmp, os.path.join(self.folder, key + ".bpf"))
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass


    def _prune(self) -> None:
        """Keep the newest KEEP filters (each policy variant leaves one ~4 KB file)."""
        try:
            names = [n for n in os.listdir(self.folder) if n.endswith(".bpf")]
            if len(names) < self.KEEP:
                return
            paths = sorted((os.path.join(self.folder, n) for n in names), key=os.path.getmtime)
            for path in paths[:len(paths) - self.KEEP + 1]:
                os.unlink(path)
        except OSError:
            pass


@functools.lru_cache(maxsize=None)
def _module_digest() -> bytes:
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).digest()


class LoadedProgram:
    """BPF bytes pinned in memory, ready for seccomp(2) in a forked child."""

    def __init__(self, bpf: bytes) -> None:
        self.buf = ctypes.create_string_buffer(bpf, len(bpf))
        self.prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self.buf))
        self.nr = resolve_name("seccomp")

    def load(self, listener: bool) -> int:
        """Install the filter on the calling thread; returns the listener fd (or 0)."""
        flags = SECCOMP_FILTER_FLAG_NEW_LISTENER if listener else 0
        ret = _libc.syscall(ctypes.c_long(self.nr), ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                            ctypes.c_uint(flags), ctypes.byref(self.prog))
        if ret < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"seccomp(SET_MODE_FILTER): {os.strerror(err)}")
        return int(ret)


def pid_in_jail(host_tid: int) -> int | None:
    """The innermost pid of a host thread id (NSpid's last field)."""
    try:
        with open(f"/proc/{host_tid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return None


def _comm(host_tid: int) -> str | None:
    try:
        with open(f"/proc/{host_tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


# ---- the listener (a thread of the supervisor) -------------------------------

class Event:
    """One kind of refused (or, learning, used) call: counted, with its first occurrence."""

    def __init__(self, category: str, name: str, nr: int, abi: str | None, action: str,
                 errno: int, count: int = 0, first_args: list[int] | None = None,
                 first_pid: int | None = None, comm: str | None = None) -> None:
        self.category, self.name, self.nr, self.abi = category, name, nr, abi
        self.action, self.errno, self.count = action, errno, count
        self.first_args = first_args or []
        self.first_pid, self.comm = first_pid, comm
        self.beyond: set[str] = set()     # learning: profiles whose argument conditions it broke


class Listener(threading.Thread):
    """Receives the payload's listener fd, then answers every notification.

    Answering costs the supervisor's CPU, outside the run's cgroup; a payload
    that floods refused calls in errno/log mode could burn it.  After
    MAX_ANSWERS the listener lets go of the fd: from then on the kernel
    answers every refused call ENOSYS by itself (still refused, no longer
    counted), and an alert says so.  Learning mode has no such cap.
    """
    MAX_ANSWERS = 200_000

    def __init__(self, plan: Plan, sock: socket.socket) -> None:
        super().__init__(name="hivejail-seccomp", daemon=True)
        self.plan = plan
        self.sock = sock
        self.stop_r, self.stop_w = os.pipe2(os.O_CLOEXEC)
        self.lock = threading.Lock()
        self.events: dict[tuple[str, str], Event] = {}
        self.violation: Event | None = None
        self.failure: str | None = None
        self.got_fd = threading.Event()
        self.kills = 0
        self.done = False
        self.answered = 0
        self.saturated = False
        self.learn_bases = ([load_profile("strict"), load_profile("default")]
                            if plan.mode == "learn" else [])

    # public, from the main thread
    def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the listener to drain (it ends at POLLHUP), then stop it."""
        if self.stop_w < 0:
            return
        if self.ident is not None:
            self.join(timeout)
            if self.is_alive():
                os.write(self.stop_w, b"x")
                self.join(2.0)
        with self.lock:                # exactly one of stop() and run() closes stop_r
            os.close(self.stop_w)
            self.stop_w = -1
            if self.done or self.ident is None:
                os.close(self.stop_r)

    def snapshot(self) -> tuple[list[Event], Event | None, str | None]:
        with self.lock:
            copies = []
            for e in self.events.values():
                c = Event(e.category, e.name, e.nr, e.abi, e.action, e.errno, e.count,
                          list(e.first_args), e.first_pid, e.comm)
                c.beyond = set(e.beyond)
                copies.append(c)
            return copies, self.violation, self.failure

    # the thread
    def run(self) -> None:
        lfd = -1
        try:
            lfd = self._receive_fd()
            if lfd < 0:
                return
            self.got_fd.set()
            self._serve(lfd)
        except Exception as e:  # noqa: BLE001 - recorded; the run is then ended (fail closed)
            with self.lock:
                self.failure = f"{type(e).__name__}: {e}"
        finally:
            if lfd >= 0:
                os.close(lfd)      # refused calls now fail with ENOSYS (no listener)
            try:
                self.sock.close()
            except OSError:
                pass
            with self.lock:
                self.done = True
                if self.stop_w < 0:
                    os.close(self.stop_r)

    def _receive_fd(self) -> int:
        p = select.poll()
        p.register(self.sock, select.POLLIN)
        p.register(self.stop_r, select.POLLIN)
        while True:
            for fd, _ev in p.poll():
                if fd == self.stop_r:
                    return -1
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 64, 1)
                if not data:
                    return -1      # every holder of the other end is gone: no filter was loaded
                if fds:
                    for extra in fds[1:]:
                        os.close(extra)
                    return fds[0]

    def _serve(self, lfd: int) -> None:
        lib = _lib()
        sizes = _NotifSizes()
        _libc.syscall(ctypes.c_long(resolve_name("seccomp")), ctypes.c_uint(SECCOMP_GET_NOTIF_SIZES),
                      ctypes.c_uint(0), ctypes.byref(sizes))
        nsize = max(sizes.notif, ctypes.sizeof(_Notif))
        rsize = max(sizes.resp, ctypes.sizeof(_Resp))
        req_buf = ctypes.create_string_buffer(nsize)
        resp_buf = ctypes.create_string_buffer(rsize)
        req = _Notif.from_buffer(req_buf)
        resp = _Resp.from_buffer(resp_buf)
        p = select.poll()
        p.register(lfd, select.POLLIN)
        p.register(self.stop_r, select.POLLIN)
        while True:
            events = dict(p.poll())
            if self.stop_r in events:
                return
            ev = events.get(lfd, 0)
            if ev & select.POLLIN:
                ctypes.memset(req_buf, 0, nsize)          # the kernel wants a zeroed buffer
                if lib.seccomp_notify_receive(lfd, ctypes.addressof(req_buf)) != 0:
                    continue                               # the caller died meanwhile
                self._handle(lib, lfd, req, resp, resp_buf, rsize)
                self.answered += 1
                if self.answered >= self.MAX_ANSWERS and self.plan.mode != "learn":
                    self.saturated = True
                    return
            elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return                                     # every filtered task is gone

    def _handle(self, lib: Any, lfd: int, req: _Notif, resp: _Resp, resp_buf: Any, rsize: int) -> None:
        nr, arch = req.data.nr, req.data.arch
        args = [int(a) for a in req.data.args]
        name, abi = describe_call(arch, nr)
        category, action, err = self.plan.decide(name, abi, args)
        tid = int(req.pid)
        with self.lock:
            key = (category, name)
            ev = self.events.get(key)
            if ev is None:
                ev = self.events[key] = Event(category, name, nr, abi, action, err,
                                              first_args=args, first_pid=pid_in_jail(tid),
                                              comm=_comm(tid))
            ev.count += 1
            if category == "used":
                for prof in self.learn_bases:
                    conds = prof.rules.get(name)
                    if conds and not any(c.holds(args) for c in conds):
                        ev.beyond.add(prof.name)
            if action == "kill" and self.violation is None:
                self.violation = ev
        ctypes.memset(resp_buf, 0, rsize)
        resp.id = req.id
        if action == "kill":
            self._kill(lib, lfd, tid, req.id)
            resp.error = -_errno.EPERM                     # if it still waits: refused anyway
        elif action == "continue":
            resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE
        else:
            resp.error = -err
        lib.seccomp_notify_respond(lfd, ctypes.addressof(resp_buf))   # ENOENT if it died: fine

    def _kill(self, lib: Any, lfd: int, tid: int, notif_id: int) -> None:
        """SIGKILL the caller, checking through the notification id that tid is still it."""
        try:
            pidfd = os.pidfd_open(tid, PIDFD_THREAD)
        except OSError:
            try:
                pidfd = os.pidfd_open(tid)
            except OSError:
                pidfd = -1
        try:
            if lib.seccomp_notify_id_valid(lfd, notif_id) != 0:
                return                                     # already gone
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            else:
                os.kill(tid, signal.SIGKILL)
            self.kills += 1
        except OSError:
            pass
        finally:
            if pidfd >= 0:
                os.close(pidfd)


# ---- the step ---------------------------------------------------------------

def _format_args(args: list[int]) -> str:
    return ", ".join(hex(a) if a > 9 else str(a) for a in args)


class Seccomp(Step):
    """Loads the payload's filter last, and reports what it stopped."""
    name = "seccomp"

    def __init__(self) -> None:
        self.plan: Plan | None = None
        self.program: LoadedProgram | None = None
        self.listener: Listener | None = None
        self._sup: socket.socket | None = None
        self._child: socket.socket | None = None
        self.learn_path: str | None = None
        self._terminated = False

    # supervisor
    def prepare(self, ctx: RunContext) -> None:
        self.learn_path = ctx.extra.get("seccomp_learn") or None
        sc = ctx.policy.seccomp
        try:
            self.plan = make_plan(sc, learn=bool(self.learn_path))
        except ValueError as e:
            raise SetupError("supervisor", "seccomp policy", str(e),
                             fix="remove the entry, or see jail/profiles/escape.txt") from None
        except OSError as e:
            raise SetupError("supervisor", "seccomp", f"libseccomp is not usable: {e}",
                             fix="install libseccomp2 (>= 2.5)") from None
        if self.learn_path and not self.plan.notify:
            raise SetupError("supervisor", "seccomp learn", "this host has no seccomp user "
                             "notification (kernel >= 5.5 and libseccomp >= 2.5 needed)")
        if self.plan.notify:
            self._sup, self._child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            bpf = compile_bpf(filter_spec(self.plan))
        except OSError as e:
            raise SetupError("supervisor", "build seccomp filter", str(e)) from None
        self.program = LoadedProgram(bpf)
        mode = sc.on_violation
        if mode == "log" and not self.plan.notify:
            mode = "errno"              # see filter_spec: RET_LOG would run refused variants
        ctx.layers["seccomp"] = f"{sc.profile}/{mode}" if not self.learn_path else "learn"
        if not self.plan.notify:
            ctx.alert("seccomp_reporting_degraded", "warning",
                      detail="no seccomp user notification on this host: the kernel refuses "
                             "alone, nothing is counted, log mode acts as errno")

    def in_intermediate(self, ctx: RunContext) -> None:
        if self._sup is not None:
            self._sup.close()          # only the supervisor reads this end

    def from_parent(self, ctx: RunContext, pid: int) -> None:
        if self._child is not None:
            self._child.close()        # children keep theirs; EOF once they are gone
            self._child = None
        if self._sup is not None and self.plan is not None:
            self.listener = Listener(self.plan, self._sup)
            self._sup = None           # the listener owns and closes it
            self.listener.start()

    # payload, the last thing before execve
    def in_payload(self, ctx: RunContext) -> None:
        assert self.program is not None and self.plan is not None
        try:
            lfd = self.program.load(listener=self.plan.notify)
        except OSError as e:
            raise SetupError.from_oserror("payload", "load seccomp filter", e) from None
        if not self.plan.notify:
            return
        # From here on only allowed calls may run until the fd is handed over:
        # anything else would wait for a listener that is this very process.
        try:
            assert self._child is not None
            # (socket.send_fds would drop the flags: CPython passes none.)
            self._child.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          lfd.to_bytes(4, sys.byteorder))], HANDOFF_FLAGS)
        finally:
            os.close(lfd)              # never into the payload: it could answer its own calls

    # supervisor, while running
    def poll(self, ctx: RunContext) -> None:
        lst = self.listener
        if lst is None or self._terminated:
            return
        _events, violation, failure = lst.snapshot()
        if violation is not None:
            self._terminated = True
            ctx.terminate("seccomp_violation", self._violation_reason(violation))
        elif failure is not None:
            self._terminated = True
            ctx.terminate("seccomp_violation", f"the seccomp listener failed ({failure}); "
                                               "the jail was killed (fail closed)")

    def inspect_exit(self, ctx: RunContext, pid: int, status: int) -> dict[str, Any] | None:
        """PID 1, before reaping: name the call of a payload killed by SIGSYS (no-notify hosts)."""
        if self.plan is None or self.plan.notify:
            return None
        try:
            with open(f"/proc/{pid}/stat") as f:
                exit_code = int(f.read().rsplit(")", 1)[1].split()[49])
        except (OSError, ValueError, IndexError):
            return None
        if not (os.WIFSIGNALED(exit_code) and os.WTERMSIG(exit_code) == signal.SIGSYS):
            return None
        fact: dict[str, Any] = {"sigsys": True}
        try:
            with open(f"/proc/{pid}/syscall") as f:
                fields = f.read().split()
        except OSError:
            return fact
        if len(fields) >= 7 and fields[0].lstrip("-").isdigit() and int(fields[0]) >= 0:
            fact.update(nr=int(fields[0]), args=[int(x, 16) for x in fields[1:7]])
        return fact

    def finish(self, ctx: RunContext, result: Any) -> None:
        if self.plan is None:
            return
        events: list[Event] = []
        violation = failure = None
        lst = self.listener
        if lst is not None:
            lst.stop(timeout=1.0 if lst.got_fd.is_set() else 0.1)
            events, violation, failure = lst.snapshot()
        if violation is not None:
            result.seccomp = {"syscall": violation.name, "nr": violation.nr,
                              "args": violation.first_args}
            result.fix("seccomp_violation", self._violation_reason(violation))
        elif failure is not None:
            result.fix("seccomp_violation", f"the seccomp listener failed ({failure})")
        else:
            fact = (ctx.extra.get("exit_facts") or {}).get(self.name)
            if fact and fact.get("sigsys"):
                nr = fact.get("nr", -1)
                if nr >= 0:
                    name = resolve_number(nr) or f"unknown_{nr}"
                    result.seccomp = {"syscall": name, "nr": nr, "args": fact["args"]}
                    what = f"called {name} (nr {nr}), which the {self.plan.profile.name} profile" \
                           " does not allow"
                else:
                    what = ("made a call the filter refuses (this kernel keeps no registers of a"
                            " dead task: the kernel audit log names it, type=1326)")
                result.explain("seccomp_violation",
                               f"seccomp: the payload {what}; the kernel killed it (SIGSYS)")
        for ev in sorted(events, key=lambda e: (e is not violation, -e.count, e.name)):
            if ev.category == "used":
                continue
            if ev.action == "kill":
                ctx.alert("seccomp_violation", "critical", syscall=ev.name, nr=ev.nr,
                          args=ev.first_args, count=ev.count, pid=ev.first_pid, comm=ev.comm,
                          category=ev.category)
                continue
            kind = "seccomp_logged" if ev.action == "continue" else "seccomp_denied"
            ctx.alert(kind, "info" if kind == "seccomp_logged" else "warning",
                      syscall=ev.name, nr=ev.nr, count=ev.count, category=ev.category,
                      action="allowed (log)" if ev.action == "continue"
                      else _errno.errorcode.get(ev.errno, str(ev.errno)),
                      comm=ev.comm)
        if lst is not None and lst.saturated:
            ctx.alert("seccomp_listener_saturated", "warning", answered=lst.answered,
                      detail="the payload made so many refused calls that hivejail stopped "
                             "counting them; the kernel refused the rest with ENOSYS")
        if self.learn_path:
            self._write_learned(ctx, result, events)

    def cleanup(self, ctx: RunContext) -> None:
        if self.listener is not None:
            self.listener.stop(timeout=0)
        for s in (self._sup, self._child):
            if s is not None:
                s.close()
        self._sup = self._child = None

    # helpers
    def _violation_reason(self, ev: Event) -> str:
        assert self.plan is not None
        who = f"{ev.comm} (pid {ev.first_pid})" if ev.comm and ev.first_pid else "the payload"
        what = {"abi": f"from the {ev.abi} ABI, which the jail never allows",
                "escape": f"an escape class ({self.plan.escapes.get(ev.name)}) the jail never"
                          " allows",
                "variant": f"with arguments the {self.plan.profile.name} profile does not allow",
                "policy": "which the policy denies",
                "unlisted": f"which the {self.plan.profile.name} profile does not allow"
                }.get(ev.category, "which is not allowed")
        return (f"seccomp: {who} called {ev.name} (nr {ev.nr}, args "
                f"{_format_args(ev.first_args)}), {what}; it was killed and the run ended")

    def _write_learned(self, ctx: RunContext, result: Any, events: list[Event]) -> None:
        assert self.learn_path is not None
        text = learned_fragment(events, ctx.command, result)
        path = os.path.abspath(self.learn_path)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError as e:
            ctx.alert("seccomp_learn_failed", "warning", path=path, detail=str(e))
            return
        used = sum(1 for e in events if e.category == "used")
        ctx.alert("seccomp_learned", "info", path=path, syscalls=used)
        ctx.layers["seccomp_learn"] = path


def _needs(profile: Profile, name: str, variants: set[str]) -> bool:
    """Does a run that used ``name`` (with argument ``variants`` seen) need more than ``profile``?"""
    conds = profile.rules.get(name, False)
    if conds is False:
        return True
    return conds is not None and profile.name in variants


def learned_fragment(events: list[Event], command: list[str], result: Any = None) -> str:
    """A policy fragment a reviewer can read and commit: a profile + what else ran.

    The base is ``strict``; if the run needed an escape-class call that only
    ``default`` allows (say, a personality query), the base is ``default``,
    since no policy may list an escape class under ``allow``.
    """
    strict, default = load_profile("strict"), load_profile("default")
    used = {e.name: e.count for e in events if e.category == "used" and e.abi is None}
    variants = {e.name: e.beyond for e in events if e.category == "used" and e.abi is None}
    refused = sorted((e for e in events if e.category != "used"), key=lambda e: e.name)
    escapes = escape_classes()
    base = strict
    if any(n in escapes and _needs(strict, n, variants[n]) for n in used):
        base = default
    extra = sorted(n for n in used if _needs(base, n, variants[n]))
    lines = ["# hivejail --seccomp-learn: the system calls one run used.",
             f"# command: {' '.join(command)}"]
    if result is not None and getattr(result, "id", ""):
        lines.append(f"# run: {result.id} at {result.started_at}, status {result.status}")
    lines += [f"# {len(used)} distinct calls; {len(used) - len(extra)} are in the {base.name}"
              f" profile, {len(extra)} are added below.",
              "# Review each addition, then paste this block into security_policy.yml.",
              "seccomp:",
              f"  profile: {base.name}",
              "  on_violation: kill"]
    if extra:
        lines.append("  allow:")
        for n in extra:
            where = default.group_of(n)
            if n in base.rules:
                note = f"{base.name} allows it only as {' or '.join(map(str, base.rules[n] or []))}"
            elif where and default.rules.get(n, 0) is None:
                note = f"in default/{where}"
            else:
                note = "not in default"
            lines.append(f"    - {n:<24} # used {used[n]}x; {note}")
    else:
        lines.append("  allow: []")
    lines.append(f"# Every call used (count), by {base.name}-profile group:")
    by_group: dict[str, list[str]] = {}
    for n in sorted(used):
        by_group.setdefault(base.group_of(n) or f"(beyond {base.name})", []).append(f"{n} {used[n]}")
    for g, items in by_group.items():
        lines.append(f"#   {g}: {', '.join(items)}")
    if refused:
        lines.append("# Refused during learning (never allowed; not learnable):")
        for e in refused:
            lines.append(f"#   {e.name} x{e.count} ({e.category})")
    return "\n".join(lines) + "\n"
