"""network.mode: allowlist, against a test "server" namespace the tests create.

Safety: every packet these tests send goes to loopback or to addresses in
the namespace built here (10.213.255.0/29 and fd68:6a00:ffff::/64 on a veth
``hjtsrvh`` <-> ``hjtsrvs`` in netns ``hj-test-srv``) — never anywhere else.
Host names are resolved by an injected resolver, never by real DNS.
Everything created (netns, veths, nft tables, leases, server process) is
removed at the end; names carry "hj"/"hivejail".
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import NEEDS_ROOT, ROOT, parse_kv, policy_yaml

from jail import Jail
from jail import net_pool, net_resolve

pytestmark = [NEEDS_ROOT]

NETNS = "hj-test-srv"
HOST_VETH, SRV_VETH = "hjtsrvh", "hjtsrvs"
HOST_IP, SRV_IP, NEIGHBOUR_IP = "10.213.255.1", "10.213.255.2", "10.213.255.3"
HOST_IP6, SRV_IP6, NEIGHBOUR_IP6 = "fd68:6a00:ffff::1", "fd68:6a00:ffff::2", "fd68:6a00:ffff::3"
ALLOWED, DENIED, UDP_PORT, DNS_PORT = 8080, 8081, 5353, 53
TEST_NAME = "api.hivejail.test"
GLOBAL_FORWARDING = {p: open(p).read() for p in ("/proc/sys/net/ipv4/ip_forward",
                                                 "/proc/sys/net/ipv6/conf/all/forwarding")}

SERVER = r'''
import socket, struct, sys, threading
def tcp(addr, port, banner):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(64)
    def loop():
        while True:
            c, _ = s.accept()
            try: c.sendall(banner.encode() + b"\n")
            finally: c.close()
    threading.Thread(target=loop, daemon=True).start()
def udp_echo(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, port))
    def loop():
        while True:
            data, peer = s.recvfrom(2048); s.sendto(b"echo:" + data, peer)
    threading.Thread(target=loop, daemon=True).start()
def dns(addr, port, answer):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, port))
    def loop():
        while True:
            q, peer = s.recvfrom(2048)
            end = 12
            while q[end] != 0: end += q[end] + 1
            question = q[12:end + 5]
            hdr = q[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00"
            rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(answer)
            s.sendto(hdr + question + rr, peer)
    threading.Thread(target=loop, daemon=True).start()
tcp("%(srv)s", %(allowed)d, "allowed")
tcp("%(srv)s", %(denied)d, "denied")
tcp("%(nb)s", %(allowed)d, "neighbour")
tcp("%(srv6)s", %(allowed)d, "allowed6")
tcp("%(nb6)s", %(allowed)d, "neighbour6")
udp_echo("%(srv)s", %(udp)d)
udp_echo("%(srv)s", %(udp)d + 1)
dns("%(srv)s", %(dns)d, "%(srv)s")
print("ready", flush=True)
sys.stdin.read()
''' % {"srv": SRV_IP, "nb": NEIGHBOUR_IP, "srv6": SRV_IP6, "nb6": NEIGHBOUR_IP6,
       "allowed": ALLOWED, "denied": DENIED, "udp": UDP_PORT, "dns": DNS_PORT}


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def _teardown_server(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)     # only the server we started, by its pid
        proc.wait()
    sh("ip", "link", "del", HOST_VETH, check=False)
    sh("ip", "netns", "del", NETNS, check=False)


class _Mutex:
    """A machine-wide mutex on an abstract unix socket name (nothing to clean up);
    re-entrant within one process."""
    held: dict[str, list] = {}

    def __init__(self, name: str, timeout: float) -> None:
        import socket
        self.name = name
        entry = self.held.get(name)
        if entry:
            entry[1] += 1
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                s.bind("\0" + name)
                break
            except OSError:
                if time.monotonic() > deadline:
                    s.close()
                    raise
                time.sleep(0.2)
        self.held[name] = [s, 1]

    def close(self) -> None:
        entry = self.held[self.name]
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].close()
            del self.held[self.name]


def exclusive(name: str = "hivejail-net-tests", timeout: float = 900.0) -> _Mutex:
    """These tests own fixed names (netns hj-test-srv, 10.213.255.0/29) and check
    that the host holds no hivejail veth, table or lease after each run, so two
    pytest processes must not run them at the same time."""
    return _Mutex(name, timeout)


@pytest.fixture(scope="module", autouse=True)
def state_folder():
    """One test process at a time; remove /run/hivejail/net afterwards if these
    tests created it (only its lock file is left by then)."""
    mutex = exclusive()
    existed = os.path.exists(net_pool.RUN_DIR)
    try:
        yield
    finally:
        _remove_state_folder(existed)
        mutex.close()


def _remove_state_folder(existed: bool) -> None:
    if not existed and not net_pool.leases():
        for name in ("lock", net_pool.FWD_STATE):
            try:
                os.unlink(os.path.join(net_pool.RUN_DIR, name))
            except FileNotFoundError:
                pass
        for d in (net_pool.RUN_DIR, os.path.dirname(net_pool.RUN_DIR)):
            try:
                os.rmdir(d)
            except OSError:
                break


@pytest.fixture(scope="module")
def server():
    """The test "server" namespace, routed from the host through hjtsrvh."""
    _teardown_server(None)
    proc = None
    try:
        sh("ip", "netns", "add", NETNS)
        sh("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", SRV_VETH, "netns", NETNS)
        sh("ip", "addr", "add", f"{HOST_IP}/29", "dev", HOST_VETH)
        sh("ip", "addr", "add", f"{HOST_IP6}/64", "dev", HOST_VETH, "nodad")
        sh("ip", "link", "set", HOST_VETH, "up")
        for addr in (f"{SRV_IP}/29", f"{NEIGHBOUR_IP}/29"):
            sh("ip", "-n", NETNS, "addr", "add", addr, "dev", SRV_VETH)
        for addr in (f"{SRV_IP6}/64", f"{NEIGHBOUR_IP6}/64"):
            sh("ip", "-n", NETNS, "addr", "add", addr, "dev", SRV_VETH, "nodad")
        sh("ip", "-n", NETNS, "link", "set", SRV_VETH, "up")
        sh("ip", "-n", NETNS, "link", "set", "lo", "up")
        proc = subprocess.Popen(["ip", "netns", "exec", NETNS, "/usr/bin/python3", "-c", SERVER],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        _teardown_server(proc)


@pytest.fixture
def resolver(monkeypatch):
    """The supervisor's resolver, injected: only test names, never real DNS."""
    table = {TEST_NAME: [SRV_IP, SRV_IP6]}
    asked: list[str] = []

    def resolve(name: str) -> list[str]:
        asked.append(name)
        if name not in table:
            raise OSError(-2, f"test resolver: unknown name {name}")
        return table[name]
    monkeypatch.setattr(net_resolve, "RESOLVER", resolve)
    return asked


