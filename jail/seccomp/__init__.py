"""seccomp: the payload's last wall, loaded right before execve.

Only the payload runs under the filter; the supervisor, the jail's PID 1 and
the audit writer never do.

    supervisor  prepare       profile + policy -> filter, compiled once by
                              libseccomp (pyseccomp) to BPF bytes (cached);
                              a socketpair for the listener fd
                from_parent   starts the listener thread (no fork follows)
    payload     in_payload    seccomp(SET_MODE_FILTER, NEW_LISTENER): the BPF
                              bytes are inherited from the supervisor, so this
                              is one syscall; the listener fd goes to the
                              supervisor over SCM_RIGHTS, then closes here
    supervisor  listener      every refused call arrives as a user
                              notification (arch, nr, args, pid): it decides,
                              counts, answers
                poll/finish   kill mode ends the run; result.seccomp, alerts

The filter: allowed calls return ALLOW inside the kernel (unconditional ones
hit the kernel's per-filter action cache, so they cost almost nothing);
clone3 returns ENOSYS (libc falls back to clone, whose flags are checked);
everything else -- unlisted calls, escape classes, refused argument variants,
and every call from another ABI (x32, i386) -- is sent to the listener, which
knows the name from libseccomp's resolver and acts per ``on_violation``:

    kill   the calling process is SIGKILLed at once, the run is ended as
           seccomp_violation, result.seccomp = {syscall, nr, args}
    errno  escape classes answer EPERM, unlisted calls ENOSYS (libc treats
           them as absent); each name is counted into an alert
    log    escape classes answer EPERM; unlisted calls run
           (SECCOMP_USER_NOTIF_FLAG_CONTINUE) and are counted

A policy ``deny`` entry answers its own errno (counted) or kills.  If the
listener cannot run, refused calls fail with ENOSYS (the kernel's answer
when no listener exists): the filter fails closed.

Learning mode (``ctx.extra["seccomp_learn"] = FILE``): every call but a
handful the jail itself needs goes to the listener, which lets it run and
counts it; escape classes are still refused.  At the end FILE receives a
policy fragment: ``profile: strict`` plus the calls the run used beyond it.

Hosts without user notification (kernel < 5.5 or libseccomp < 2.5) get a
plain filter: the kernel kills (KILL_PROCESS) or answers EPERM by itself, log
mode acts as errno (RET_LOG would let refused argument variants run), and
nothing is counted.  PID 1 reads /proc/PID/syscall of a SIGSYS-killed payload
before reaping it (``inspect_exit``, nsjail's way); kernels that free a dead
task's stack show -1 there, and the reason points to the kernel audit log.

Compiled filters are cached in this process and on disk (``build._DiskCache``),
so a one-shot ``hivejail exec`` does not pay for libseccomp (~6 ms).

The modules, one concern each:

    libseccomp  ctypes binding: syscall names <-> numbers, host support, doctor
    profiles    jail/profiles/*.txt parsed: allowlists, conditions, escape classes
    plan        profile + policy -> Plan, which also decides each notified call
    build       Plan -> FilterSpec -> BPF bytes (process and disk caches), loading
    notify      the listener thread and the Event it counts
    learn       learning mode's policy fragment
    step        the Seccomp Step, which ties them together

Only the names other code uses are reachable here, and lazily, so each
caller pays for what it uses: the policy check loads ``profiles``, doctor
``libseccomp``, a run the step and what it needs; ``learn`` loads only when
learning, pyseccomp only when a filter must really be compiled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .build import RET_ALLOW, LoadedProgram, _bpf_cache, _DiskCache, compile_bpf, filter_spec
    from .learn import learned_fragment
    from .libseccomp import AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, describe, describe_call, resolve_name
    from .notify import Event, Listener
    from .plan import make_plan
    from .profiles import BOOTSTRAP, PROFILES, Cond, escape_classes, load_profile
    from .step import Seccomp

_LAZY = {
    "Seccomp": "step",
    "escape_classes": "profiles", "load_profile": "profiles", "Cond": "profiles",
    "BOOTSTRAP": "profiles", "PROFILES": "profiles",
    "resolve_name": "libseccomp", "describe_call": "libseccomp", "describe": "libseccomp",
    "AUDIT_ARCH_X86_64": "libseccomp", "AUDIT_ARCH_I386": "libseccomp",
    "make_plan": "plan",
    "filter_spec": "build", "compile_bpf": "build", "LoadedProgram": "build", "RET_ALLOW": "build",
    "_bpf_cache": "build", "_DiskCache": "build",          # tests/test_seccomp.py checks the caches
    "Event": "notify", "Listener": "notify",
    "learned_fragment": "learn",
}

__all__ = [name for name in _LAZY if not name.startswith("_")]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
