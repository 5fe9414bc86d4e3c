"""Address leases for allowlist runs, host forwarding switches, and stale reaping.

One run leases one /30 of the policy's pool (default 10.213.0.0/16): .1 is
the host's end of the veth, .2 the jail's.  The lease is named after the
/30 itself (its 30-bit index in hex, e.g. 10.213.0.4 -> ``02b54001``), so
leases from different or overlapping pools never collide, and everything a
run creates on the host carries that name:

    veth        hj<lease>h (host end, 11 characters), hj<lease>j (jail end)
    nft table   inet hivejail_<lease>
    IPv6        fd68:6a00::<the /30 as IPv4 bits>/126 (ULA; "hj" = 0x68 0x6a)

State lives in RUN_DIR (/run/hivejail/net, root only, gone at reboot):

    lock              flock'ed while leases or forwarding switches change
    lease-<lease>     JSON (pid, start time, run id, network); the owning
                      supervisor holds an flock on it for the whole run
    forwarding.json   per-interface forwarding switches hivejail turned on,
                      with the value to restore and the leases that use it

A lease file whose flock can be taken (under the global lock) belongs to a
dead supervisor: its veth, table and forwarding references are removed and
the file is deleted — "reaped on the next start".  The kernel drops an flock
when its holder dies, even by SIGKILL, so no pid can be mistaken for a live
one after reuse; pid and start time are recorded for people reading the
files.

Forwarding: IPv4 decides per *ingress* interface (conf.<if>.forwarding), so
hivejail never touches the global net.ipv4.ip_forward: it turns forwarding on
for its own veth and for each uplink that replies arrive on (the interface
the host routes an allowed destination through), and turns each uplink back
off when the last run that needed it ends.  IPv6 uses conf.<if>.force_forwarding
(Linux 6.17+), which does not switch the interface into router mode; on older
kernels IPv6 destinations get connectivity only if the host already forwards
IPv6 (net.ipv6.conf.all.forwarding=1).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

RUN_DIR = "/run/hivejail/net"
LEASE_PREFIX = "lease-"
FWD_STATE = "forwarding.json"
ULA_BASE = int(ipaddress.IPv6Address("fd68:6a00::"))


class PoolError(Exception):
    pass


@dataclass
class Lease:
    name: str                                  # 8 hex digits
    network: ipaddress.IPv4Network             # the /30
    fd: int | None = field(default=None, repr=False)
    path: str = ""

    @property
    def host4(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def jail4(self) -> str:
        return str(self.network.network_address + 2)

    @property
    def network6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network((ULA_BASE + int(self.network.network_address), 126))

    @property
    def host6(self) -> str:
        return str(self.network6.network_address + 1)

    @property
    def jail6(self) -> str:
        return str(self.network6.network_address + 2)

    @property
    def veth_host(self) -> str:
        return f"hj{self.name}h"

    @property
    def veth_jail(self) -> str:
        return f"hj{self.name}j"

    @property
    def table(self) -> str:
        from .net_nft import host_table_name
        return host_table_name(self.name)


def lease_name(network: ipaddress.IPv4Network) -> str:
    return f"{int(network.network_address) >> 2:08x}"


def network_of(name: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((int(name, 16) << 2, 30))


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _ensure_dir(run_dir: str) -> None:
    os.makedirs(run_dir, mode=0o700, exist_ok=True)


@contextmanager
def locked(run_dir: str = RUN_DIR) -> Iterator[None]:
    """The pool-wide lock (leases, forwarding switches, reaping)."""
    _ensure_dir(run_dir)
    fd = os.open(os.path.join(run_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# A reaper removes one dead lease's host resources: reaper(lease_name).
Reaper = Callable[[str], None]


def reap_stale(reaper: Reaper, run_dir: str = RUN_DIR, *, have_lock: bool = False) -> list[str]:
    """Remove every lease whose supervisor is gone; returns their names."""
    if not have_lock:
        with locked(run_dir):
            return reap_stale(reaper, run_dir, have_lock=True)
    reaped = []
    try:
        names = sorted(os.listdir(run_dir))
    except FileNotFoundError:
        return []
    for fn in names:
        if not fn.startswith(LEASE_PREFIX):
            continue
        path = os.path.join(run_dir, fn)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue                     # its supervisor is alive
            name = fn[len(LEASE_PREFIX):]
            reaper(name)
            _release_forwarding(name, run_dir)
            os.unlink(path)
            reaped.append(name)
        finally:
            os.close(fd)
    # Forwarding switches whose leases vanished without a reaper (should not happen).
    _release_forwarding(None, run_dir)
    return reaped


def acquire(pool: str, run_id: str, reaper: Reaper, in_use: Callable[[ipaddress.IPv4Network], bool],
            run_dir: str = RUN_DIR) -> Lease:
    """Lease the first free /30 of pool; stale leases are reaped first.

    ``in_use(net)`` says whether the host already uses addresses of net
    (routes, addresses of other software): such /30s are skipped.
    """
    net = ipaddress.IPv4Network(pool, strict=False)
    with locked(run_dir):
        reap_stale(reaper, run_dir, have_lock=True)
        for sub in net.subnets(new_prefix=30) if net.prefixlen <= 30 else ():
            name = lease_name(sub)
            path = os.path.join(run_dir, LEASE_PREFIX + name)
            if os.path.exists(path) or in_use(sub):
                continue
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            info = {"pid": os.getpid(), "start_time": _start_time(os.getpid()), "run_id": run_id,
                    "network": str(sub), "created": time.time()}
            os.write(fd, json.dumps(info).encode())
            return Lease(name, sub, fd, path)
    raise PoolError(f"the address pool {pool} has no free /30 left "
                    f"(every one is leased to a running jail or used by the host)")


def release(lease: Lease, run_dir: str = RUN_DIR) -> None:
    """Give a lease back (its host resources must already be gone)."""
    if lease.fd is None:
        return
    try:
        with locked(run_dir):
            _release_forwarding(lease.name, run_dir)
            try:
                os.unlink(lease.path)
            except FileNotFoundError:
                pass
    finally:
        os.close(lease.fd)
        lease.fd = None


def forget_in_child(lease: Lease | None) -> None:
    """Close the lease's lock fd in a forked jail stage (only the supervisor holds it)."""
    if lease is not None and lease.fd is not None:
        try:
            os.close(lease.fd)
        except OSError:
            pass


