"""nftables for the allowlist network: rulesets as JSON, run through libnftables.

pyroute2's nftables module builds wrong CIDR masks, so every rule goes
through the nft program's own engine: libnftables (the library the `nft`
binary is a thin front end of; Debian package libnftables1, a dependency of
nftables) with its JSON input and output — the same schema as `nft -j -f -`
(libnftables-json(5)).  Calling the library instead of spawning `nft` has two
reasons: a context opens its netlink socket when it is created, so a context
made in a short-lived thread that joined the jail's network namespace keeps
talking to that namespace (no nsenter, no fork); and reading the refusal
counters every 50 ms costs ~0.5 ms instead of a process start (~5 ms).

Two tables per run:

  in the jail's namespace, ``table inet hivejail`` (the egress filter):
    sets   allow4/allow6     {daddr . l4proto . dport}, interval (CIDRs)
           denied4/denied6   dynamic {daddr . l4proto . dport} with a counter each
           deniedp4/deniedp6 dynamic {daddr . l4proto} (no ports: icmp, sctp, …)
    counter refused          every refused packet
    chain output (hook output, policy drop):
           lo → accept; ct established/related → accept; allowlisted → accept;
           kernel ICMPv6 link control (ND, MLD) → accept;
           anything else: count, record its destination, reject TCP with
           icmpx admin-prohibited (connect fails at once: EHOSTUNREACH, EACCES
           for IPv6),
           drop the rest (UDP sendto fails with EPERM).

  on the host, ``table inet hivejail_<lease>`` (defence in depth + NAT):
    forward: from the jail's veth only allowlisted new flows (counter
             ``escaped`` otherwise — it can only count if the in-jail filter
             was bypassed); into the jail's veth only established/related;
             uplinks whose forwarding hivejail switched on forward (that IP
             family) only to hivejail veths (link group VETH_GROUP): the host
             does not become a router for anyone else.
    input:   from the jail's veth only allowlisted destinations on the host
             itself, established/related, and IPv6 neighbour discovery/MLD
             (anything else also counts as ``escaped``).
    postrouting (nat): masquerade the jail's addresses leaving elsewhere.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterable

from . import libc

JAIL_TABLE = "hivejail"
HOST_TABLE_PREFIX = "hivejail_"
NFT_CTX_OUTPUT_JSON = 1 << 4
CLONE_NEWNET = libc.CLONE_NEWNET
DENIED_SET_SIZE = 4096
VETH_GROUP = 0x686A          # link group of every hivejail host veth ("hj"): the uplink guard's key
ICMPV6_ND = ["nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert"]
ICMPV6_MLD = ["mld-listener-report", "mld-listener-done", "mld2-listener-report"]


class NftError(Exception):
    """libnftables refused a command; the message is nft's own error text."""


IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, order=True)
class Dest:
    """One allowed (network, protocol, port)."""
    net: IPNet
    proto: str           # tcp | udp
    port: int

    @property
    def version(self) -> int:
        return self.net.version


# ---------------------------------------------------------------- libnftables

_lib_cache: list[Any] = []


def _lib() -> Any:
    if not _lib_cache:
        try:
            lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        except OSError as e:
            raise NftError(f"libnftables.so.1 cannot be loaded ({e}); "
                           "install the Debian package nftables") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_free.restype = None
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        _lib_cache.append(lib)
    return _lib_cache[0]


def available() -> bool:
    try:
        _lib()
        return True
    except NftError:
        return False


