"""Mount namespace: the quarantined root, built by the jail's PID 1.

Order (every failure names the call and the path):
 1. make every mount private (nothing propagates back to the host);
 2. open each policy source O_PATH while the host tree is still visible;
 3. a size-limited tmpfs becomes the new root (mounted over /tmp in this
    private namespace; sources under /tmp were opened in step 2);
 4. stub /etc files, the policy's symlinks, then each bind mount: cloned
    with open_tree, made nosuid+nodev (+read-only unless mode: rw)
    recursively with mount_setattr, and attached with move_mount onto a
    target resolved by openat2(RESOLVE_IN_ROOT) — a symlink inside a bound
    tree can never lead a target out of the new root;
 5. fresh procfs for the new pid namespace, a minimal /dev (bind-mounted
    null, zero, full, random, urandom, tty), a tmpfs /tmp; no /sys;
 6. pivot_root(".", "."), detach the old root, and make the root read-only.
"""

from __future__ import annotations

import os
import stat

from . import libc
from .ipc import SetupError
from .steps import RunContext, Step

STAGING = "/tmp"           # where the new root is assembled, inside the private ns
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
RESOLVE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS


def _fail(op: str, e: OSError, path: str | None = None, fix: str | None = None) -> SetupError:
    return SetupError.from_oserror("init", op, e, path=path, fix=fix)


def etc_files(ctx: RunContext) -> dict[str, str]:
    """The stub /etc: only the jail's own users, loopback names and hostname."""
    run = ctx.policy.run_as
    files = {
        "passwd": f"root:x:0:0:root:/:/usr/sbin/nologin\n"
                  f"jail:x:{run.uid}:{run.gid}:hivejail payload:/tmp:/usr/sbin/nologin\n"
        if run.uid != 0 else "root:x:0:0:root:/:/usr/sbin/nologin\n",
        "group": f"root:x:0:\njail:x:{run.gid}:\n" if run.gid != 0 else "root:x:0:\n",
        "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\thivejail\n",
        "hostname": "hivejail\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
    }
    files.update(ctx.extra.get("etc_files", {}))
    return files


