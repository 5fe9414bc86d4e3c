"""The setup chain: one Step per concern, each with its place in the run.

In the spirit of nsjail's per-concern files, a run is an ordered list of
steps.  Each step may act at these points (all optional):

    prepare(ctx)            supervisor, before any fork        (may raise SetupError)
    in_intermediate(ctx)    intermediate child, before unshare (join cgroups…)
    from_parent(ctx, pid)   supervisor, after the child unshared its
                            namespaces: id maps, veth, nftables (pid = intermediate)
    in_init(ctx)            PID 1 of the jail, building the root, before pivot
    after_pivot(ctx)        PID 1, inside the new root
    in_payload(ctx)         the payload, just before execve; the seccomp step is last
    poll(ctx)               supervisor wait loop, every POLL_S seconds while running
    finish(ctx, result)     supervisor, after the payload ended: usage, alerts, status
    cleanup(ctx)            supervisor, always, in reverse order, even after errors

A step that cannot provide what the policy asks for raises SetupError: the run
is refused (fail closed) with one line saying what failed and how to fix it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .policy import Policy
    from .result import Result


@dataclass
class RunContext:
    """Everything a step needs to know about one run; steps keep their own state."""
    policy: "Policy"
    command: list[str]
    run_id: str
    cwd: str | None = None
    rootless: bool = field(default_factory=lambda: os.geteuid() != 0)
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    init_pid: int | None = None           # host pid of the jail's PID 1
    intermediate_pid: int | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    layers: dict[str, Any] = field(default_factory=dict)    # which protections were active
    terminate: Callable[[str, str], None] = lambda status, reason: None
    extra: dict[str, Any] = field(default_factory=dict)     # step-to-step facts (e.g. hosts)

    def alert(self, kind: str, severity: str, **detail: Any) -> None:
        self.alerts.append({"kind": kind, "severity": severity, **detail})


class Step:
    """Base class: every hook is a no-op unless a concern overrides it."""
    name = "step"

    def prepare(self, ctx: RunContext) -> None: ...
    def in_intermediate(self, ctx: RunContext) -> None: ...
    def from_parent(self, ctx: RunContext, pid: int) -> None: ...
    def in_init(self, ctx: RunContext) -> None: ...
    def after_pivot(self, ctx: RunContext) -> None: ...
    def in_payload(self, ctx: RunContext) -> None: ...
    def poll(self, ctx: RunContext) -> None: ...
    def inspect_exit(self, ctx: RunContext, pid: int, status: int) -> dict[str, Any] | None:
        """In init, before the payload is reaped (waitid WNOWAIT): facts for finish()."""
        return None
    def finish(self, ctx: RunContext, result: "Result") -> None: ...
    def cleanup(self, ctx: RunContext) -> None: ...