def in_netns(netns_fd: int, fn: Any) -> Any:
    """Call fn() in a short-lived thread that joined the network namespace netns_fd.

    setns(CLONE_NEWNET) changes only the calling thread, so the caller's own
    namespace is never touched; sockets fn() creates stay in the target.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            libc.setns(netns_fd, CLONE_NEWNET)
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=run, name="hivejail-netns")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Nft:
    """One libnftables context, bound to the network namespace it was made in."""

    def __init__(self, netns_fd: int | None = None) -> None:
        lib = _lib()
        self._lib = lib
        ctx = lib.nft_ctx_new(0) if netns_fd is None else in_netns(netns_fd, lambda: lib.nft_ctx_new(0))
        if not ctx:
            raise NftError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON)
        self._ctx: int | None = ctx
        self._lock = threading.Lock()

    def run(self, commands: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
        """Run JSON commands (a list of {verb: object}) or one text command; JSON out."""
        if isinstance(commands, str):
            text = commands
        else:
            text = json.dumps({"nftables": commands})
        with self._lock:
            if self._ctx is None:
                raise NftError("the nft context is closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            raise NftError(err.decode(errors="replace").strip() or f"nft failed (rc {rc})")
        items: list[dict[str, Any]] = []
        for line in out.decode().splitlines():
            line = line.strip()
            if line:
                items.extend(i for i in json.loads(line).get("nftables", []) if "metainfo" not in i)
        return items

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def __enter__(self) -> "Nft":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def version() -> str | None:
    """`nft --version` (for doctor)."""
    import shutil
    import subprocess
    exe = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=5,
                             env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    parts = out.split()
    return parts[1].lstrip("v") if len(parts) > 1 else out.strip() or None


# ---------------------------------------------------------------- JSON helpers

def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _ip(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def _nfproto(version: int) -> dict[str, Any]:
    return _match(_meta("nfproto"), "ipv4" if version == 4 else "ipv6")


def _tcp_udp(op: str = "==") -> dict[str, Any]:
    return _match(_meta("l4proto"), {"set": ["tcp", "udp"]}, op)


def _key3(version: int, field: str = "daddr") -> dict[str, Any]:
    return {"concat": [_payload(_ip(version), field), _meta("l4proto"), _payload("th", "dport")]}


def _addr_elem(net: IPNet) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _elements(dests: Iterable[Dest], version: int) -> list[Any]:
    mine = sorted({d for d in dests if d.version == version})
    return [{"concat": [_addr_elem(d.net), d.proto, d.port]} for d in mine]


def _set(family: str, table: str, name: str, type_: list[str], flags: list[str],
         elems: list[Any] | None = None, size: int | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"family": family, "table": table, "name": name, "type": type_}
    if flags:
        s["flags"] = flags
    if size:
        s["size"] = size
    if elems:
        s["elem"] = elems
    return {"add": {"set": s}}


def _rule(family: str, table: str, chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {"family": family, "table": table, "chain": chain, "expr": list(expr)}}}


ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}


# ---------------------------------------------------------------- the in-jail filter

def jail_ruleset(dests: Iterable[Dest]) -> list[dict[str, Any]]:
    """Egress filter for the jail's own namespace (see the module docstring)."""
    dests = list(dests)
    F, T = "inet", JAIL_TABLE
    cmds: list[dict[str, Any]] = [{"add": {"table": {"family": F, "name": T}}},
                                  {"add": {"counter": {"family": F, "table": T, "name": "refused"}}}]
    for v in (4, 6):
        cmds.append(_set(F, T, f"allow{v}", [ADDR_TYPE[v], "inet_proto", "inet_service"],
                         ["interval"], _elements(dests, v)))
        cmds.append(_set(F, T, f"denied{v}", [ADDR_TYPE[v], "inet_proto", "inet_service"],
                         [], size=DENIED_SET_SIZE))
        cmds.append(_set(F, T, f"deniedp{v}", [ADDR_TYPE[v], "inet_proto"],
                         [], size=DENIED_SET_SIZE))
    cmds.append({"add": {"chain": {"family": F, "table": T, "name": "output", "type": "filter",
                                   "hook": "output", "prio": 0, "policy": "drop"}}})
    r = lambda *e: _rule(F, T, "output", *e)  # noqa: E731
    cmds += [
        r(_match(_meta("oifname"), "lo"), ACCEPT),
        r(_match({"ct": {"key": "state"}}, ["established", "related"], "in"), ACCEPT),
    ]
    for v in (4, 6):
        cmds.append(r(_nfproto(v), _tcp_udp(), _match(_key3(v), f"@allow{v}"), ACCEPT))
    # Link control the jail's kernel sends by itself (no payload can: no CAP_NET_RAW).
    cmds += [
        r(_match(_payload("icmpv6", "type"), {"set": ICMPV6_ND}),
          _match(_payload("ip6", "hoplimit"), 255), ACCEPT),
        r(_match(_payload("icmpv6", "type"), {"set": ICMPV6_MLD}),
          _match(_payload("ip6", "daddr"), {"prefix": {"addr": "ff02::", "len": 16}}), ACCEPT),
        r({"counter": "refused"}),
    ]
    for v in (4, 6):
        cmds.append(r(_nfproto(v), _tcp_udp(),
                      {"set": {"op": "update", "elem": _key3(v), "set": f"@denied{v}",
                               "stmt": [{"counter": None}]}}))
        cmds.append(r(_nfproto(v), _tcp_udp("!="),
                      {"set": {"op": "update",
                               "elem": {"concat": [_payload(_ip(v), "daddr"), _meta("l4proto")]},
                               "set": f"@deniedp{v}", "stmt": [{"counter": None}]}}))
    cmds += [
        r(_match(_meta("l4proto"), "tcp"), {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}),
        r(DROP),
    ]
    return cmds