def allowlist(*entries: str, on_violation: str = "log", landlock: str | None = None) -> str:
    """The network section (the other layers stay at their defaults unless landlock is given)."""
    allow = "".join(f"\n    - {e}" for e in entries)
    return (f"network:\n  mode: allowlist\n  on_violation: {on_violation}\n  allow:{allow}\n"
            + (f"landlock: {landlock}\n" if landlock else ""))


CONNECT = r'''
import errno, socket, sys, time
def tcp(key, addr, port, timeout=3):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(timeout)
    try:
        s.connect((addr, port)); print(f"{key}=" + s.recv(100).decode().strip())
    except OSError as e:
        print(f"{key}=ERR:{errno.errorcode.get(e.errno, e.errno) if e.errno else type(e).__name__}")
    finally:
        s.close()
def udp(key, addr, port, payload=b"ping"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    try:
        s.sendto(payload, (addr, port)); print(f"{key}=" + s.recv(100).decode())
    except OSError as e:
        print(f"{key}=ERR:{errno.errorcode.get(e.errno, e.errno) if e.errno else type(e).__name__}")
'''


def host_leftovers() -> dict[str, list[str]]:
    links = [line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link").stdout.splitlines()]
    tables = [t.split()[-1] for t in sh("nft", "list", "tables").stdout.splitlines()]
    return {"veths": [n for n in links if n.startswith("hj") and n not in (HOST_VETH,)],
            "tables": [t for t in tables if t.startswith("hivejail")],
            "leases": [x["name"] for x in net_pool.leases()]}


def assert_clean() -> None:
    left = host_leftovers()
    assert left == {"veths": [], "tables": [], "leases": []}, left
    assert net_pool.forwarding_state() == {}
    assert sh("cat", f"/proc/sys/net/ipv4/conf/{HOST_VETH}/forwarding").stdout.strip() == "0"
    assert {p: open(p).read() for p in GLOBAL_FORWARDING} == GLOBAL_FORWARDING   # never touched


def refused(res, address: str, port: int | None, protocol: str) -> list[dict]:
    return [a for a in res.alerts if a["kind"] == "network_refused" and a["address"] == address
            and a["port"] == port and a["protocol"] == protocol]


# ---------------------------------------------------------------- reachability

def test_allowed_reachable_denied_refused_and_counted(server, hostile):
    res, out = hostile(CONNECT + f'''
tcp("allowed", "{SRV_IP}", {ALLOWED})
tcp("denied", "{SRV_IP}", {DENIED})
tcp("denied2", "{SRV_IP}", {DENIED})
tcp("host", "{HOST_IP}", 22)
print("hosts=" + open("/etc/hosts").read().replace("\\n", "|"))
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"))
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert kv["allowed"] == "allowed"
    assert kv["denied"] == "ERR:EHOSTUNREACH" and kv["denied2"] == "ERR:EHOSTUNREACH"
    assert kv["host"] == "ERR:EHOSTUNREACH"            # the host itself is not a destination
    [alert] = refused(res, SRV_IP, DENIED, "tcp")
    assert alert["count"] == 2 and alert["severity"] == "high"
    assert refused(res, HOST_IP, 22, "tcp")[0]["count"] == 1
    assert not refused(res, SRV_IP, ALLOWED, "tcp")
    assert res.layers["network"]["mode"] == "allowlist"
    assert HOST_VETH in res.layers["network"]["uplinks"]
    assert not [a for a in res.alerts if a["kind"] == "network_filter_bypass"]
    assert_clean()


def test_udp_allowed_and_denied(server, hostile):
    res, out = hostile(CONNECT + f'''
udp("allowed", "{SRV_IP}", {UDP_PORT})
udp("denied", "{SRV_IP}", {UDP_PORT + 1})
udp("tcp_only", "{SRV_IP}", {ALLOWED})
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{UDP_PORT}], proto: udp}}",
                     f"{{cidr: {SRV_IP}/32, ports: [{ALLOWED}]}}"))
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert kv["allowed"] == "echo:ping"
    assert kv["denied"] == "ERR:EPERM"
    assert kv["tcp_only"] == "ERR:EPERM"                 # tcp 8080 is listed, udp 8080 is not
    assert refused(res, SRV_IP, UDP_PORT + 1, "udp")[0]["count"] == 1
    assert refused(res, SRV_IP, ALLOWED, "udp")[0]["count"] == 1
    assert_clean()


