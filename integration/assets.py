"""The guest's boot assets, built once into a cache folder.

- the kernel: Debian's current linux-image-<ABI>-amd64 package (the one that
  linux-image-amd64 depends on), fetched with `apt-get download` and unpacked
  with `dpkg -x`, never installed; its bzImage is decompressed into an ELF
  vmlinux so that QEMU boots it through the PVH entry (about 3 s faster per
  boot under TCG), falling back to the bzImage when that is not possible;
- its modules, pruned to what a VM can use, with depmod run over them; the
  guest mounts this tree at /lib/modules/<release> so that modprobe (and the
  kernel's own module autoloading, e.g. for veth or nf_tables) works there;
- an initramfs (a newc cpio written here, gzip-compressed) with the static
  busybox, guest/init and the .ko files that `modprobe --show-depends` lists
  for the boot modules.

Everything is rebuilt only when missing or when the kernel package's name or
version changes; the initramfs alone is rebuilt when guest/init, busybox or
the module list change. Nothing but Debian packages is ever downloaded.
"""
from __future__ import annotations

import bz2
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GUEST_INIT = HERE / "guest" / "init"

META_PACKAGE = "linux-image-amd64"
# Modules the initramfs loads before switch_root (their dependencies come along).
BOOT_MODULES = ("virtio_pci", "virtio_blk", "virtio_rng", "9pnet_virtio", "9p", "overlay", "ext4")
# Parts of kernel/drivers kept in the cached module tree (the rest is hardware
# a QEMU guest never has). Everything outside kernel/drivers is kept, but sound.
KEEP_DRIVERS = ("block", "char", "virtio", "net", "md", "crypto", "dax", "nvdimm")
DROP_NET_DRIVERS = ("ethernet", "wireless", "wwan", "usb", "can", "ieee802154", "wan",
                    "hamradio", "arcnet", "fddi", "hippi", "appletalk", "plip", "slip",
                    "hyperv", "vmxnet3", "xen-netback", "fjes", "pcs", "phy", "mdio")
CACHE_FORMAT = 1


class SetupError(Exception):
    """Trouble setting up the VM (missing tool, failed download, …): one line."""


@dataclass(frozen=True)
class Assets:
    dir: Path          # the cache folder of this kernel package
    package: str       # e.g. linux-image-6.1.0-56-amd64
    version: str       # Debian version, e.g. 6.1.192-2
    release: str       # the guest's `uname -r`
    kernel: Path       # vmlinux (ELF, PVH entry) or the bzImage
    pvh: bool          # True when kernel is the decompressed ELF
    initramfs: Path
    modules: Path      # .../lib/modules/<release>
    built: bool        # False when everything came from the cache
    build_s: float


def default_cache_dir() -> Path:
    env = os.environ.get("HIVEJAIL_VM_CACHE")
    return Path(env).resolve() if env else HERE / ".cache"


# ---------------------------------------------------------------- helpers

def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=600)
    except FileNotFoundError:
        raise SetupError(f"{what}: {argv[0]} not found (install its Debian package)") from None
    except subprocess.TimeoutExpired:
        raise SetupError(f"{what}: {argv[0]} took more than 600 s") from None
    if p.returncode != 0:
        lines = [ln.strip() for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith(("E:", "dpkg", "error", "fatal"))]
        detail = (errs or lines or [f"exit status {p.returncode}"])[-1]
        raise SetupError(f"{what} failed: {detail}")
    return p.stdout


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", s)


@contextlib.contextmanager
def _locked(cache: Path):
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------- kernel package

def parse_apt_depends(out: str) -> str | None:
    """The concrete linux-image package from `apt-cache depends linux-image-amd64`."""
    for line in out.splitlines():
        m = re.match(r"\s*\|?Depends:\s*(linux-image-[A-Za-z0-9.+-]+)\s*$", line)
        if m:
            return m.group(1)
    return None


def parse_apt_candidate(out: str) -> str | None:
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    if not m or m.group(1) == "(none)":
        return None
    return m.group(1)


def kernel_package() -> tuple[str, str]:
    """(package, version) of the kernel to boot, as apt knows it now."""
    pkg = os.environ.get("HIVEJAIL_VM_KERNEL_PKG") or parse_apt_depends(
        _run(["apt-cache", "depends", META_PACKAGE], f"apt-cache depends {META_PACKAGE}"))
    if not pkg:
        raise SetupError(f"apt-cache names no kernel package for {META_PACKAGE} (run apt-get update)")
    ver = parse_apt_candidate(_run(["apt-cache", "policy", pkg], f"apt-cache policy {pkg}"))
    if not ver:
        raise SetupError(f"apt has no candidate version of {pkg} (run apt-get update)")
    return pkg, ver


# ---------------------------------------------------------------- bzImage -> vmlinux

