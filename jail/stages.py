"""The jail's child stages: intermediate -> init (PID 1) -> payload.

    supervisor ──fork──▶ intermediate: join cgroups, unshare(USER|NS|NET|IPC|UTS|CGROUP|PID),
                         send "unshared", wait for "go" (id maps, veth, nft written)
                           └─fork──▶ init (PID 1): build root, pivot, hostname,
                                     fork payload, forward signals, reap, report exit
                                       └─fork──▶ payload: privileges, landlock, seccomp, execve

Each stage runs the steps' hooks for its place and reports a failure as one
structured ``error`` message; it never returns into the caller's code (it
ends with os._exit).  PR_SET_PDEATHSIG chains the stages, so if the
supervisor dies the intermediate dies, then init, and with PID 1 the whole
pid namespace.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback
from typing import NoReturn, Sequence

from . import ipc, libc, mounts
from .ipc import SetupError
from .steps import RunContext, Step

NAMESPACES = (libc.CLONE_NEWUSER | libc.CLONE_NEWNS | libc.CLONE_NEWNET | libc.CLONE_NEWIPC
              | libc.CLONE_NEWUTS | libc.CLONE_NEWCGROUP | libc.CLONE_NEWPID)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
HOSTNAME = "hivejail"


def _die_with_parent(parent: int | None, sock: socket.socket | None = None) -> None:
    """SIGKILL this stage when its parent dies; exit now if that already happened.

    PID 1 of a new pid namespace sees getppid() == 0, so init checks instead
    that the supervisor's end of the control channel is still open.
    """
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    if sock is not None:
        import select
        p = select.poll()
        p.register(sock, select.POLLHUP)
        if p.poll(0):
            os._exit(1)


def _report(sock: socket.socket, stage: str, exc: BaseException) -> NoReturn:
    if isinstance(exc, SetupError):
        err = exc
    elif isinstance(exc, OSError):
        err = SetupError.from_oserror(stage, "setup", exc)
    else:
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        err = SetupError(stage, "internal error", tb)
    ipc.send_error(sock, err)
    os._exit(1)


def intermediate(ctx: RunContext, steps: Sequence[Step], sock: socket.socket,
                 supervisor: int) -> NoReturn:
    try:
        # Blocked, not ignored: init inherits the mask, so a signal the supervisor
        # forwards before init is ready stays pending instead of being discarded.
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        # Our own process group: a terminal's ^C reaches only the supervisor,
        # which forwards it once (the payload gets its own session later).
        os.setpgid(0, 0)
        _die_with_parent(supervisor)
        for step in steps:
            step.in_intermediate(ctx)
        try:
            libc.unshare(NAMESPACES)
        except OSError as e:
            raise SetupError.from_oserror("intermediate", "unshare namespaces", e,
                                          fix="see `hivejail doctor` for what this host allows")
        ipc.send(sock, "unshared")
        ipc.expect(sock, "go")
        pid = os.fork()
        if pid == 0:
            init(ctx, steps, sock)
        ipc.send(sock, "init", pid=pid)
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except ChildProcessError:
                break
        os._exit(0)
    except BaseException as e:  # noqa: BLE001 - every failure goes back over the pipe
        _report(sock, "intermediate", e)


def init(ctx: RunContext, steps: Sequence[Step], sock: socket.socket) -> NoReturn:
    try:
        forward = _Forwarder()          # queues TERM/INT/HUP until the payload exists
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        _die_with_parent(None, sock)
        for step in steps:
            step.in_init(ctx)
        mounts.pivot()
        for step in steps:
            step.after_pivot(ctx)
        libc.sethostname(HOSTNAME)
        err_recv, err_send = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        me = os.getpid()
        # Blocked across the fork: a signal init forwards to the new pid stays
        # pending until the payload has reset its handlers to the defaults.
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        pid = os.fork()
        if pid == 0:
            err_recv.close()
            payload(ctx, steps, err_send, me)
        forward.target(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        err_send.close()
        msg = ipc.recv(err_recv)      # end of stream: execve succeeded
        err_recv.close()
        if msg is not None:
            ipc.send(sock, "error", **{k: v for k, v in msg.items() if k != "t"})
            os.waitpid(pid, 0)
            os._exit(1)
        ipc.send(sock, "exec_ok", pid=pid)
    except BaseException as e:  # noqa: BLE001
        _report(sock, "init", e)
    _reap(ctx, steps, sock, pid)


class _Forwarder:
    """Forward SIGTERM/INT/HUP to one process; queue them until it exists."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        for sig in FORWARDED:
            signal.signal(sig, self._handle)

    def _handle(self, sig: int, _frame: object) -> None:
        if self.pid is None:
            self.pending.append(sig)
        else:
            _kill(self.pid, sig)

    def target(self, pid: int) -> None:
        self.pid = pid
        for sig in self.pending:
            _kill(pid, sig)
        self.pending.clear()


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(ctx: RunContext, steps: Sequence[Step], sock: socket.socket, payload_pid: int) -> NoReturn:
    """PID 1's loop: reap every orphan; when the payload ends, report and exit.

    Exiting as PID 1 makes the kernel SIGKILL whatever else is left in the
    pid namespace, so stray background processes never outlive the run.
    """
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            os._exit(0)
        if info is None:
            continue
        if info.si_pid != payload_pid:
            try:
                os.waitpid(info.si_pid, 0)
            except ChildProcessError:
                pass
            continue
        facts = {}
        for step in steps:
            try:
                fact = step.inspect_exit(ctx, payload_pid, info.si_status)
            except Exception as e:  # noqa: BLE001 - a report must not stop the reaping
                fact = {"error": str(e)}
            if fact:
                facts[step.name] = fact
        _, status = os.waitpid(payload_pid, 0)
        try:
            ipc.send(sock, "exit", status=status, facts=facts)
        except OSError:
            pass
        os._exit(0)


def payload(ctx: RunContext, steps: Sequence[Step], err: socket.socket, parent: int) -> NoReturn:
    try:
        _die_with_parent(parent)
        for sig in FORWARDED + (signal.SIGPIPE,):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for step in steps:
            step.in_payload(ctx)
        path = ctx.extra["exec_path"]
        try:
            os.execve(path, ctx.command, ctx.extra["env"])
        except OSError as e:
            raise SetupError.from_oserror("payload", "execve", e, path=path) from None
    except BaseException as e:  # noqa: BLE001
        try:
            _report(err, "payload", e)
        finally:
            os._exit(127)
    sys.exit(127)  # not reached
