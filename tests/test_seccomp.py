"""seccomp: every escape class is stopped inside a real jail and named in the result.

Each hostile payload announces itself ("before"), makes one raw syscall with
harmless arguments, and would print "returned=…" if the call came back.
Under the default profile with on_violation: kill it must not come back: the
result is seccomp_violation and names the syscall, its number and arguments.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import signal
import struct
import termios
import textwrap
import threading
import tty

import pytest

from conftest import NEEDS_ROOT, parse_kv, policy_yaml
from jail import Jail
from jail.policy import parse_policy_text
from jail import seccomp as S

pytestmark = NEEDS_ROOT

# class -> [(syscall, args as Python source evaluated inside the payload)]
AT_FDCWD = -100
ESCAPES: dict[str, list[tuple[str, list[str]]]] = {
    "namespaces": [("unshare", ["0x10000000"]),                            # CLONE_NEWUSER
                   ("setns", ["os.open('/proc/self/ns/uts', os.O_RDONLY)", "0"]),
                   ("clone", ["0x10000000 | 17", "0", "0", "0", "0"])],   # NEWUSER|SIGCHLD
    "mount": [("mount", ["b'none'", "b'/tmp'", "b'tmpfs'", "0", "0"]),
              ("umount2", ["b'/tmp'", "0"]),
              ("pivot_root", ["b'/tmp'", "b'/tmp'"]),
              ("chroot", ["b'/tmp'"]),
              ("fsopen", ["b'tmpfs'", "0"]),
              ("fsconfig", ["-1", "0", "0", "0", "0"]),
              ("fsmount", ["-1", "0", "0"]),
              ("fspick", [str(AT_FDCWD), "b'/tmp'", "0"]),
              ("move_mount", ["-1", "b''", "-1", "b''", "0"]),
              ("open_tree", [str(AT_FDCWD), "b'/tmp'", "0"]),
              ("mount_setattr", ["-1", "b''", "0", "0", "0"])],
    "ptrace": [("ptrace", ["16", "1", "0", "0"]),                          # PTRACE_ATTACH pid 1
               ("process_vm_readv", ["1", "0", "0", "0", "0", "0"]),
               ("process_vm_writev", ["1", "0", "0", "0", "0", "0"])],
    "keyring": [("keyctl", ["0", "-3", "0"]),                               # GET_KEYRING_ID session
                ("add_key", ["b'user'", "b'hj'", "b'x'", "1", "-3"]),
                ("request_key", ["b'user'", "b'hj'", "0", "0"])],
    "bpf": [("bpf", ["0", "0", "0"])],
    "perf": [("perf_event_open", ["0", "0", "-1", "-1", "0"])],
    "userfaultfd": [("userfaultfd", ["0"])],
    "io_uring": [("io_uring_setup", ["1", "0"]),
                 ("io_uring_enter", ["-1", "0", "0", "0", "0", "0"]),
                 ("io_uring_register", ["-1", "0", "0", "0"])],
    "kexec": [("kexec_load", ["0", "0", "0", "0"]),
              ("kexec_file_load", ["-1", "-1", "0", "0", "0"])],
    "modules": [("init_module", ["0", "0", "b''"]),
                ("finit_module", ["-1", "b''", "0"]),
                ("delete_module", ["b'hj_none'", "0"])],
    "handles": [("open_by_handle_at", ["-1", "0", "0"]),
                ("name_to_handle_at", [str(AT_FDCWD), "b'/'", "0", "0", "0"])],
    "ioports": [("iopl", ["3"]), ("ioperm", ["0x80", "1", "1"])],
    "swap": [("swapon", ["b'/tmp/swap'", "0"]), ("swapoff", ["b'/tmp/swap'"])],
    "reboot": [("reboot", ["0", "0", "0", "0"])],                          # bad magic even so
    "acct": [("acct", ["0"])],
    "quota": [("quotactl", ["0", "0", "0", "0"]), ("quotactl_fd", ["-1", "0", "0", "0"])],
    "syslog": [("syslog", ["10", "0", "0"])],                               # SIZE_BUFFER
    "clock": [("settimeofday", ["0", "0"]), ("clock_settime", ["0", "0"]),
              ("clock_adjtime", ["0", "0"]), ("adjtimex", ["0"])],
    "personality": [("personality", ["0x0040000"])],                        # ADDR_NO_RANDOMIZE
    "tty": [("vhangup", [])],
}
CASES = [(cls, name, args) for cls, calls in ESCAPES.items() for name, args in calls]

SYSCALL = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def arg(v):
    return v if isinstance(v, bytes) else ctypes.c_long(v)
args = [arg(v) for v in [{args}]]
print("before", flush=True)
r = libc.syscall(ctypes.c_long({nr}), *args)
print(f"returned={{r}} errno={{ctypes.get_errno()}}", flush=True)
"""


