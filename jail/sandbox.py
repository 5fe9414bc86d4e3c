"""The payload's last walls: Landlock, then seccomp (always last before execve)."""

from __future__ import annotations

from .policy import Policy
from .steps import Step


class NoSyscallFilter(Step):
    """seccomp.profile: none — an explicit, hashed opt-out; every result says so."""
    name = "seccomp"

    def prepare(self, ctx) -> None:
        ctx.layers["seccomp"] = "off (policy: profile none)"
        ctx.alert("seccomp_disabled", "warning",
                  detail="seccomp.profile is none: the payload runs without a syscall filter")


def sandbox_steps(policy: Policy) -> list[Step]:
    if policy.seccomp.profile == "none":
        return [NoSyscallFilter()]
    from .seccomp import Seccomp
    return [Seccomp()]
