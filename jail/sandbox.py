"""The payload's last walls: Landlock, then seccomp (always last before execve)."""

from __future__ import annotations

from .policy import Policy
from .steps import Step


def sandbox_steps(policy: Policy) -> list[Step]:
    return []