def test_cidr_entry_allows_the_whole_network(server, hostile):
    res, out = hostile(CONNECT + f'''
tcp("srv", "{SRV_IP}", {ALLOWED})
tcp("neighbour", "{NEIGHBOUR_IP}", {ALLOWED})
tcp("denied", "{NEIGHBOUR_IP}", {DENIED})
''', extra=allowlist(f"{{cidr: 10.213.255.0/29, ports: [{ALLOWED}]}}"))
    kv = parse_kv(out)
    assert (kv["srv"], kv["neighbour"]) == ("allowed", "neighbour"), res.stderr
    assert kv["denied"] == "ERR:EHOSTUNREACH"
    assert_clean()


def test_host_name_pinned_and_its_neighbour_refused(server, hostile, resolver):
    res, out = hostile(CONNECT + f'''
import socket
tcp("by_name", socket.gethostbyname("{TEST_NAME}"), {ALLOWED})
tcp("neighbour", "{NEIGHBOUR_IP}", {ALLOWED})
try:
    print("other=" + socket.gethostbyname("unlisted.hivejail.test"))
except OSError as e:
    print("other=ERR:" + type(e).__name__)
print("hosts=" + open("/etc/hosts").read().replace("\\n", "|"))
print("resolv=" + open("/etc/resolv.conf").read().replace("\\n", "|"))
''', extra=allowlist(f"{{host: {TEST_NAME}, ports: [{ALLOWED}]}}"))
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert resolver == [TEST_NAME]                       # resolved once, by the supervisor
    assert kv["by_name"] == "allowed"
    assert kv["neighbour"] == "ERR:EHOSTUNREACH"
    assert kv["other"].startswith("ERR:")
    assert f"{SRV_IP}\t{TEST_NAME}" in kv["hosts"].replace("|", "\n")
    assert "nameserver 127.0.0.1" in kv["resolv"]
    assert refused(res, NEIGHBOUR_IP, ALLOWED, "tcp")[0]["count"] == 1
    assert res.layers["network"]["names"] == {TEST_NAME: [SRV_IP, SRV_IP6]}
    assert_clean()


