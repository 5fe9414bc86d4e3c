"""Rootless network.mode: allowlist — slirp4netns for connectivity, the same in-jail filter.

An unprivileged supervisor owns the jail's user namespace, so it holds every
capability *in* that namespace, but it may not join the jail's network
namespace by itself (setns(CLONE_NEWNET) also wants CAP_SYS_ADMIN in the
caller's own namespace, the host's).  Two processes it starts do the work:

  the filter helper   a fork of the supervisor that joins the jail's user
                      namespace, then its network namespace (setns), and so
                      gets CAP_NET_ADMIN there.  It installs ``table inet
                      hivejail`` (jail_ruleset, the very rules root mode uses:
                      output policy drop, allowlisted destinations, denied sets
                      and counters) and reads it back; then it stays for the
                      run and answers the supervisor's nftables JSON requests
                      (the refusal counters at poll and finish) over a
                      socketpair.  ``RemoteNft`` is its drop-in for ``Nft``.
                      It is not dumpable, ignores terminal signals, keeps no
                      other descriptor, and dies with the supervisor
                      (PDEATHSIG) or when its socket closes.
  slirp4netns         started after the filter is in place, with the jail's
                      namespaces passed as inherited descriptors (no pid
                      races):
                          slirp4netns --configure --mtu=65520
                            --disable-host-loopback --enable-seccomp
                            [--disable-dns] --cidr=NET --ready-fd=3 --exit-fd=4
                            --netns-type=path --userns-path=/proc/self/fd/5
                            /proc/self/fd/6 tap0
                      Its child creates tap0 in the jail's namespace (NET+100/24,
                      default route via NET+2); then it writes "1" to the
                      ready pipe.  It runs confined by hivejail (no_new_privs,
                      a Landlock domain: no files but its program, libraries
                      and /dev/net/tun, TCP connect only to the allowlist's
                      ports, no signals or abstract sockets outside; see
                      net_confine, which also says why --enable-sandbox cannot
                      be used) under its own seccomp filter, in a session of
                      its own.  The supervisor holds the write end of the exit
                      pipe: when the supervisor dies, even by SIGKILL, the
                      pipe hangs up and slirp4netns exits (PDEATHSIG SIGKILL
                      as well).  Its output goes to a memfd (read when it
                      fails), so no file is left anywhere.  Closing its tap
                      device costs an RCU grace period (~15-30 ms), which
                      finish() starts early so it overlaps the teardown.

slirp4netns turns the jail's TCP and UDP flows into ordinary sockets of the
calling user on the host, so reachability is the host's; the in-jail filter
is the gate (there is no host-side table, so no "escaped" counter): only
allowlisted destinations leave the jail.  slirp4netns's Landlock domain is
a second, port-only gate for TCP.  The slirp network is
10.0.2.0/24 (gateway .2, DNS forwarder .3, the jail .100).  Its gateway
would forward to the host's 127.0.0.1; --disable-host-loopback refuses
that.  The DNS forwarder is switched off (--disable-dns) unless the
allowlist names it (NET+3, port 53).  Exact entries 10.0.2.2 or 10.0.2.3
name those slirp services; any other allowed destination inside
10.0.2.0/24 moves the slirp network to the first /24 that no entry
overlaps, so allowlisted addresses always mean real hosts.

IPv6 is not offered (slirp4netns runs without --enable-ipv6): listed IPv6
destinations are reported as unavailable, and only IPv4 names are pinned.

Host requirements: the slirp4netns program (Debian package slirp4netns),
/dev/net/tun readable and writable by the user (Debian's udev makes it
0666), libnftables (nftables).  Without them the run is refused.
"""

from __future__ import annotations

import fcntl
import gc
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import struct
import time
from typing import Any, Iterable

from . import libc
from .ipc import SetupError
from .net_nft import Dest, NftError
from .steps import RunContext

TUN = "/dev/net/tun"
TAP = "tap0"
MTU = 65520
DEFAULT_NET = ipaddress.IPv4Network("10.0.2.0/24")
READY_TIMEOUT_S = 10.0
RPC_TIMEOUT_S = 10.0
STOP_WAIT_S = 2.0
PR_SET_DUMPABLE = 4
MAX_MESSAGE = 64 << 20
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP)


# ---------------------------------------------------------------- what the host offers

def slirp4netns_path() -> str | None:
    return shutil.which("slirp4netns")


def tun_usable(for_others: bool = False) -> bool:
    """Can this user (or, for_others, any user: what root's doctor reports) open /dev/net/tun?"""
    if for_others:
        try:
            return os.stat(TUN).st_mode & 0o006 == 0o006
        except OSError:
            return False
    return os.access(TUN, os.R_OK | os.W_OK)