def syscall_payload(nr: int, args: list[str]) -> str:
    return SYSCALL.format(nr=nr, args=", ".join(args))


def assert_killed_for(res, out: str, name: str, nr: int | None = None) -> None:
    assert "before" in out, (res.status, res.reason, getattr(res, "stderr", ""))
    assert "returned=" not in out, f"{name} came back: {out!r}"
    assert res.status == "seccomp_violation", (res.status, res.reason)
    assert res.seccomp is not None and res.seccomp["syscall"] == name, res.seccomp
    if nr is not None:
        assert res.seccomp["nr"] == nr
    assert isinstance(res.seccomp["args"], list) and len(res.seccomp["args"]) == 6
    assert name in res.reason
    assert any(a["kind"] == "seccomp_violation" and a["syscall"] == name for a in res.alerts)


@pytest.mark.parametrize("cls,name,args", CASES, ids=[f"{c}-{n}" for c, n, _ in CASES])
def test_escape_class_is_killed_and_named(hostile, cls, name, args):
    nr = S.resolve_name(name)
    assert nr >= 0
    res, out = hostile(syscall_payload(nr, args))
    assert_killed_for(res, out, name, nr)
    assert S.escape_classes()[name] == cls
    assert res.layers["seccomp"] == "default/kill"


def test_every_listed_escape_is_tried():
    """The table above covers escape.txt, so a new entry there needs a test here."""
    tried = {name for _c, name, _a in CASES}
    listed = set(S.escape_classes())
    # ioctl (TIOCSTI/TIOCLINUX), clone3 and the legacy/host names have their own tests.
    own_tests = {"ioctl", "clone3", "pidfd_getfd", "kcmp", "process_madvise", "create_module",
                 "query_module", "get_kernel_syms", "modify_ldt", "sethostname",
                 "setdomainname", "nfsservctl", "uselib", "_sysctl", "lookup_dcookie"}
    assert listed - tried <= own_tests, listed - tried - own_tests


def test_more_ptrace_and_host_calls_are_killed(hostile):
    for name, args in (("pidfd_getfd", ["-1", "0", "0"]), ("kcmp", ["1", "1", "0", "0", "0"]),
                       ("modify_ldt", ["0", "0", "0"]), ("sethostname", ["b'x'", "1"])):
        res, out = hostile(syscall_payload(S.resolve_name(name), args))
        assert_killed_for(res, out, name)


def test_clone_without_namespace_flags_and_threads_still_work(hostile):
    res, out = hostile("""
        import os, threading
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        print("child=%d" % os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        t = threading.Thread(target=lambda: print("thread=ok", flush=True)); t.start(); t.join()
    """)
    assert res.status == "ok", (res.reason, res.stderr)
    assert parse_kv(out) == {"child": "7", "thread": "ok"}


def test_clone3_answers_enosys_so_libc_falls_back(hostile):
    """clone3's flags live in memory the filter cannot read: it is "not implemented"."""
    res, out = hostile(syscall_payload(S.resolve_name("clone3"), ["0", "0"]))
    assert res.status == "ok", (res.reason, res.stderr)
    assert f"returned=-1 errno={errno.ENOSYS}" in out


