"""network.mode: allowlist when rootless — slirp4netns + the in-jail filter, through the real CLI.

Every run here is `hivejail exec` as the suite's unprivileged test user
(jailcli.TEST_USER, jailcli.Runner("rootless")).

Safety: slirp4netns turns the jail's flows into ordinary sockets of the test user on
the host's own network stack, so the only destination any payload here uses
is 10.213.253.2, which exists only in the server namespace these tests build
(netns ``hj-test-rl``, veth ``hjtrlh`` 10.213.253.1/30 <-> ``hjtrls``
10.213.253.2/30; test_net_allowlist uses 10.213.255.0/29 and 10.213.254.0/30),
plus loopback and slirp's own virtual addresses (10.0.2.2 would be the host's
127.0.0.1, which --disable-host-loopback refuses; 10.0.2.3 is slirp's DNS
forwarder, switched off unless listed, and never queried here).

/dev/net/tun must be usable by the test user (Debian's udev makes it 0666; a bare
devtmpfs leaves 0600): the ``tun`` fixture widens it for the module and puts
the old mode back.  Everything else created (netns, veth, server process) is
removed at the end, and each test checks that no process of its runs (no
slirp4netns, no filter helper, nothing of the jail) and no file of the test user
outside scratch folders is left.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import NEEDS_ROOT
from jailcli import SLOW, TEST_USER, VENV_PYTHON, Runner, ensure_test_user, package_copy, remove_test_user
from test_net_allowlist import CONNECT, NETLINK_DELTABLE, allowlist, exclusive

from jail import net_rootless
from jail.net_nft import Dest

pytestmark = [NEEDS_ROOT,
              pytest.mark.skipif(not shutil.which("slirp4netns"),
                                 reason="slirp4netns is not installed (scripts/setup.sh)")]

NETNS = "hj-test-rl"
HOST_VETH, SRV_VETH = "hjtrlh", "hjtrls"
HOST_IP, SRV_IP = "10.213.253.1", "10.213.253.2"
ALLOWED, DENIED, UDP_PORT, STATS = 8080, 8081, 5353, 9999
TUN = "/dev/net/tun"

SERVER = r'''
import json, socket, sys, threading
seen = {}
lock = threading.Lock()
def count(key):
    with lock:
        seen[key] = seen.get(key, 0) + 1
def tcp(port, banner):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("%(srv)s", port)); s.listen(64)
    def loop():
        while True:
            c, _ = s.accept()
            if port != %(stats)d:
                count("tcp/%%d" %% port)
            try:
                c.sendall((json.dumps(seen) if port == %(stats)d else banner).encode() + b"\n")
            finally:
                c.close()
    threading.Thread(target=loop, daemon=True).start()
def udp_echo(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("%(srv)s", port))
    def loop():
        while True:
            data, peer = s.recvfrom(2048); count("udp/%%d" %% port); s.sendto(b"echo:" + data, peer)
    threading.Thread(target=loop, daemon=True).start()
tcp(%(allowed)d, "allowed"); tcp(%(denied)d, "denied"); tcp(%(stats)d, "")
udp_echo(%(udp)d); udp_echo(%(udp)d + 1)
print("ready", flush=True)
sys.stdin.read()
''' % {"srv": SRV_IP, "allowed": ALLOWED, "denied": DENIED, "udp": UDP_PORT, "stats": STATS}


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def one_at_a_time():
    """The same machine-wide mutex as test_net_allowlist (fixed names, leftover checks)."""
    mutex = exclusive()
    yield
    mutex.close()


@pytest.fixture(scope="module")
def user():
    try:
        pwd.getpwnam(TEST_USER)
        created = False
    except KeyError:
        created = True
    if not os.access(VENV_PYTHON, os.X_OK):
        pytest.fail(f"{VENV_PYTHON} missing: run scripts/setup.sh first")
    yield ensure_test_user()
    if created:
        remove_test_user()


@pytest.fixture(scope="module")
def pkg(user):
    d = package_copy()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tun():
    """/dev/net/tun usable by the test user for this module (as udev sets it on Debian)."""
    mode = os.stat(TUN).st_mode & 0o7777
    if mode & 0o006 != 0o006:
        os.chmod(TUN, mode | 0o666)
    yield
    os.chmod(TUN, mode)


@pytest.fixture(scope="module")
def server():
    def teardown(proc):
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)      # only the server we started, by its pid
            proc.wait()
        sh("ip", "link", "del", HOST_VETH, check=False)
        sh("ip", "netns", "del", NETNS, check=False)
    teardown(None)
    proc = None
    try:
        sh("ip", "netns", "add", NETNS)
        sh("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", SRV_VETH, "netns", NETNS)
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_VETH)
        sh("ip", "link", "set", HOST_VETH, "up")
        sh("ip", "-n", NETNS, "addr", "add", f"{SRV_IP}/30", "dev", SRV_VETH)
        sh("ip", "-n", NETNS, "link", "set", SRV_VETH, "up")
        sh("ip", "-n", NETNS, "link", "set", "lo", "up")
        proc = subprocess.Popen(["ip", "netns", "exec", NETNS, "/usr/bin/python3", "-c", SERVER],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        teardown(proc)


def server_seen() -> dict[str, int]:
    """Connections and datagrams the server received so far (asked from the host, root)."""
    with socket.create_connection((SRV_IP, STATS), timeout=5) as s:
        return json.loads(s.makefile().readline())


@pytest.fixture
def runner(pkg, tun):
    r = Runner("rootless", pkg)
    before = files_of(pwd.getpwnam(TEST_USER).pw_uid, r.dirs)
    yield r
    try:
        assert_no_leftovers(before, r)
    finally:
        r.close()


# ---------------------------------------------------------------- leftovers

def processes_of(uid: int) -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) == uid:
                out.append((int(entry), comm))
    return out


def ours(dirs: list[Path], marker: str | None = None) -> list[tuple[int, str]]:
    """Processes of these runs: slirp4netns (only this module starts it, one module at a
    time), and anything whose command line names a run's scratch folder (the supervisor,
    its filter helper, the jail's PID 1: forks of the CLI) or the marker (a payload).
    Other test modules may run jails as the same user meanwhile; they are not ours."""
    keys = [str(d).encode() for d in dirs] + ([marker.encode()] if marker else [])
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if comm == "slirp4netns" or any(k in cmdline for k in keys):
            out.append((int(entry), comm))
    return out


SCANNED = ("/tmp", "/var/tmp", "/dev/shm", "/run")


def files_of(uid: int, skip: list[Path]) -> set[str]:
    """Files of uid in the usual scratch places, except test scratch folders (these runs'
    own, and /tmp/hjtest-* of jailcli runners that other test processes may have going)."""
    found = set()
    skip_s = [str(p) for p in skip]
    for top in SCANNED:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames
                           if not any(os.path.join(dirpath, d).startswith(s) for s in skip_s)
                           and not (dirpath == "/tmp" and d.startswith(("hjtest-", "pytest-of-")))]
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                try:
                    if os.lstat(p).st_uid == uid:
                        found.add(p)
                except OSError:
                    pass
    return found


def assert_no_leftovers(before: set[str], r: Runner) -> None:
    uid = pwd.getpwnam(TEST_USER).pw_uid
    deadline = time.monotonic() + 5 * SLOW
    while ours(r.dirs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ours(r.dirs) == [], "processes of these runs left"
    assert files_of(uid, r.dirs) - before == set()
    assert not [n for n in links() if n.startswith("hj") and n != HOST_VETH], links()


def links() -> list[str]:
    return [line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link").stdout.splitlines()]


# ---------------------------------------------------------------- helpers

def refused(result: dict, address: str, port: int | None, protocol: str) -> list[dict]:
    return [a for a in result.get("alerts", []) if a["kind"] == "network_refused"
            and a["address"] == address and a["port"] == port and a["protocol"] == protocol]


def ok(run) -> None:
    assert run.result.get("status") == "ok", (run.result.get("reason"), run.stdout, run.stderr)


def spawn(r: Runner, code: str, extra: str, env: dict[str, str] | None = None):
    """Runner.run without waiting: (Popen of the CLI supervisor, workdir); the payload is
    /job/in/<workdir name>.py, a name no other run uses (see payload_pid)."""
    u = pwd.getpwnam(TEST_USER)
    work = r.scratch()
    script = f"{work.name}.py"
    (work / "in").mkdir()
    (work / "out").mkdir()
    os.chown(work / "out", u.pw_uid, u.pw_gid)
    (work / "in" / script).write_text(textwrap.dedent(code))
    os.chmod(work / "in" / script, 0o755)
    (work / "policy.yml").write_text(r.policy_text(work, extra))
    os.chown(work, u.pw_uid, u.pw_gid)
    run_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(r.pkg_dir), "PYTHONDONTWRITEBYTECODE": "1",
               **(env or {})}
    cli = ["/usr/bin/setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--clear-groups",
           "--reset-env", "/usr/bin/env", *[f"{k}={v}" for k, v in run_env.items()],
           VENV_PYTHON, "-m", "jail.cli", "exec", "--policy", str(work / "policy.yml"),
           "--result-file", str(work / "out-result.json"), "--", "/usr/bin/python3", f"/job/in/{script}"]
    proc = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(work))
    return proc, work


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout * SLOW
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended early: {out} {err}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def payload_pid(uid: int, work: Path) -> int:
    want = [b"/usr/bin/python3", f"/job/in/{work.name}.py".encode()]
    for pid, _comm in processes_of(uid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:2] == want:
                    return pid
        except OSError:
            pass
    raise AssertionError("payload not found")


GATED = '''
import os, time
open("/job/out/ready", "w").close()
while not os.path.exists("/job/out/go"):
    time.sleep(0.02)
'''


# ---------------------------------------------------------------- reachability and reporting

def test_allowed_reachable_denied_refused_and_counted(server, runner):
    seen0 = server_seen()
    run = runner.run(CONNECT + f'''
tcp("allowed", "{SRV_IP}", {ALLOWED})
tcp("denied", "{SRV_IP}", {DENIED})
tcp("denied2", "{SRV_IP}", {DENIED})
tcp("gateway", "10.0.2.2", 22)
udp("udp_allowed", "{SRV_IP}", {UDP_PORT})
udp("udp_denied", "{SRV_IP}", {UDP_PORT + 1})
udp("dns", "10.0.2.3", 53)
print("hosts=" + open("/etc/hosts").read().replace("\\n", "|"))
print("resolv=" + open("/etc/resolv.conf").read().replace("\\n", "|"))
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}",
                     f"{{host: {SRV_IP}, ports: [{UDP_PORT}], proto: udp}}"))
    ok(run)
    kv, res = run.kv, run.result
    assert kv["allowed"] == "allowed"
    assert kv["denied"] == kv["denied2"] == "ERR:EHOSTUNREACH"       # icmpx admin-prohibited
    assert kv["gateway"] == "ERR:EHOSTUNREACH"                        # slirp's gateway: not listed
    assert kv["udp_allowed"] == "echo:ping"
    assert kv["udp_denied"] == kv["dns"] == "ERR:EPERM"
    assert "nameserver 127.0.0.1" in kv["resolv"]
    [alert] = refused(res, SRV_IP, DENIED, "tcp")
    assert alert["count"] == 2 and alert["severity"] == "high"
    assert refused(res, "10.0.2.2", 22, "tcp")[0]["count"] == 1
    assert refused(res, SRV_IP, UDP_PORT + 1, "udp")[0]["count"] == 1
    assert refused(res, "10.0.2.3", 53, "udp")[0]["count"] == 1
    assert not refused(res, SRV_IP, ALLOWED, "tcp") and not refused(res, SRV_IP, UDP_PORT, "udp")
    net = res["layers"]["network"]
    assert net["mode"] == "allowlist" and net["connectivity"] == "slirp4netns"
    assert net["address"] == "10.0.2.100" and net["gateway"] == "10.0.2.2"
    assert net["dns_forwarder"] is None and net["host_filter"] is None
    assert "seccomp" in net["slirp4netns_confinement"]
    assert set(net["setup_ms"]) == {"filter_ms", "slirp4netns_ms"}
    # Server side: the refused packets never arrived.
    seen = server_seen()
    assert seen.get(f"tcp/{DENIED}", 0) == seen0.get(f"tcp/{DENIED}", 0)
    assert seen.get(f"udp/{UDP_PORT + 1}", 0) == seen0.get(f"udp/{UDP_PORT + 1}", 0)
    assert seen[f"tcp/{ALLOWED}"] == seen0.get(f"tcp/{ALLOWED}", 0) + 1


def test_host_loopback_is_unreachable_even_when_listed(server, runner):
    """--disable-host-loopback: the host's 127.0.0.1 is not reachable through slirp's
    gateway, even with the gateway on the allowlist (so the in-jail filter lets it pass)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        run = runner.run(CONNECT + f'''
tcp("via_gateway", "10.0.2.2", {port})
tcp("loopback", "127.0.0.1", {port})
tcp("allowed", "{SRV_IP}", {ALLOWED})
''', extra=allowlist(f"{{host: 10.0.2.2, ports: [{port}]}}", f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"))
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()                          # nobody ever connected
    finally:
        listener.close()
    ok(run)
    kv = run.kv
    assert kv["allowed"] == "allowed"
    assert kv["via_gateway"].startswith("ERR:"), kv      # refused by slirp4netns itself
    assert kv["loopback"] == "ERR:ECONNREFUSED"          # the jail's own loopback
    assert not refused(run.result, "10.0.2.2", port, "tcp")   # the filter let it pass
    assert run.result["layers"]["network"]["network"] == "10.0.2.0/24"


def test_ipv6_entries_warn_and_dns_forwarder_only_when_listed(server, runner):
    run = runner.run('print("resolv=" + open("/etc/resolv.conf").read().replace("\\n", "|"))\n',
                     extra=allowlist("{host: 10.0.2.3, ports: [53], proto: udp}",
                                     "{host: fd68:6a00:fffe::2, ports: [443]}"))
    ok(run)
    net = run.result["layers"]["network"]
    assert net["dns_forwarder"] == "10.0.2.3" and net["ipv6"] is False
    assert "nameserver 10.0.2.3" in run.kv["resolv"]
    assert [a for a in run.result["alerts"] if a["kind"] == "network_ipv6_unavailable"]


# ---------------------------------------------------------------- violations, tampering

def test_on_violation_kill_ends_the_run(server, runner):
    t0 = time.monotonic()
    run = runner.run(CONNECT + f'''
tcp("allowed", "{SRV_IP}", {ALLOWED})
tcp("denied", "{SRV_IP}", {DENIED})
time.sleep(30)
print("survived=1")
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}", on_violation="kill"))
    res = run.result
    assert res["status"] == "network_violation", (res.get("reason"), run.stderr)
    assert f"tcp to {SRV_IP}:{DENIED}" in res["reason"]
    assert run.returncode == res["exit_code"] == 128 + 9
    assert time.monotonic() - t0 < 10 * SLOW
    assert "survived" not in run.stdout
    assert refused(res, SRV_IP, DENIED, "tcp")[0]["count"] == 1


def test_on_violation_kill_also_when_the_payload_exits_first(server, runner):
    run = runner.run(CONNECT + f'udp("denied", "{SRV_IP}", {UDP_PORT + 1})\n',
                     extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}", on_violation="kill"))
    assert run.result["status"] == "network_violation", run.result.get("reason")
    assert f"udp to {SRV_IP}:{UDP_PORT + 1}" in run.result["reason"]


@pytest.mark.parametrize("uid", [65534, 0])
def test_payload_cannot_change_the_filter(server, runner, uid):
    run = runner.run(CONNECT + NETLINK_DELTABLE + f'''
import subprocess
caps = [l for l in open("/proc/self/status") if l.startswith(("CapEff", "CapBnd"))]
print("caps=" + ",".join(c.split()[1] for c in caps), flush=True)
r = subprocess.run(["/usr/sbin/nft", "flush", "ruleset"], capture_output=True, text=True)
print("nft_rc=%d" % r.returncode, flush=True)
print("netlink=" + nft_delete_table(), flush=True)
tcp("denied", "{SRV_IP}", {DENIED})
tcp("allowed", "{SRV_IP}", {ALLOWED})
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}") + f"run_as: {{uid: {uid}, gid: {uid}}}\n")
    kv = run.kv
    assert kv.get("caps") == "0000000000000000,0000000000000000", (run.stdout, run.stderr)
    assert kv["nft_rc"] != "0"
    assert kv["netlink"] and kv["netlink"] != "OK", kv
    assert kv["denied"] == "ERR:EHOSTUNREACH" and kv["allowed"] == "allowed"
    assert refused(run.result, SRV_IP, DENIED, "tcp")[0]["count"] == 1


def test_slirp_landlock_holds_when_the_jail_filter_is_gone(server, runner):
    """Defence in depth: root deletes the in-jail table from outside; slirp4netns's own
    Landlock domain still lets it connect only to the allowlist's TCP ports."""
    if "landlock abi" not in _confinement(runner):
        pytest.skip("no Landlock network rules on this kernel")
    uid = pwd.getpwnam(TEST_USER).pw_uid
    seen0 = server_seen()
    proc, work = spawn(runner, GATED + CONNECT + f'''
tcp("denied", "{SRV_IP}", {DENIED})
tcp("allowed", "{SRV_IP}", {ALLOWED})
''', allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"))
    try:
        wait_for(work / "out" / "ready", proc)
        sh("nsenter", f"--net=/proc/{payload_pid(uid, work)}/ns/net", "nft", "delete", "table", "inet", "hivejail")
        (work / "out" / "go").write_text("")
        out, err = proc.communicate(timeout=60 * SLOW)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert kv["allowed"] == "allowed", (out, err)
    assert kv["denied"].startswith("ERR:"), kv
    assert server_seen().get(f"tcp/{DENIED}", 0) == seen0.get(f"tcp/{DENIED}", 0)
    result = json.loads((work / "out-result.json").read_text())
    assert [a for a in result["alerts"] if a["kind"] == "network_monitor_failed"]


def _confinement(r: Runner) -> str:
    run = r.run("pass\n", extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"))
    ok(run)
    return run.result["layers"]["network"]["slirp4netns_confinement"]


# ---------------------------------------------------------------- lifetime and failure

def test_slirp_and_helper_die_with_a_sigkilled_supervisor(server, runner):
    proc, work = spawn(runner, GATED, allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"))
    marker = f"/job/in/{work.name}.py"
    try:
        wait_for(work / "out" / "ready", proc)
        comms = sorted(c for _p, c in ours([work], marker))
        # supervisor, filter helper, jail PID 1 (forks of the CLI), payload, slirp4netns
        assert comms.count("slirp4netns") == 1 and len(comms) >= 5, comms
    finally:
        os.kill(proc.pid, signal.SIGKILL)          # the supervisor we started, by its pid
        proc.wait()
    deadline = time.monotonic() + 5 * SLOW
    while ours([work], marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ours([work], marker) == []


def test_refused_without_slirp4netns(server, runner):
    bindir = Path(tempfile.mkdtemp(prefix="hjtest-bin-"))
    runner.dirs.append(bindir)
    os.chmod(bindir, 0o755)
    proc, work = spawn(runner, "print('ran')\n", allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"),
                       env={"PATH": str(bindir)})
    out, err = proc.communicate(timeout=60 * SLOW)
    assert proc.returncode == 125, (out, err)
    result = json.loads((work / "out-result.json").read_text())
    assert result["status"] == "setup_error" and "install slirp4netns" in result["reason"]
    assert "ran" not in out


def test_refused_when_dev_net_tun_is_not_usable(server, runner):
    mode = os.stat(TUN).st_mode & 0o7777
    os.chmod(TUN, 0o600)
    try:
        run = runner.run("print('ran')\n", extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"))
    finally:
        os.chmod(TUN, mode)
    assert run.returncode == 125 and run.result["status"] == "setup_error", run.stderr
    assert TUN in run.result["reason"] and "0666" in run.result["reason"]
    assert "ran" not in run.stdout


def test_doctor_reports_rootless_allowlist(runner):
    u = pwd.getpwnam(TEST_USER)
    proc = subprocess.run(["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--clear-groups",
                           "--reset-env", "env", "PATH=/usr/bin:/bin", f"PYTHONPATH={runner.pkg_dir}",
                           "PYTHONDONTWRITEBYTECODE=1", VENV_PYTHON, "-m", "jail.cli", "doctor", "--json"],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    net = json.loads(proc.stdout)["network"]
    assert net["ok"] is True and net["detail"].startswith("allowlist (rootless): slirp4netns"), net
    assert net["slirp4netns"] and net["rootless_allowlist"]["works"] is True
    assert net["rootless_allowlist"]["dev_net_tun"]["usable"] is True
    assert net["rootless_allowlist"]["slirp4netns_version"]
    from jail.netallow import describe
    root = describe()["rootless_allowlist"]          # root's view: can unprivileged users?
    assert root["works"] is True and root["helper"] == "slirp4netns"


# ---------------------------------------------------------------- the slirp network (no run)

def _dest(addr: str, port: int, proto: str = "tcp") -> Dest:
    return Dest(ipaddress.ip_network(addr), proto, port)


def test_slirp_network_moves_off_allowed_destinations():
    assert str(net_rootless.choose_network([_dest("10.213.253.2", 80)])) == "10.0.2.0/24"
    # slirp's own service addresses do not move it
    assert str(net_rootless.choose_network([_dest("10.0.2.2", 80), _dest("10.0.2.3", 53, "udp")])) \
        == "10.0.2.0/24"
    # any other address in it does: allowlisted addresses always mean real hosts
    assert str(net_rootless.choose_network([_dest("10.0.2.7", 80)])) == "10.0.3.0/24"
    assert str(net_rootless.choose_network([_dest("10.0.0.0/8", 80)])) == "172.31.255.0/24"


def test_slirp_command_line():
    net = ipaddress.IPv4Network("10.0.2.0/24")
    argv = net_rootless.slirp_argv("/usr/bin/slirp4netns", net, False, (3, 4, 5, 6))
    assert argv[0] == "/usr/bin/slirp4netns" and argv[-2:] == ["/proc/self/fd/6", "tap0"]
    for flag in ("--configure", "--mtu=65520", "--disable-host-loopback", "--enable-seccomp",
                 "--disable-dns", "--ready-fd=3", "--exit-fd=4", "--netns-type=path",
                 "--userns-path=/proc/self/fd/5", "--cidr=10.0.2.0/24"):
        assert flag in argv
    assert "--enable-ipv6" not in argv and "-6" not in argv
    assert "--disable-dns" not in net_rootless.slirp_argv("slirp4netns", net, True, (3, 4, 5, 6))
    assert net_rootless.dns_allowed([_dest("10.0.2.3", 53, "udp")], net)
    assert not net_rootless.dns_allowed([_dest("10.0.2.3", 80)], net)