def verify_jail_filter(nft: Nft) -> None:
    """Read the filter back: the output hook must be there with policy drop (fail closed)."""
    for item in nft.run([{"list": {"chain": {"family": "inet", "table": JAIL_TABLE, "name": "output"}}}]):
        chain = item.get("chain")
        if chain and chain.get("hook") == "output" and chain.get("policy") == "drop":
            return
    raise NftError("the egress filter's output chain is missing after installing it")


def refused_total(nft: Nft) -> int:
    for item in nft.run([{"list": {"counter": {"family": "inet", "table": JAIL_TABLE,
                                               "name": "refused"}}}]):
        if "counter" in item:
            return int(item["counter"].get("packets", 0))
    return 0


def _proto_name(p: Any) -> str:
    names = {"ipv6-icmp": "icmpv6", 58: "icmpv6", 1: "icmp", 6: "tcp", 17: "udp"}
    return names.get(p, str(p))


def refusals(nft: Nft) -> list[dict[str, Any]]:
    """Every refused destination so far: [{address, port, protocol, count}], largest first."""
    out: list[dict[str, Any]] = []
    for name in ("denied4", "denied6", "deniedp4", "deniedp6"):
        items = nft.run([{"list": {"set": {"family": "inet", "table": JAIL_TABLE, "name": name}}}])
        for item in items:
            for e in item.get("set", {}).get("elem", []) or []:
                elem = e.get("elem", e) if isinstance(e, dict) else e
                val = elem.get("val", elem) if isinstance(elem, dict) else elem
                counter = elem.get("counter", {}) if isinstance(elem, dict) else {}
                parts = val.get("concat", []) if isinstance(val, dict) else []
                if len(parts) < 2:
                    continue
                out.append({"address": str(parts[0]), "protocol": _proto_name(parts[1]),
                            "port": int(parts[2]) if len(parts) > 2 else None,
                            "count": int(counter.get("packets", 0)),
                            "bytes": int(counter.get("bytes", 0))})
    out.sort(key=lambda d: (-d["count"], d["address"], d["protocol"], d["port"] or 0))
    return out


# ---------------------------------------------------------------- the host table

def host_table_name(lease_name: str) -> str:
    return f"{HOST_TABLE_PREFIX}{lease_name}"