def test_personality_query_and_default_are_allowed(hostile):
    res, out = hostile("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print("query=%d" % libc.personality(ctypes.c_ulong(0xffffffff)))
        print("linux=%d" % libc.personality(ctypes.c_ulong(0)))
    """)
    assert res.status == "ok", (res.reason, res.stderr)
    assert parse_kv(out) == {"query": "0", "linux": "0"}


def test_a_child_process_violating_ends_the_run(hostile):
    """bash goes on after its child is killed; kill mode still ends the run, naming the child."""
    nr = S.resolve_name("unshare")
    res, out = hostile("", argv=["/bin/bash", "-c",
                                 f"python3 -c 'import ctypes; ctypes.CDLL(None).syscall({nr}, 0)'; "
                                 "echo after=$?; sleep 2; echo late=1"])
    assert res.status == "seccomp_violation", (res.status, res.reason)
    assert res.seccomp["syscall"] == "unshare"
    assert "python3 (pid " in res.reason
    assert "late=1" not in out


# ---- other ABIs ---------------------------------------------------------------

def test_x32_abi_is_refused_and_named(hostile):
    res, out = hostile(syscall_payload(0x40000000 | 39, []))          # x32 getpid
    assert_killed_for(res, out, "x32:getpid")
    assert res.seccomp["nr"] == 0x40000000 | 39


I386_GETPID = """\
import ctypes, mmap
code = b"\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3"        # mov eax, 20 (i386 getpid); int 0x80; ret
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
print("before", flush=True)
print("returned=%d" % fn(), flush=True)
"""


def test_i386_abi_is_refused_and_named(hostile):
    # Does this kernel run int 0x80 at all (IA32 emulation)?  Outside any jail:
    import subprocess, sys
    probe = subprocess.run([sys.executable, "-c", I386_GETPID], capture_output=True, text=True)
    if "returned=" not in probe.stdout:
        pytest.skip("this kernel has no IA32 emulation: int 0x80 faults even without a filter")
    res, out = hostile(I386_GETPID)
    assert_killed_for(res, out, "i386:getpid")
    assert res.seccomp["nr"] == 20                                    # i386's getpid, not writev


# ---- terminal injection on a real pseudo-terminal -----------------------------

TIOCSTI, TIOCLINUX = 0x5412, 0x541C

TTY_PAYLOAD = """\
import ctypes, fcntl, termios
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
try:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)            # make the pty our controlling terminal
    print("ctty=yes", flush=True)
except OSError as e:
    print("ctty=%d" % e.errno, flush=True)
byte = ctypes.c_char(b"{char}")
print("before", flush=True)
r = libc.syscall(ctypes.c_long(16), ctypes.c_long(0), ctypes.c_ulong({request}), ctypes.byref(byte))
print("returned=%d errno=%d" % (r, ctypes.get_errno()), flush=True)
"""


def run_on_pty(hostile, code: str, extra: str = ""):
    """Run ``code`` with a fresh pty's slave as the jail's stdin; return (res, out, injected)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    attrs = termios.tcgetattr(slave)
    attrs[3] |= termios.ECHO                         # an injected byte would also echo
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    saved = os.dup(0)
    try:
        os.dup2(slave, 0)
        res, out = hostile(code, extra=extra)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    pending = struct.unpack("i", fcntl.ioctl(slave, termios.FIONREAD, b"\0\0\0\0"))[0]
    os.set_blocking(master, False)
    try:
        echoed = os.read(master, 1024)
    except BlockingIOError:
        echoed = b""
    os.close(master)
    os.close(slave)
    return res, out, (pending, echoed)


@pytest.mark.parametrize("request_", [TIOCSTI, TIOCSTI | 0xDEAD_0000_0000, TIOCLINUX,
                                      TIOCLINUX | 0x1_0000_0000],
                         ids=["TIOCSTI", "TIOCSTI-high-bits", "TIOCLINUX", "TIOCLINUX-high-bits"])