def test_resolver_injected_per_run(server, make_policy, tmp_path):
    """ctx.extra["resolver"] (Jail options) wins over the module default; no real DNS."""
    asked = []

    def resolve(name):
        asked.append(name)
        return [SRV_IP]
    out = tmp_path / "o"
    out.mkdir()
    os.chmod(out, 0o777)
    policy = make_policy(allowlist(f"{{host: other.hivejail.test, ports: [{ALLOWED}]}}"),
                         f"- {{source: {out}, target: /job/out, mode: rw}}\n")
    code = ("import socket; s = socket.create_connection(('other.hivejail.test', %d), timeout=3);"
            "open('/job/out/r', 'w').write(s.recv(20).decode())" % ALLOWED)
    res = Jail(policy, options={"resolver": resolve}).run(["/usr/bin/python3", "-c", code])
    assert res.status == "ok", res.reason
    assert (out / "r").read_text().strip() == "allowed"
    assert asked == ["other.hivejail.test"]
    assert_clean()


def test_unresolvable_name_refuses_the_run(hostile, resolver):
    res, _ = hostile("print('ran')", extra=allowlist("{host: nowhere.hivejail.test, ports: [443]}"))
    assert res.status == "setup_error" and res.exit_code == 125
    assert "nowhere.hivejail.test" in res.reason
    assert_clean()


DNS_QUERY = r'''
import struct
def dns(key, server, name="x.hivejail.test"):
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    try:
        s.sendto(q, (server, 53)); r = s.recv(512)
        print(f"{key}=" + socket.inet_ntoa(r[-4:]))
    except OSError as e:
        print(f"{key}=ERR:{errno.errorcode.get(e.errno, e.errno) if e.errno else type(e).__name__}")
'''


def test_dns_to_unlisted_resolver_is_refused(server, hostile):
    res, out = hostile(CONNECT + DNS_QUERY + f'''
dns("query", "{SRV_IP}")
try:
    print("lookup=" + socket.gethostbyname("x.hivejail.test"))
except OSError as e:
    print("lookup=ERR:" + type(e).__name__)
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"))
    kv = parse_kv(out)
    assert kv["query"] == "ERR:EPERM", res.stderr
    assert kv["lookup"].startswith("ERR:")
    assert refused(res, SRV_IP, 53, "udp")[0]["count"] == 1
    assert_clean()


def test_dns_works_when_the_resolver_is_listed(server, hostile):
    res, out = hostile(CONNECT + DNS_QUERY + f'''
dns("query", "{SRV_IP}")
print("lookup=" + socket.gethostbyname("x.hivejail.test"))
print("resolv=" + open("/etc/resolv.conf").read().replace("\\n", "|"))
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [53], proto: udp}}"))
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert kv["query"] == SRV_IP and kv["lookup"] == SRV_IP
    assert f"nameserver {SRV_IP}" in kv["resolv"]
    assert_clean()


# ---------------------------------------------------------------- IPv6

