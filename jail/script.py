"""Which file a run executes, and its SHA-256 (the audit record's script_sha256).

For ``python3 /job/tally.py`` the script is /job/tally.py, not python3: the
first argument after the interpreter that names a regular file in one of the
policy's mounts.  Otherwise the command itself.  Jail paths are translated to
host paths through the policy's mount table (the longest matching target).
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Sequence

from .policy import Policy


def host_path(policy: Policy, jail_path: str) -> str | None:
    """The host path behind ``jail_path``, if a policy mount provides it."""
    jail_path = os.path.normpath(jail_path)
    best = None
    for m in policy.filesystem.mounts:
        if jail_path == m.target or jail_path.startswith(m.target.rstrip("/") + "/"):
            if best is None or len(m.target) > len(best.target):
                best = m
    if best is None:
        return None
    rest = os.path.relpath(jail_path, best.target)
    return best.source if rest == "." else os.path.join(best.source, rest)


def _candidates(policy: Policy, command: Sequence[str], cwd: str | None) -> list[str]:
    base = cwd or policy.filesystem.workdir
    out = []
    for arg in list(command[1:]) + [command[0]]:
        if not arg or arg.startswith("-"):
            continue
        if arg is command[0] and "/" not in arg:
            env_path = dict(policy.environment.set).get("PATH", "/usr/bin:/bin")
            out.extend(os.path.join(d, arg) for d in env_path.split(":") if d)
            continue
        out.append(arg if arg.startswith("/") else os.path.join(base, arg))
    return out


def script_sha256(policy: Policy, command: Sequence[str], cwd: str | None = None) -> str | None:
    for jail_path in _candidates(policy, command, cwd):
        path = host_path(policy, jail_path)
        if path is None:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            h = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                h.update(chunk)
            return h.hexdigest()
        finally:
            os.close(fd)
    return None