def test_terminal_injection_on_a_real_pty_is_killed(hostile, request_):
    res, out, (pending, echoed) = run_on_pty(hostile, TTY_PAYLOAD.format(char="Z", request=request_))
    assert_killed_for(res, out, "ioctl", S.resolve_name("ioctl"))
    assert res.seccomp["args"][1] == request_                        # the request as it was made
    assert pending == 0 and b"Z" not in echoed, (pending, echoed)     # nothing reached the pty


def test_other_ioctls_on_the_pty_still_work(hostile):
    res, out, _ = run_on_pty(hostile, """
        import fcntl, os, struct, termios
        print("isatty=%s" % os.isatty(0))
        fcntl.ioctl(0, termios.TIOCGWINSZ, b"\\0" * 8)
        print("queued=%d" % struct.unpack("i", fcntl.ioctl(0, termios.FIONREAD, b"\\0" * 4))[0])
    """)
    assert res.status == "ok", (res.reason, res.stderr)
    assert parse_kv(out) == {"isatty": "True", "queued": "0"}


def test_tiocsti_control_without_the_filter_does_inject(hostile):
    """Proof the pty check above can see an injection: with no filter, it happens."""
    try:
        legacy = open("/proc/sys/dev/tty/legacy_tiocsti").read().strip()
    except OSError:
        legacy = "1"
    if legacy != "1":
        pytest.skip("dev.tty.legacy_tiocsti is 0: the kernel refuses TIOCSTI by itself")
    res, out, (pending, echoed) = run_on_pty(
        hostile, TTY_PAYLOAD.format(char="Z", request=TIOCSTI | 0xDEAD_0000_0000),
        extra="seccomp: {profile: none}\n")
    assert res.status == "ok", (res.reason, res.stderr)
    assert "ctty=yes" in out and "returned=0" in out, out
    assert pending == 1 or b"Z" in echoed


# ---- errno and log modes: refused calls are counted, the payload goes on ------

def test_errno_mode_counts_each_denied_call(hostile):
    calls = [("unshare", ["0x10000000"]), ("unshare", ["0x10000000"]), ("unshare", ["0x10000000"]),
             ("mount", ["b'none'", "b'/tmp'", "b'tmpfs'", "0", "0"]),
             ("ptrace", ["16", "1", "0", "0"]), ("keyctl", ["0", "-3", "0"]),
             ("bpf", ["0", "0", "0"]), ("sysfs", ["3"]), ("sysfs", ["3"])]
    body = ["import ctypes", "libc = ctypes.CDLL(None, use_errno=True)",
            "libc.syscall.restype = ctypes.c_long",
            "def arg(v): return v if isinstance(v, bytes) else ctypes.c_long(v)"]
    for i, (name, args) in enumerate(calls):
        body.append(f"r = libc.syscall(ctypes.c_long({S.resolve_name(name)}), "
                    f"*[arg(v) for v in [{', '.join(args)}]])")
        body.append(f"print('{i}_{name}=%d/%d' % (r, ctypes.get_errno()))")
    body.append("print('done=1')")
    res, out = hostile("\n".join(body) + "\n", extra="seccomp: {on_violation: errno}\n")
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert kv["done"] == "1"
    for i, (name, _a) in enumerate(calls):
        want = errno.ENOSYS if name == "sysfs" else errno.EPERM      # unlisted: "not there"
        assert kv[f"{i}_{name}"] == f"-1/{want}", (name, kv)
    alerts = {a["syscall"]: a for a in res.alerts if a["kind"] == "seccomp_denied"}
    assert alerts["unshare"]["count"] == 3 and alerts["unshare"]["action"] == "EPERM"
    assert alerts["unshare"]["nr"] == S.resolve_name("unshare")
    assert alerts["sysfs"]["count"] == 2 and alerts["sysfs"]["action"] == "ENOSYS"
    for name in ("mount", "ptrace", "keyctl", "bpf"):
        assert alerts[name]["count"] == 1 and alerts[name]["category"] == "escape"
    assert res.seccomp is None
    assert res.layers["seccomp"] == "default/errno"


