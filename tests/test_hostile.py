"""Hostile scripts against the core jail, as root and rootless.

Each test runs a real payload inside a real jail and checks from both sides
where it can: inside, the attempt failed (the payload prints what happened);
outside, the host is unchanged.  Each was seen to fail with its protection
removed (see the closing notes of the core issue).
"""

from __future__ import annotations

import os
import pty
import secrets
import select
import shutil
import signal
import socket
import subprocess
import termios
import time
from pathlib import Path

import pytest

from jailcli import cli_env, SLOW, TEST_USER, VENV_PYTHON, Runner, ensure_test_user, package_copy, remove_test_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs as root")


@pytest.fixture(scope="session")
def rootless_env():
    if not os.access(VENV_PYTHON, os.X_OK):
        pytest.fail(f"{VENV_PYTHON} missing: run scripts/setup.sh first")
    ensure_test_user()
    pkg = package_copy()
    yield pkg
    shutil.rmtree(pkg, ignore_errors=True)
    remove_test_user()


@pytest.fixture(params=["root-all", "root-core", "rootless-all", "rootless-core"])
def runner(request):
    """Every attack runs against the whole jail, and against the core layers alone
    (no seccomp, no Landlock) so each core protection is shown to hold by itself."""
    mode, layers = request.param.split("-")
    if mode == "rootless":
        r = Runner("rootless", request.getfixturevalue("rootless_env"), layers)
    else:
        r = Runner("root", layers=layers)
    yield r
    r.close()


def ok(run) -> None:
    assert run.result.get("status") == "ok", (run.result.get("reason"), run.stdout, run.stderr)


# ---- filesystem -----------------------------------------------------------

def test_host_files_are_invisible(runner):
    assert os.path.exists("/etc/shadow")
    run = runner.run("""
        import os
        for p in ("/etc/shadow", "/etc/passwd", "/root", "/home", "/var/log", "/sys/kernel",
                  "/run/dbus/system_bus_socket", "/var/run/docker.sock", "/boot"):
            try:
                with open(p, "rb") as f:
                    data = f.read()
                print(f"{p}=READ:{data[:40]!r}")
            except OSError as e:
                print(f"{p}=ERR:{e.errno}")
    """)
    ok(run)
    kv = run.kv
    assert kv["/etc/shadow"] == "ERR:2"
    # /etc/passwd is the jail's stub: no host accounts in it.
    assert kv["/etc/passwd"].startswith("READ:b'root:x:0:0:root:/:/usr/sbin/nologin")
    host_users = [l.split(":")[0] for l in open("/etc/passwd") if not l.startswith(("root:", "nobody:"))]
    assert host_users, "the host has accounts besides root"
    for p in ("/root", "/home", "/var/log", "/sys/kernel", "/run/dbus/system_bus_socket",
              "/var/run/docker.sock", "/boot"):
        assert kv[p].startswith("ERR:"), (p, kv[p])


def test_writes_outside_rw_mounts_fail_and_host_is_unchanged(runner):
    canary = f"hjtest-canary-{secrets.token_hex(4)}"
    # in/ is world-writable on the host: only the read-only mount stops the write.
    run = runner.run(f"""
        import os
        for p in ("/usr/{canary}", "/job/in/{canary}", "/{canary}", "/etc/{canary}",
                  "/dev/{canary}", "/job/out/{canary}", "/tmp/{canary}"):
            try:
                with open(p, "w") as f:
                    f.write("x")
                print(f"{{p}}=WROTE")
            except OSError as e:
                print(f"{{p}}=ERR:{{e.errno}}")
    """, in_mode=0o777)
    ok(run)
    kv = run.kv
    assert kv[f"/job/in/{canary}"] == "ERR:30"                  # EROFS, not a permission
    for p in (f"/usr/{canary}", f"/{canary}", f"/etc/{canary}", f"/dev/{canary}"):
        assert kv[p] in ("ERR:30", "ERR:13"), (p, kv[p])       # EROFS / EACCES
    assert kv[f"/job/out/{canary}"] == "WROTE"
    assert kv[f"/tmp/{canary}"] == "WROTE"                     # the jail's own tmpfs
    # Host side: only the rw mount received the file.
    assert not os.path.exists(f"/usr/{canary}")
    assert not (run.workdir / "in" / canary).exists()
    assert not os.path.exists(f"/tmp/{canary}")
    assert (run.workdir / "out" / canary).read_text() == "x"