def test_ipv6_refused_unless_listed(server, hostile):
    res, out = hostile(CONNECT + f'''
tcp("v6", "{SRV_IP6}", {ALLOWED})
tcp("v4", "{SRV_IP}", {ALLOWED})
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"))
    kv = parse_kv(out)
    assert kv["v4"] == "allowed", res.stderr
    assert kv["v6"].startswith("ERR:")
    if res.layers["network"]["address6"]:
        assert refused(res, SRV_IP6, ALLOWED, "tcp")[0]["count"] >= 1
    assert_clean()


@pytest.mark.skipif(net_pool.ipv6_forwarding_mode() is None,
                    reason="this kernel cannot forward IPv6 per interface (needs Linux 6.17+)")
def test_ipv6_reachable_when_listed(server, hostile, resolver):
    res, out = hostile(CONNECT + f'''
tcp("v6", "{SRV_IP6}", {ALLOWED})
tcp("neighbour6", "{NEIGHBOUR_IP6}", {ALLOWED})
import socket
print("name6=" + socket.getaddrinfo("{TEST_NAME}", {ALLOWED}, socket.AF_INET6)[0][4][0])
''', extra=allowlist(f"{{host: {TEST_NAME}, ports: [{ALLOWED}]}}"))
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert kv["v6"] == "allowed6"
    assert kv["neighbour6"] in ("ERR:EACCES", "ERR:EHOSTUNREACH")   # ICMPv6 admin-prohibited
    assert kv["name6"] == SRV_IP6
    assert refused(res, NEIGHBOUR_IP6, ALLOWED, "tcp")[0]["count"] >= 1
    assert sh("cat", f"/proc/sys/net/ipv6/conf/{HOST_VETH}/force_forwarding").stdout.strip() == "0"
    assert_clean()


# ---------------------------------------------------------------- the payload cannot change it

NETLINK_DELTABLE = r'''
import socket, struct, errno
def nft_delete_table(name=b"hivejail"):
    """A raw NFT_MSG_DELTABLE batch over NETLINK_NETFILTER (no nft binary needed)."""
    NFNL_SUBSYS_NFTABLES, NFT_MSG_DELTABLE = 10, 2
    NLM_F_REQUEST, NLM_F_ACK = 1, 4
    def msg(typ, flags, seq, payload, family=0, res_id=0):
        body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + payload
        return struct.pack("=IHHII", 16 + len(body), typ, flags, seq, 0) + body
    def attr(t, data):
        n = 4 + len(data)
        return struct.pack("=HH", n, t) + data + b"\0" * ((4 - n % 4) % 4)
    batch = msg(0x10, NLM_F_REQUEST, 1, b"", res_id=NFNL_SUBSYS_NFTABLES)          # BATCH_BEGIN
    batch += msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE, NLM_F_REQUEST | NLM_F_ACK, 2,
                 attr(1, name + b"\0"), family=1)                                  # inet
    batch += msg(0x11, NLM_F_REQUEST, 3, b"", res_id=NFNL_SUBSYS_NFTABLES)         # BATCH_END
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
        s.settimeout(2)
        s.send(batch)
        r = s.recv(4096)
    except OSError as e:
        return "ERR:" + (errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__)
    err = struct.unpack("=i", r[16:20])[0] if struct.unpack("=H", r[4:6])[0] == 2 else 0
    return errno.errorcode.get(-err, err) if err else "OK"
'''


@pytest.mark.parametrize("uid", [65534, 0])
def test_payload_cannot_change_the_filter(server, hostile, uid):
    res, out = hostile(CONNECT + NETLINK_DELTABLE + f'''
import subprocess
caps = [l for l in open("/proc/self/status") if l.startswith(("CapEff", "CapBnd"))]
print("caps=" + ",".join(c.split()[1] for c in caps), flush=True)
r = subprocess.run(["/usr/sbin/nft", "flush", "ruleset"], capture_output=True, text=True)
print("nft_rc=%d" % r.returncode, " ".join(r.stderr.split()), flush=True)
print("netlink=" + nft_delete_table(), flush=True)
tcp("denied", "{SRV_IP}", {DENIED})
tcp("allowed", "{SRV_IP}", {ALLOWED})
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}") + f"run_as: {{uid: {uid}, gid: {uid}}}\n")
    kv = parse_kv(out)
    assert kv.get("caps") == "0000000000000000,0000000000000000", (out, res.stderr, res.reason)
    assert not kv["nft_rc"].startswith("0"), kv
    assert kv["netlink"] != "OK" and kv["netlink"], kv        # EPERM from nf_tables (or seccomp)
    assert kv["denied"] == "ERR:EHOSTUNREACH"
    assert kv["allowed"] == "allowed"
    assert refused(res, SRV_IP, DENIED, "tcp")[0]["count"] == 1
    assert_clean()


