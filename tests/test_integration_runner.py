"""The VM integration runner (integration/): its pure parts, and — with QEMU —
that a hung guest is killed at the timeout, that the guest's exit status
comes back, and that QEMU dies with a killed runner."""
from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integration import assets, runner

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- apt / modprobe parsing

def test_parse_apt_depends():
    out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"
    assert assets.parse_apt_depends(out) == "linux-image-6.1.0-56-amd64"
    assert assets.parse_apt_depends("linux-image-amd64\n  Depends: <linux-image-x>\n") is None
    assert assets.parse_apt_depends("") is None


def test_parse_apt_candidate():
    out = "linux-image-6.1.0-56-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n"
    assert assets.parse_apt_candidate(out) == "6.1.192-2"
    assert assets.parse_apt_candidate("x:\n  Candidate: (none)\n") is None


def test_parse_show_depends_keeps_order_and_skips_builtins():
    out = ("insmod /m/virtio_ring.ko \ninsmod /m/virtio.ko \nbuiltin crc32c\n"
           "insmod /m/virtio_ring.ko \ninsmod /m/9p.ko opt=1\n")
    assert assets.parse_show_depends(out) == ["/m/virtio_ring.ko", "/m/virtio.ko", "/m/9p.ko"]


# ---------------------------------------------------------------- kernel image

def _elf_with_note(name: bytes, ntype: int) -> bytes:
    namesz = len(name) + 1
    note = struct.pack("<III", namesz, 4, ntype) + (name + b"\0").ljust((namesz + 3) & ~3, b"\0") + b"\0" * 4
    ehdr = bytearray(64)
    ehdr[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", ehdr, 0x20, 64)          # e_phoff
    struct.pack_into("<HH", ehdr, 0x36, 56, 1)      # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(note), len(note), 4)
    return bytes(ehdr) + phdr + note


def test_pvh_note_detection():
    assert assets.elf_has_pvh_note(_elf_with_note(b"Xen", 18))
    assert not assets.elf_has_pvh_note(_elf_with_note(b"Xen", 17))
    assert not assets.elf_has_pvh_note(_elf_with_note(b"GNU", 18))
    assert not assets.elf_has_pvh_note(b"MZ not an elf")


def _bzimage(payload: bytes, setup_sects: int = 1) -> bytes:
    head = bytearray((setup_sects + 1) * 512)
    head[0x1F1] = setup_sects
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", head, 0x248, 16, len(payload))
    return bytes(head) + b"\0" * 16 + payload + b"trailing"


def test_extract_vmlinux_from_xz_bzimage():
    elf = _elf_with_note(b"Xen", 18) + os.urandom(1000)
    blob = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    assert assets.extract_vmlinux(_bzimage(blob + b"\x10\x20\x30\x40")) == elf
    assert assets.extract_vmlinux(_bzimage(b"\x28\xb5\x2f\xfd zstd")) is None
    assert assets.extract_vmlinux(b"no header") is None


def test_elf_is_static(tmp_path):
    dynamic = Path(os.path.realpath(sys.executable))
    assert not assets.elf_is_static(dynamic)
    if Path("/bin/busybox").exists() and "statically" in subprocess.run(
            ["file", "-L", "/bin/busybox"], capture_output=True, text=True).stdout:
        assert assets.elf_is_static(Path("/bin/busybox"))
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert not assets.elf_is_static(tmp_path / "script")


# ---------------------------------------------------------------- the cache

def test_cache_is_rebuilt_only_when_the_kernel_package_changes(tmp_path, monkeypatch):
    builds = []
    current = {"pkg": ("linux-image-6.1.0-1-amd64", "6.1.1-1")}

    def fake_kernel_package():
        v = current["pkg"]
        if isinstance(v, Exception):
            raise v
        return v

    def fake_build(cache, pkg, ver, log):
        if ver == "broken":
            raise assets.SetupError("download of x failed: 404")
        builds.append(ver)
        d = cache / f"kernel-{pkg}_{ver}"
        (d / "lib" / "modules" / "r").mkdir(parents=True)
        (d / "vmlinux").write_bytes(b"\x7fELF")
        (d / "manifest.json").write_text(json.dumps({"format": assets.CACHE_FORMAT, "package": pkg,
                                                     "version": ver, "release": "r", "kernel": "vmlinux",
                                                     "pvh": True}))
        return d

    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"static enough")
    monkeypatch.setattr(assets, "kernel_package", fake_kernel_package)
    monkeypatch.setattr(assets, "_build_kernel", fake_build)
    monkeypatch.setattr(assets, "module_load_list", lambda root, release: [])
    monkeypatch.setattr(assets, "busybox_path", lambda: busybox)
    cache = tmp_path / "cache"
    log = []

    a = assets.ensure_assets(cache, log=log.append)
    assert a.built and builds == ["6.1.1-1"] and a.initramfs.exists() and a.kernel.name == "vmlinux"
    a = assets.ensure_assets(cache, log=log.append)
    assert not a.built and builds == ["6.1.1-1"]
    current["pkg"] = ("linux-image-6.1.0-2-amd64", "6.1.2-1")      # a new kernel package
    a = assets.ensure_assets(cache, log=log.append)
    assert a.built and builds == ["6.1.1-1", "6.1.2-1"] and a.version == "6.1.2-1"
    assert [d.name for d in cache.glob("kernel-*")] == ["kernel-linux-image-6.1.0-2-amd64_6.1.2-1"]
    current["pkg"] = assets.SetupError("apt-cache names no kernel package")  # no apt lists
    a = assets.ensure_assets(cache, log=log.append)
    assert not a.built and a.version == "6.1.2-1" and "using the cached" in log[-1]
    current["pkg"] = ("linux-image-6.1.0-3-amd64", "broken")         # download fails
    a = assets.ensure_assets(cache, log=log.append)
    assert a.version == "6.1.2-1" and "404" in log[-1]
    shutil.rmtree(cache)
    with pytest.raises(assets.SetupError, match="404"):               # ... with nothing cached
        assets.ensure_assets(cache, log=log.append)