def test_errno_mode_terminal_injection_and_other_abis(hostile):
    res, out, (pending, echoed) = run_on_pty(
        hostile, TTY_PAYLOAD.format(char="Q", request=TIOCSTI | 0x7_0000_0000)
        + syscall_payload(0x40000000 | 39, []).replace("before", "before2"),
        extra="seccomp: {on_violation: errno}\n")
    assert res.status == "ok", (res.reason, res.stderr)
    assert f"returned=-1 errno={errno.EPERM}" in out
    assert f"returned=-1 errno={errno.ENOSYS}" in out                  # x32: no such ABI
    assert pending == 0 and b"Q" not in echoed
    names = {a["syscall"]: a["count"] for a in res.alerts if a["kind"] == "seccomp_denied"}
    assert names == {"ioctl": 1, "x32:getpid": 1}


def test_log_mode_lets_unlisted_calls_run_but_never_escapes(hostile):
    res, out = hostile(f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        for _ in range(4):
            n = libc.syscall(ctypes.c_long({S.resolve_name('sysfs')}), ctypes.c_long(3))
        print("sysfs=%d" % n)
        r = libc.syscall(ctypes.c_long({S.resolve_name('unshare')}), ctypes.c_long(0x10000000))
        print("unshare=%d/%d" % (r, ctypes.get_errno()))
    """, extra="seccomp: {on_violation: log}\n")
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert int(kv["sysfs"]) > 0                        # it ran: the number of filesystem types
    assert kv["unshare"] == f"-1/{errno.EPERM}"
    logged = [a for a in res.alerts if a["kind"] == "seccomp_logged"]
    denied = [a for a in res.alerts if a["kind"] == "seccomp_denied"]
    assert [(a["syscall"], a["count"]) for a in logged] == [("sysfs", 4)]
    assert [(a["syscall"], a["count"]) for a in denied] == [("unshare", 1)]


def test_a_flood_of_refused_calls_does_not_hold_the_supervisor(hostile, monkeypatch):
    monkeypatch.setattr(S.Listener, "MAX_ANSWERS", 500)
    res, out = hostile(f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        errs = set()
        for _ in range(2000):
            libc.syscall(ctypes.c_long({S.resolve_name('unshare')}), ctypes.c_long(0x10000000))
            errs.add(ctypes.get_errno())
        print("errs=" + ",".join(map(str, sorted(errs))))
    """, extra="seccomp: {on_violation: errno}\n")
    assert res.status == "ok", (res.reason, res.stderr)
    assert parse_kv(out)["errs"] == f"{errno.EPERM},{errno.ENOSYS}"     # refused all along
    [denied] = [a for a in res.alerts if a["kind"] == "seccomp_denied"]
    assert denied["syscall"] == "unshare" and denied["count"] == 500
    assert any(a["kind"] == "seccomp_listener_saturated" for a in res.alerts)


# ---- the policy's allow and deny entries -------------------------------------

def test_policy_allow_adds_to_strict(hostile):
    code = f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print("before", flush=True)
        print("returned=%d" % libc.syscall(ctypes.c_long({S.resolve_name('sysfs')}), ctypes.c_long(3)))
    """
    res, out = hostile(code, extra="seccomp: {profile: strict}\n")
    assert_killed_for(res, out, "sysfs")
    res, out = hostile(code, extra="seccomp: {profile: strict, allow: [sysfs]}\n")
    assert res.status == "ok", (res.reason, res.stderr)
    assert int(parse_kv(out)["returned"]) > 0


def test_policy_deny_with_errno_is_counted(hostile):
    nr = S.resolve_name("getpriority")
    res, out = hostile(f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for i in range(3):
            print("prio%d=%d/%d" % (i, libc.syscall({nr}, 0, 0), ctypes.get_errno()))
    """, extra="seccomp: {deny: [{syscall: getpriority, action: errno, errno: EACCES}]}\n")
    assert res.status == "ok", (res.reason, res.stderr)
    assert parse_kv(out) == {f"prio{i}": f"-1/{errno.EACCES}" for i in range(3)}
    denied = [a for a in res.alerts if a["kind"] == "seccomp_denied"]
    assert [(a["syscall"], a["count"], a["action"], a["category"]) for a in denied] == \
        [("getpriority", 3, "EACCES", "policy")]


