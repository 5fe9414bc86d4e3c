"""network.mode: allowlist — a veth into the jail, an egress filter inside it.

Root mode, in the run's order:

  prepare (supervisor, before any fork)
    resolve the policy's host names once (A and AAAA; injectable resolver,
    see net_resolve) and pin them in the jail's /etc/hosts; lease a /30 of
    the pool (stale leases of dead supervisors are reaped first); switch on
    forwarding for the uplinks the allowed destinations are routed through;
    install the host table (forward/input filter for this run's veth,
    masquerade).
  from_parent (supervisor, the jail's namespaces exist, nothing runs in them)
    install the egress filter in the jail's network namespace FIRST, then
    create the veth pair with its jail end inside that namespace, addresses
    (IPv4 /30 from the lease, IPv6 ULA /126), routes, links up.  The payload
    later runs with no capabilities at all, so it cannot change the filter.
  in_init (PID 1)   lo up.
  poll              with on_violation: kill, read the filter's refusal counter
                    (one libnftables call, ~0.5 ms); the first refused packet
                    ends the run as network_violation.
  finish            every refused destination (address, port, protocol,
                    count) becomes an alert; a non-zero host "escaped"
                    counter (the in-jail filter was bypassed) is critical.
  cleanup           delete the veth and the host table, switch forwarding
                    back, give the lease back.

Rootless mode (jail/net_rootless.py): the same egress filter, installed by
a helper that joins the jail's user namespace and then its network
namespace, and read through it at poll/finish; connectivity from
slirp4netns (--disable-host-loopback, confined by no_new_privs + Landlock +
its seccomp, DNS forwarder off unless listed), started after the filter and
stopped in cleanup.  Without
slirp4netns, a usable /dev/net/tun or libnftables the run is refused (fail
closed).

None of this is imported for network.mode: none (jail/net.py).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from typing import Any

from . import net_pool
from .ipc import SetupError
from .net import NoNetwork
from .net_nft import Dest, Nft, NftError
from .steps import RunContext

NETLINK_ROUTE = 0
RTN_LOCAL = 2
MAX_REFUSAL_ALERTS = 64      # one alert per destination up to this; the rest are summed


def _err(op: str, e: BaseException, fix: str | None = None, stage: str = "supervisor") -> SetupError:
    if isinstance(e, OSError) and e.errno:
        return SetupError.from_oserror(stage, op, e, fix=fix)
    return SetupError(stage, op, str(e) or type(e).__name__, fix=fix)


def _describe_refusal(r: dict[str, Any]) -> str:
    port = f":{r['port']}" if r.get("port") is not None else ""
    addr = f"[{r['address']}]" if ":" in str(r["address"]) and port else r["address"]
    return f"{r['protocol']} to {addr}{port}"


class AllowlistNetwork(NoNetwork):
    name = "network"

    def __init__(self) -> None:
        self.dests: list[Dest] = []
        self.names: dict[str, list[str]] = {}
        self.lease: net_pool.Lease | None = None
        self.ipr: Any = None
        self.host_nft: Nft | None = None
        self.jail_nft: Nft | None = None
        self.nsfd: int | None = None
        self.ipv6 = False            # the jail gets IPv6 addressing (refusals are then reported)
        self.ipv6_forward = False    # listed IPv6 destinations are reachable
        self.v6mode: str | None = None   # global | per-interface | None (net_pool)
        self.killed = False
        self.slirp: Any = None           # net_rootless.SlirpNetwork in rootless mode

    # ------------------------------------------------------------ prepare

    def prepare(self, ctx: RunContext) -> None:
        net = ctx.policy.network
        from . import mounts, net_resolve
        resolver = net_resolve.resolver_for(ctx.extra)
        self.dests, self.names = net_resolve.destinations(net.allow, resolver)
        want6 = any(d.version == 6 for d in self.dests)
        if ctx.rootless:
            from .net_rootless import SlirpNetwork
            self.slirp = SlirpNetwork.prepare(ctx, self.dests, self.names)
            return
        self.ipv6 = os.path.isdir("/proc/sys/net/ipv6/conf")
        self.v6mode = net_pool.ipv6_forwarding_mode() if self.ipv6 else None
        self.ipv6_forward = want6 and self.v6mode is not None
        if want6 and not self.ipv6_forward:
            ctx.alert("network_ipv6_unavailable", "warning",
                      detail="the allowlist names IPv6 destinations but this host cannot forward"
                             " IPv6 per interface (Linux < 6.17 and net.ipv6.conf.all.forwarding=0);"
                             " only IPv4 addresses are pinned and reachable")
        base_hosts = mounts.etc_files(ctx)["hosts"]
        files = dict(ctx.extra.get("etc_files", {}))
        files.update(net_resolve.etc_files(base_hosts, self.names,
                                           net_resolve.nameservers(self.dests), self.ipv6_forward))
        ctx.extra["etc_files"] = files
        try:
            from pyroute2 import IPRoute
        except ImportError as e:
            raise _err("import pyroute2", e, fix="install pyroute2 (requirements.txt)") from None
        try:
            self.ipr = IPRoute()
            self.host_nft = Nft()
        except (OSError, NftError) as e:
            raise _err("open netlink", e, fix="network.mode: allowlist needs nftables (libnftables1)"
                                                " and rtnetlink; see hivejail doctor") from None
        try:
            self.lease = net_pool.acquire(net.pool, ctx.run_id, self._reap, self._in_use_checker())
        except (OSError, net_pool.PoolError) as e:
            raise _err("lease an address", e, fix="choose another network.pool or wait for running"
                                                  " jails to end") from None
        lease = self.lease
        uplinks = self._uplinks()
        host_nft = self.host_nft
        try:
            net_pool.enable_forwarding(lease.name, uplinks, lambda guarded: host_nft.run(
                _host_rules(lease, self.dests, guarded, self.ipv6)))
        except (OSError, NftError) as e:
            raise _err("install the host forward filter", e) from None
        ctx.layers["network"] = {
            "mode": "allowlist", "connectivity": "veth", "address": lease.jail4,
            "address6": lease.jail6 if self.ipv6 else None, "veth": lease.veth_host,
            "filter": "nftables inet hivejail (in the jail's netns)",
            "host_filter": f"nftables inet {lease.table}", "uplinks": sorted({u for _f, u in uplinks}),
            "ipv6": self.ipv6_forward, "names": self.names,
            "on_violation": net.on_violation,
        }

    def _in_use_checker(self) -> Any:
        """Networks the host already uses (routes, addresses) — the pool skips them."""
        used: list[ipaddress.IPv4Network] = []
        try:
            for r in self.ipr.get_routes(family=socket.AF_INET):
                dst, plen = r.get_attr("RTA_DST"), r["dst_len"]
                if dst and plen:
                    used.append(ipaddress.IPv4Network(f"{dst}/{plen}", strict=False))
            for a in self.ipr.get_addr(family=socket.AF_INET):
                used.append(ipaddress.IPv4Network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}",
                                                  strict=False))
        except Exception:  # noqa: BLE001 - a failed dump only weakens the collision check
            pass
        return lambda sub: any(sub.overlaps(u) for u in used)

    def _reap(self, name: str) -> None:
        """Host resources of a dead supervisor's lease (called under the pool lock)."""
        veth = f"hj{name}h"
        try:
            idx = self.ipr.link_lookup(ifname=veth)
            if idx:
                self.ipr.link("del", index=idx[0])
        except Exception:  # noqa: BLE001 - gone meanwhile
            pass
        from .net_nft import delete_table, host_table_name
        if self.host_nft is not None:
            delete_table(self.host_nft, host_table_name(name))

    def _uplinks(self) -> list[tuple[int, str]]:
        """(family, interface) the host routes allowed destinations through.

        For a single address, the route the host would use; for a network
        also every route that covers part of it (a CIDR may span several
        interfaces).  Local addresses of the host need no forwarding.
        """
        names: dict[int, str] = {}
        try:
            for link in self.ipr.get_links():
                names[link["index"]] = link.get_attr("IFLA_IFNAME")
        except Exception:  # noqa: BLE001
            return []
        routes: dict[int, list[tuple[Any, int]]] = {4: [], 6: []}
        try:
            for fam, v in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
                if v == 6 and not self.ipv6_forward:
                    continue
                for r in self.ipr.get_routes(family=fam, table=254):
                    dst, plen, oif = r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_OIF")
                    if dst and plen and oif and r["type"] != RTN_LOCAL:
                        routes[v].append((ipaddress.ip_network(f"{dst}/{plen}", strict=False), oif))
        except Exception:  # noqa: BLE001 - then only the per-address lookups below count
            pass
        out: list[tuple[int, str]] = []

        def add(v: int, oif: Any) -> None:
            ifname = names.get(oif)
            if v == 6 and self.v6mode != "per-interface":
                return                   # the host forwards IPv6 globally already
            if ifname and ifname != "lo" and (v, ifname) not in out:
                out.append((v, ifname))
        for d in self.dests:
            if d.version == 6 and not self.ipv6_forward:
                continue
            probes = [d.net.network_address]
            if d.net.num_addresses > 2:
                probes = [d.net.network_address + 1, d.net.broadcast_address - 1]
            for probe in probes:
                try:
                    found = self.ipr.route("get", dst=str(probe))
                except Exception:  # noqa: BLE001 - unreachable from the host
                    continue
                for r in found:
                    if r["type"] != RTN_LOCAL:
                        add(d.version, r.get_attr("RTA_OIF"))
            if d.net.num_addresses > 1:
                for net, oif in routes[d.version]:
                    if net.overlaps(d.net):
                        add(d.version, oif)
        return out

    # ------------------------------------------------------------ in the children

    def in_intermediate(self, ctx: RunContext) -> None:
        net_pool.forget_in_child(self.lease)

    # ------------------------------------------------------------ from_parent

    def from_parent(self, ctx: RunContext, pid: int) -> None:
        if self.slirp is not None:
            self.jail_nft = self.slirp.start(ctx, pid)
            return
        lease = self.lease
        if lease is None:
            return
        try:
            self.nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self.jail_nft = Nft(self.nsfd)
            from .net_nft import jail_ruleset, verify_jail_filter
            self.jail_nft.run(jail_ruleset(self.dests))
            verify_jail_filter(self.jail_nft)
        except (OSError, NftError) as e:
            raise _err("install the egress filter in the jail's network namespace", e) from None
        try:
            self._links(lease)
        except SetupError:
            raise
        except Exception as e:  # noqa: BLE001 - pyroute2 raises NetlinkError (not OSError)
            raise _err("set up the jail's veth", e) from None

    def _links(self, lease: net_pool.Lease) -> None:
        from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

        from .net_nft import VETH_GROUP, in_netns
        ipr, h, j = self.ipr, lease.veth_host, lease.veth_jail
        ipr.link("add", ifname=h, kind="veth", peer={"ifname": j, "net_ns_fd": self.nsfd})
        idx = ipr.link_lookup(ifname=h)[0]
        net_pool.write_sysctl(net_pool.sysctl_path(4, h), "1")
        if self.ipv6_forward and self.v6mode == "per-interface":
            net_pool.write_sysctl(net_pool.sysctl_path(6, h), "1")
        ipr.addr("add", index=idx, address=lease.host4, prefixlen=30)
        if self.ipv6:
            ipr.addr("add", index=idx, address=lease.host6, prefixlen=126, flags=IFA_F_NODAD)
        ipr.link("set", index=idx, state="up", group=VETH_GROUP)
        sock = in_netns(self.nsfd, lambda: socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE))
        from pyroute2 import IPRoute
        jail = IPRoute(fileno=sock.detach())
        try:
            jidx = jail.link_lookup(ifname=j)[0]
            jail.addr("add", index=jidx, address=lease.jail4, prefixlen=30)
            if self.ipv6:
                jail.addr("add", index=jidx, address=lease.jail6, prefixlen=126, flags=IFA_F_NODAD)
            jail.link("set", index=jidx, state="up")
            jail.link("set", index=jail.link_lookup(ifname="lo")[0], state="up")
            jail.route("add", dst="0.0.0.0/0", gateway=lease.host4)
            if self.ipv6:
                jail.route("add", dst="::/0", gateway=lease.host6)
        finally:
            jail.close()

    # ------------------------------------------------------------ while running

    def poll(self, ctx: RunContext) -> None:
        if self.slirp is not None:
            self.slirp.poll(ctx)
        if self.killed or self.jail_nft is None or ctx.policy.network.on_violation != "kill":
            return
        from .net_nft import refusals, refused_total
        try:
            total = refused_total(self.jail_nft)
            if not total:
                return
            first = refusals(self.jail_nft)
        except NftError as e:
            self.killed = True
            ctx.terminate("network_violation", f"the network filter's counters could not be read"
                                               f" ({e}); the jail was killed (fail closed)")
            return
        self.killed = True
        what = _describe_refusal(first[0]) if first else "a destination"
        ctx.terminate("network_violation", f"the payload sent a packet {what}, which is not on"
                                           " network.allow; the jail was killed")

    def finish(self, ctx: RunContext, result: Any) -> None:
        if self.slirp is not None:
            self.slirp.finish()          # slirp4netns may go: its exit overlaps the rest
        self._finish(ctx, result)

    def _finish(self, ctx: RunContext, result: Any) -> None:
        if self.jail_nft is None:
            return
        from .net_nft import escaped_total, refusals, refused_total
        if self.host_nft is not None and self.lease is not None:
            try:
                escaped = escaped_total(self.host_nft, self.lease.table)
            except NftError as e:
                escaped = 0
                ctx.alert("network_monitor_failed", "high", detail=f"host counters unreadable: {e}")
            if escaped:
                ctx.alert("network_filter_bypass", "critical", count=escaped,
                          detail="packets from the jail passed (or went around) its own egress"
                                 " filter and were dropped by the host's forward filter")
        try:
            total = refused_total(self.jail_nft)
            found = refusals(self.jail_nft)
        except NftError as e:
            ctx.alert("network_monitor_failed", "high", detail=f"refusal counters unreadable: {e}")
            return
        for r in found[:MAX_REFUSAL_ALERTS]:
            ctx.alert("network_refused", "high", address=r["address"], port=r["port"],
                      protocol=r["protocol"], count=r["count"])
        rest = total - sum(r["count"] for r in found[:MAX_REFUSAL_ALERTS])
        if rest > 0:
            ctx.alert("network_refused", "high", address=None, port=None, protocol=None, count=rest,
                      detail=f"refused packets to {max(len(found) - MAX_REFUSAL_ALERTS, 0)} more"
                             " destinations (or more than the filter tracks)")
        if total and ctx.policy.network.on_violation == "kill":
            what = _describe_refusal(found[0]) if found else "a destination"
            result.fix("network_violation", f"the payload sent a packet {what}, which is not on"
                                            " network.allow")

    # ------------------------------------------------------------ cleanup

    def cleanup(self, ctx: RunContext) -> None:
        """Delete the veth and the host table, switch forwarding back, give the lease back.

        Each deletion waits for an RCU grace period in the kernel (~10-25 ms);
        the veth goes first, while this supervisor still holds the jail's
        namespace, so that no lease is given back with its veth still present.
        """
        errors: list[str] = []
        if self.slirp is not None:
            errors += self.slirp.cleanup()       # slirp4netns, then the filter helper
            self.slirp = None
            self.jail_nft = None
        lease = self.lease
        if lease is not None and self.ipr is not None:
            try:
                idx = self.ipr.link_lookup(ifname=lease.veth_host)
                if idx:
                    self.ipr.link("del", index=idx[0])
            except Exception as e:  # noqa: BLE001
                errors.append(f"delete veth {lease.veth_host}: {e}")
        if self.jail_nft is not None:
            self.jail_nft.close()
            self.jail_nft = None
        if self.nsfd is not None:
            os.close(self.nsfd)
            self.nsfd = None
        if lease is not None:
            if self.host_nft is not None:
                try:
                    from .net_nft import delete_table
                    delete_table(self.host_nft, lease.table)
                except NftError as e:
                    errors.append(f"delete nft table {lease.table}: {e}")
            try:
                net_pool.release(lease)
            except OSError as e:
                errors.append(f"release lease {lease.name}: {e}")
            self.lease = None
        if self.host_nft is not None:
            self.host_nft.close()
            self.host_nft = None
        if self.ipr is not None:
            try:
                self.ipr.close()
            except Exception:  # noqa: BLE001
                pass
            self.ipr = None
        if errors:
            raise RuntimeError("; ".join(errors))