def test_host_filter_holds_when_the_jail_filter_is_gone(server, make_policy, tmp_path):
    """Defence in depth: delete the in-jail table from outside; the host still refuses
    (forward and input), and reports it as a critical bypass."""
    import socket
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    script = tmp_path / "in"
    script.mkdir()
    (script / "p.py").write_text(CONNECT + textwrap.dedent(f'''
        import os
        while not os.path.exists("/job/out/go"):
            time.sleep(0.02)
        gateway, port = open("/job/out/go").read().split()
        tcp("denied", "{SRV_IP}", {DENIED}, timeout=1)
        tcp("host", gateway, int(port), timeout=1)
        tcp("allowed", "{SRV_IP}", {ALLOWED})
    '''))
    policy = make_policy(allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"),
                         f"- {{source: {script}, target: /job/in}}\n"
                         f"- {{source: {out}, target: /job/out, mode: rw}}\n")
    listener = socket.socket()

    def started(ctx):
        gateway = str(ipaddress.ip_address(ctx.layers["network"]["address"]) - 1)
        listener.bind((gateway, 0))                   # the host's end of this run's veth only
        listener.listen(1)
        sh("nsenter", f"--net=/proc/{ctx.init_pid}/ns/net", "nft", "delete", "table", "inet", "hivejail")
        (out / "go").write_text(f"{gateway} {listener.getsockname()[1]}")
    try:
        res = Jail(policy).run(["/bin/sh", "-c", "exec python3 /job/in/p.py > /job/out/stdout 2>&1"],
                               on_started=started)
    finally:
        listener.close()
    kv = parse_kv((out / "stdout").read_text())
    assert kv["allowed"] == "allowed", (out / "stdout").read_text()
    assert kv["denied"].startswith("ERR:") and kv["host"].startswith("ERR:")
    bypass = [a for a in res.alerts if a["kind"] == "network_filter_bypass"]
    assert bypass and bypass[0]["severity"] == "critical" and bypass[0]["count"] >= 2
    assert_clean()


FAR_NETNS, FAR_HOST, FAR_PEER = "hj-test-far", "hjtfarh", "hjtfars"

FAR_LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("10.213.254.2", 9999)); s.settimeout(3)
print("ready", flush=True)
try:
    data, peer = s.recvfrom(100); print("got", data.decode(), peer[0], flush=True)
except OSError:
    print("nothing", flush=True)