def test_tmp_cannot_fill_the_host(runner):
    before = shutil.disk_usage("/tmp").free
    run = runner.run("""
        import os
        written = 0
        try:
            with open("/tmp/fill", "wb") as f:
                while written < 512 << 20:
                    f.write(b"\\0" * (1 << 20)); f.flush()
                    written += 1 << 20
            print("RESULT=FILLED")
        except OSError as e:
            print(f"RESULT=ERR:{e.errno}")
        print(f"WRITTEN={written}")
    """, extra="limits: {file_size: 1G}\n")      # so the tmpfs size, not RLIMIT_FSIZE, stops it
    ok(run)
    assert run.kv["RESULT"] == "ERR:28"                        # ENOSPC
    assert int(run.kv["WRITTEN"]) <= 64 << 20                 # the default tmp_size
    assert shutil.disk_usage("/tmp").free >= before - (16 << 20)


def test_proc_sys_dev_show_only_the_jail(runner):
    run = runner.run("""
        import os
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        print("PIDS=" + ",".join(map(str, pids)))
        print("SYS=" + str(os.path.exists("/sys")))
        print("DEV=" + ",".join(sorted(os.listdir("/dev"))))
        print("INIT=" + open("/proc/1/cmdline","rb").read().split(b"\\0")[0].decode())
        print("MOUNTS=" + str(len(open("/proc/self/mountinfo").read().splitlines())))
    """)
    ok(run)
    kv = run.kv
    pids = [int(p) for p in kv["PIDS"].split(",")]
    assert pids[0] == 1 and len(pids) <= 4, pids              # init, sh, python — no host pids
    assert kv["SYS"] == "False"
    assert set(kv["DEV"].split(",")) <= {"null", "zero", "full", "random", "urandom", "tty",
                                         "fd", "stdin", "stdout", "stderr"}
    assert "python" in kv["INIT"]                             # the jail's init, not the host's
    assert int(kv["MOUNTS"]) < 20


# ---- processes ------------------------------------------------------------

def test_host_processes_cannot_be_seen_or_killed(runner):
    user = ["setpriv", f"--reuid={TEST_USER}", f"--regid={TEST_USER}", "--clear-groups"] \
        if runner.mode == "rootless" else []
    sentinel = subprocess.Popen([*user, "sleep", "300"])
    try:
        run = runner.run(f"""
            import os, signal
            try:
                os.kill({sentinel.pid}, signal.SIGKILL); print("DIRECT=SENT")
            except OSError as e:
                print(f"DIRECT=ERR:{{e.errno}}")
            visible = [p for p in os.listdir("/proc") if p.isdigit() and p == "{sentinel.pid}"]
            print(f"VISIBLE={{len(visible)}}")
            try:
                os.kill(-1, signal.SIGKILL); print("ALL=SENT")
            except OSError as e:
                print(f"ALL=ERR:{{e.errno}}")
        """)
        time.sleep(0.2)
        assert sentinel.poll() is None, "the host sentinel was killed from inside the jail"
        assert run.kv["DIRECT"] == "ERR:3"        # ESRCH: not in the jail's pid namespace
        assert run.kv["VISIBLE"] == "0"
    finally:
        sentinel.kill()
        sentinel.wait()


def test_capabilities_zero_and_no_new_privs(runner):
    run = runner.run("""
        for line in open("/proc/self/status"):
            k, _, v = line.partition(":")
            if k.startswith("Cap") or k == "NoNewPrivs":
                print(f"{k}={v.strip()}")
        import os
        print(f"UID={os.getuid()},{os.geteuid()}")
    """)
    ok(run)
    kv = run.kv
    for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(kv[k], 16) == 0, (k, kv[k])
    assert kv["NoNewPrivs"] == "1"
    assert kv["UID"] == "65534,65534"