def tun_mode() -> str | None:
    try:
        return f"{os.stat(TUN).st_mode & 0o7777:04o}"
    except OSError:
        return None


def slirp4netns_version(exe: str | None = None) -> str | None:
    import subprocess
    exe = exe or slirp4netns_path()
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=5,
                             env={"PATH": "/usr/bin:/bin"}).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.splitlines()[0] if out else ""
    return first.rsplit(" ", 1)[-1] if first else None


def problems(for_others: bool = False) -> list[tuple[str, str]]:
    """What stops a rootless allowlist run on this host: [(problem, fix)], empty if none
    (for_others: for unprivileged users, when root asks)."""
    from . import net_nft
    out: list[tuple[str, str]] = []
    if not slirp4netns_path():
        if shutil.which("pasta"):
            out.append(("pasta is installed, but hivejail drives only slirp4netns",
                        "install slirp4netns (Debian package slirp4netns), or run as root"))
        else:
            out.append(("no user-mode network helper: neither slirp4netns nor pasta is installed",
                        "install slirp4netns (Debian package slirp4netns), or run as root"))
    if not tun_usable(for_others):
        who = "unprivileged users" if for_others else "this user"
        out.append((f"{TUN} is not readable and writable for {who} (mode {tun_mode() or 'missing'})",
                    f"chmod 0666 {TUN} (what Debian's udev sets; the kernel's default is 0600)"))
    if not net_nft.available():
        out.append(("libnftables cannot be loaded", "apt-get install nftables"))
    return out


# ---------------------------------------------------------------- the slirp network

def _candidates() -> Iterable[ipaddress.IPv4Network]:
    yield DEFAULT_NET
    for third in range(3, 256):
        yield ipaddress.IPv4Network(f"10.0.{third}.0/24")
    for base in ("172.31", "192.168"):
        for third in range(255, -1, -1):
            yield ipaddress.IPv4Network(f"{base}.{third}.0/24")


def service_addresses(net: ipaddress.IPv4Network) -> tuple[str, str, str]:
    """(gateway, dns, jail) addresses of a slirp network (slirp4netns's fixed offsets)."""
    base = net.network_address
    return str(base + 2), str(base + 3), str(base + 100)


def choose_network(dests: Iterable[Dest]) -> ipaddress.IPv4Network:
    """The slirp network: 10.0.2.0/24 unless an allowed destination (other than exactly
    its gateway or DNS address) lies in it; then the first /24 no destination overlaps."""
    v4 = [d.net for d in dests if d.version == 4]
    gw, dns, _ = service_addresses(DEFAULT_NET)
    special = {ipaddress.IPv4Network(gw), ipaddress.IPv4Network(dns)}
    if not any(n.overlaps(DEFAULT_NET) and n not in special for n in v4):
        return DEFAULT_NET
    for cand in _candidates():
        if not any(n.overlaps(cand) for n in v4):
            return cand
    raise SetupError("supervisor", "choose the slirp4netns network",
                     "every candidate /24 overlaps an allowed destination",
                     fix="narrow network.allow, or run as root")


def dns_allowed(dests: Iterable[Dest], net: ipaddress.IPv4Network) -> bool:
    """True if the allowlist names slirp's DNS forwarder (NET+3, port 53)."""
    dns = ipaddress.IPv4Address(service_addresses(net)[1])
    return any(d.version == 4 and d.port == 53 and dns in d.net for d in dests)


def slirp_argv(exe: str, net: ipaddress.IPv4Network, dns: bool, fds: tuple[int, int, int, int],
               mtu: int = MTU) -> list[str]:
    """slirp4netns's command line; fds = (ready, exit, userns, netns) as the child sees them."""
    ready, exit_, userns, netns = fds
    argv = [exe, "--configure", f"--mtu={mtu}", "--disable-host-loopback", "--enable-seccomp",
            f"--cidr={net}"]
    if not dns:
        argv.append("--disable-dns")
    argv += [f"--ready-fd={ready}", f"--exit-fd={exit_}", "--netns-type=path",
             f"--userns-path=/proc/self/fd/{userns}", f"/proc/self/fd/{netns}", TAP]
    return argv


# ---------------------------------------------------------------- framing

def _send(fd: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    buf = struct.pack(">I", len(data)) + data
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    parts: list[bytes] = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _recv(fd: int) -> Any:
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes")
    body = _read_exact(fd, size)
    if body is None:
        return None
    return json.loads(body)


def _close_all_but(keep: Iterable[int]) -> None:
    lo = 3
    for fd in sorted(set(k for k in keep if k >= 3)):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 20)