# ---------------------------------------------------------------- initramfs

@pytest.mark.skipif(not shutil.which("cpio"), reason="needs the cpio program")
def test_cpio_writer_is_read_by_cpio(tmp_path):
    c = assets.Cpio()
    c.dir("bin")
    c.file("bin/hello", b"hi\n", 0o755)
    c.symlink("bin/sh", "hello")
    c.chardev("console", 5, 1)
    c.file("odd", b"x" * 5)
    data = c.finish()
    assert len(data) % 512 == 0
    listing = subprocess.run(["cpio", "-itv"], input=data, capture_output=True, check=True).stdout.decode()
    assert re.search(r"^drwxr-xr-x .* bin$", listing, re.M)
    assert re.search(r"^-rwxr-xr-x .* 3 .* bin/hello$", listing, re.M)
    assert re.search(r"^lrwxrwxrwx .* bin/sh -> hello$", listing, re.M)
    assert re.search(r"^crw------- .* 5,\s+1 .* console$", listing, re.M)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "bin/hello", "odd"], input=data, cwd=out, check=True)
    assert (out / "bin/hello").read_bytes() == b"hi\n" and (out / "odd").read_bytes() == b"xxxxx"


# ---------------------------------------------------------------- command lines

def test_pytest_command_quotes_keyword():
    cmd = runner.pytest_command("/opt/py", [], "memory and not 'slow'")
    assert cmd.startswith("/opt/py -m pytest integration/tests -p no:cacheprovider ")
    assert "--junitxml=/hivejail-share/junit.xml" in cmd and " -v" in cmd
    argv = subprocess.run(["sh", "-c", f"set -- {cmd}; printf '%s\\n' \"$@\""], capture_output=True,
                          text=True, check=True).stdout.splitlines()
    assert argv[-2:] == ["-k", "memory and not 'slow'"]
    assert runner.pytest_command("/py", ["a.py", "-x"], None).split()[3:5] == ["a.py", "-x"]