_MAGICS = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x8b\x08", "gzip"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def _decompress(data: bytes, kind: str) -> bytes | None:
    if kind == "xz":
        d = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    elif kind == "lzma":
        d = lzma.LZMADecompressor(lzma.FORMAT_ALONE)
    elif kind == "gzip":
        d = zlib.decompressobj(31)
        out = d.decompress(data)
        return out if d.eof else None
    elif kind == "bzip2":
        d = bz2.BZ2Decompressor()
    else:
        return None  # zstd: Python 3.11 cannot; boot the bzImage instead
    try:
        out = d.decompress(data)
    except (lzma.LZMAError, OSError, EOFError):
        return None
    return out if d.eof else None


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside an x86 bzImage, or None if it cannot be had."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return None
    setup_sects = bzimage[0x1F1] or 4
    pm_start = (setup_sects + 1) * 512
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    candidates = []
    if payload_offset and payload_length:
        candidates.append(bzimage[pm_start + payload_offset:pm_start + payload_offset + payload_length])
    for magic, _ in _MAGICS:  # older headers: search for the magic
        i = bzimage.find(magic, pm_start)
        if i >= 0:
            candidates.append(bzimage[i:])
    for blob in candidates:
        for magic, kind in _MAGICS:
            if blob.startswith(magic):
                out = _decompress(blob, kind)
                if out and out[:4] == b"\x7fELF":
                    return out
    return None


