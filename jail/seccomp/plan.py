"""One run's seccomp plan: the profile and the policy's allow/deny, resolved.

The same Plan feeds both halves of the layer: ``build.filter_spec`` turns it
into the filter the kernel runs, and the listener asks ``Plan.decide`` about
every call the filter sends it.  A policy the jail refuses (an escape class
under ``allow``, a name libseccomp does not know, a ``deny`` of a call the
jail needs to start the payload) fails here, as ValueError, before anything
is forked.
"""

from __future__ import annotations

import errno as _errno
from typing import Any

from .libseccomp import notify_supported, resolve_name
from .profiles import BOOTSTRAP, Cond, Profile, escape_classes, load_profile


class Plan:
    """The resolved filter and the listener's decision table for one run."""

    def __init__(self, profile: Profile, mode: str, allow: dict[str, list[Cond] | None],
                 denies: dict[str, tuple[str, int]], escapes: dict[str, str], notify: bool) -> None:
        self.profile = profile
        self.mode = mode                   # kill | errno | log | learn
        self.allow = allow
        self.denies = denies               # policy deny: name -> (kill|errno, errno)
        self.escapes = escapes
        self.notify = notify

    def decide(self, name: str, abi: str | None, args: list[int]) -> tuple[str, str, int]:
        """(category, action, errno) for a call that reached the listener.

        category: abi | policy | escape | variant (refused arguments of an allowed call) |
                  unlisted | used (learning: allowed, ran)
        action:   kill | errno | continue
        """
        if abi is not None:
            return ("abi", "kill", 0) if self.mode == "kill" else ("abi", "errno", _errno.ENOSYS)
        if name in self.denies:
            action, err = self.denies[name]
            return "policy", action, err
        conds = self.allow.get(name, False)
        if self.mode == "learn":
            if name in self.escapes and not (conds and any(c.holds(args) for c in conds)):
                return "escape", "errno", _errno.EPERM
            return "used", "continue", 0
        if name in self.escapes or conds:      # escape class, or a refused argument variant
            cat = "escape" if name in self.escapes else "variant"
            return (cat, "kill", 0) if self.mode == "kill" else (cat, "errno", _errno.EPERM)
        if self.mode == "kill":
            return "unlisted", "kill", 0
        if self.mode == "errno":
            return "unlisted", "errno", _errno.ENOSYS
        return "unlisted", "continue", 0


def make_plan(policy_seccomp: Any, learn: bool = False, notify: bool | None = None) -> Plan:
    """Profile + policy allow/deny -> Plan; raises ValueError for a policy the jail refuses."""
    prof = load_profile(policy_seccomp.profile)
    escapes = escape_classes()
    allow: dict[str, list[Cond] | None] = {k: (list(v) if v is not None else None)
                                           for k, v in prof.rules.items()}
    for name in policy_seccomp.allow:
        if resolve_name(name) < 0:
            raise ValueError(f"seccomp.allow: libseccomp does not know syscall {name!r}")
        if name in escapes:
            raise ValueError(f"seccomp.allow: {name} is an escape class ({escapes[name]}) "
                             "and is never allowed")
        allow[name] = None
    denies: dict[str, tuple[str, int]] = {}
    for d in policy_seccomp.deny:
        if resolve_name(d.syscall) < 0:
            raise ValueError(f"seccomp.deny: libseccomp does not know syscall {d.syscall!r}")
        if d.syscall in BOOTSTRAP:
            raise ValueError(f"seccomp.deny: {d.syscall} is needed by the jail to start the payload")
        allow.pop(d.syscall, None)
        denies[d.syscall] = (d.action, getattr(_errno, d.errno, _errno.EPERM))
    mode = "learn" if learn else policy_seccomp.on_violation
    if notify is None:
        notify = notify_supported()
    return Plan(prof, mode, allow, denies, escapes, notify)
