"""`python3 -m integration`: boot the cgroup-v2 guest once and run the
privileged test set inside it as root.

Exit status: 0 when every guest test passed; pytest's own status (1 tests
failed, 2 interrupted, 3 internal error, 4 usage error, 5 no tests) or the
--guest-cmd's status when the guest ran it; 1 as well when pytest passed but
reported no test that actually ran; 124 when the guest timed out (QEMU is
killed); 125 on setup trouble (no QEMU, download failed, …); 126 when the
guest stopped without reporting an exit code (boot failure, kernel panic).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from integration.assets import REPO, Assets, SetupError, busybox_path, default_cache_dir, ensure_assets

GUEST_RUN = Path(__file__).resolve().parent / "guest" / "run.sh"
GUEST_SHARE = "/hivejail-share"              # where the results share sits in the guest
GUEST_SCRATCH_DEV = "/dev/vda"               # the only virtio-blk disk
GUEST_SCRATCH_DIR = "/mnt/hivejail-scratch"  # ext4 on it, mounted by run.sh
DEFAULT_PYTHON = "/opt/hivejail/venv/bin/python"
DEFAULT_TIMEOUT = 1200.0
SCRATCH_SIZE = 256 << 20

EXIT_TIMEOUT, EXIT_SETUP, EXIT_NO_STATUS = 124, 125, 126

PR_SET_PDEATHSIG = 1


def say(msg: str) -> None:
    print(f"integration: {msg}", flush=True)


# ---------------------------------------------------------------- pure parts

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python3 -m integration",
        description="Boot a cgroup-v2 guest (Debian's kernel under QEMU/TCG) and run "
                    "integration/tests in it as root, in one boot.",
        epilog="Arguments after the options (use -- first) replace integration/tests as "
               "pytest's arguments, e.g. `-- integration/tests/test_guest_env.py -x`.")
    ap.add_argument("-k", dest="keyword", metavar="EXPR", help="only run tests matching EXPR (pytest -k)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (share, scratch disk) and print its path")
    ap.add_argument("--timeout", type=float, metavar="SECONDS",
                    default=float(os.environ.get("HIVEJAIL_VM_TIMEOUT", DEFAULT_TIMEOUT)),
                    help="hard limit for the whole boot, from QEMU's start (default %(default)s, "
                         "or $HIVEJAIL_VM_TIMEOUT); QEMU is killed when it passes")
    ap.add_argument("--guest-cmd", metavar="CMD",
                    help="run this shell command in the guest (in the repository) instead of pytest")
    ap.add_argument("--python", default=os.environ.get("HIVEJAIL_VM_PYTHON", DEFAULT_PYTHON),
                    help="the Python the guest runs pytest with (a host path; default %(default)s)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="asset cache folder (default $HIVEJAIL_VM_CACHE or integration/.cache)")
    ap.add_argument("--results", type=Path, default=None,
                    help="where to copy console.log, junit.xml, dmesg.txt, exit_code (default CACHE/last-run)")
    ap.add_argument("--junitxml", type=Path, default=None, help="also copy the guest's JUnit XML report here")
    ap.add_argument("--smp", type=int, default=2, help="guest vCPUs (default %(default)s)")
    ap.add_argument("--memory", type=int, default=2048, help="guest memory in MiB (default %(default)s)")
    ap.add_argument("--kernel-log", action="store_true", help="show the kernel's boot messages on the console")
    ap.add_argument("--build-only", action="store_true", help="build (or check) the cached assets and exit")
    ap.add_argument("pytest_args", nargs="*", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def pytest_command(python: str, pytest_args: list[str], keyword: str | None) -> str:
    """The guest's shell command line for pytest (every word quoted)."""
    argv = [python, "-m", "pytest", *(pytest_args or ["integration/tests"]),
            "-p", "no:cacheprovider", f"--junitxml={GUEST_SHARE}/junit.xml", "-v", "-ra"]
    if keyword:
        argv += ["-k", keyword]
    return shlex.join(argv)


def kernel_cmdline(quiet: bool = True) -> str:
    words = ["console=ttyS0", "panic=-1", "cgroup_no_v1=all", "rdinit=/init",
             "8250.nr_uarts=1", "i8042.noaux", "i8042.nokbd", "i8042.nopnp"]
    if quiet:
        words.append("quiet")
    return " ".join(words)


def qemu_argv(qemu: str, assets: Assets, share: Path, scratch: Path, *, smp: int = 2,
              memory: int = 2048, quiet: bool = True) -> list[str]:
    return [
        qemu, "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-smp", str(smp), "-m", str(memory),
        "-kernel", str(assets.kernel), "-initrd", str(assets.initramfs),
        "-append", kernel_cmdline(quiet),
        "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=hjshare,path={share},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hjshare,mount_tag=hjshare",
        "-drive", f"file={scratch},if=none,id=scratch,format=raw,cache=unsafe",
        "-device", "virtio-blk-pci,drive=scratch",
        "-device", "virtio-rng-pci",
    ]


