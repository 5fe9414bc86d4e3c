"""security_policy.yml: a strict, versioned schema loaded with safe YAML.

The policy is read once, validated into frozen dataclasses, and hashed in
canonical form (RFC 8785 JSON of the effective policy, defaults included), so
the audit record names exactly what was enforced.  Every error names the
file, line, column and key path: ``p.yml:12:5: limits.memory: expected a
size like 256M, got 'lots'``.  Unknown keys are errors; so are duplicate keys.
Relative mount sources resolve against the policy file's folder.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .units import format_size, parse_duration, parse_size

POLICY_VERSION = 1
NOBODY = 65534


class PolicyError(ValueError):
    """A policy problem, already formatted as FILE:LINE:COL: PATH: MESSAGE."""


@dataclass(frozen=True)
class RunAs:
    uid: int = NOBODY
    gid: int = NOBODY


@dataclass(frozen=True)
class Mount:
    source: str          # absolute host path
    target: str          # absolute path inside the jail
    mode: str = "ro"     # ro | rw


@dataclass(frozen=True)
class Filesystem:
    root_size: int = 8 << 20
    tmp_size: int = 64 << 20
    workdir: str = "/job"
    mounts: tuple[Mount, ...] = ()
    symlinks: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class IOLimits:
    read_bps: int | None = None
    write_bps: int | None = None
    read_iops: int | None = None
    write_iops: int | None = None
    devices: tuple[str, ...] = ()    # host paths whose block devices are throttled


@dataclass(frozen=True)
class Limits:
    wall_time: float = 60.0
    cpu_time: float | None = 30.0
    cpus: float | None = 1.0
    memory: int | None = 512 << 20
    pids: int | None = 64
    open_files: int = 256
    file_size: int = 64 << 20
    io: IOLimits = IOLimits()
    require_cgroups: bool | None = None     # None: true for root, false rootless


@dataclass(frozen=True)
class Allow:
    host: str | None = None
    cidr: str | None = None
    ports: tuple[int, ...] = ()
    proto: str = "tcp"


@dataclass(frozen=True)
class Network:
    mode: str = "none"                       # none | allowlist
    allow: tuple[Allow, ...] = ()
    on_violation: str = "log"                # log | kill
    pool: str = "10.213.0.0/16"


@dataclass(frozen=True)
class SeccompDeny:
    syscall: str
    action: str = "errno"                    # errno | kill
    errno: str = "EPERM"


@dataclass(frozen=True)
class Seccomp:
    profile: str = "default"                 # default | strict | none (no filter: warned)
    on_violation: str = "kill"               # kill | errno | log
    allow: tuple[str, ...] = ()
    deny: tuple[SeccompDeny, ...] = ()


@dataclass(frozen=True)
class Landlock:
    mode: str = "auto"                       # auto | require | off


@dataclass(frozen=True)
class Environment:
    pass_: tuple[str, ...] = ("LANG", "LC_ALL", "TZ")
    set: tuple[tuple[str, str], ...] = (("PATH", "/usr/local/bin:/usr/bin:/bin"),
                                        ("HOME", "/tmp"))


@dataclass(frozen=True)
class Audit:
    dir: str | None = "/var/lib/hivejail/audit"
    required: bool = False
    min_free: int = 16 << 20
    lock_timeout: float = 10.0


@dataclass(frozen=True)
class Policy:
    version: int = POLICY_VERSION
    name: str = "default"
    run_as: RunAs = RunAs()
    filesystem: Filesystem = Filesystem()
    limits: Limits = Limits()
    network: Network = Network()
    seccomp: Seccomp = Seccomp()
    landlock: Landlock = Landlock()
    environment: Environment = Environment()
    audit: Audit = Audit()
    origin: str = field(default="<built-in>", compare=False)

    def canonical(self) -> dict[str, Any]:
        """The effective policy as plain JSON-able data (the hashed form)."""
        def conv(v: Any) -> Any:
            if dataclasses.is_dataclass(v):
                return {f.name.rstrip("_"): conv(getattr(v, f.name))
                        for f in dataclasses.fields(v) if f.compare}
            if isinstance(v, tuple):
                if v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)
                             for x in v):
                    return {k: conv(x) for k, x in v}
                return [conv(x) for x in v]
            if isinstance(v, float) and v.is_integer():
                return int(v)
            return v
        return conv(self)

    @functools.cached_property
    def sha256(self) -> str:
        """Computed once per policy object (frozen, so it cannot go stale)."""
        return policy_sha256(self)


def policy_sha256(policy: Policy) -> str:
    import rfc8785
    return hashlib.sha256(rfc8785.dumps(policy.canonical())).hexdigest()


# Merged-/usr hosts (Debian 12): /bin, /lib, /lib64, /sbin are links into /usr.
_USR_LINKS = (("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"),
              ("/sbin", "usr/sbin"))


def default_policy() -> Policy:
    """No network, /usr read-only (python3, node, bash, jq run), modest limits."""
    mounts = [Mount("/usr", "/usr")]
    # ld.so.cache speeds library lookup; harmless to expose read-only.
    if os.path.exists("/etc/ld.so.cache"):
        mounts.append(Mount("/etc/ld.so.cache", "/etc/ld.so.cache"))
    links = tuple(link for link in _USR_LINKS if os.path.islink(link[0]))
    return Policy(filesystem=Filesystem(mounts=tuple(mounts), symlinks=links),
                  audit=Audit(dir=default_audit_dir()))


def default_audit_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/hivejail/audit"
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "hivejail", "audit")


# --------------------------------------------------------------------------
# Loading: YAML nodes keep their marks so every error can point at the text.

class _Doc:
    """Plain data converted from YAML nodes, with the mark of every key path."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.marks: dict[str, tuple[int, int]] = {}
        self.key_marks: dict[str, tuple[int, int]] = {}

    def error(self, path: str, message: str, at_key: bool = False) -> PolicyError:
        line, col = self.key_marks[path] if at_key and path in self.key_marks \
            else self._nearest_mark(path)
        where = path or "(top level)"
        return PolicyError(f"{self.filename}:{line}:{col}: {where}: {message}")

    def _nearest_mark(self, path: str) -> tuple[int, int]:
        while path not in self.marks and path:
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.marks.get(path, (1, 1))

    def convert(self, node: Any, path: str) -> Any:
        import yaml
        self.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.convert(key_node, path + ".?")
                if not isinstance(key, str):
                    raise PolicyError(f"{self.filename}:{key_node.start_mark.line + 1}:"
                                      f"{key_node.start_mark.column + 1}: {path or '(top level)'}:"
                                      f" keys must be strings, got {key!r}")
                sub = f"{path}.{key}" if path else key
                if key in out:
                    self.marks[sub] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                    raise self.error(sub, "duplicate key")
                self.marks[sub] = (value_node.start_mark.line + 1, value_node.start_mark.column + 1)
                self.key_marks[sub] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.convert(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        loader = yaml.SafeLoader("")
        return loader.construct_object(node, deep=True)


class _Reader:
    """Typed accessors over one mapping; records keys read to reject unknown ones."""

    def __init__(self, doc: _Doc, data: Any, path: str) -> None:
        self.doc, self.path = doc, path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise doc.error(path, f"expected a mapping, got {_kind(data)}")
        self.data = data
        self.seen: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any, conv: Callable[[Any, str], Any]) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return default
        return conv(self.data[key], self.sub(key))

    def done(self) -> None:
        for key in self.data:
            if key not in self.seen:
                known = ", ".join(sorted(self.seen))
                raise self.doc.error(self.sub(key), f"unknown key (known here: {known})",
                                     at_key=True)


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "nothing"}.get(type(v), type(v).__name__)