"""


def test_switched_on_uplink_does_not_route_for_others(server, make_policy, tmp_path):
    """While a run has forwarding on for its uplink (hjtsrvh), the server namespace
    still cannot use the host as a router to a third network (hjtfarh)."""
    def cleanup_far():
        sh("ip", "link", "del", FAR_HOST, check=False)
        sh("ip", "netns", "del", FAR_NETNS, check=False)
        sh("ip", "-n", NETNS, "route", "del", "10.213.254.0/30", check=False)
    cleanup_far()
    try:
        sh("ip", "netns", "add", FAR_NETNS)
        sh("ip", "link", "add", FAR_HOST, "type", "veth", "peer", "name", FAR_PEER, "netns", FAR_NETNS)
        sh("ip", "addr", "add", "10.213.254.1/30", "dev", FAR_HOST)
        sh("ip", "link", "set", FAR_HOST, "up")
        sh("ip", "-n", FAR_NETNS, "addr", "add", "10.213.254.2/30", "dev", FAR_PEER)
        sh("ip", "-n", FAR_NETNS, "link", "set", FAR_PEER, "up")
        sh("ip", "-n", NETNS, "route", "add", "10.213.254.0/30", "via", HOST_IP)
        out = tmp_path / "o"
        out.mkdir()
        os.chmod(out, 0o777)
        policy = make_policy(allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"),
                             f"- {{source: {out}, target: /job/out, mode: rw}}\n")
        seen = {}

        def probe(ctx):
            seen["fwd"] = sh("cat", f"/proc/sys/net/ipv4/conf/{HOST_VETH}/forwarding").stdout.strip()
            far = subprocess.Popen(["ip", "netns", "exec", FAR_NETNS, "/usr/bin/python3", "-c", FAR_LISTEN],
                                   stdout=subprocess.PIPE, text=True)
            try:
                assert far.stdout.readline().strip() == "ready"
                sh("ip", "netns", "exec", NETNS, "/usr/bin/python3", "-c",
                   "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                   ".sendto(b'routed', ('10.213.254.2', 9999))")
                seen["far"] = far.stdout.readline().strip()
            finally:
                far.wait(timeout=10)
            (out / "go").write_text("")
        res = Jail(policy).run(["/usr/bin/python3", "-c", "import os, time\n"
                                "while not os.path.exists('/job/out/go'): time.sleep(0.02)"],
                               on_started=probe)
        assert res.status == "ok", res.reason
        assert seen == {"fwd": "1", "far": "nothing"}, seen
    finally:
        cleanup_far()
    assert_clean()


@pytest.mark.parametrize("landlock", ["auto", "off"])
def test_refusals_are_reported_whatever_landlock_does(server, hostile, landlock):
    """A TCP connect to a port that is not listed must reach nftables (Landlock may not
    refuse it first, or no one would count it): refused AND reported, and it ends a
    kill-mode run."""
    res, out = hostile(CONNECT + f'''
tcp("denied", "{SRV_IP}", {DENIED})
time.sleep(5)
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}", on_violation="kill",
                     landlock=landlock))
    assert_clean()
    assert parse_kv(out).get("denied", "ERR:").startswith("ERR:")
    assert refused(res, SRV_IP, DENIED, "tcp"), res.alerts
    assert res.status == "network_violation", res.reason


def test_landlock_keeps_allowed_traffic_working(server, hostile):
    res, out = hostile(CONNECT + f'''
tcp("allowed", "{SRV_IP}", {ALLOWED})
tcp("neighbour", "{NEIGHBOUR_IP}", {ALLOWED})
udp("udp", "{SRV_IP}", {UDP_PORT})
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}",
                     f"{{host: {SRV_IP}, ports: [{UDP_PORT}], proto: udp}}", landlock="auto"))
    if res.layers.get("landlock") in ("off", "unavailable"):
        pytest.skip("no Landlock on this kernel")
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert kv["allowed"] == "allowed" and kv["udp"] == "echo:ping"
    assert kv["neighbour"] == "ERR:EHOSTUNREACH"           # same port, other address: nftables
    assert refused(res, NEIGHBOUR_IP, ALLOWED, "tcp")[0]["count"] == 1
    assert_clean()


# ---------------------------------------------------------------- on_violation: kill

def test_on_violation_kill_ends_the_run(server, hostile):
    t0 = time.monotonic()
    res, out = hostile(CONNECT + f'''
tcp("allowed", "{SRV_IP}", {ALLOWED})
tcp("denied", "{SRV_IP}", {DENIED})
time.sleep(30)
print("survived=1")
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}", on_violation="kill"))
    assert res.status == "network_violation", (res.status, res.reason)
    assert f"tcp to {SRV_IP}:{DENIED}" in res.reason
    assert res.exit_code == 128 + 9
    assert time.monotonic() - t0 < 10
    assert "survived" not in out
    assert refused(res, SRV_IP, DENIED, "tcp")[0]["count"] == 1
    assert_clean()


def test_on_violation_kill_also_when_the_payload_exits_first(server, hostile):
    res, _ = hostile(CONNECT + f'''
udp("denied", "{SRV_IP}", {UDP_PORT + 1})
''', extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}", on_violation="kill"))
    assert res.status == "network_violation", (res.status, res.reason)
    assert f"udp to {SRV_IP}:{UDP_PORT + 1}" in res.reason


def test_clean_run_has_no_network_alerts(server, hostile):
    res, out = hostile(CONNECT + f'tcp("allowed", "{SRV_IP}", {ALLOWED})\n',
                       extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}", on_violation="kill"))
    assert res.status == "ok" and parse_kv(out)["allowed"] == "allowed", (res.reason, res.stderr)
    assert not [a for a in res.alerts if a["kind"].startswith("network")], res.alerts


# ---------------------------------------------------------------- concurrency and cleanup

RUNNER = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
from jail import Jail
from jail.policy import parse_policy_text
policy = parse_policy_text(open(sys.argv[2]).read(), filename=sys.argv[2], base_dir="/")
res = Jail(policy).run(sys.argv[3:])
print(json.dumps({"status": res.status, "reason": res.reason, "layers": res.layers,
                  "alerts": res.alerts}))
'''


def _policy_file(tmp_path: Path, extra: str, name: str = "policy.yml") -> Path:
    p = tmp_path / name
    p.write_text(policy_yaml(extra))
    return p


def test_ten_concurrent_runs_get_distinct_addresses(server, tmp_path):
    """Ten supervisors at once: every payload waits until all ten are connected."""
    meet = tmp_path / "meet"
    meet.mkdir()
    os.chmod(meet, 0o777)
    pol = tmp_path / "policy.yml"
    pol.write_text(policy_yaml(allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"),
                               mounts=f"- {{source: {meet}, target: /job/meet, mode: rw}}"))
    payload = textwrap.dedent(f"""
        import os, socket, time
        s = socket.create_connection(("{SRV_IP}", {ALLOWED}), timeout=3)
        assert s.recv(20).strip() == b"allowed"
        open("/job/meet/%d" % os.getpid() + str(time.time()), "w").close()
        deadline = time.time() + 60
        while len(os.listdir("/job/meet")) < 10 and time.time() < deadline:
            time.sleep(0.05)
        assert len(os.listdir("/job/meet")) == 10
    """)
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, str(ROOT), str(pol),
                               "/usr/bin/python3", "-c", payload], stdout=subprocess.PIPE, text=True)
             for _ in range(10)]
    results = []
    for p in procs:
        stdout, _ = p.communicate(timeout=120)
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert [r["status"] for r in results] == ["ok"] * 10, [r["reason"] for r in results]
    addrs = [r["layers"]["network"]["address"] for r in results]
    veths = [r["layers"]["network"]["veth"] for r in results]
    assert len(set(addrs)) == 10 and len(set(veths)) == 10, addrs
    nets = {ipaddress.ip_network(a + "/30", strict=False) for a in addrs}
    assert len(nets) == 10 and all(n.subnet_of(ipaddress.ip_network("10.213.0.0/16")) for n in nets)
    assert_clean()


def test_sigkilled_supervisor_is_reaped_on_next_start(server, tmp_path, hostile):
    pol = _policy_file(tmp_path, allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"))
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(ROOT), str(pol),
                             "/usr/bin/python3", "-c", "import time; time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not host_leftovers()["veths"]:
            time.sleep(0.05)
        left = host_leftovers()
        assert left["veths"] and left["tables"] and left["leases"], left
        assert sh("cat", f"/proc/sys/net/ipv4/conf/{HOST_VETH}/forwarding").stdout.strip() == "1"
    finally:
        os.kill(proc.pid, signal.SIGKILL)          # the supervisor we started, by pid
        proc.wait()
    time.sleep(0.3)
    stale = host_leftovers()
    assert stale["tables"] and stale["leases"], stale     # nobody cleaned up: it was SIGKILLed
    res, out = hostile(CONNECT + f'tcp("allowed", "{SRV_IP}", {ALLOWED})\n',
                       extra=allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"))
    assert res.status == "ok" and parse_kv(out)["allowed"] == "allowed"
    assert_clean()


def test_setup_error_after_lease_cleans_up(server, make_policy, run_jail):
    policy = make_policy(allowlist(f"{{host: {SRV_IP}, ports: [{ALLOWED}]}}"))
    res = run_jail(policy, ["/nonexistent/command"])
    assert res.status == "setup_error" and res.exit_code == 127
    assert_clean()


def test_rootless_allowlist_fails_closed(make_policy, monkeypatch):
    from jail.netallow import AllowlistNetwork
    from jail.ipc import SetupError
    from jail.steps import RunContext
    ctx = RunContext(policy=make_policy(allowlist("{cidr: 10.213.255.0/29, ports: [80]}")),
                     command=["true"], run_id="t", rootless=True)
    monkeypatch.setenv("PATH", "/nonexistent")          # neither slirp4netns nor pasta
    with pytest.raises(SetupError) as e:
        AllowlistNetwork().prepare(ctx)
    assert "install slirp4netns" in str(e.value)


def test_describe_for_doctor():
    from jail.netallow import describe
    d = describe()
    assert d["ok"] is True and d["detail"].startswith("allowlist: veth")
    assert d["libnftables"] is True and d["pyroute2"]
    assert d["nft_version"] and d["nft_version"].startswith("1.")
    assert set(d) >= {"slirp4netns", "pasta", "ip_forward", "ipv6_forwarding", "fix"}
