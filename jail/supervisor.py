"""The supervisor: runs the setup chain, waits, decides the outcome, cleans up.

It never runs untrusted code and never loads the payload's filter on itself.
No sys.exit here: the CLI turns the returned Result into an exit code.
"""

from __future__ import annotations

import datetime
import os
import select
import signal
import time
import uuid
from typing import Any, Callable, Sequence

from . import ipc, libc, stages
from .ipc import SetupError, UnexpectedMessage
from .policy import Policy
from .result import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_SETUP, Result
from .steps import RunContext, Step

POLL_S = 0.05


def default_steps(policy: Policy) -> list[Step]:
    """The ordered setup chain for a policy (imports stay lazy and cheap)."""
    from .limits import CgroupLimits
    from .mounts import Mounts
    from .net import network_step
    from .payload import Privileges
    from .sandbox import sandbox_steps
    from .userns import UserNamespace
    return [UserNamespace(), CgroupLimits(), network_step(policy), Mounts(), Privileges(),
            *sandbox_steps(policy)]


class Jail:
    """Run one command under a policy.  ``Jail(policy).run(["python3", "x.py"])``."""

    def __init__(self, policy: Policy, steps: Sequence[Step] | None = None,
                 options: dict[str, Any] | None = None) -> None:
        """``options`` are run-time switches from the CLI (e.g. seccomp_learn: path)."""
        self.policy = policy
        self._steps = steps
        self.options = dict(options or {})

    def run(self, command: Sequence[str], cwd: str | None = None,
            on_started: Callable[[RunContext], None] | None = None) -> Result:
        if not command:
            raise ValueError("an empty command")
        ctx = RunContext(policy=self.policy, command=list(command), cwd=cwd,
                         run_id=str(uuid.uuid4()))
        ctx.extra.update(self.options)
        result = Result(command=list(command), policy_sha256=self.policy.sha256, id=ctx.run_id,
                        started_at=datetime.datetime.fromtimestamp(ctx.started_at, datetime.UTC)
                        .isoformat(timespec="microseconds").replace("+00:00", "Z"))
        from .script import script_sha256
        result.script_sha256 = script_sha256(self.policy, command, cwd)
        steps = list(self._steps) if self._steps is not None else default_steps(self.policy)
        prepared: list[Step] = []
        run = _Run(ctx, steps, result)
        ctx.terminate = run.terminate
        try:
            for step in steps:
                prepared.append(step)
                step.prepare(ctx)
            run.start()
            if on_started:
                on_started(ctx)
            run.wait()
            for step in steps:
                step.finish(ctx, result)
        except SetupError as e:
            run.kill()
            result.status, result.reason, result.exit_code = "setup_error", str(e), EXIT_SETUP
            if e.stage == "payload" and e.op == "execve":
                result.exit_code = EXIT_NOT_FOUND if e.errno == 2 else EXIT_NOT_EXECUTABLE
                what = "not found" if e.errno == 2 else "not executable"
                result.reason = f"command {e.path or command[0]} {what} inside the jail: {e.message}"
        except UnexpectedMessage as e:
            run.kill()
            result.status, result.exit_code = "setup_error", EXIT_SETUP
            result.reason = f"a jail stage ended unexpectedly during setup ({e})"
        finally:
            run.restore_signals()
            run.kill()
            run.reap()
            for step in reversed(prepared):
                try:
                    step.cleanup(ctx)
                except Exception as e:  # noqa: BLE001 - report, keep cleaning
                    ctx.alert("cleanup_failed", "warning", step=step.name, detail=str(e))
        result.wall_s = round(time.monotonic() - ctx.started_mono, 6)
        if run.rusage is not None and not result.cpu_user_s and not result.cpu_sys_s:
            result.cpu_user_s = round(run.rusage.ru_utime, 6)
            result.cpu_sys_s = round(run.rusage.ru_stime, 6)
        result.alerts = ctx.alerts
        result.layers = ctx.layers
        return result


