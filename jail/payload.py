"""The payload's last steps before execve: session, rlimits, fds, ids, caps.

Runs in the payload process inside the new root.  Order matters:
setsid (no controlling terminal, so TIOCSTI cannot reach the host's tty),
rlimits, mark every fd >= 3 close-on-exec (nothing leaks into the payload,
while the exec-error channel still works until exec), drop the capability
bounding set (needs CAP_SETPCAP, so before changing ids), set groups and
ids, clear ambient and all remaining capabilities, no_new_privs.  The
Landlock and seccomp steps follow; seccomp is last.
"""

from __future__ import annotations

import math
import os
import resource
import stat

from . import libc
from .ipc import SetupError
from .steps import RunContext, Step

CLOSE_RANGE_CLOEXEC = 4


def build_environment(ctx: RunContext, host_env: dict[str, str]) -> dict[str, str]:
    """Only what the policy passes or sets; nothing else of the caller's environment."""
    env = {k: host_env[k] for k in ctx.policy.environment.pass_ if k in host_env}
    env.update(dict(ctx.policy.environment.set))
    return env


def resolve_command(cmd: str, env: dict[str, str]) -> str:
    """execvp-style lookup inside the jail; raises OSError(ENOENT/EACCES)."""
    if "/" in cmd:
        return cmd
    denied = None
    for d in env.get("PATH", "/usr/bin:/bin").split(":"):
        candidate = os.path.join(d or ".", cmd)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
        denied = candidate
    if denied:
        raise PermissionError(13, "Permission denied", denied)
    raise FileNotFoundError(2, "No such file or directory", cmd)


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


class Privileges(Step):
    name = "privileges"

    def prepare(self, ctx: RunContext) -> None:
        ctx.extra["env"] = build_environment(ctx, dict(os.environ))
        ctx.layers["no_new_privs"] = True
        ctx.layers["capabilities"] = "none (bounding, ambient, effective, permitted cleared)"

    def in_payload(self, ctx: RunContext) -> None:
        p = ctx.policy
        os.setsid()
        lim = p.limits
        rlimits = [(resource.RLIMIT_NOFILE, lim.open_files), (resource.RLIMIT_FSIZE, lim.file_size),
                   (resource.RLIMIT_CORE, 0)]
        if lim.cpu_time is not None:
            # Per process backstop; the cgroup step enforces the whole tree's CPU time.
            rlimits.append((resource.RLIMIT_CPU, math.ceil(lim.cpu_time) + 1))
        for res, value in rlimits:
            try:
                resource.setrlimit(res, (value, value))
            except (OSError, ValueError) as e:
                raise SetupError("payload", "setrlimit", str(e), path=str(res)) from None
        _cloexec_all()
        cwd = ctx.cwd or p.filesystem.workdir
        try:
            os.chdir(cwd)
        except OSError as e:
            raise SetupError.from_oserror("payload", "chdir", e, path=cwd) from None
        try:
            for cap in range(_last_cap() + 1):
                libc.prctl(libc.PR_CAPBSET_DROP, cap)
            if not ctx.rootless:
                os.setgroups([])
            os.setresgid(p.run_as.gid, p.run_as.gid, p.run_as.gid)
            os.setresuid(p.run_as.uid, p.run_as.uid, p.run_as.uid)
            libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
            libc.capset_zero()
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        except OSError as e:
            raise SetupError.from_oserror("payload", "drop privileges", e) from None
        env = ctx.extra["env"]
        try:
            ctx.extra["exec_path"] = resolve_command(ctx.command[0], env)
        except OSError as e:
            raise SetupError.from_oserror("payload", "execve", e, path=ctx.command[0]) from None


def _cloexec_all() -> None:
    """Every fd >= 3 closes at execve; none leak into the payload."""
    import ctypes
    try:
        ret = libc._libc.close_range(ctypes.c_uint(3), ctypes.c_uint(0xFFFFFFFF),
                                     ctypes.c_int(CLOSE_RANGE_CLOEXEC))
        if ret == 0:
            return
    except AttributeError:
        pass
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= 3:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
