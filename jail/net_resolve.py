"""Host names of an allowlist: resolved once by the supervisor, pinned in /etc/hosts.

The jail never asks DNS for a listed name: the supervisor resolves each one
at start (A and AAAA), allows exactly those addresses, and writes them into
the jail's /etc/hosts.  A resolver inside the jail is usable only if the
policy lists it (an entry with port 53); otherwise /etc/nsswitch.conf says
``hosts: files`` and /etc/resolv.conf points at the jail's own loopback, so
lookups of other names fail at once instead of leaking queries.

The resolver is injectable, for tests and embedders: ``ctx.extra["resolver"]``
(a callable name -> [address, …]) wins over the module-level ``RESOLVER``,
whose default uses socket.getaddrinfo.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Callable, Iterable

from .ipc import SetupError
from .net_nft import Dest

Resolver = Callable[[str], Iterable[str]]


def system_resolver(name: str) -> list[str]:
    """A and AAAA records of name through the host's own resolver configuration."""
    infos = socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    seen: list[str] = []
    for family, _t, _p, _c, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            addr = str(sockaddr[0]).split("%", 1)[0]
            if addr not in seen:
                seen.append(addr)
    return seen


RESOLVER: Resolver = system_resolver


def resolver_for(extra: dict[str, Any]) -> Resolver:
    return extra.get("resolver") or RESOLVER


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def destinations(allow: Iterable[Any], resolver: Resolver) -> tuple[list[Dest], dict[str, list[str]]]:
    """Expand policy.network.allow into Dests; returns (dests, {host name: addresses})."""
    dests: list[Dest] = []
    names: dict[str, list[str]] = {}
    for i, a in enumerate(allow):
        if a.cidr is not None:
            nets = [ipaddress.ip_network(a.cidr, strict=False)]
        elif _is_literal(a.host):
            nets = [ipaddress.ip_network(a.host)]
        else:
            host = a.host.rstrip(".").lower()
            if host not in names:
                try:
                    addrs = [str(ipaddress.ip_address(x)) for x in resolver(host)]
                except (OSError, UnicodeError, ValueError) as e:
                    raise SetupError("supervisor", "resolve allowed host", str(e), path=host,
                                     fix=f"network.allow[{i}]: the name must resolve when the run"
                                         " starts (A or AAAA)") from None
                if not addrs:
                    raise SetupError("supervisor", "resolve allowed host", "no A or AAAA record",
                                     path=host, fix=f"network.allow[{i}]")
                names[host] = list(dict.fromkeys(addrs))
            nets = [ipaddress.ip_network(x) for x in names[host]]
        for net in nets:
            for port in a.ports:
                dests.append(Dest(net, a.proto, int(port)))
    return sorted(set(dests), key=lambda d: (d.version, str(d.net), d.proto, d.port)), names


def nameservers(dests: Iterable[Dest]) -> list[str]:
    """Single addresses the allowlist opens port 53 to: the jail's usable resolvers."""
    out: list[str] = []
    for d in dests:
        if d.port == 53 and d.net.prefixlen == d.net.max_prefixlen:
            addr = str(d.net.network_address)
            if addr not in out:
                out.append(addr)
    return out


def etc_files(base_hosts: str, names: dict[str, list[str]], resolvers: list[str],
              ipv6: bool) -> dict[str, str]:
    """hosts (pinned names), resolv.conf and nsswitch.conf for the jail's stub /etc."""
    lines = [base_hosts.rstrip("\n"), "# pinned by hivejail at start (network.allow)"]
    for name, addrs in sorted(names.items()):
        for addr in addrs:
            if ipv6 or ipaddress.ip_address(addr).version == 4:
                lines.append(f"{addr}\t{name}")
    files = {"hosts": "\n".join(lines) + "\n"}
    if resolvers:
        files["resolv.conf"] = ("# resolvers on this run's allowlist\n"
                                + "".join(f"nameserver {r}\n" for r in resolvers[:3])
                                + "options timeout:2 attempts:2\n")
        files["nsswitch.conf"] = "passwd: files\ngroup: files\nhosts: files dns\n"
    else:
        files["resolv.conf"] = ("# no resolver is on this run's allowlist: listed names are"
                                " pinned in /etc/hosts\nnameserver 127.0.0.1\n"
                                "options timeout:1 attempts:1\n")
        files["nsswitch.conf"] = "passwd: files\ngroup: files\nhosts: files\n"
    return files
