"""The payload's last walls: Landlock, then seccomp (always last before execve).

Both run in the payload after the Privileges step (ids, caps, no_new_privs):
Landlock limits paths and TCP ports to the policy's view (jail/landlock.py),
then the seccomp filter is loaded as the very last step (jail/seccomp/).
"""

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
    from .landlock import Landlock
    if policy.seccomp.profile == "none":
        return [Landlock(), NoSyscallFilter()]
    from .seccomp import Seccomp
    return [Landlock(), Seccomp()]