def leases(run_dir: str = RUN_DIR) -> list[dict[str, Any]]:
    """Current lease files (for doctor and tests)."""
    out = []
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:              # none yet, or not root
        return []
    for fn in names:
        if fn.startswith(LEASE_PREFIX):
            try:
                with open(os.path.join(run_dir, fn)) as f:
                    info = json.loads(f.read() or "{}")
            except (OSError, ValueError):
                info = {}
            out.append({"name": fn[len(LEASE_PREFIX):], **info})
    return out


# ---------------------------------------------------------------- forwarding switches

def sysctl_path(family: int, ifname: str) -> str:
    if family == 4:
        return f"/proc/sys/net/ipv4/conf/{ifname}/forwarding"
    return f"/proc/sys/net/ipv6/conf/{ifname}/force_forwarding"


def read_sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def ipv6_forwarding_mode() -> str | None:
    """How this host can forward IPv6 for a jail: 'global', 'per-interface' or None."""
    if read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding") == "1":
        return "global"
    if os.path.exists("/proc/sys/net/ipv6/conf/default/force_forwarding"):
        return "per-interface"
    return None


def _load_state(run_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(run_dir, FWD_STATE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save_state(run_dir: str, state: dict[str, Any]) -> None:
    path = os.path.join(run_dir, FWD_STATE)
    if not state:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, sort_keys=True)
    os.replace(tmp, path)


def enable_forwarding(lease: str, uplinks: list[tuple[int, str]],
                      install: Callable[[list[tuple[int, str]]], None] | None = None,
                      run_dir: str = RUN_DIR) -> list[tuple[int, str]]:
    """Turn forwarding on for (family, ifname) uplinks on behalf of a lease.

    Returns the (family, ifname) switches hivejail turns on (now or for an
    earlier run still going): they need a guard rule so that the host
    forwards that family from them only into hivejail veths.  ``install(guarded)`` runs
    under the pool lock before any switch is flipped, so the guard is in
    place first.  Interfaces that were already forwarding (the host is a
    router anyway) are left alone.
    """
    with locked(run_dir):
        state = _load_state(run_dir)
        flips: list[tuple[str, str]] = []
        guarded: list[tuple[int, str]] = []
        keys: list[str] = []
        for family, ifname in uplinks:
            key = f"ipv{family}/{ifname}"
            path = sysctl_path(family, ifname)
            if key not in state:
                current = read_sysctl(path)
                if current != "0":
                    continue                 # no such switch, or already forwarding: not ours
                flips.append((key, path))
            keys.append(key)
            if (family, ifname) not in guarded:
                guarded.append((family, ifname))
        if install is not None:
            install(guarded)
        for key, path in flips:
            write_sysctl(path, "1")
            state[key] = {"orig": "0", "leases": []}
        for key in keys:
            if lease not in state[key]["leases"]:
                state[key]["leases"].append(lease)
        _save_state(run_dir, state)
    return guarded


def _release_forwarding(lease: str | None, run_dir: str) -> None:
    """Drop a lease's references (None: drop references of leases that no longer exist)."""
    state = _load_state(run_dir)
    if not state:
        return
    live = {fn[len(LEASE_PREFIX):] for fn in os.listdir(run_dir) if fn.startswith(LEASE_PREFIX)}
    changed = False
    for key in list(state):
        entry = state[key]
        before = list(entry.get("leases", []))
        entry["leases"] = [x for x in before if x != lease and (lease is not None or x in live)]
        if entry["leases"] != before:
            changed = True
        if not entry["leases"]:
            fam, ifname = key.split("/", 1)
            path = sysctl_path(4 if fam == "ipv4" else 6, ifname)
            # Restore only what is still ours: if someone else changed the switch
            # (or the global one) meanwhile, leave their setting alone.
            if read_sysctl(path) == "1" and _global_forwarding(fam) == "0":
                try:
                    write_sysctl(path, entry.get("orig", "0"))
                except OSError as e:
                    if e.errno not in (errno.ENOENT, errno.ENODEV):
                        raise
            del state[key]
            changed = True
    if changed:
        _save_state(run_dir, state)


def _global_forwarding(fam: str) -> str | None:
    if fam == "ipv4":
        return read_sysctl("/proc/sys/net/ipv4/conf/all/forwarding")
    return read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding")


def forwarding_state(run_dir: str = RUN_DIR) -> dict[str, Any]:
    return _load_state(run_dir)