def guest_env(*, repo: Path, python: str, command: str, assets: Assets, quiet: bool,
              busybox: str = "/bin/busybox") -> str:
    """guest.env, sourced by guest/run.sh (every value shell-quoted)."""
    values = {
        "HJ_REPO": str(repo), "HJ_PYTHON": python, "HJ_CMD": command,
        "HJ_RELEASE": assets.release, "HJ_MODULES": str(assets.modules),
        "HJ_QUIET": "1" if quiet else "", "HJ_BUSYBOX": busybox,
        "HIVEJAIL_SCRATCH_DEV": GUEST_SCRATCH_DEV, "HIVEJAIL_SCRATCH_DIR": GUEST_SCRATCH_DIR,
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


@dataclass
class JUnitSummary:
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    time: float = 0.0
    failed: list[str] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped

    def line(self) -> str:
        return (f"{self.passed} passed, {self.failures} failed, {self.errors} errors, "
                f"{self.skipped} skipped in {self.time:.1f} s")


def parse_junit(text: str) -> JUnitSummary:
    root = ET.fromstring(text)
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    s = JUnitSummary()
    for suite in suites:
        s.tests += int(suite.get("tests", 0))
        s.failures += int(suite.get("failures", 0))
        s.errors += int(suite.get("errors", 0))
        s.skipped += int(suite.get("skipped", 0))
        s.time += float(suite.get("time", 0) or 0)
        for case in suite.iter("testcase"):
            for kind in ("failure", "error"):
                if case.find(kind) is not None:
                    s.failed.append(f"{kind.upper()} {case.get('classname')}::{case.get('name')}")
                    break
    return s


# ---------------------------------------------------------------- QEMU

def _die_with_parent(parent: int) -> None:  # runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the runner died before prctl took effect
        os._exit(1)


class Console:
    """Streams QEMU's serial console to our stdout (live) and to a log file,
    noting when the guest reaches stage 2 and starts its command."""

    def __init__(self, fd: int, log: Path, t0: float) -> None:
        self.fd, self.t0 = fd, t0
        self.log = open(log, "wb")
        self.marks: dict[str, float] = {}
        self.tail = b""
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        out = sys.stdout.buffer
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunk = chunk.replace(b"\r", b"")
            if out is not None:
                try:
                    out.write(chunk)
                    out.flush()
                except (OSError, ValueError):  # our stdout went away: keep draining QEMU
                    out = None
            self.log.write(chunk)
            self.log.flush()
            self._scan(chunk)
        self.log.close()

    def _scan(self, chunk: bytes) -> None:
        lines = (self.tail + chunk).split(b"\n")
        self.tail = lines.pop()[-4096:]
        now = time.monotonic() - self.t0
        for ln in lines:
            if ln.startswith(b"hivejail-vm: kernel "):
                self.marks.setdefault("stage2", now)
            elif ln.startswith(b"hivejail-vm: running: "):
                self.marks.setdefault("command", now)
            elif ln.startswith(b"hivejail-vm: command exited"):
                self.marks.setdefault("command_done", now)
            elif b"Kernel panic" in ln:
                self.marks.setdefault("panic", now)

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)


@dataclass
class Outcome:
    status: int                 # the runner's exit status
    guest_rc: int | None
    timed_out: bool
    marks: dict[str, float]
    wall_s: float
    junit: JUnitSummary | None


def boot(args: argparse.Namespace, assets: Assets, work: Path) -> Outcome:
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise SetupError("qemu-system-x86_64 not found: install Debian's qemu-system-x86")
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
    if not mkfs:
        raise SetupError("mkfs.ext4 not found: install Debian's e2fsprogs")
    share = work / "share"
    share.mkdir()
    scratch = work / "scratch.img"
    with open(scratch, "wb") as f:
        f.truncate(SCRATCH_SIZE)
    p = subprocess.run([mkfs, "-q", "-F", "-m", "0", "-L", "hjscratch", str(scratch)],
                       capture_output=True, text=True)
    if p.returncode:
        raise SetupError(f"mkfs.ext4 of the scratch disk failed: {p.stderr.strip()}")

    quiet = not args.kernel_log
    command = args.guest_cmd or pytest_command(args.python, args.pytest_args, args.keyword)
    (share / "guest.env").write_text(guest_env(repo=REPO, python=args.python, command=command,
                                               assets=assets, quiet=quiet, busybox=str(busybox_path())))
    shutil.copy(GUEST_RUN, share / "run.sh")

    argv = qemu_argv(qemu, assets, share, scratch, smp=args.smp, memory=args.memory, quiet=quiet)
    (work / "qemu.argv").write_text(shlex.join(argv) + "\n")
    say(f"booting {assets.release} under QEMU/TCG ({args.smp} vCPUs, {args.memory} MiB), "
        f"timeout {args.timeout:g} s")
    qemu_err = open(work / "qemu.stderr", "w+b")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=qemu_err,
                            start_new_session=True, preexec_fn=lambda p=os.getpid(): _die_with_parent(p))
    console = Console(proc.stdout.fileno(), share / "console.log", t0)
    timed_out = False
    try:
        proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:  # timeout, Ctrl-C, SIGTERM: kill QEMU, the only process we started
            proc.kill()
            proc.wait()
        console.join()
        proc.stdout.close()
    wall = time.monotonic() - t0
    sys.stdout.flush()

    rc_file = share / "exit_code"
    guest_rc = None
    if rc_file.exists():
        try:
            guest_rc = int(rc_file.read_text().strip())
        except ValueError:
            pass
    junit = None
    if (share / "junit.xml").exists():
        try:
            junit = parse_junit((share / "junit.xml").read_text())
        except (ET.ParseError, ValueError) as e:
            say(f"unreadable junit.xml: {e}")

    if timed_out and guest_rc is None:
        say(f"guest timed out after {args.timeout:g} s: QEMU (pid {proc.pid}) killed")
        status = EXIT_TIMEOUT
    elif guest_rc is None:
        why = "the guest kernel panicked" if "panic" in console.marks else "the guest stopped"
        qemu_err.seek(0)
        err = qemu_err.read().decode(errors="replace").strip()
        say(f"{why} without reporting an exit code (QEMU exit status {proc.returncode})"
            + (f": {err.splitlines()[-1]}" if err else ""))
        status = EXIT_NO_STATUS
    else:
        if timed_out:  # the command finished; only the power-off hung
            say(f"the guest's command finished but the guest did not power off within {args.timeout:g} s: "
                f"QEMU (pid {proc.pid}) killed")
        status = guest_rc
        if status == 0 and not args.guest_cmd:
            if junit is None:
                say("pytest passed but wrote no JUnit report")
                status = 1
            elif junit.tests - junit.skipped <= 0:
                say(f"no guest test ran ({junit.tests} collected, {junit.skipped} skipped)")
                status = 1
    qemu_err.close()
    return Outcome(status, guest_rc, timed_out, console.marks, wall, junit)