class _Run:
    """One run's processes and wait loop."""

    def __init__(self, ctx: RunContext, steps: list[Step], result: Result) -> None:
        self.ctx, self.steps, self.result = ctx, steps, result
        self.sock = None
        self.exited = False
        self.killed = False
        self.rusage: Any = None
        self._old_handlers: dict[int, Any] = {}
        self._pending_signals: list[int] = []

    def start(self) -> None:
        ctx = self.ctx
        self._forward_signals()     # from the start: a SIGTERM now is queued, not fatal
        sup, child = ipc.channel()
        me = os.getpid()
        pid = self._fork()
        if pid == 0:
            sup.close()
            stages.intermediate(ctx, self.steps, child, me)
        child.close()
        self.sock = sup
        ctx.intermediate_pid = pid
        ipc.expect(sup, "unshared")
        for step in self.steps:
            step.from_parent(ctx, pid)
        ipc.send(sup, "go")
        ctx.init_pid = ipc.expect(sup, "init")["pid"]
        for sig in self._pending_signals:
            os.kill(ctx.init_pid, sig)          # init queues them until the payload exists
        self._pending_signals.clear()
        ipc.expect(sup, "exec_ok")
        ctx.layers.setdefault("namespaces", ["user", "mnt", "net", "ipc", "uts", "cgroup", "pid"])

    def _fork(self) -> int:
        """Fork the intermediate, straight into the run's v2 cgroup where there is one."""
        import threading
        into = self.ctx.extra.get("cgroup_clone_into")
        if into and threading.active_count() == 1:
            self.ctx.extra["cgroup_born_in"] = into
            try:
                return libc.fork_into_cgroup(into)
            except OSError:
                self.ctx.extra.pop("cgroup_born_in", None)   # the step joins it instead
        return os.fork()

    def terminate(self, status: str, reason: str) -> None:
        """A supervisor decision (timeout, cpu_limit, …): first reason wins, then kill."""
        self.result.fix(status, reason)
        self.kill()

    def kill(self) -> None:
        if self.ctx.init_pid and not self.killed:
            self.killed = True
            try:
                os.kill(self.ctx.init_pid, signal.SIGKILL)   # PID 1 gone: the pid ns is gone
            except ProcessLookupError:
                pass
        elif self.ctx.intermediate_pid and not self.ctx.init_pid and not self.killed:
            self.killed = True
            try:
                os.kill(self.ctx.intermediate_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self) -> None:
        ctx, policy = self.ctx, self.ctx.policy
        deadline = ctx.started_mono + policy.limits.wall_time
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            while True:
                now = time.monotonic()
                if now >= deadline and not self.killed:
                    self.terminate("timeout", f"wall-clock limit of {policy.limits.wall_time:g}s"
                                              " reached; the jail was killed")
                wait_s = max(0.0, min(deadline - now, POLL_S)) if not self.killed else 1.0
                if poller.poll(wait_s * 1000):
                    msg = ipc.recv(self.sock)
                    if msg is None:
                        break
                    if msg.get("t") == "exit":
                        self.exited = True
                        self.result.set_exit(msg["status"])
                        self.ctx.extra["exit_facts"] = msg.get("facts", {})
                    continue
                if not self.killed:
                    for step in self.steps:
                        step.poll(ctx)
        finally:
            self.restore_signals()
        if not self.exited:
            self.result.set_exit(signal.SIGKILL)   # killed by the jail: 128+9

    def reap(self) -> None:
        pid = self.ctx.intermediate_pid
        if pid:
            try:
                _, _, self.rusage = os.wait4(pid, 0)
            except ChildProcessError:
                pass
            self.ctx.intermediate_pid = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _forward_signals(self) -> None:
        def forward(sig: int, _frame: Any) -> None:
            if not self.ctx.init_pid:
                self._pending_signals.append(sig)
                return
            try:
                os.kill(self.ctx.init_pid, sig)
            except ProcessLookupError:
                pass
        for sig in stages.FORWARDED:
            try:
                self._old_handlers[sig] = signal.signal(sig, forward)
            except ValueError:      # not the main thread: leave signals alone
                break

    def restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()