def _die_with(parent: int) -> None:
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


# ---------------------------------------------------------------- the filter helper

def _helper_main(fd: int, userns_fd: int, netns_fd: int, parent: int) -> None:
    """The helper's whole life (never returns)."""
    code = 1
    try:
        gc.disable()             # inherited objects must never be finalised here
        _die_with(parent)
        libc.prctl(PR_SET_DUMPABLE, 0)
        for sig in TERMINAL_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        _close_all_but((fd, userns_fd, netns_fd))
        libc.setns(userns_fd, libc.CLONE_NEWUSER)
        libc.setns(netns_fd, libc.CLONE_NEWNET)
        os.close(userns_fd)
        os.close(netns_fd)
        from .net_nft import Nft
        nft = Nft()
        _send(fd, {"ok": "ready"})
        while True:
            req = _recv(fd)
            if req is None:
                break
            try:
                _send(fd, {"ok": nft.run(req["cmd"])})
            except NftError as e:
                _send(fd, {"error": str(e)})
        code = 0
    except BaseException as e:  # noqa: BLE001 - everything goes back to the supervisor
        try:
            err = getattr(e, "errno", None)
            _send(fd, {"error": str(e) or type(e).__name__, "errno": err})
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)


class RemoteNft:
    """``Nft`` for a network namespace the supervisor cannot join: a helper process
    that joined the jail's user and network namespaces runs the commands."""

    def __init__(self, userns_fd: int, netns_fd: int, timeout: float = RPC_TIMEOUT_S) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _helper_main(b.fileno(), userns_fd, netns_fd, parent)
        b.close()
        self.pid: int | None = pid
        self._sock: socket.socket | None = a
        a.settimeout(timeout)
        try:
            reply = self._exchange(None)
        except NftError:
            self.close()
            raise
        if reply != "ready":
            self.close()
            raise NftError(f"the filter helper answered {reply!r}")

    def _exchange(self, request: Any) -> Any:
        sock = self._sock
        if sock is None:
            raise NftError("the filter helper is gone")
        try:
            if request is not None:
                data = json.dumps(request).encode()
                sock.sendall(struct.pack(">I", len(data)) + data)
            reply = self._read(sock)
        except (OSError, ValueError) as e:
            self._broken()         # a late answer must never be taken for the next one
            raise NftError(f"the filter helper does not answer ({e})") from None
        if reply is None:
            self._broken()
            raise NftError("the filter helper ended")
        if "error" in reply:
            raise NftError(reply["error"])
        return reply["ok"]

    @staticmethod
    def _read(sock: socket.socket) -> Any:
        def exact(n: int) -> bytes | None:
            parts = []
            while n:
                chunk = sock.recv(n)
                if not chunk:
                    return None
                parts.append(chunk)
                n -= len(chunk)
            return b"".join(parts)
        head = exact(4)
        if head is None:
            return None
        (size,) = struct.unpack(">I", head)
        if size > MAX_MESSAGE:
            raise ValueError(f"message of {size} bytes")
        body = exact(size)
        return None if body is None else json.loads(body)

    def run(self, commands: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
        return self._exchange({"cmd": commands})

    def _broken(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """End the helper: close its socket (it exits), then reap it; SIGKILL if it lingers."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.pid is not None:
            _reap(self.pid, STOP_WAIT_S)
            self.pid = None

    def __enter__(self) -> "RemoteNft":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _reap(pid: int, wait_s: float) -> int | None:
    """Wait for our own child pid; SIGKILL it (by pid, still unreaped so never reused) if it
    has not ended within wait_s.  Returns its wait status."""
    deadline = time.monotonic() + wait_s
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    try:
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if done:
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    return os.waitpid(pid, 0)[1]
                except ChildProcessError:
                    return None
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)


# ---------------------------------------------------------------- slirp4netns

class Slirp:
    """One slirp4netns process for one run."""

    def __init__(self, exe: str, net: ipaddress.IPv4Network, dns: bool,
                 tcp_ports: Iterable[int] = ()) -> None:
        self.exe, self.net, self.dns = exe, net, dns
        self.tcp_ports = sorted(set(tcp_ports))
        self.confinement = ""
        self.pid: int | None = None
        self.exit_w: int | None = None
        self.log: int | None = None
        self.argv: list[str] = []

    def start(self, userns_fd: int, netns_fd: int, timeout: float = READY_TIMEOUT_S) -> None:
        from .net_confine import slirp_ruleset
        try:
            ruleset = slirp_ruleset(self.exe, self.tcp_ports, self.dns)
        except OSError as e:
            raise SetupError.from_oserror("supervisor", "build the Landlock domain of slirp4netns",
                                          e) from None
        self.confinement = ruleset.description
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
        self.exit_w = exit_w
        self.log = os.memfd_create("hivejail-slirp4netns", os.MFD_CLOEXEC)
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.argv = slirp_argv(self.exe, self.net, self.dns, (3, 4, 5, 6))
        parent = os.getpid()
        try:
            pid = os.fork()
            if pid == 0:
                _exec_slirp(self.exe, self.argv, parent, ruleset,
                            (devnull, self.log, ready_w, exit_r, userns_fd, netns_fd))
            self.pid = pid
        finally:
            ruleset.close()
            os.close(ready_w)
            os.close(exit_r)
            os.close(devnull)
        try:
            got = _wait_ready(ready_r, timeout)
        finally:
            os.close(ready_r)
        if got != b"1":
            status = _reap(self.pid, 0.5 if got == b"" else 0.0)
            self.pid = None
            why = "timed out" if got is None else (
                f"exited ({_describe_status(status)})" if status is not None else "failed")
            raise SetupError("supervisor", "start slirp4netns", f"{why}: {self.output() or 'no output'}",
                             fix="see `hivejail doctor` (network)")

    def output(self, limit: int = 2000) -> str:
        if self.log is None:
            return ""
        try:
            size = os.fstat(self.log).st_size
            data = os.pread(self.log, limit, max(0, size - limit))
        except OSError:
            return ""
        return " | ".join(line for line in data.decode(errors="replace").splitlines() if line.strip())

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if done:
            self.pid = None
            return False
        return True

    def hang_up(self) -> None:
        """Close the exit pipe: slirp4netns starts exiting (removing tap0 takes an RCU grace
        period, ~25 ms, which then overlaps the rest of the run's teardown)."""
        if self.exit_w is not None:
            os.close(self.exit_w)
            self.exit_w = None

    def stop(self) -> None:
        """Hang up the exit pipe (slirp4netns exits at once) and reap it; SIGKILL only if it lingers."""
        self.hang_up()
        if self.pid is not None:
            _reap(self.pid, STOP_WAIT_S)
            self.pid = None
        if self.log is not None:
            os.close(self.log)
            self.log = None


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.WEXITSTATUS(status)}"


def _wait_ready(fd: int, timeout: float) -> bytes | None:
    """b"1" when ready; b"" if slirp4netns closed the pipe without it; None on timeout."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLHUP)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if p.poll(left * 1000):
            return os.read(fd, 1)


def _exec_slirp(exe: str, argv: list[str], parent: int, ruleset: Any, fds: tuple[int, ...]) -> None:
    """In the forked child: confine (net_confine), then fds (stdin, log, ready, exit, userns,
    netns) become 0, 1+2, 3-6, and execve."""
    try:
        _die_with(parent)
        os.setsid()                       # terminal signals go to the supervisor, which decides
        try:
            ruleset.restrict_self()
        except OSError as e:
            os.write(fds[1], f"hivejail: confine slirp4netns: {e}\n".encode())
            os._exit(126)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in fds]
        stdin, log, ready, exit_r, userns, netns = high
        for src, dst in ((stdin, 0), (log, 1), (log, 2), (ready, 3), (exit_r, 4), (userns, 5),
                         (netns, 6)):
            os.dup2(src, dst, inheritable=True)
        os.closerange(7, 1 << 20)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, *TERMINAL_SIGNALS):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execve(exe, argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})
    except BaseException:  # noqa: BLE001
        pass
    os._exit(127)


# ---------------------------------------------------------------- the step's rootless half

class SlirpNetwork:
    """State of one rootless allowlist run (AllowlistNetwork delegates to it)."""

    def __init__(self, exe: str, dests: list[Dest]) -> None:
        self.exe = exe
        self.dests = dests
        self.net = choose_network(dests)
        self.dns = dns_allowed(dests, self.net)
        self.userns_fd: int | None = None
        self.netns_fd: int | None = None
        self.nft: RemoteNft | None = None
        self.slirp: Slirp | None = None
        self.timing: dict[str, float] = {}

    @classmethod
    def prepare(cls, ctx: RunContext, dests: list[Dest], names: dict[str, list[str]]) -> "SlirpNetwork":
        found = problems()
        if found:
            raise SetupError("supervisor", "network allowlist (rootless)",
                             "; ".join(p for p, _ in found), fix="; ".join(dict.fromkeys(f for _, f in found)))
        self = cls(slirp4netns_path() or "slirp4netns", dests)
        from . import mounts, net_resolve
        if any(d.version == 6 for d in dests):
            ctx.alert("network_ipv6_unavailable", "warning",
                      detail="the allowlist names IPv6 destinations but rootless runs reach the"
                             " network through slirp4netns without IPv6; only IPv4 addresses are"
                             " pinned and reachable")
        base_hosts = mounts.etc_files(ctx)["hosts"]
        files = dict(ctx.extra.get("etc_files", {}))
        files.update(net_resolve.etc_files(base_hosts, names, [
            r for r in net_resolve.nameservers(dests) if ipaddress.ip_address(r).version == 4], False))
        ctx.extra["etc_files"] = files
        gateway, dns, jail = service_addresses(self.net)
        ctx.layers["network"] = {
            "mode": "allowlist", "connectivity": "slirp4netns", "address": jail, "address6": None,
            "network": str(self.net), "gateway": gateway, "dns_forwarder": dns if self.dns else None,
            "filter": "nftables inet hivejail (in the jail's netns, installed through its user namespace)",
            "host_filter": None, "host_loopback": "blocked (--disable-host-loopback)",
            "ipv6": False, "names": names, "on_violation": ctx.policy.network.on_violation,
            "slirp4netns": self.exe,
        }
        return self

    def start(self, ctx: RunContext, pid: int) -> RemoteNft:
        """from_parent: the egress filter first, then slirp4netns; returns the filter's handle."""
        from .net_nft import jail_ruleset, verify_jail_filter
        t0 = time.monotonic()
        try:
            self.userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            self.netns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SetupError.from_oserror("supervisor", "open the jail's namespaces", e,
                                          path=f"/proc/{pid}/ns") from None
        try:
            self.nft = RemoteNft(self.userns_fd, self.netns_fd)
            self.nft.run(jail_ruleset(self.dests))
            verify_jail_filter(self.nft)   # type: ignore[arg-type]
        except NftError as e:
            raise SetupError("supervisor", "install the egress filter in the jail's network namespace",
                             str(e), fix="see `hivejail doctor` (network)") from None
        t1 = time.monotonic()
        self.slirp = Slirp(self.exe, self.net, self.dns,
                           [d.port for d in self.dests if d.proto == "tcp" and d.version == 4])
        self.slirp.start(self.userns_fd, self.netns_fd)
        t2 = time.monotonic()
        self.timing = {"filter_ms": round((t1 - t0) * 1000, 2), "slirp4netns_ms": round((t2 - t1) * 1000, 2)}
        net = ctx.layers.get("network")
        if isinstance(net, dict):
            net["setup_ms"] = self.timing
            net["slirp4netns_confinement"] = self.slirp.confinement
        return self.nft

    def poll(self, ctx: RunContext) -> None:
        """slirp4netns must live as long as the run (else the jail silently loses its network)."""
        if self.slirp is not None and self.slirp.pid is not None and not self.slirp.alive():
            ctx.alert("network_helper_died", "high",
                      detail=f"slirp4netns ended during the run: {self.slirp.output() or 'no output'}")
            self.slirp.pid = None

    def finish(self) -> None:
        """The payload has ended (the counters live in the helper): let slirp4netns go."""
        if self.slirp is not None:
            self.slirp.hang_up()

    def cleanup(self) -> list[str]:
        errors: list[str] = []
        if self.slirp is not None:
            try:
                self.slirp.stop()
            except OSError as e:
                errors.append(f"stop slirp4netns: {e}")
            self.slirp = None
        if self.nft is not None:
            try:
                self.nft.close()
            except OSError as e:
                errors.append(f"stop the filter helper: {e}")
            self.nft = None
        for name in ("userns_fd", "netns_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        return errors


def describe(for_others: bool = False) -> dict[str, Any]:
    """The rootless half of doctor's network report (for_others: root asks for its users)."""
    exe = slirp4netns_path()
    found = problems(for_others)
    return {
        "ok": not found,
        "helper": "slirp4netns" if exe else None,
        "slirp4netns_version": slirp4netns_version(exe) if exe else None,
        "dev_net_tun": {"mode": tun_mode(), "usable": tun_usable(for_others)},
        "detail": ("slirp4netns + nftables egress filter in the jail's netns (joined through its"
                   " user namespace)" if not found else "; ".join(p for p, _ in found)),
        "fix": "; ".join(dict.fromkeys(f for _, f in found)) or None,
    }