class Mounts(Step):
    name = "mounts"

    def prepare(self, ctx: RunContext) -> None:
        libc.preload()

    def in_init(self, ctx: RunContext) -> None:
        fs = ctx.policy.filesystem
        try:
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        except OSError as e:
            raise _fail("make mounts private", e, "/") from None
        sources = []
        for m in fs.mounts:
            try:
                sources.append((m, os.open(m.source, os.O_PATH | os.O_CLOEXEC)))
            except OSError as e:
                raise _fail("open mount source", e, m.source,
                            fix="check the path and that root can reach it") from None
        devices = []
        for name in DEVICES:
            try:
                devices.append((name, os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC)))
            except OSError:
                if name != "tty":
                    raise
        try:
            libc.mount("hivejail-root", STAGING, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
                       f"size={fs.root_size},mode=0755")
        except OSError as e:
            raise _fail("mount tmpfs root", e, STAGING) from None
        root = os.open(STAGING, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for d in ("proc", "dev", "tmp", "etc"):
            os.mkdir(d, 0o755, dir_fd=root)
        for name, text in etc_files(ctx).items():
            _write_file(root, f"etc/{name}", text)
        for link, target in fs.symlinks:
            parent = _ensure_dir(root, os.path.dirname(link))
            try:
                os.symlink(target, os.path.basename(link), dir_fd=parent)
            except OSError as e:
                raise _fail("symlink", e, link) from None
            finally:
                os.close(parent)
        for m, fd in sorted(sources, key=lambda s: s[0].target.count("/")):
            ro = m.mode == "ro"
            attrs = libc.MOUNT_ATTR_NOSUID | libc.MOUNT_ATTR_NODEV | (libc.MOUNT_ATTR_RDONLY if ro else 0)
            _bind(root, fd, m.target, attrs)
            os.close(fd)
        self._special(root, fs.tmp_size, devices)
        _ensure_dir(root, fs.workdir.lstrip("/"), close=True)
        os.close(root)

    def _special(self, root: int, tmp_size: int, devices: list[tuple[str, int]]) -> None:
        flags = libc.MS_NOSUID | libc.MS_NODEV
        try:
            libc.mount("proc", f"{STAGING}/proc", "proc", flags | libc.MS_NOEXEC)
        except OSError as e:
            raise _fail("mount proc", e, "/proc",
                        fix="the host's /proc must be fully visible (no over-mounts)") from None
        try:
            libc.mount("hivejail-tmp", f"{STAGING}/tmp", "tmpfs", flags,
                       f"size={tmp_size},mode=1777")
            libc.mount("hivejail-dev", f"{STAGING}/dev", "tmpfs", libc.MS_NOSUID | libc.MS_NOEXEC,
                       "size=64k,mode=0755")
        except OSError as e:
            raise _fail("mount tmpfs", e, "/tmp or /dev") from None
        for name, fd in devices:
            _bind(root, fd, f"/dev/{name}", libc.MOUNT_ATTR_NOSUID | libc.MOUNT_ATTR_NOEXEC)
            os.close(fd)
        dev = os.open(f"{STAGING}/dev", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, name, dir_fd=dev)
        os.close(dev)

    def after_pivot(self, ctx: RunContext) -> None:
        for path in ("/dev", "/"):
            try:
                libc.mount(None, path, None, libc.MS_REMOUNT | libc.MS_BIND | libc.MS_RDONLY
                           | libc.MS_NOSUID | (libc.MS_NOEXEC if path == "/dev" else libc.MS_NODEV))
            except OSError as e:
                raise _fail("remount read-only", e, path) from None


def pivot() -> None:
    """Make STAGING the root and detach the old one (runc's pivot_root(".", ".") idiom)."""
    try:
        os.chdir(STAGING)
        libc.pivot_root(".", ".")
        libc.umount2(".", libc.MNT_DETACH)
        os.chdir("/")
    except OSError as e:
        raise _fail("pivot_root", e, STAGING) from None


def _write_file(root: int, rel: str, text: str) -> None:
    parent = _ensure_dir(root, os.path.dirname(rel))
    try:
        fd = os.open(os.path.basename(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644, dir_fd=parent)
        os.write(fd, text.encode())
        os.close(fd)
    except OSError as e:
        raise _fail("write", e, "/" + rel) from None
    finally:
        os.close(parent)


def _ensure_dir(root: int, rel: str, close: bool = False) -> int:
    """mkdir -p of ``rel`` inside the new root; returns an O_PATH fd of it.

    Each component is resolved with openat2(RESOLVE_IN_ROOT), so symlinks
    (including ones inside already bound host trees) stay inside the new root.
    """
    current = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root)
    path = ""
    for part in [p for p in rel.split("/") if p]:
        path = f"{path}/{part}"
        try:
            nxt = libc.openat2(root, path, os.O_PATH | os.O_DIRECTORY, RESOLVE)
        except OSError as e:
            if e.errno != 2:
                os.close(current)
                raise _fail("resolve target", e, path) from None
            try:
                os.mkdir(part, 0o755, dir_fd=current)
                nxt = libc.openat2(root, path, os.O_PATH | os.O_DIRECTORY, RESOLVE)
            except OSError as e2:
                os.close(current)
                raise _fail("mkdir", e2, path,
                            fix="a mount target must lie in a writable place of the new root"
                            " (not inside a read-only mount)") from None
        os.close(current)
        current = nxt
    if close:
        os.close(current)
    return current


def _bind(root: int, source_fd: int, target: str, attrs: int) -> None:
    """Clone the tree at source_fd and attach it at target inside the new root."""
    is_dir = stat.S_ISDIR(os.fstat(source_fd).st_mode)
    parent = _ensure_dir(root, os.path.dirname(target))
    base = os.path.basename(target)
    try:
        if is_dir:
            try:
                os.mkdir(base, 0o755, dir_fd=parent)
            except FileExistsError:
                pass
        else:
            try:
                os.close(os.open(base, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=parent))
            except FileExistsError:
                pass
    except OSError as e:
        raise _fail("create mount point", e, target,
                    fix="a mount target must lie in a writable place of the new root,"
                    " not inside a read-only mount") from None
    finally:
        os.close(parent)
    try:
        target_fd = libc.openat2(root, target, os.O_PATH | (os.O_DIRECTORY if is_dir else 0),
                                 RESOLVE)
    except OSError as e:
        raise _fail("resolve mount target", e, target) from None
    try:
        tree = libc.open_tree(source_fd, "", libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC
                              | libc.AT_EMPTY_PATH | libc.AT_RECURSIVE, what=target)
        try:
            libc.mount_setattr(tree, attrs, libc.MS_PRIVATE, what=target)
            libc.move_mount(tree, target_fd, what=target)
        finally:
            os.close(tree)
    except OSError as e:
        raise _fail("bind mount", e, target) from None
    finally:
        os.close(target_fd)
