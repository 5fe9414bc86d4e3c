"""network.mode: none — the jail's own network namespace with only lo up.

The hostile payloads try what the core issue lists: a listener on the host's
loopback, a host abstract unix socket, other interfaces.  Nothing here sends
a packet anywhere but loopback (the one non-loopback address tried has no
route inside the jail, so no packet leaves).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from conftest import NEEDS_ROOT, ROOT, parse_kv

pytestmark = [NEEDS_ROOT]

# The network namespace is what these tests check, so Landlock (whose TCP and
# abstract-socket rules would refuse some of these earlier) is off; the last
# test runs the default layers together.
LANDLOCK_OFF = "landlock: off\n"

PROBE = r'''
import errno, os, socket
def err(e):
    return "ERR:" + (errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__)
def tcp(key, addr, port):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((addr, port)); print(f"{key}=connected:" + s.recv(50).decode())
    except OSError as e:
        print(f"{key}={err(e)}")
'''


def test_host_loopback_listener_is_not_reachable(hostile):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        res, out = hostile(PROBE + f'''
tcp("tcp", "127.0.0.1", {port})
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1)
u.connect(("127.0.0.1", {port})); u.send(b"x")
try:
    u.recv(10); print("udp=reply")
except OSError as e:
    print("udp=" + err(e))
''', extra=LANDLOCK_OFF)
    finally:
        srv.close()
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert kv["tcp"] == "ERR:ECONNREFUSED"
    assert kv["udp"] == "ERR:ECONNREFUSED"
    assert res.layers["network"] == "none"


def test_host_abstract_socket_is_not_reachable(hostile):
    name = f"\0hivejail-test-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(name)
    srv.listen(1)
    try:
        res, out = hostile(PROBE + f'''
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect({name!r}); print("abstract=connected")
except OSError as e:
    print("abstract=" + err(e))
''', extra=LANDLOCK_OFF)
    finally:
        srv.close()
    assert parse_kv(out)["abstract"] == "ERR:ECONNREFUSED", res.stderr


def test_only_loopback_exists_and_is_up(hostile):
    res, out = hostile(PROBE + '''
import fcntl, struct
print("ifaces=" + ",".join(n for _i, n in socket.if_nameindex()))
print("dev=" + ",".join(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))
flags = struct.unpack("16sH14x", fcntl.ioctl(socket.socket(), 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
print("lo_up=%d" % (flags & 1))
tcp("self", "127.0.0.1", 9)
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("10.213.255.2", 9)); print("out=connected")
except OSError as e:
    print("out=" + err(e))
print("route=" + open("/proc/net/route").read().count("\\n").__str__())
''', extra=LANDLOCK_OFF)
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert kv["ifaces"] == "lo" and kv["dev"] == "lo"
    assert kv["lo_up"] == "1"
    assert kv["self"] == "ERR:ECONNREFUSED"          # the jail's own loopback works
    assert kv["out"] == "ERR:ENETUNREACH"            # no route: nothing leaves
    assert kv["route"] == "1"                         # only the header line


def test_default_layers_refuse_the_host_loopback_too(hostile):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        res, out = hostile(PROBE + f'tcp("tcp", "127.0.0.1", {srv.getsockname()[1]})\n')
    finally:
        srv.close()
    assert parse_kv(out)["tcp"] in ("ERR:ECONNREFUSED", "ERR:EACCES"), res.stderr


def test_none_mode_does_not_load_the_allowlist_machinery(tmp_path):
    """Startup of mode none stays cheap: no pyroute2, no libnftables."""
    code = f'''
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from jail import Jail
from jail.policy import parse_policy_text
p = parse_policy_text("version: 1\\nfilesystem:\\n  mounts: [{{source: /usr, target: /usr}}]\\n"
                      "  symlinks: {{/bin: usr/bin, /lib: usr/lib, /lib64: usr/lib64}}\\n"
                      "audit: {{dir: null}}\\n")
r = Jail(p).run(["/bin/true"])
print(json.dumps({{"status": r.status, "mods": sorted(m for m in sys.modules
      if m.startswith(("pyroute2", "jail.net_", "jail.netallow")))}}))
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    assert d == {"status": "ok", "mods": []}, out.stderr