def load_policy(path: str) -> Policy:
    """Load and validate a policy file; raises PolicyError with file:line:col."""
    import yaml
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            text = f.read()
    except OSError as e:
        raise PolicyError(f"{filename}:1:1: (file): cannot read: {e.strerror}") from None
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        node = yaml.compose(text, Loader=loader_cls)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise PolicyError(f"{filename}:{line}:{col}: (yaml): {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise PolicyError(f"{filename}:1:1: (yaml): {e}") from None
    doc = _Doc(filename)
    if node is None:
        raise doc.error("", "the policy file is empty")
    try:
        data = doc.convert(node, "")
    except yaml.YAMLError as e:
        raise PolicyError(f"{filename}:1:1: (yaml): {e}") from None
    return _build(doc, data, os.path.dirname(os.path.abspath(filename)))


def parse_policy_text(text: str, filename: str = "<string>", base_dir: str = ".") -> Policy:
    """Like load_policy, from a string (tests, API callers)."""
    import yaml
    doc = _Doc(filename)
    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise PolicyError(f"{filename}:{line}:{col}: (yaml): {e.problem or e.context}") from None
    if node is None:
        raise doc.error("", "the policy is empty")
    return _build(doc, doc.convert(node, ""), os.path.abspath(base_dir))


# ---- converters -----------------------------------------------------------

def _build(doc: _Doc, data: Any, base_dir: str) -> Policy:
    top = _Reader(doc, data, "")
    if "version" not in top.data:
        raise doc.error("version", f"missing; this hivejail reads policy version {POLICY_VERSION}")
    version = top.get("version", None, _int(doc))
    if version != POLICY_VERSION:
        raise doc.error("version", f"unsupported policy version {version} "
                                   f"(this hivejail reads version {POLICY_VERSION})")
    defaults = default_policy()
    name = top.get("name", "unnamed", _str(doc))
    run_as = top.get("run_as", RunAs(), lambda v, p: _run_as(doc, v, p))
    fs = top.get("filesystem", defaults.filesystem, lambda v, p: _filesystem(doc, v, p, base_dir))
    limits = top.get("limits", Limits(), lambda v, p: _limits(doc, v, p, base_dir))
    network = top.get("network", Network(), lambda v, p: _network(doc, v, p))
    seccomp = top.get("seccomp", Seccomp(), lambda v, p: _seccomp(doc, v, p))
    landlock = top.get("landlock", Landlock(), lambda v, p: _landlock(doc, v, p))
    env = top.get("environment", Environment(), lambda v, p: _environment(doc, v, p))
    audit = top.get("audit", defaults.audit, lambda v, p: _audit(doc, v, p, base_dir))
    top.done()
    return Policy(version=version, name=name, run_as=run_as, filesystem=fs, limits=limits,
                  network=network, seccomp=seccomp, landlock=landlock, environment=env,
                  audit=audit, origin=doc.filename)


def _str(doc: _Doc) -> Callable[[Any, str], str]:
    def conv(v: Any, p: str) -> str:
        if not isinstance(v, str) or not v:
            raise doc.error(p, f"expected a non-empty string, got {_kind(v)}")
        return v
    return conv


def _int(doc: _Doc, lo: int = 0, hi: int = 2**32 - 1) -> Callable[[Any, str], int]:
    def conv(v: Any, p: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise doc.error(p, f"expected an integer, got {_kind(v)} {v!r}")
        if not lo <= v <= hi:
            raise doc.error(p, f"expected an integer from {lo} to {hi}, got {v}")
        return v
    return conv


def _bool(doc: _Doc) -> Callable[[Any, str], bool]:
    def conv(v: Any, p: str) -> bool:
        if not isinstance(v, bool):
            raise doc.error(p, f"expected true or false, got {_kind(v)} {v!r}")
        return v
    return conv


def _choice(doc: _Doc, *choices: str) -> Callable[[Any, str], str]:
    def conv(v: Any, p: str) -> str:
        if v not in choices:
            raise doc.error(p, f"expected one of {', '.join(choices)}, got {v!r}")
        return v
    return conv


def _size(doc: _Doc, nullable: bool = False) -> Callable[[Any, str], int | None]:
    def conv(v: Any, p: str) -> int | None:
        if v is None and nullable:
            return None
        try:
            return parse_size(v)
        except ValueError as e:
            raise doc.error(p, str(e)) from None
    return conv


def _duration(doc: _Doc, nullable: bool = False) -> Callable[[Any, str], float | None]:
    def conv(v: Any, p: str) -> float | None:
        if v is None and nullable:
            return None
        try:
            d = parse_duration(v)
        except ValueError as e:
            raise doc.error(p, str(e)) from None
        if d <= 0:
            raise doc.error(p, f"expected a positive duration, got {v!r}")
        return d
    return conv


def _list(doc: _Doc, v: Any, p: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise doc.error(p, f"expected a list, got {_kind(v)}")
    return v


def _abs_path(doc: _Doc, v: Any, p: str) -> str:
    if not isinstance(v, str) or not v:
        raise doc.error(p, f"expected an absolute path, got {_kind(v)}")
    if not v.startswith("/"):
        raise doc.error(p, f"must be an absolute path inside the jail, got {v!r}")
    parts = v.split("/")
    if ".." in parts or "\0" in v:
        raise doc.error(p, f"must not contain '..' or NUL, got {v!r}")
    return os.path.normpath(v)


def _host_path(doc: _Doc, v: Any, p: str, base_dir: str) -> str:
    if not isinstance(v, str) or not v or "\0" in v:
        raise doc.error(p, f"expected a path, got {_kind(v)}")
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(v)))


def _run_as(doc: _Doc, v: Any, p: str) -> RunAs:
    r = _Reader(doc, v, p)
    out = RunAs(uid=r.get("uid", NOBODY, _int(doc)), gid=r.get("gid", NOBODY, _int(doc)))
    r.done()
    return out


_RESERVED_TARGETS = ("/proc", "/dev", "/tmp", "/etc/passwd", "/etc/group", "/etc/hosts",
                     "/etc/hostname")


def _filesystem(doc: _Doc, v: Any, p: str, base_dir: str) -> Filesystem:
    r = _Reader(doc, v, p)
    root_size = r.get("root_size", Filesystem.root_size, _size(doc))
    tmp_size = r.get("tmp_size", Filesystem.tmp_size, _size(doc))
    workdir = r.get("workdir", Filesystem.workdir, lambda x, q: _abs_path(doc, x, q))
    mounts = r.get("mounts", (), lambda x, q: tuple(
        _mount(doc, m, f"{q}[{i}]", base_dir) for i, m in enumerate(_list(doc, x, q))))
    symlinks = r.get("symlinks", (), lambda x, q: _symlinks(doc, x, q))
    r.done()
    seen: dict[str, int] = {}
    for i, m in enumerate(mounts):
        if m.target in seen:
            raise doc.error(f"{p}.mounts[{i}].target",
                            f"{m.target} is already the target of mounts[{seen[m.target]}]")
        seen[m.target] = i
    return Filesystem(root_size, tmp_size, workdir, mounts, symlinks)


def _mount(doc: _Doc, v: Any, p: str, base_dir: str) -> Mount:
    r = _Reader(doc, v, p)
    if "source" not in r.data:
        raise doc.error(p, "missing key 'source'")
    if "target" not in r.data:
        raise doc.error(p, "missing key 'target'")
    source = r.get("source", None, lambda x, q: _host_path(doc, x, q, base_dir))
    target = r.get("target", None, lambda x, q: _abs_path(doc, x, q))
    mode = r.get("mode", "ro", _choice(doc, "ro", "rw"))
    r.done()
    if target == "/":
        raise doc.error(f"{p}.target", "cannot mount over the jail's root")
    for reserved in _RESERVED_TARGETS:
        if target == reserved or target.startswith(reserved + "/") and reserved in ("/proc", "/dev"):
            raise doc.error(f"{p}.target", f"{target} is provided by the jail itself")
    if not os.path.lexists(source):
        raise doc.error(f"{p}.source", f"{source} does not exist on this host")
    return Mount(source, target, mode)


def _symlinks(doc: _Doc, v: Any, p: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict):
        raise doc.error(p, f"expected a mapping of link path to link target, got {_kind(v)}")
    out = []
    for link, target in v.items():
        path = _abs_path(doc, link, f"{p}.{link}")
        if not isinstance(target, str) or not target:
            raise doc.error(f"{p}.{link}", f"expected a link target string, got {_kind(target)}")
        out.append((path, target))
    return tuple(out)


def _limits(doc: _Doc, v: Any, p: str, base_dir: str) -> Limits:
    r = _Reader(doc, v, p)
    d = Limits()

    def cpus(x: Any, q: str) -> float | None:
        if x is None:
            return None
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.01 <= x <= 1024:
            raise doc.error(q, f"expected a number of CPUs from 0.01 up, got {x!r}")
        return float(x)

    out = Limits(
        wall_time=r.get("wall_time", d.wall_time, _duration(doc)),
        cpu_time=r.get("cpu_time", d.cpu_time, _duration(doc, nullable=True)),
        cpus=r.get("cpus", d.cpus, cpus),
        memory=r.get("memory", d.memory, _size(doc, nullable=True)),
        pids=r.get("pids", d.pids, lambda x, q: None if x is None else _int(doc, 1, 1 << 22)(x, q)),
        open_files=r.get("open_files", d.open_files, _int(doc, 4, 1 << 20)),
        file_size=r.get("file_size", d.file_size, _size(doc)),
        io=r.get("io", IOLimits(), lambda x, q: _io(doc, x, q, base_dir)),
        require_cgroups=r.get("require_cgroups", None,
                              lambda x, q: None if x is None else _bool(doc)(x, q)),
    )
    r.done()
    if out.memory is not None and out.memory < (4 << 20):
        raise doc.error(f"{p}.memory", f"{format_size(out.memory)} is too small to start anything"
                                       " (at least 4M)")
    return out


def _io(doc: _Doc, v: Any, p: str, base_dir: str) -> IOLimits:
    r = _Reader(doc, v, p)
    out = IOLimits(
        read_bps=r.get("read_bps", None, _size(doc, nullable=True)),
        write_bps=r.get("write_bps", None, _size(doc, nullable=True)),
        read_iops=r.get("read_iops", None, lambda x, q: None if x is None else _int(doc, 1)(x, q)),
        write_iops=r.get("write_iops", None, lambda x, q: None if x is None else _int(doc, 1)(x, q)),
        devices=r.get("devices", (), lambda x, q: tuple(
            _host_path(doc, d, f"{q}[{i}]", base_dir) for i, d in enumerate(_list(doc, x, q)))),
    )
    r.done()
    return out


def _network(doc: _Doc, v: Any, p: str) -> Network:
    r = _Reader(doc, v, p)
    mode = r.get("mode", "none", _choice(doc, "none", "allowlist"))
    allow = r.get("allow", (), lambda x, q: tuple(
        _allow(doc, a, f"{q}[{i}]") for i, a in enumerate(_list(doc, x, q))))
    on_violation = r.get("on_violation", "log", _choice(doc, "log", "kill"))

    def pool(x: Any, q: str) -> str:
        try:
            net = ipaddress.IPv4Network(x)
        except (ValueError, TypeError):
            raise doc.error(q, f"expected an IPv4 network like 10.213.0.0/16, got {x!r}") from None
        if net.prefixlen > 29:
            raise doc.error(q, "the pool must hold at least two /30 networks")
        return str(net)

    pool_ = r.get("pool", Network.pool, pool)
    r.done()
    if mode == "none" and allow:
        raise doc.error(f"{p}.allow", "entries are given but network.mode is 'none'; "
                                      "set mode: allowlist")
    return Network(mode, allow, on_violation, pool_)


def _allow(doc: _Doc, v: Any, p: str) -> Allow:
    r = _Reader(doc, v, p)
    host = r.get("host", None, _str(doc))
    cidr = r.get("cidr", None, _str(doc))
    if (host is None) == (cidr is None):
        raise doc.error(p, "give exactly one of 'host' or 'cidr'")
    if cidr is not None:
        try:
            cidr = str(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise doc.error(f"{p}.cidr", f"expected a network like 10.1.2.0/24, got {cidr!r}") from None
    ports = r.get("ports", (), lambda x, q: tuple(
        _int(doc, 1, 65535)(n, f"{q}[{i}]") for i, n in enumerate(_list(doc, x, q))))
    if not ports:
        raise doc.error(f"{p}.ports", "list at least one port")
    proto = r.get("proto", "tcp", _choice(doc, "tcp", "udp"))
    r.done()
    return Allow(host, cidr, ports, proto)


def _seccomp(doc: _Doc, v: Any, p: str) -> Seccomp:
    r = _Reader(doc, v, p)
    profile = r.get("profile", "default", _choice(doc, "default", "strict", "none"))
    on_violation = r.get("on_violation", "kill", _choice(doc, "kill", "errno", "log"))
    allow = r.get("allow", (), lambda x, q: tuple(
        _syscall_name(doc, s, f"{q}[{i}]") for i, s in enumerate(_list(doc, x, q))))
    deny = r.get("deny", (), lambda x, q: tuple(
        _deny(doc, d, f"{q}[{i}]") for i, d in enumerate(_list(doc, x, q))))
    r.done()
    if allow or deny:
        _check_syscall_names(doc, p, allow, deny)
    return Seccomp(profile, on_violation, allow, deny)


def _check_syscall_names(doc: _Doc, p: str, allow: tuple[str, ...],
                         deny: tuple[SeccompDeny, ...]) -> None:
    """Names must be known to libseccomp; escape classes can never be allowed."""
    from .seccomp import escape_classes, resolve_name
    escapes = escape_classes()
    for i, name in enumerate(allow):
        if name in escapes:
            raise doc.error(f"{p}.allow[{i}]", f"{name} belongs to the escape class "
                                               f"'{escapes[name]}', which no policy may allow")
        if resolve_name(name) < 0:
            raise doc.error(f"{p}.allow[{i}]", f"libseccomp knows no syscall named {name!r}")
    for i, d in enumerate(deny):
        if resolve_name(d.syscall) < 0:
            raise doc.error(f"{p}.deny[{i}]", f"libseccomp knows no syscall named {d.syscall!r}")


def _syscall_name(doc: _Doc, v: Any, p: str) -> str:
    if not isinstance(v, str) or not v.replace("_", "").isalnum():
        raise doc.error(p, f"expected a syscall name, got {v!r}")
    return v


def _deny(doc: _Doc, v: Any, p: str) -> SeccompDeny:
    if isinstance(v, str):
        return SeccompDeny(_syscall_name(doc, v, p))
    r = _Reader(doc, v, p)
    if "syscall" not in r.data:
        raise doc.error(p, "missing key 'syscall'")
    name = r.get("syscall", None, lambda x, q: _syscall_name(doc, x, q))
    action = r.get("action", "errno", _choice(doc, "errno", "kill"))

    def errno_name(x: Any, q: str) -> str:
        import errno
        if not isinstance(x, str) or not hasattr(errno, x):
            raise doc.error(q, f"expected an errno name like EPERM, got {x!r}")
        return x

    err = r.get("errno", "EPERM", errno_name)
    r.done()
    return SeccompDeny(name, action, err)


def _landlock(doc: _Doc, v: Any, p: str) -> Landlock:
    if v is False:                       # YAML 1.1 reads `off` as false
        return Landlock("off")
    if v is True:
        raise doc.error(p, "ambiguous: write auto or require")
    if isinstance(v, str):
        return Landlock(_choice(doc, "auto", "require", "off")(v, p))
    r = _Reader(doc, v, p)
    out = Landlock(r.get("mode", "auto", _choice(doc, "auto", "require", "off")))
    r.done()
    return out


def _environment(doc: _Doc, v: Any, p: str) -> Environment:
    r = _Reader(doc, v, p)

    def names(x: Any, q: str) -> tuple[str, ...]:
        out = []
        for i, n in enumerate(_list(doc, x, q)):
            if not isinstance(n, str) or not n or "=" in n or "\0" in n:
                raise doc.error(f"{q}[{i}]", f"expected a variable name, got {n!r}")
            out.append(n)
        return tuple(out)

    def pairs(x: Any, q: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(x, dict):
            raise doc.error(q, f"expected a mapping of NAME: value, got {_kind(x)}")
        out = []
        for k, val in x.items():
            if "=" in k or "\0" in k or not k:
                raise doc.error(f"{q}.{k}", "not a valid variable name")
            if isinstance(val, bool) or not isinstance(val, (str, int, float)):
                raise doc.error(f"{q}.{k}", f"expected a string value, got {_kind(val)}")
            out.append((k, str(val)))
        return tuple(out)

    out = Environment(pass_=r.get("pass", Environment.pass_, names),
                      set=r.get("set", Environment.set, pairs))
    r.done()
    return out


def _audit(doc: _Doc, v: Any, p: str, base_dir: str) -> Audit:
    r = _Reader(doc, v, p)
    d = Audit(dir=default_audit_dir())
    out = Audit(
        dir=r.get("dir", d.dir, lambda x, q: None if x is None else _host_path(doc, x, q, base_dir)),
        required=r.get("required", d.required, _bool(doc)),
        min_free=r.get("min_free", d.min_free, _size(doc)),
        lock_timeout=r.get("lock_timeout", d.lock_timeout, _duration(doc)),
    )
    r.done()
    if out.required and out.dir is None:
        raise doc.error(f"{p}.dir", "audit.required is true but no audit dir is set")
    return out


def show(policy: Policy) -> str:
    """The effective policy and its hash, as JSON for `hivejail policy show`."""
    return json.dumps({"policy_sha256": policy.sha256, "origin": policy.origin,
                       "policy": policy.canonical()}, indent=2)