def _collect(share: Path, results: Path, junitxml: Path | None) -> None:
    if results.exists():
        shutil.rmtree(results)
    results.mkdir(parents=True)
    for name in ("console.log", "junit.xml", "dmesg.txt", "exit_code"):
        if (share / name).exists():
            shutil.copy2(share / name, results / name)
    if junitxml and (share / "junit.xml").exists():
        junitxml.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(share / "junit.xml", junitxml)


class Interrupted(Exception):
    def __init__(self, signum: int, *what: str) -> None:
        super().__init__(signum, *what)
        self.signum = signum


def _on_signal(signum, frame):
    raise Interrupted(signum)


def _install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_signal)


WORK_PREFIX = "hivejail-vm-"


def _remove_stale_work_dirs() -> None:
    """Remove work folders left by runners that were killed (not --keep ones)."""
    for d in Path(tempfile.gettempdir()).glob(WORK_PREFIX + "*"):
        try:
            pid = int((d / "runner.pid").read_text())
        except (OSError, ValueError):
            continue
        if (d / "keep").exists():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _install_signal_handlers()
    try:
        return _run(args)
    except Interrupted as e:
        say(f"interrupted by signal {e.signum}" + (": QEMU killed" if e.args[-1:] == ("qemu",) else ""))
        return 128 + e.signum


def _run(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    cache = (args.cache or default_cache_dir()).resolve()
    try:
        assets = ensure_assets(cache, log=say)
    except SetupError as e:
        say(f"setup failed: {e}")
        return EXIT_SETUP
    say(f"assets: {assets.package} {assets.version} (kernel {assets.release}, "
        f"{'PVH vmlinux' if assets.pvh else 'bzImage'}), "
        f"{'built' if assets.built else 'cached'} in {assets.build_s:.1f} s, {assets.dir}")
    if args.build_only:
        return 0
    if not args.guest_cmd and not os.access(args.python, os.X_OK):
        say(f"setup failed: {args.python} not found: run scripts/setup.sh (or pass --python)")
        return EXIT_SETUP

    _remove_stale_work_dirs()
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    os.chmod(work, 0o755)
    (work / "runner.pid").write_text(f"{os.getpid()}\n")
    if args.keep:
        (work / "keep").touch()
    results = (args.results or cache / "last-run").resolve()
    try:
        outcome = boot(args, assets, work)
    except SetupError as e:
        say(f"setup failed: {e}")
        return EXIT_SETUP
    except Interrupted as e:
        raise Interrupted(e.signum, "qemu") from None
    finally:
        if (work / "share").exists():
            _collect(work / "share", results, args.junitxml)
        if args.keep:
            say(f"kept the work folder {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    m = outcome.marks
    parts = [f"assets {assets.build_s:.1f} s"]
    if "stage2" in m:
        parts.append(f"boot {m['stage2']:.1f} s")
    if "command" in m:
        end = m.get("command_done", outcome.wall_s)
        parts.append(f"command {end - m['command']:.1f} s")
    parts.append(f"guest total {outcome.wall_s:.1f} s, run total {time.monotonic() - t_start:.1f} s")
    say("timings: " + ", ".join(parts))
    if outcome.junit:
        say(f"guest tests: {outcome.junit.line()}")
        for name in outcome.junit.failed:
            say(f"  {name}")
    say(f"results in {results}")
    if outcome.status == 0:
        say("PASSED")
    else:
        say(f"FAILED (exit status {outcome.status})")
    return outcome.status
