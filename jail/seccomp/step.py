"""The Seccomp Step: the payload's filter, loaded last before execve, and its report.

The supervisor does the work (Plan, BPF, socketpair, listener thread), so
the payload only installs inherited bytes -- one seccomp(2) call -- and
hands the listener fd over.  The step then
turns what the listener saw into the result: a kill ends the run as
seccomp_violation, errno/log modes become counted alerts, learning mode
writes its fragment.  The phase-by-phase flow is in the package docstring.
"""

from __future__ import annotations

import errno as _errno
import os
import signal
import socket
import sys
from typing import Any

from ..ipc import SetupError
from ..steps import RunContext, Step
from .build import HANDOFF_FLAGS, LoadedProgram, compile_bpf, filter_spec
from .libseccomp import resolve_number
from .notify import Event, Listener
from .plan import Plan, make_plan


def _format_args(args: list[int]) -> str:
    return ", ".join(hex(a) if a > 9 else str(a) for a in args)


class Seccomp(Step):
    """Loads the payload's filter last, and reports what it stopped."""
    name = "seccomp"

    def __init__(self) -> None:
        self.plan: Plan | None = None
        self.program: LoadedProgram | None = None
        self.listener: Listener | None = None
        self._sup: socket.socket | None = None
        self._child: socket.socket | None = None
        self.learn_path: str | None = None
        self._terminated = False

    # supervisor
    def prepare(self, ctx: RunContext) -> None:
        self.learn_path = ctx.extra.get("seccomp_learn") or None
        sc = ctx.policy.seccomp
        try:
            self.plan = make_plan(sc, learn=bool(self.learn_path))
        except ValueError as e:
            raise SetupError("supervisor", "seccomp policy", str(e),
                             fix="remove the entry, or see jail/profiles/escape.txt") from None
        except OSError as e:
            raise SetupError("supervisor", "seccomp", f"libseccomp is not usable: {e}",
                             fix="install libseccomp2 (>= 2.5)") from None
        if self.learn_path and not self.plan.notify:
            raise SetupError("supervisor", "seccomp learn", "this host has no seccomp user "
                             "notification (kernel >= 5.5 and libseccomp >= 2.5 needed)")
        if self.plan.notify:
            self._sup, self._child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            bpf = compile_bpf(filter_spec(self.plan))
        except OSError as e:
            raise SetupError("supervisor", "build seccomp filter", str(e)) from None
        self.program = LoadedProgram(bpf)
        mode = sc.on_violation
        if mode == "log" and not self.plan.notify:
            mode = "errno"              # see filter_spec: RET_LOG would run refused variants
        ctx.layers["seccomp"] = f"{sc.profile}/{mode}" if not self.learn_path else "learn"
        if not self.plan.notify:
            ctx.alert("seccomp_reporting_degraded", "warning",
                      detail="no seccomp user notification on this host: the kernel refuses "
                             "alone, nothing is counted, log mode acts as errno")

    def in_intermediate(self, ctx: RunContext) -> None:
        if self._sup is not None:
            self._sup.close()          # only the supervisor reads this end

    def from_parent(self, ctx: RunContext, pid: int) -> None:
        if self._child is not None:
            self._child.close()        # children keep theirs; EOF once they are gone
            self._child = None
        if self._sup is not None and self.plan is not None:
            self.listener = Listener(self.plan, self._sup)
            self._sup = None           # the listener owns and closes it
            self.listener.start()

    # payload, the last thing before execve
    def in_payload(self, ctx: RunContext) -> None:
        assert self.program is not None and self.plan is not None
        try:
            lfd = self.program.load(listener=self.plan.notify)
        except OSError as e:
            raise SetupError.from_oserror("payload", "load seccomp filter", e) from None
        if not self.plan.notify:
            return
        # From here on only allowed calls may run until the fd is handed over:
        # anything else would wait for a listener that is this very process.
        try:
            assert self._child is not None
            # (socket.send_fds would drop the flags: CPython passes none.)
            self._child.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          lfd.to_bytes(4, sys.byteorder))], HANDOFF_FLAGS)
        finally:
            os.close(lfd)              # never into the payload: it could answer its own calls

    # supervisor, while running
    def poll(self, ctx: RunContext) -> None:
        lst = self.listener
        if lst is None or self._terminated:
            return
        _events, violation, failure = lst.snapshot()
        if violation is not None:
            self._terminated = True
            ctx.terminate("seccomp_violation", self._violation_reason(violation))
        elif failure is not None:
            self._terminated = True
            ctx.terminate("seccomp_violation", f"the seccomp listener failed ({failure}); "
                                               "the jail was killed (fail closed)")

    def inspect_exit(self, ctx: RunContext, pid: int, status: int) -> dict[str, Any] | None:
        """PID 1, before reaping: name the call of a payload killed by SIGSYS (no-notify hosts)."""
        if self.plan is None or self.plan.notify:
            return None
        try:
            with open(f"/proc/{pid}/stat") as f:
                exit_code = int(f.read().rsplit(")", 1)[1].split()[49])
        except (OSError, ValueError, IndexError):
            return None
        if not (os.WIFSIGNALED(exit_code) and os.WTERMSIG(exit_code) == signal.SIGSYS):
            return None
        fact: dict[str, Any] = {"sigsys": True}
        try:
            with open(f"/proc/{pid}/syscall") as f:
                fields = f.read().split()
        except OSError:
            return fact
        if len(fields) >= 7 and fields[0].lstrip("-").isdigit() and int(fields[0]) >= 0:
            fact.update(nr=int(fields[0]), args=[int(x, 16) for x in fields[1:7]])
        return fact

    def finish(self, ctx: RunContext, result: Any) -> None:
        if self.plan is None:
            return
        events: list[Event] = []
        violation = failure = None
        lst = self.listener
        if lst is not None:
            lst.stop(timeout=1.0 if lst.got_fd.is_set() else 0.1)
            events, violation, failure = lst.snapshot()
        if violation is not None:
            result.seccomp = {"syscall": violation.name, "nr": violation.nr,
                              "args": violation.first_args}
            result.fix("seccomp_violation", self._violation_reason(violation))
        elif failure is not None:
            result.fix("seccomp_violation", f"the seccomp listener failed ({failure})")
        else:
            fact = (ctx.extra.get("exit_facts") or {}).get(self.name)
            if fact and fact.get("sigsys"):
                nr = fact.get("nr", -1)
                if nr >= 0:
                    name = resolve_number(nr) or f"unknown_{nr}"
                    result.seccomp = {"syscall": name, "nr": nr, "args": fact["args"]}
                    what = f"called {name} (nr {nr}), which the {self.plan.profile.name} profile" \
                           " does not allow"
                else:
                    what = ("made a call the filter refuses (this kernel keeps no registers of a"
                            " dead task: the kernel audit log names it, type=1326)")
                result.explain("seccomp_violation",
                               f"seccomp: the payload {what}; the kernel killed it (SIGSYS)")
        for ev in sorted(events, key=lambda e: (e is not violation, -e.count, e.name)):
            if ev.category == "used":
                continue
            if ev.action == "kill":
                ctx.alert("seccomp_violation", "critical", syscall=ev.name, nr=ev.nr,
                          args=ev.first_args, count=ev.count, pid=ev.first_pid, comm=ev.comm,
                          category=ev.category)
                continue
            kind = "seccomp_logged" if ev.action == "continue" else "seccomp_denied"
            ctx.alert(kind, "info" if kind == "seccomp_logged" else "warning",
                      syscall=ev.name, nr=ev.nr, count=ev.count, category=ev.category,
                      action="allowed (log)" if ev.action == "continue"
                      else _errno.errorcode.get(ev.errno, str(ev.errno)),
                      comm=ev.comm)
        if lst is not None and lst.saturated:
            ctx.alert("seccomp_listener_saturated", "warning", answered=lst.answered,
                      detail="the payload made so many refused calls that hivejail stopped "
                             "counting them; the kernel refused the rest with ENOSYS")
        if self.learn_path:
            self._write_learned(ctx, result, events)

    def cleanup(self, ctx: RunContext) -> None:
        if self.listener is not None:
            self.listener.stop(timeout=0)
        for s in (self._sup, self._child):
            if s is not None:
                s.close()
        self._sup = self._child = None

    # helpers
    def _violation_reason(self, ev: Event) -> str:
        assert self.plan is not None
        who = f"{ev.comm} (pid {ev.first_pid})" if ev.comm and ev.first_pid else "the payload"
        what = {"abi": f"from the {ev.abi} ABI, which the jail never allows",
                "escape": f"an escape class ({self.plan.escapes.get(ev.name)}) the jail never"
                          " allows",
                "variant": f"with arguments the {self.plan.profile.name} profile does not allow",
                "policy": "which the policy denies",
                "unlisted": f"which the {self.plan.profile.name} profile does not allow"
                }.get(ev.category, "which is not allowed")
        return (f"seccomp: {who} called {ev.name} (nr {ev.nr}, args "
                f"{_format_args(ev.first_args)}), {what}; it was killed and the run ended")

    def _write_learned(self, ctx: RunContext, result: Any, events: list[Event]) -> None:
        assert self.learn_path is not None
        from .learn import learned_fragment        # learning mode only
        text = learned_fragment(events, ctx.command, result)
        path = os.path.abspath(self.learn_path)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError as e:
            ctx.alert("seccomp_learn_failed", "warning", path=path, detail=str(e))
            return
        used = sum(1 for e in events if e.category == "used")
        ctx.alert("seccomp_learned", "info", path=path, syscalls=used)
        ctx.layers["seccomp_learn"] = path

