"""Resource limits step: the run's cgroup (placeholder until the cgroups driver lands)."""

from __future__ import annotations

from .steps import RunContext, Step


class CgroupLimits(Step):
    name = "cgroups"

    def prepare(self, ctx: RunContext) -> None:
        ctx.layers["cgroups"] = None