def test_policy_deny_with_kill(hostile):
    res, out = hostile(syscall_payload(S.resolve_name("getpriority"), ["0", "0"]),
                       extra="seccomp: {deny: [{syscall: getpriority, action: kill}]}\n")
    assert_killed_for(res, out, "getpriority")
    assert "policy denies" in res.reason


@pytest.mark.parametrize("entry,message", [
    ("allow: [ptrace]", "escape class 'ptrace'"),
    ("allow: [ioctl]", "escape class 'tty'"),
    ("allow: [not_a_syscall]", "knows no syscall named 'not_a_syscall'"),
])
def test_policy_entries_refused_at_load(make_policy, entry, message):
    """Names the filter could never honour are policy errors, with FILE:LINE:COL."""
    from jail.policy import PolicyError
    with pytest.raises(PolicyError) as ei:
        make_policy(f"seccomp: {{{entry}}}\n")
    assert message in str(ei.value) and "seccomp.allow[0]" in str(ei.value), str(ei.value)


def test_policy_entries_the_jail_refuses(make_policy, run_jail):
    res = run_jail(make_policy("seccomp: {deny: [execve]}\n"), ["/bin/true"])
    assert res.status == "setup_error" and "needed by the jail" in res.reason, res.reason
    assert res.exit_code == 125


# ---- the filter is the payload's alone ----------------------------------------

def _status_field(pid: int, field: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split()[1]
    return "?"


def test_supervisor_and_init_are_not_under_the_filter(make_policy):
    """The payload is killed for unshare(0); the supervisor (this process) still can do it,
    and while the run is going, the jail's PID 1 has no filter while the payload has one."""
    seen: dict[str, str] = {}

    def on_started(ctx):
        init = ctx.init_pid
        seen["init"] = _status_field(init, "Seccomp")
        kids = open(f"/proc/{init}/task/{init}/children").read().split()
        seen["payload"] = _status_field(int(kids[0]), "Seccomp") if kids else "?"

    policy = make_policy()
    nr = S.resolve_name("unshare")
    code = ("import ctypes, time; time.sleep(0.3); "
            f"ctypes.CDLL(None).syscall(ctypes.c_long({nr}), ctypes.c_long(0)); print('returned')")
    res = Jail(policy).run(["/usr/bin/python3", "-c", code], on_started=on_started)
    assert res.status == "seccomp_violation" and res.seccomp["syscall"] == "unshare", res.reason
    assert seen == {"init": "0", "payload": "2"}                  # 2: SECCOMP_MODE_FILTER
    assert _status_field(os.getpid(), "Seccomp") == "0"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(ctypes.c_long(nr), ctypes.c_long(0)) == 0   # unshare(0): a no-op, allowed
    # The listener thread is gone once the run is over.
    assert not [t for t in threading.enumerate() if t.name == "hivejail-seccomp"]


def test_supervisor_keeps_no_fds_or_threads(make_policy):
    """Ok runs, kills, errno runs and setup errors leave the supervisor as they found it."""
    def fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))
    kill, errno_ = make_policy(), make_policy("seccomp: {on_violation: errno}\n")
    Jail(kill).run(["/bin/true"])
    before = fds()
    unshare = f"import ctypes; ctypes.CDLL(None).syscall({S.resolve_name('unshare')}, 0)"
    for policy, argv, status in ((kill, ["/bin/true"], "ok"),
                                 (kill, ["/usr/bin/python3", "-c", unshare], "seccomp_violation"),
                                 (errno_, ["/usr/bin/python3", "-c", unshare], "ok"),
                                 (kill, ["/nonexistent"], "setup_error")):
        assert Jail(policy).run(argv).status == status
    assert fds() == before
    assert threading.active_count() == 1


