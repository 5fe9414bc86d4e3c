"""The result record of one run (field names fixed by DESIGN.md).

Status follows "first reason wins": the supervisor's own terminations
(timeout, cpu_limit, network_violation) are recorded the moment they happen
and cannot be overwritten; steps may then explain a plain ``signaled`` or
``nonzero_exit`` more precisely (memory_limit, pids_limit,
seccomp_violation) through ``explain``.
"""

from __future__ import annotations

import json
import signal as _signal
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("ok", "nonzero_exit", "signaled", "timeout", "cpu_limit", "memory_limit",
            "pids_limit", "seccomp_violation", "network_violation", "setup_error")

EXIT_SETUP = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


@dataclass
class Result:
    status: str = "setup_error"
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    wall_s: float = 0.0
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    memory_peak_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    pids_peak: int | None = None
    seccomp: dict[str, Any] | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    script_sha256: str | None = None
    policy_sha256: str = ""
    id: str = ""
    started_at: str = ""
    layers: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] | None = None
    _fixed: bool = field(default=False, repr=False, compare=False)

    def fix(self, status: str, reason: str) -> None:
        """Record a supervisor-decided outcome; the first one wins."""
        if not self._fixed:
            self.status, self.reason, self._fixed = status, reason, True

    def explain(self, status: str, reason: str) -> None:
        """Refine a plain signaled/nonzero_exit into a more specific cause."""
        if not self._fixed and self.status in ("signaled", "nonzero_exit"):
            self.status, self.reason, self._fixed = status, reason, True

    def set_exit(self, wait_status: int) -> None:
        """Fill exit_code/signal/status from a waitpid status of the payload."""
        import os
        if os.WIFSIGNALED(wait_status):
            sig = os.WTERMSIG(wait_status)
            self.signal, self.exit_code = sig, 128 + sig
            if not self._fixed:
                self.status = "signaled"
                self.reason = f"the payload was killed by signal {sig} ({signal_name(sig)})"
        else:
            code = os.WEXITSTATUS(wait_status)
            self.exit_code = code
            if not self._fixed:
                self.status = "ok" if code == 0 else "nonzero_exit"
                self.reason = ("the payload exited with code 0" if code == 0
                               else f"the payload exited with code {code}")

    @property
    def cli_exit_code(self) -> int:
        if self.exit_code is not None:
            return self.exit_code
        return EXIT_SETUP

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_fixed", None)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def signal_name(sig: int) -> str:
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
