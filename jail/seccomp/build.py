"""The filter: a Plan compiled to BPF bytes by libseccomp, cached, and loaded.

The supervisor compiles once (``compile_bpf``) and keeps the bytes pinned
(``LoadedProgram``); the forked payload inherits them, so loading the filter
there is one seccomp(2) call.  Compiled filters are cached in this process
and on disk (``_DiskCache``), so a one-shot ``hivejail exec`` does not pay
for importing pyseccomp and compiling (~6 ms).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import functools
import hashlib
import os
import socket
import stat
import sys
from typing import Any

from .libseccomp import _lib, _libc, resolve_name
from .plan import Plan
from .profiles import BOOTSTRAP, Cond

# Kernel ABI (linux/seccomp.h) and libseccomp's filter attributes.
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
ATTR_ACT_BADARCH = 2
ATTR_CTL_NNP = 3
ATTR_CTL_OPTIMIZE = 8
CMP_MASKED_EQ = 7

# The one sendmsg that hands the listener fd to the supervisor is allowed by
# its flags, a combination no program has a reason to use (MSG_CONFIRM and
# MSG_EOR mean nothing on a unix socket); the filter then does not depend on
# an fd number and can be cached.
HANDOFF_FLAGS = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT | socket.MSG_CONFIRM | socket.MSG_EOR


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


def filter_spec(plan: Plan) -> FilterSpec:
    """What the kernel must do alone for ``plan``; everything else goes to the listener."""
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

    The key hashes the filter spec, the source of this package's modules and
    libseccomp's version.  The folder (root: /var/cache/hivejail/seccomp,
    others: $XDG_CACHE_HOME/hivejail/seccomp; HIVEJAIL_CACHE_DIR overrides,
    empty disables) must belong to the caller and be closed to everyone else,
    and so must each file; otherwise the cache is not used.
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
        h.update(_package_digest())
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
def _package_digest() -> bytes:
    """Hash of every module of this package (name and source): a change to any invalidates the cache."""
    folder = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".py")):
        with open(os.path.join(folder, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.digest()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


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