def test_guest_env_round_trips_through_sh(tmp_path):
    a = assets.Assets(dir=tmp_path, package="p", version="1", release="6.1.0-x", kernel=tmp_path / "k",
                      pvh=True, initramfs=tmp_path / "i", modules=tmp_path / "m o d", built=False, build_s=0)
    tricky = "echo \"it's\" $HOME `id` ; exit 3"
    env = runner.guest_env(repo=Path("/work/my repo"), python="/py", command=tricky, assets=a, quiet=True)
    (tmp_path / "guest.env").write_text(env)
    out = subprocess.run(["sh", "-c", '. ./guest.env; printf "%s\\n" "$HJ_CMD" "$HJ_REPO" "$HJ_MODULES"'],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [tricky, "/work/my repo", str(tmp_path / "m o d")]


def test_qemu_argv_shape(tmp_path):
    a = assets.Assets(dir=tmp_path, package="p", version="1", release="r", kernel=tmp_path / "vmlinux",
                      pvh=True, initramfs=tmp_path / "initrd", modules=tmp_path, built=False, build_s=0)
    argv = runner.qemu_argv("qemu", a, tmp_path / "share", tmp_path / "disk", smp=2, memory=2048)
    joined = " ".join(argv)
    for piece in ("-smp 2", "-m 2048", "-accel tcg,thread=multi", "-cpu max", "-no-reboot",
                  "path=/,security_model=none,readonly=on", "mount_tag=hostroot", "mount_tag=hjshare",
                  f"path={tmp_path / 'share'},", "virtio-blk-pci", "cgroup_no_v1=all", "panic=-1"):
        assert piece in joined, piece
    assert "quiet" in runner.kernel_cmdline(True) and "quiet" not in runner.kernel_cmdline(False)


def test_parse_args_defaults_and_overrides():
    a = runner.parse_args([])
    assert (a.keyword, a.keep, a.guest_cmd, a.pytest_args, a.smp, a.memory) == (None, False, None, [], 2, 2048)
    a = runner.parse_args(["-k", "pids", "--keep", "--timeout", "15", "--", "x.py", "-x"])
    assert (a.keyword, a.keep, a.timeout, a.pytest_args) == ("pids", True, 15.0, ["x.py", "-x"])


def test_parse_junit():
    xml = """<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="2.5">
      <testcase classname="a.b" name="t1"/><testcase classname="a.b" name="t2"><failure message="x"/></testcase>
      <testcase classname="a.b" name="t3"><error message="y"/></testcase>
      <testcase classname="a.b" name="t4"><skipped/></testcase><testcase classname="a.b" name="t5"/>
    </testsuite></testsuites>"""
    s = runner.parse_junit(xml)
    assert (s.tests, s.failures, s.errors, s.skipped, s.passed) == (5, 1, 1, 1, 2)
    assert s.failed == ["FAILURE a.b::t2", "ERROR a.b::t3"]
    assert s.line() == "2 passed, 1 failed, 1 errors, 1 skipped in 2.5 s"


# ---------------------------------------------------------------- with QEMU

def _runner(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "integration", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


@pytest.fixture(scope="module")
def vm_assets():
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed")
    p = _runner("--build-only")
    out, _ = p.communicate(timeout=900)
    if p.returncode == runner.EXIT_SETUP:
        pytest.skip(f"cannot build the guest assets: {out.strip().splitlines()[-1]}")
    assert p.returncode == 0, out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hung_guest_is_killed_at_the_timeout(vm_assets, tmp_path):
    t0 = time.monotonic()
    p = _runner("--timeout", "15", "--guest-cmd", "sleep 600", "--results", str(tmp_path / "res"))
    out, _ = p.communicate(timeout=100)
    elapsed = time.monotonic() - t0
    assert p.returncode == runner.EXIT_TIMEOUT, out
    m = re.search(r"guest timed out after 15 s: QEMU \(pid (\d+)\) killed", out)
    assert m, out
    assert "hivejail-vm: running: sleep 600" in out  # it did boot, then hung
    assert not Path(f"/proc/{m.group(1)}").exists() or \
        Path(f"/proc/{m.group(1)}/cmdline").read_bytes().find(b"qemu") < 0
    assert elapsed < 40, f"the 15 s timeout took {elapsed:.0f} s"
    assert (tmp_path / "res" / "console.log").exists()
    assert not (tmp_path / "res" / "exit_code").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_guest_exit_status_and_output_come_back(vm_assets, tmp_path):
    p = _runner("--timeout", "90", "--results", str(tmp_path / "res"),
                "--guest-cmd", "echo from-the-guest $(id -u) $HIVEJAIL_VM; exit 3")
    out, _ = p.communicate(timeout=100)
    assert p.returncode == 3, out
    assert "from-the-guest 0 1" in out
    assert "hivejail-vm: cgroup controllers enabled: " in out
    assert (tmp_path / "res" / "exit_code").read_text().strip() == "3"
    assert "from-the-guest 0 1" in (tmp_path / "res" / "console.log").read_text()


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_qemu_dies_with_the_runner(vm_assets, sig):
    p = _runner("--timeout", "100", "--guest-cmd", "sleep 600")
    try:
        for line in p.stdout:
            if line.startswith("hivejail-vm: running: "):
                break
        qemu = [k for k in _children(p.pid) if b"qemu" in Path(f"/proc/{k}/cmdline").read_bytes()]
        assert len(qemu) == 1
        p.send_signal(sig)
        p.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(qemu[0]):
            assert time.monotonic() < deadline, f"QEMU {qemu[0]} outlived the runner killed by {sig.name}"
            time.sleep(0.1)
    finally:
        if p.poll() is None:
            p.kill()
        p.stdout.close()