def elf_has_pvh_note(elf: bytes) -> bool:
    """True if an ELF64 kernel carries XEN_ELFNOTE_PHYS32_ENTRY (QEMU's PVH boot)."""
    if elf[:5] != b"\x7fELF\x02":
        return False
    e_phoff, = struct.unpack_from("<Q", elf, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(e_phnum):
        p_type, _f, p_offset, _v, _p, p_filesz = struct.unpack_from("<IIQQQQ", elf, e_phoff + i * e_phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        off, end = p_offset, p_offset + p_filesz
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, off)
            name = elf[off + 12:off + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:
                return True
            off += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def elf_is_static(path: Path) -> bool:
    """True for an ELF executable without a program interpreter."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        e_phoff, = struct.unpack_from("<Q", head, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(e_phoff)
        ph = f.read(e_phentsize * e_phnum)
    return all(struct.unpack_from("<I", ph, i * e_phentsize)[0] != 3 for i in range(e_phnum))


# ---------------------------------------------------------------- initramfs (newc cpio)

class Cpio:
    """A minimal writer of the newc ("070701") cpio format the kernel unpacks."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        bname = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(bname), 0)
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.buf.write(hdr + bname)
        self.buf.write(b"\0" * (-(len(hdr) + len(bname)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def parse_show_depends(out: str) -> list[str]:
    """The .ko paths, in load order, from `modprobe --show-depends` output."""
    paths = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "insmod" and parts[1] not in paths:
            paths.append(parts[1])
    return paths


def module_load_list(modroot: Path, release: str, modules=BOOT_MODULES) -> list[Path]:
    paths: list[str] = []
    for mod in modules:
        out = _run(["modprobe", "-d", str(modroot), "-S", release, "--show-depends", mod],
                   f"modprobe --show-depends {mod}")
        for p in parse_show_depends(out):
            if p not in paths:
                paths.append(p)
    return [Path(p) for p in paths]


def busybox_path() -> Path:
    p = Path(os.environ.get("HIVEJAIL_VM_BUSYBOX", "/bin/busybox"))
    if not p.exists():
        raise SetupError(f"{p} not found: install Debian's busybox-static")
    if not elf_is_static(p):
        raise SetupError(f"{p} is not statically linked: install Debian's busybox-static")
    return p


def _read_ko(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        raise SetupError(f"{path.name}: zstd-compressed modules are not supported")
    return data


def initramfs_key(kos: list[Path], busybox: Path) -> str:
    h = hashlib.sha256()
    h.update(GUEST_INIT.read_bytes())
    h.update(hashlib.sha256(busybox.read_bytes()).digest())
    for k in kos:
        h.update(k.name.encode() + b"\0")
    return h.hexdigest()[:16]


def build_initramfs(kos: list[Path], busybox: Path) -> bytes:
    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "lower", "upper", "newroot", "modules"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    c.symlink("bin/sh", "busybox")
    c.file("init", GUEST_INIT.read_bytes(), 0o755)
    order = []
    for i, ko in enumerate(kos):
        name = f"{i:02d}-{ko.name.split('.ko')[0]}.ko"
        c.file(f"modules/{name}", _read_ko(ko))
        order.append(name)
    c.file("modules/order", ("\n".join(order) + "\n").encode())
    return gzip.compress(c.finish(), compresslevel=6, mtime=0)


# ---------------------------------------------------------------- the cache

def _prune_modules(kernel_dir: Path) -> None:
    shutil.rmtree(kernel_dir / "sound", ignore_errors=True)
    drivers = kernel_dir / "drivers"
    for d in drivers.iterdir() if drivers.is_dir() else ():
        if d.name not in KEEP_DRIVERS:
            shutil.rmtree(d) if d.is_dir() else d.unlink()
    for name in DROP_NET_DRIVERS:
        shutil.rmtree(drivers / "net" / name, ignore_errors=True)


def _build_kernel(cache: Path, pkg: str, ver: str, log) -> Path:
    """Download and unpack the kernel package into a new cache folder; return it."""
    final = cache / f"kernel-{_safe(pkg)}_{_safe(ver)}"
    stage = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        dl = stage / "deb"
        dl.mkdir()
        log(f"assets: downloading {pkg} {ver} (apt-get download)")
        _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{pkg}={ver}"],
             f"download of {pkg}={ver}", cwd=dl)
        debs = list(dl.glob("*.deb"))
        if len(debs) != 1:
            raise SetupError(f"download of {pkg}={ver} left {len(debs)} .deb files")
        root = stage / "root"
        log(f"assets: unpacking {debs[0].name} (dpkg -x)")
        _run(["dpkg", "-x", str(debs[0]), str(root)], f"dpkg -x {debs[0].name}")
        mods = [p for p in (root / "lib" / "modules").glob("*") if p.is_dir()]
        vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
        if len(mods) != 1 or len(vmlinuz) != 1:
            raise SetupError(f"{pkg}: expected one vmlinuz and one module tree, found {len(vmlinuz)} and {len(mods)}")
        release = mods[0].name
        out = stage / "out"
        (out / "lib" / "modules").mkdir(parents=True)
        modtree = out / "lib" / "modules" / release
        os.rename(mods[0], modtree)
        _prune_modules(modtree / "kernel")
        _run(["depmod", "-b", str(out), release], "depmod")
        config = root / "boot" / f"config-{release}"
        if config.exists():
            shutil.copy2(config, out / "config")
        bz = vmlinuz[0].read_bytes()
        elf = extract_vmlinux(bz)
        if elf is not None and elf_has_pvh_note(elf):
            (out / "vmlinux").write_bytes(elf)
            kernel, pvh = "vmlinux", True
        else:
            log("assets: no PVH-bootable ELF in the bzImage; booting the bzImage (slower)")
            (out / "vmlinuz").write_bytes(bz)
            kernel, pvh = "vmlinuz", False
        manifest = {"format": CACHE_FORMAT, "package": pkg, "version": ver, "release": release,
                    "kernel": kernel, "pvh": pvh}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(out, final)
        return final
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _load_manifest(d: Path) -> dict | None:
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if m.get("format") != CACHE_FORMAT or not (d / m.get("kernel", "-")).exists():
        return None
    return m


def _newest_cached(cache: Path) -> Path | None:
    cached = sorted((d for d in cache.glob("kernel-*") if _load_manifest(d)), key=lambda d: d.stat().st_mtime)
    return cached[-1] if cached else None


def ensure_assets(cache: Path | None = None, log=print) -> Assets:
    """Return the cached assets, building whatever is missing or stale."""
    cache = (cache or default_cache_dir()).resolve()
    t0 = time.monotonic()
    built = False
    with _locked(cache):
        try:
            pkg, ver = kernel_package()
        except SetupError as e:  # no apt lists: fall back to the newest cached kernel
            cached = _newest_cached(cache)
            if cached is None:
                raise
            m = _load_manifest(cached)
            pkg, ver = m["package"], m["version"]
            log(f"assets: {e}; using the cached {pkg} {ver}")
        kdir = cache / f"kernel-{_safe(pkg)}_{_safe(ver)}"
        m = _load_manifest(kdir)
        if m is None or (m["package"], m["version"]) != (pkg, ver):
            try:
                kdir = _build_kernel(cache, pkg, ver, log)
            except SetupError as e:
                cached = _newest_cached(cache)
                if cached is None:
                    raise
                kdir = cached
                m = _load_manifest(kdir)
                pkg, ver = m["package"], m["version"]
                log(f"assets: {e}; using the cached {pkg} {ver}")
            else:
                m = _load_manifest(kdir)
                built = True
                for old in cache.glob("kernel-*"):  # the kernel package changed: drop old ones
                    if old != kdir:
                        shutil.rmtree(old, ignore_errors=True)
        release = m["release"]
        modroot = kdir
        busybox = busybox_path()
        kos = module_load_list(modroot, release)
        key = initramfs_key(kos, busybox)
        initrd = kdir / f"initramfs-{key}.cpio.gz"
        if not initrd.exists():
            log(f"assets: building the initramfs ({len(kos)} modules, busybox)")
            tmp = initrd.with_suffix(".tmp")
            tmp.write_bytes(build_initramfs(kos, busybox))
            os.rename(tmp, initrd)
            built = True
            for old in kdir.glob("initramfs-*.cpio.gz"):
                if old != initrd:
                    old.unlink()
    return Assets(dir=kdir, package=pkg, version=ver, release=release, kernel=kdir / m["kernel"],
                  pvh=m["pvh"], initramfs=initrd, modules=kdir / "lib" / "modules" / release,
                  built=built, build_s=time.monotonic() - t0)