def test_mount_unshare_chroot_are_refused(runner):
    run = runner.run("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def attempt(name, fn):
            r = fn()
            print(f"{name}=" + ("OK" if r == 0 else f"ERR:{ctypes.get_errno()}"))
        attempt("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
        for name, flag in (("user", 0x10000000), ("mnt", 0x20000), ("net", 0x40000000),
                           ("pid", 0x20000000), ("uts", 0x04000000), ("ipc", 0x08000000),
                           ("cgroup", 0x02000000)):
            attempt("unshare_" + name, lambda f=flag: libc.unshare(f))
        attempt("chroot", lambda: libc.chroot(b"/tmp"))
        try:
            os.open("/proc/1/ns/mnt", os.O_RDONLY); print("open_init_ns=OK")
        except OSError as e:
            print(f"open_init_ns=ERR:{e.errno}")
        fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        attempt("setns", lambda: libc.setns(fd, 0))
    """)
    ok(run)
    kv = run.kv
    assert kv["mount"].startswith("ERR:"), kv
    for name in ("user", "mnt", "net", "pid", "uts", "ipc", "cgroup"):
        assert kv["unshare_" + name].startswith("ERR:"), (name, kv)
    assert kv["chroot"].startswith("ERR:")
    assert kv["setns"].startswith("ERR:")
    assert kv["open_init_ns"] == "ERR:13"


def test_no_leaked_fds(runner):
    secret_file = Path(runner.scratch()) / "secret"
    secret_file.write_text("host secret")
    fd = os.open(secret_file, os.O_RDONLY)
    os.set_inheritable(fd, True)
    try:
        run = runner.run("""
            import os
            fds = sorted(int(x) for x in os.listdir("/proc/self/fd"))
            print("FDS=" + ",".join(map(str, fds)))
        """, pass_fds=(fd,))
    finally:
        os.close(fd)
    ok(run)
    # 0-2 plus the fd listdir itself holds open while listing.
    fds = [int(x) for x in run.kv["FDS"].split(",")]
    assert fds[:3] == [0, 1, 2] and len(fds) <= 4, fds


def test_no_leaked_environment(runner):
    run = runner.run("""
        import os
        for k, v in sorted(os.environ.items()):
            print(f"ENV_{k}={v}")
    """, env={"HJ_SECRET_TOKEN": "s3cret", "LANG": "C.UTF-8"})
    ok(run)
    keys = {k[4:] for k in run.kv if k.startswith("ENV_")}
    assert "HJ_SECRET_TOKEN" not in keys
    assert "s3cret" not in run.stdout
    assert keys <= {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "LC_CTYPE", "PWD", "SHLVL", "_"}, keys
    assert run.kv["ENV_LANG"] == "C.UTF-8"                 # passed by the policy


# ---- network (mode none) ---------------------------------------------------

def test_host_loopback_and_abstract_sockets_unreachable(runner):
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    tcp.setblocking(False)
    port = tcp.getsockname()[1]
    name = f"hjtest-{secrets.token_hex(6)}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + name)
    unix.listen(4)
    unix.setblocking(False)
    try:
        run = runner.run(f"""
            import socket
            s = socket.socket(); s.settimeout(3)
            try:
                s.connect(("127.0.0.1", {port})); print("TCP=CONNECTED")
            except OSError as e:
                print(f"TCP=ERR:{{e.errno}}")
            u = socket.socket(socket.AF_UNIX)
            try:
                u.connect("\\0{name}"); print("UNIX=CONNECTED")
            except OSError as e:
                print(f"UNIX=ERR:{{e.errno}}")
            print("IFACES=" + ",".join(n for _, n in socket.if_nameindex()))
        """)
        ok(run)
        assert run.kv["TCP"] == "ERR:111"          # ECONNREFUSED: the jail's own lo
        assert run.kv["UNIX"] == "ERR:111"
        assert run.kv["IFACES"] == "lo"
        # Host side: nobody connected.
        for srv in (tcp, unix):
            r, _, _ = select.select([srv], [], [], 0.2)
            assert not r, "a connection from the jail reached the host"
    finally:
        tcp.close()
        unix.close()


# ---- terminal ---------------------------------------------------------------

def test_tiocsti_cannot_inject_into_the_terminal(runner):
    """The jail runs in a session whose controlling terminal is a real pty.

    Without setsid in the payload, TIOCSTI on that terminal would push bytes
    into the operator's input (dev.tty.legacy_tiocsti is 1 on these hosts).
    """
    master, slave = pty.openpty()
    try:
        work = runner.scratch()
        Path(work, "payload.py").write_text(
            "import fcntl, termios\n"
            "for req in (termios.TIOCSTI, termios.TIOCSTI | (1 << 32)):\n"
            "    try:\n"
            "        fcntl.ioctl(0, req, b'X'); print(f'{req:#x}=INJECTED')\n"
            "    except OSError as e:\n"
            "        print(f'{req:#x}=ERR:{e.errno}')\n")
        os.chmod(work, 0o755)

        def make_controlling() -> None:
            os.setsid()
            import fcntl
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        runner_policy = runner.policy_text(work, mounts=f"- {{source: {work}, target: /job/t}}")
        (work / "in").mkdir()
        (work / "out").mkdir()
        (work / "policy.yml").write_text(runner_policy)
        cmd = [VENV_PYTHON, "-m", "jail.cli", "exec", "--policy", str(work / "policy.yml"), "--",
               "/usr/bin/python3", "/job/t/payload.py"]
        env = cli_env(runner.pkg_dir)
        if runner.mode == "rootless":
            u = runner.user
            cmd = ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--clear-groups",
                   "env", *[f"{k}={v}" for k, v in env.items()], *cmd]
        proc = subprocess.run(cmd, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, preexec_fn=make_controlling, timeout=60, text=True)
        assert proc.returncode == 0, proc.stderr
        lines = dict(l.split("=", 1) for l in proc.stdout.splitlines() if "=" in l)
        assert len(lines) == 2 and all(v.startswith("ERR:") for v in lines.values()), lines
        # Host side: nothing was pushed into the terminal's input queue.
        os.set_blocking(master, False)
        r, _, _ = select.select([slave], [], [], 0.2)
        injected = os.read(slave, 100) if r else b""
        assert b"X" not in injected
    finally:
        os.close(master)
        os.close(slave)


# ---- process structure -------------------------------------------------------

def test_jail_dies_with_supervisor():
    """SIGKILL the supervisor: the PDEATHSIG chain takes the whole jail down."""
    r = Runner("root")
    try:
        marker = f"hjtest-orphan-{secrets.token_hex(4)}"
        work = r.scratch()
        (work / "in").mkdir()
        (work / "out").mkdir()
        (work / "policy.yml").write_text(r.policy_text(work))
        proc = subprocess.Popen([VENV_PYTHON, "-m", "jail.cli", "exec", "--policy",
                                 str(work / "policy.yml"), "--", "/bin/bash", "-c",
                                 f"exec -a {marker} sleep 300"],
                                env=cli_env(r.pkg_dir))
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline and not _pids_named(marker):
            time.sleep(0.05)
        assert _pids_named(marker), "the payload never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 5 * SLOW
        while time.time() < deadline and _pids_named(marker):
            time.sleep(0.05)
        assert not _pids_named(marker), "the payload outlived its supervisor"
    finally:
        r.close()


def _pids_named(marker: str) -> list[int]:
    """Processes whose argv[0] is marker (bash's exec -a), wherever they run."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0] == marker.encode():
                    out.append(int(p))
            except OSError:
                pass
    return out


def test_stray_background_processes_do_not_outlive_the_run(runner):
    marker = f"hjtest-stray-{secrets.token_hex(4)}"
    run = runner.run(argv=["/bin/bash", "-c", f"(exec -a {marker} sleep 300) & "
                           "for i in $(seq 100); do ps -eo args | grep -q ^" + marker
                           + " && break; sleep 0.05; done; ps -eo args | grep -c ^" + marker])
    ok(run)
    assert run.stdout.strip() == "1", run.stdout      # it was running inside the jail
    time.sleep(0.2)
    assert not _pids_named(marker)
