"""Landlock: the second wall holds on its own when the mount layer is wrong."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conftest import NEEDS_ROOT, parse_kv
from jail import landlock as L
from jail import libc

ABI = L.abi_version()
pytestmark = [NEEDS_ROOT, pytest.mark.skipif(ABI < 1, reason="this kernel has no Landlock")]

WRITE_PROBE = """
import os
opts = [l.split()[5] for l in open("/proc/self/mountinfo") if l.split()[4] == "/job/data"]
print("mount=" + (opts[0].split(",")[0] if opts else "missing"))
try:
    with open("/job/data/written", "w") as f:
        f.write("escaped")
    print("write=ok")
except OSError as e:
    print("write=%d" % e.errno)
"""


def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    os.chmod(d, 0o777)                  # file permissions would let the payload write
    (d / "input.txt").write_text("x")
    return d


def test_read_only_in_policy_stays_read_only_when_the_mount_is_rw(hostile, tmp_path, monkeypatch):
    """The mount layer is broken on purpose: every bind mount comes out writable.
    The policy says /job/data is read-only; Landlock alone refuses the write."""
    d = data_dir(tmp_path)
    monkeypatch.setattr(libc, "MOUNT_ATTR_RDONLY", 0)            # the misconfigured mount layer
    mounts = f"- {{source: {d}, target: /job/data}}\n"            # mode ro (the default)

    res, out = hostile(WRITE_PROBE, mounts=mounts, extra='landlock: {mode: "off"}\n')
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert kv == {"mount": "rw", "write": "ok"}, kv                # the first wall is really gone
    assert (d / "written").read_text() == "escaped"
    (d / "written").unlink()

    res, out = hostile(WRITE_PROBE, mounts=mounts)
    kv = parse_kv(out)
    assert res.status == "ok", (res.reason, res.stderr)
    assert kv == {"mount": "rw", "write": str(errno.EACCES)}, kv   # Landlock held
    assert not (d / "written").exists()
    assert res.layers["landlock"] == L.layer_label(ABI)


def test_rw_mounts_stay_writable_and_the_rest_is_out_of_view(hostile, tmp_path):
    d = data_dir(tmp_path)
    res, out = hostile("""
        import os
        def attempt(key, fn):
            try:
                fn(); print(f"{key}=ok")
            except OSError as e:
                print(f"{key}={e.errno}")
        attempt("out", lambda: open("/job/out/x", "w").write("1"))
        attempt("tmp", lambda: open("/tmp/x", "w").write("1"))
        attempt("read_data", lambda: open("/job/data/input.txt").read())
        attempt("read_etc", lambda: open("/etc/passwd").read())
        attempt("list_root", lambda: os.listdir("/"))
        attempt("write_workdir", lambda: open("/job/x", "w"))
        attempt("mkdir_data", lambda: os.mkdir("/job/data/d"))
        attempt("devnull", lambda: open("/dev/null", "w").write("1"))
    """, mounts=f"- {{source: {d}, target: /job/data}}\n")
    assert res.status == "ok", (res.reason, res.stderr)
    kv = parse_kv(out)
    # Read-only mounts answer EROFS before Landlock is asked; either wall refuses.
    walls = {str(errno.EROFS), str(errno.EACCES)}
    assert kv.pop("write_workdir") in walls and kv.pop("mkdir_data") in walls
    assert kv == {"out": "ok", "tmp": "ok", "read_data": "ok", "read_etc": "ok",
                  "list_root": str(errno.EACCES), "devnull": "ok"}          # only Landlock


TCP_PROBE = """
import socket
def attempt(key, fn):
    try:
        fn(); print(f"{key}=ok")
    except OSError as e:
        print(f"{key}={e.errno}")
attempt("bind", lambda: socket.socket().bind(("127.0.0.1", 8080)))
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("127.0.0.1", 8080)))
s = socket.socket(); s.settimeout(2)
attempt("connect", lambda: s.connect(("127.0.0.1", 9)))
"""


@pytest.mark.skipif(ABI < 4, reason="TCP rules need Landlock ABI 4")
def test_tcp_bind_is_refused(hostile):
    res, out = hostile(TCP_PROBE)
    assert res.status == "ok", (res.reason, res.stderr)
    # connect is left to the network layer: the jail's own loopback answers.
    assert parse_kv(out) == {"bind": str(errno.EACCES), "udp": "ok",
                             "connect": str(errno.ECONNREFUSED)}
    res, out = hostile(TCP_PROBE, extra='landlock: {mode: "off"}\n')
    assert parse_kv(out)["bind"] == "ok"


@pytest.mark.skipif(ABI < 4, reason="TCP rules need Landlock ABI 4")
def test_tcp_connect_rules_when_switched_on(hostile, monkeypatch):
    monkeypatch.setattr(L, "CONNECT_RULES", True)
    res, out = hostile(TCP_PROBE)
    assert res.status == "ok", (res.reason, res.stderr)
    assert parse_kv(out)["connect"] == str(errno.EACCES)
    assert "net+" in res.layers["landlock"] or res.layers["landlock"].endswith("net")


@pytest.mark.skipif(ABI < 6, reason="scoping needs Landlock ABI 6")
def test_signals_cannot_leave_the_domain(hostile):
    """The payload runs as uid 0 like PID 1, so only Landlock's scope stops kill(1, 0)."""
    code = """
        import os, signal
        try:
            os.kill(1, 0); print("init=ok")
        except OSError as e:
            print("init=%d" % e.errno)
        pid = os.fork()
        if pid == 0:
            signal.pause()
        os.kill(pid, signal.SIGTERM)                # its own child: same domain
        print("child=%d" % os.waitpid(pid, 0)[1])
    """
    run_as = "run_as: {uid: 0, gid: 0}\n"
    res, out = hostile(code, extra=run_as)
    assert res.status == "ok", (res.reason, res.stderr)
    assert parse_kv(out) == {"init": str(errno.EPERM), "child": str(15)}
    res, out = hostile(code, extra=run_as + 'landlock: {mode: "off"}\n')
    assert parse_kv(out)["init"] == "ok"


def test_require_fails_closed_and_auto_says_unavailable(make_policy, run_jail, monkeypatch):
    monkeypatch.setattr(L, "abi_version", lambda: 0)
    res = run_jail(make_policy("landlock: {mode: require}\n"), ["/bin/true"])
    assert res.status == "setup_error" and "no Landlock" in res.reason, res.reason
    res = run_jail(make_policy(), ["/bin/true"])
    assert res.status == "ok", res.reason
    assert res.layers["landlock"] == "unavailable"


def test_layers_and_doctor(make_policy, run_jail):
    res = run_jail(make_policy(), ["/bin/true"])
    assert res.status == "ok", res.reason
    assert res.layers["landlock"] == L.layer_label(ABI) and res.layers["landlock"].startswith(f"abi{ABI}: fs")
    assert res.layers["seccomp"] == "default/kill"
    d = L.describe()                       # what `hivejail doctor` shows
    assert d["ok"] and d["abi"] == ABI and "fs" in d["features"] and f"ABI {ABI}" in d["detail"]
    res = run_jail(make_policy('landlock: {mode: "off"}\n'), ["/bin/true"])
    assert res.layers["landlock"] == "off"