def host_ruleset(table: str, veth: str, jail4: str, jail6: str | None, dests: Iterable[Dest],
                 guarded_uplinks: Iterable[tuple[int, str]]) -> list[dict[str, Any]]:
    """Host side of one run: forward/input filter for its veth, masquerade, uplink guard."""
    dests = list(dests)
    F, T = "inet", table
    cmds: list[dict[str, Any]] = [
        {"add": {"table": {"family": F, "name": T}}},
        {"add": {"counter": {"family": F, "table": T, "name": "escaped"}}},
    ]
    for v in (4, 6):
        cmds.append(_set(F, T, f"allow{v}", [ADDR_TYPE[v], "inet_proto", "inet_service"],
                         ["interval"], _elements(dests, v)))
    for name, hook, prio, typ in (("forward", "forward", 0, "filter"), ("input", "input", 0, "filter"),
                                  ("postrouting", "postrouting", 100, "nat")):
        cmds.append({"add": {"chain": {"family": F, "table": T, "name": name, "type": typ,
                                       "hook": hook, "prio": prio, "policy": "accept"}}})
    for name in ("from_jail", "to_jail", "jail_to_host"):
        cmds.append({"add": {"chain": {"family": F, "table": T, "name": name}}})
    est = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
    iif, oif = _meta("iifname"), _meta("oifname")
    cmds += [
        _rule(F, T, "forward", _match(iif, veth), {"jump": {"target": "from_jail"}}),
        _rule(F, T, "forward", _match(oif, veth), {"jump": {"target": "to_jail"}}),
    ]
    for v, up in sorted(set(guarded_uplinks)):
        cmds.append(_rule(F, T, "forward", _nfproto(v), _match(iif, up),
                          _match(_meta("oifgroup"), VETH_GROUP, "!="), DROP))
    srcs = [(4, jail4)] + ([(6, jail6)] if jail6 else [])
    r = lambda *e: _rule(F, T, "from_jail", *e)  # noqa: E731
    cmds.append(r(est, ACCEPT))
    for v, src in srcs:
        cmds.append(r(_nfproto(v), _match(_payload(_ip(v), "saddr"), src), _tcp_udp(),
                      _match(_key3(v), f"@allow{v}"), ACCEPT))
    cmds.append(r({"counter": "escaped"}, DROP))
    cmds += [_rule(F, T, "to_jail", est, ACCEPT), _rule(F, T, "to_jail", DROP)]
    cmds.append(_rule(F, T, "input", _match(iif, veth), {"jump": {"target": "jail_to_host"}}))
    r = lambda *e: _rule(F, T, "jail_to_host", *e)  # noqa: E731
    cmds += [r(est, ACCEPT),
             r(_match(_payload("icmpv6", "type"), {"set": ICMPV6_ND}),
               _match(_payload("ip6", "hoplimit"), 255), ACCEPT),
             r(_match(_payload("icmpv6", "type"), {"set": ICMPV6_MLD}),
               _match(_payload("ip6", "daddr"), {"prefix": {"addr": "ff02::", "len": 16}}), ACCEPT)]
    for v, _src in srcs:
        cmds.append(r(_nfproto(v), _tcp_udp(), _match(_key3(v), f"@allow{v}"), ACCEPT))
    cmds.append(r({"counter": "escaped"}, DROP))
    for v, src in srcs:
        cmds.append(_rule(F, T, "postrouting", _nfproto(v), _match(_payload(_ip(v), "saddr"), src),
                          _match(oif, veth, "!="), {"masquerade": None}))
    return cmds


def escaped_total(nft: Nft, table: str) -> int:
    for item in nft.run([{"list": {"counter": {"family": "inet", "table": table, "name": "escaped"}}}]):
        if "counter" in item:
            return int(item["counter"].get("packets", 0))
    return 0


def host_tables(nft: Nft) -> list[str]:
    return [i["table"]["name"] for i in nft.run("list tables inet")
            if "table" in i and i["table"]["name"].startswith(HOST_TABLE_PREFIX)]


def delete_table(nft: Nft, table: str) -> bool:
    """Delete one of our tables; False if it did not exist."""
    try:
        nft.run([{"delete": {"table": {"family": "inet", "name": table}}}])
        return True
    except NftError as e:
        if "No such file or directory" in str(e) or "does not exist" in str(e):
            return False
        raise
