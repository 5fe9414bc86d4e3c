"""User namespace: the id maps, written from the parent.

Root mode maps exactly the ids the jail uses, identically: inside 0 -> host 0
for the jail's own setup (PID 1 needs to read bind sources), and inside
run_as -> host run_as for the payload.  No other host id exists inside.

Rootless mode maps inside run_as -> the caller's own uid/gid (one line each,
which the kernel lets an unprivileged parent write after setgroups=deny), so
files the payload writes in rw mounts belong to the caller.  Subordinate id
ranges (/etc/subuid) are reported by `hivejail doctor` but not used: with
them the payload could not write to the caller's own output folders.
"""

from __future__ import annotations

import os

from .ipc import SetupError
from .steps import RunContext, Step


def subid_range(user: str, uid: int, path: str) -> tuple[int, int] | None:
    """First (start, count) range granted to user (by name or uid) in /etc/sub[ug]id."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (user, str(uid)):
                    return int(parts[1]), int(parts[2])
    except (OSError, ValueError):
        return None
    return None


class UserNamespace(Step):
    name = "userns"

    def prepare(self, ctx: RunContext) -> None:
        self.uid, self.gid = os.geteuid(), os.getegid()
        self.inner_uid, self.inner_gid = ctx.policy.run_as.uid, ctx.policy.run_as.gid
        ctx.layers["userns"] = "single-id" if ctx.rootless else "identity"

    def from_parent(self, ctx: RunContext, pid: int) -> None:
        try:
            if not ctx.rootless:
                self._write(pid, "uid_map", _identity_map(self.inner_uid))
                self._write(pid, "gid_map", _identity_map(self.inner_gid))
            else:
                self._write(pid, "uid_map", f"{self.inner_uid} {self.uid} 1\n")
                self._write(pid, "setgroups", "deny")
                self._write(pid, "gid_map", f"{self.inner_gid} {self.gid} 1\n")
        except OSError as e:
            raise SetupError.from_oserror(
                "supervisor", "write id map", e, path=f"/proc/{pid}",
                fix="check that user namespaces are enabled (hivejail doctor)") from None

    def after_pivot(self, ctx: RunContext) -> None:
        """No nested user namespaces: with one, the payload would regain every
        capability there (and could then unshare net, mount, …).  The limit is
        per user namespace, so this changes nothing on the host."""
        try:
            with open("/proc/sys/user/max_user_namespaces", "w") as f:
                f.write("0")
        except OSError as e:
            raise SetupError.from_oserror("init", "disable nested user namespaces", e,
                                          path="/proc/sys/user/max_user_namespaces") from None

    @staticmethod
    def _write(pid: int, name: str, text: str) -> None:
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _identity_map(inner: int) -> str:
    if inner == 0:
        return "0 0 1\n"
    return f"0 0 1\n{inner} {inner} 1\n"