def test_listener_fd_does_not_leak_into_the_payload(hostile):
    res, out = hostile("""
        import os
        links = {}
        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                links[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass                                     # the listdir's own fd
        print("fds=" + ",".join(f"{k}:{v}" for k, v in sorted(links.items())))
        print("notify=%d" % sum("seccomp" in v for v in links.values()))
    """)
    assert res.status == "ok", (res.reason, res.stderr)
    assert parse_kv(out)["notify"] == "0", out


# ---- learning mode -----------------------------------------------------------

def test_learning_lists_what_ran_and_refuses_escapes(tmp_path):
    learned = tmp_path / "learned.yml"
    code = f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        print("sysfs=%d" % libc.syscall(ctypes.c_long({S.resolve_name('sysfs')}), ctypes.c_long(3)))
        print("unshare=%d" % libc.syscall(ctypes.c_long({S.resolve_name('unshare')}), ctypes.c_long(0x10000000)))
    """
    outdir, indir = tmp_path / "out", tmp_path / "in"
    indir.mkdir()
    outdir.mkdir()
    os.chmod(outdir, 0o777)
    (indir / "payload.py").write_text(textwrap.dedent(code))
    policy = parse_policy_text(policy_yaml(
        "", f"- {{source: {indir}, target: /job/in}}\n- {{source: {outdir}, target: /job/out, mode: rw}}\n"),
        base_dir=str(tmp_path))
    res = Jail(policy, options={"seccomp_learn": str(learned)}).run(
        ["/bin/sh", "-c", "exec python3 /job/in/payload.py > /job/out/stdout", "sh"])
    kv = parse_kv((outdir / "stdout").read_text())
    assert res.status == "ok", res.reason
    assert int(kv["sysfs"]) > 0 and kv["unshare"] == "-1"
    text = learned.read_text()
    assert re.search(r"^    - sysfs +# used 1x; not in default$", text, re.M), text
    assert "#   unshare x1 (escape)" in text
    assert any(a["kind"] == "seccomp_learned" for a in res.alerts)
    assert res.layers["seccomp"] == "learn" and res.layers["seccomp_learn"] == str(learned)


def test_learning_picks_default_when_an_escape_variant_was_needed():
    """personality(query) is allowed by default's condition only: the fragment says default."""
    ev = S.Event("used", "personality", 135, None, "continue", 0, count=2)
    ev2 = S.Event("used", "socket", 41, None, "continue", 0, count=1)
    ev2.beyond = {"strict"}                      # e.g. AF_INET, where strict allows AF_UNIX only
    text = S.learned_fragment([ev, ev2, S.Event("used", "read", 0, None, "continue", 0, 9)],
                              ["x"])
    assert "  profile: default" in text and "  allow: []" in text, text
    text = S.learned_fragment([ev2, S.Event("used", "read", 0, None, "continue", 0, 9)], ["x"])
    assert "  profile: strict" in text and re.search(r"^    - socket +# used 1x; strict allows "
                                                     r"it only as arg0&0xffffffff==0x1$", text, re.M)
    from jail.policy import parse_policy_text as parse
    body = text[text.index("seccomp:"):]
    assert parse("version: 1\n" + body).seccomp.allow == ("socket",)


# ---- hosts without user notification --------------------------------------------

