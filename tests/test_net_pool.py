"""Address leases and forwarding switches (a private state folder per test)."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from conftest import NEEDS_ROOT

from jail import net_pool
from jail.net_pool import PoolError, acquire, enable_forwarding, release, reap_stale

DUMMY = "hjtpool0"


def test_lease_names_and_addresses():
    net = ipaddress.IPv4Network("10.213.0.4/30")
    name = net_pool.lease_name(net)
    assert name == "02b54001" and net_pool.network_of(name) == net
    lease = net_pool.Lease(name, net)
    assert (lease.host4, lease.jail4) == ("10.213.0.5", "10.213.0.6")
    assert (lease.host6, lease.jail6) == ("fd68:6a00::ad5:5", "fd68:6a00::ad5:6")
    assert lease.veth_host == "hj02b54001h" and lease.veth_jail == "hj02b54001j"
    assert len(lease.veth_host) <= 15 and lease.table == "hivejail_02b54001"
    top = net_pool.Lease(net_pool.lease_name(ipaddress.IPv4Network("255.255.255.252/30")),
                         ipaddress.IPv4Network("255.255.255.252/30"))
    assert len(top.veth_host) == 11


def test_leases_are_distinct_and_skip_used_networks(tmp_path):
    reaped = []
    used = ipaddress.IPv4Network("10.9.0.4/30")
    a = acquire("10.9.0.0/28", "a", reaped.append, lambda n: n == used, run_dir=str(tmp_path))
    b = acquire("10.9.0.0/28", "b", reaped.append, lambda n: n == used, run_dir=str(tmp_path))
    c = acquire("10.9.0.0/28", "c", reaped.append, lambda n: n == used, run_dir=str(tmp_path))
    assert [str(x.network) for x in (a, b, c)] == ["10.9.0.0/30", "10.9.0.8/30", "10.9.0.12/30"]
    with pytest.raises(PoolError, match="no free /30"):
        acquire("10.9.0.0/28", "d", reaped.append, lambda n: n == used, run_dir=str(tmp_path))
    release(b, run_dir=str(tmp_path))
    d = acquire("10.9.0.0/28", "d", reaped.append, lambda n: n == used, run_dir=str(tmp_path))
    assert d.network == b.network and reaped == []
    for x in (a, c, d):
        release(x, run_dir=str(tmp_path))
    assert net_pool.leases(str(tmp_path)) == []


def test_lease_of_a_dead_holder_is_reaped(tmp_path):
    code = ("import sys, os; sys.path.insert(0, %r); from jail import net_pool;"
            "l = net_pool.acquire('10.9.0.0/29', 'x', lambda n: None, lambda n: False, run_dir=%r);"
            "print(l.name, flush=True); os._exit(0)" % (str(net_pool.__file__).rsplit("/jail/", 1)[0],
                                                      str(tmp_path)))
    name = subprocess.run(["python3", "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert [x["name"] for x in net_pool.leases(str(tmp_path))] == [name]
    reaped = []
    assert reap_stale(reaped.append, run_dir=str(tmp_path)) == [name] and reaped == [name]
    assert net_pool.leases(str(tmp_path)) == []


def test_a_live_lease_is_not_reaped(tmp_path):
    a = acquire("10.9.0.0/29", "a", lambda n: None, lambda n: False, run_dir=str(tmp_path))
    assert reap_stale(lambda n: None, run_dir=str(tmp_path)) == []
    release(a, run_dir=str(tmp_path))


@pytest.fixture
def dummy():
    from test_net_allowlist import exclusive
    mutex = exclusive()                 # the same machine-wide mutex as the allowlist tests
    subprocess.run(["ip", "link", "del", DUMMY], capture_output=True)
    subprocess.run(["ip", "link", "add", DUMMY, "type", "veth", "peer", "name", "hjtpool1"], check=True)
    try:
        yield DUMMY
    finally:
        subprocess.run(["ip", "link", "del", DUMMY], capture_output=True)
        mutex.close()


def _fwd(ifname: str, family: int = 4) -> str:
    return net_pool.read_sysctl(net_pool.sysctl_path(family, ifname))


@NEEDS_ROOT
def test_forwarding_is_switched_per_interface_and_restored_by_the_last_user(tmp_path, dummy):
    rd = str(tmp_path)
    global_before = net_pool.read_sysctl("/proc/sys/net/ipv4/ip_forward")
    a = acquire("10.9.0.0/29", "a", lambda n: None, lambda n: False, run_dir=rd)
    b = acquire("10.9.0.0/29", "b", lambda n: None, lambda n: False, run_dir=rd)
    assert _fwd(dummy) == "0"
    assert enable_forwarding(a.name, [(4, dummy), (4, "hjt-no-such")], run_dir=rd) == [(4, dummy)]
    assert _fwd(dummy) == "1"
    assert enable_forwarding(b.name, [(4, dummy)], run_dir=rd) == [(4, dummy)]
    release(a, run_dir=rd)
    assert _fwd(dummy) == "1"                        # b still needs it
    release(b, run_dir=rd)
    assert _fwd(dummy) == "0"
    assert net_pool.forwarding_state(rd) == {}
    assert net_pool.read_sysctl("/proc/sys/net/ipv4/ip_forward") == global_before


@NEEDS_ROOT
def test_forwarding_of_a_dead_lease_is_restored_when_reaped(tmp_path, dummy):
    rd = str(tmp_path)
    a = acquire("10.9.0.0/29", "a", lambda n: None, lambda n: False, run_dir=rd)
    enable_forwarding(a.name, [(4, dummy)], run_dir=rd)
    import os
    os.close(a.fd)                                   # as if its supervisor died
    assert reap_stale(lambda n: None, run_dir=rd) == [a.name]
    assert _fwd(dummy) == "0"


@NEEDS_ROOT
def test_interfaces_already_forwarding_are_left_alone(tmp_path, dummy):
    rd = str(tmp_path)
    net_pool.write_sysctl(net_pool.sysctl_path(4, dummy), "1")
    a = acquire("10.9.0.0/29", "a", lambda n: None, lambda n: False, run_dir=rd)
    assert enable_forwarding(a.name, [(4, dummy)], run_dir=rd) == []   # no guard: not ours
    release(a, run_dir=rd)
    assert _fwd(dummy) == "1"