def _host_rules(lease: net_pool.Lease, dests: list[Dest], guarded: list[tuple[int, str]],
                ipv6: bool) -> list[dict[str, Any]]:
    from .net_nft import host_ruleset
    return host_ruleset(lease.table, lease.veth_host, lease.jail4, lease.jail6 if ipv6 else None,
                        dests, guarded)


# ---------------------------------------------------------------- doctor

def rootless_tools() -> list[str]:
    return [t for t in ("slirp4netns", "pasta") if shutil.which(t)]


def describe() -> dict[str, Any]:
    """What `hivejail doctor` reports about network isolation on this host.

    ok/detail/fix follow doctor's convention: ok says whether
    network.mode: allowlist can run for the calling user (mode none always can).
    """
    from . import net_nft
    try:
        import importlib.metadata as md
        pyroute2_version: str | None = md.version("pyroute2")
    except Exception:  # noqa: BLE001
        pyroute2_version = None
    from . import net_rootless
    tools = {t: shutil.which(t) for t in ("slirp4netns", "pasta")}
    lib = net_nft.available()
    root_ok = lib and pyroute2_version is not None
    rootless = os.geteuid() != 0
    rl = net_rootless.describe(for_others=not rootless)
    if not rootless:
        ok = root_ok
        detail = ("allowlist: veth + nftables egress filter in the jail's netns + host forward filter"
                  if ok else "allowlist unavailable: " + ", ".join(
                      x for x, y in (("libnftables missing", not lib),
                                     ("pyroute2 missing", pyroute2_version is None)) if y))
        fix = None if ok else "apt-get install nftables; pip install pyroute2"
    else:
        ok = rl["ok"]
        detail = ("allowlist (rootless): " + rl["detail"] if ok
                  else "allowlist refused when rootless: " + rl["detail"] + "; mode none works")
        fix = rl["fix"]
    v6 = net_pool.ipv6_forwarding_mode()
    return {
        "ok": ok,
        "detail": detail,
        "fix": fix,
        "nft_version": net_nft.version(),
        "libnftables": lib,
        "pyroute2": pyroute2_version,
        "slirp4netns": tools["slirp4netns"],
        "pasta": tools["pasta"],
        "rootless_allowlist": {k: v for k, v in rl.items() if k != "ok"} | {"works": rl["ok"]},
        "ip_forward": net_pool.read_sysctl("/proc/sys/net/ipv4/ip_forward"),
        "ipv6_forwarding": v6 or "unavailable (Linux < 6.17 and all.forwarding=0): IPv6"
                                 " destinations are refused",
        "leases": [x.get("network") for x in net_pool.leases()],
        "forwarding_switched_on": sorted(net_pool.forwarding_state()),
        "foreign_forward_drop": _foreign_forward_drop() if root_ok and not rootless else None,
    }


def _foreign_forward_drop() -> list[str]:
    """Forward-hook chains of other software with policy drop (e.g. Docker's iptables-nft
    FORWARD): they drop allowlist traffic too unless they accept the hj* veths."""
    from .net_nft import HOST_TABLE_PREFIX
    try:
        with Nft() as nft:
            chains = [i["chain"] for i in nft.run("list chains") if "chain" in i]
    except NftError:
        return []
    return [f"{c['family']} {c['table']} {c['name']}" for c in chains
            if c.get("hook") == "forward" and c.get("policy") == "drop"
            and not c["table"].startswith(HOST_TABLE_PREFIX)]


def reap_stale() -> list[str]:
    """Remove leftovers of SIGKILLed supervisors (root only); returns the lease names."""
    from pyroute2 import IPRoute
    step = AllowlistNetwork()
    with IPRoute() as ipr, Nft() as nft:
        step.ipr, step.host_nft = ipr, nft
        return net_pool.reap_stale(step._reap)