def test_without_user_notification_the_kernel_kills(hostile, monkeypatch):
    """Fallback for hosts without user notification: KILL_PROCESS in the kernel.

    PID 1 then reads /proc/PID/syscall before reaping (nsjail's way); kernels
    that free a dead task's stack (this one) show -1 there, and the reason
    points to the kernel audit log instead.
    """
    monkeypatch.setattr("jail.seccomp.plan.notify_supported", lambda: False)
    nr = S.resolve_name("unshare")
    res, out = hostile(syscall_payload(nr, ["0x10000000"]))
    assert "before" in out and "returned=" not in out
    assert res.signal == signal.SIGSYS
    assert res.status == "seccomp_violation", res.reason
    if res.seccomp is not None:
        assert res.seccomp["syscall"] == "unshare" and res.seccomp["nr"] == nr
    else:
        assert "type=1326" in res.reason
    assert any(a["kind"] == "seccomp_reporting_degraded" for a in res.alerts)
    res, out = hostile(syscall_payload(nr, ["0x10000000"]), extra="seccomp: {on_violation: errno}\n")
    assert f"returned=-1 errno={errno.EPERM}" in out and res.status == "ok"
    assert res.layers["seccomp"] == "default/errno"


# ---- pieces ------------------------------------------------------------------------

def test_profiles_are_allowlists_without_escapes():
    escapes = S.escape_classes()
    for name in S.PROFILES:
        prof = S.load_profile(name)
        unconditional = {n for n, c in prof.rules.items() if c is None}
        assert not unconditional & set(escapes), unconditional & set(escapes)
        assert set(S.BOOTSTRAP) <= unconditional
    strict, default = S.load_profile("strict"), S.load_profile("default")
    assert set(strict.rules) <= set(default.rules)
    assert len(strict.rules) < len(default.rules) / 3


def test_not_equal_condition_covers_exactly_the_complement():
    cond = S.Cond(1, 0xFFFFFFFF, "!=", (TIOCSTI, TIOCLINUX))
    pairs = cond.masked_eq()

    def allowed(v: int) -> bool:
        return any(v & m == x for m, x in pairs)
    for v in (0, 1, TIOCSTI - 1, TIOCSTI + 1, TIOCLINUX - 1, TIOCLINUX + 1, 0x5401, 0x80045430,
              0xFFFFFFFF, 0xDEAD_0000_0000 | 0x5401):
        assert allowed(v), hex(v)
    for v in (TIOCSTI, TIOCLINUX, 0xDEAD_0000_0000 | TIOCSTI, 0xFFFFFFFF_0000_0000 | TIOCLINUX):
        assert not allowed(v), hex(v)
    assert len(pairs) < 40


def test_names_come_from_libseccomp():
    assert S.describe_call(S.AUDIT_ARCH_X86_64, 272) == ("unshare", None)
    assert S.describe_call(S.AUDIT_ARCH_I386, 20) == ("i386:getpid", "i386")
    assert S.describe_call(S.AUDIT_ARCH_X86_64, 0x40000000 | 39) == ("x32:getpid", "x32")
    assert S.describe_call(S.AUDIT_ARCH_X86_64, 9999)[0] == "unknown_9999"


def test_doctor_reports_seccomp():
    d = S.describe()
    assert d["ok"] and d["libseccomp"] and d["user_notification"] is True
    assert "kill_process" in d["actions"] and "user_notif" in d["actions"]


def test_disk_cache_is_used_only_when_private(tmp_path, monkeypatch):
    monkeypatch.setenv("HIVEJAIL_CACHE_DIR", str(tmp_path / "cache"))
    spec = S.filter_spec(S.make_plan(__import__("jail.policy").policy.Seccomp(profile="strict")))
    S._bpf_cache.pop(spec, None)
    bpf = S.compile_bpf(spec)
    files = list((tmp_path / "cache" / "seccomp").glob("*.bpf"))
    assert len(files) == 1 and files[0].read_bytes() == bpf
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"
    cache = S._DiskCache.open()
    assert cache is not None and cache.get(cache.key(spec)) == bpf
    os.chmod(files[0], 0o660)                          # writable by others: not trusted
    assert cache.get(cache.key(spec)) is None
    os.chmod(tmp_path / "cache" / "seccomp", 0o770)
    assert S._DiskCache.open() is None
    monkeypatch.setenv("HIVEJAIL_CACHE_DIR", "")
    assert S._DiskCache.open() is None
