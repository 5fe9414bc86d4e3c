"""The listener: a thread of the supervisor that answers the filter's notifications.

Every call the filter refuses (or, learning, every call) arrives here as a
user notification (arch, nr, args, pid).  The listener names it through
libseccomp, asks the Plan what to do, counts it into an Event, and answers:
an errno, CONTINUE (the call runs), or SIGKILL for the caller (kill mode,
which then ends the run).  Only the supervisor ever holds the listener fd;
the payload could otherwise answer its own calls.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import select
import signal
import socket
import threading
from typing import Any

from .libseccomp import _lib, _libc, describe_call, resolve_name
from .plan import Plan
from .profiles import load_profile

# Kernel ABI (linux/seccomp.h, linux/pidfd.h).
SECCOMP_GET_NOTIF_SIZES = 3
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
PIDFD_THREAD = os.O_EXCL


class _Data(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_int), ("arch", ctypes.c_uint32),
                ("instruction_pointer", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6)]


class _Notif(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("data", _Data)]


class _Resp(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("val", ctypes.c_int64), ("error", ctypes.c_int32),
                ("flags", ctypes.c_uint32)]


class _NotifSizes(ctypes.Structure):
    _fields_ = [("notif", ctypes.c_uint16), ("resp", ctypes.c_uint16), ("data", ctypes.c_uint16)]


def pid_in_jail(host_tid: int) -> int | None:
    """The innermost pid of a host thread id (NSpid's last field)."""
    try:
        with open(f"/proc/{host_tid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return None


def _comm(host_tid: int) -> str | None:
    try:
        with open(f"/proc/{host_tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


class Event:
    """One kind of refused (or, learning, used) call: counted, with its first occurrence."""

    def __init__(self, category: str, name: str, nr: int, abi: str | None, action: str,
                 errno: int, count: int = 0, first_args: list[int] | None = None,
                 first_pid: int | None = None, comm: str | None = None) -> None:
        self.category, self.name, self.nr, self.abi = category, name, nr, abi
        self.action, self.errno, self.count = action, errno, count
        self.first_args = first_args or []
        self.first_pid, self.comm = first_pid, comm
        self.beyond: set[str] = set()     # learning: profiles whose argument conditions it broke


class Listener(threading.Thread):
    """Receives the payload's listener fd, then answers every notification.

    Answering costs the supervisor's CPU, outside the run's cgroup; a payload
    that floods refused calls in errno/log mode could burn it.  After
    MAX_ANSWERS the listener lets go of the fd: from then on the kernel
    answers every refused call ENOSYS by itself (still refused, no longer
    counted), and an alert says so.  Learning mode has no such cap.
    """
    MAX_ANSWERS = 200_000

    def __init__(self, plan: Plan, sock: socket.socket) -> None:
        super().__init__(name="hivejail-seccomp", daemon=True)
        self.plan = plan
        self.sock = sock
        self.stop_r, self.stop_w = os.pipe2(os.O_CLOEXEC)
        self.lock = threading.Lock()
        self.events: dict[tuple[str, str], Event] = {}
        self.violation: Event | None = None
        self.failure: str | None = None
        self.got_fd = threading.Event()
        self.kills = 0
        self.done = False
        self.answered = 0
        self.saturated = False
        self.learn_bases = ([load_profile("strict"), load_profile("default")]
                            if plan.mode == "learn" else [])

    # public, from the main thread
    def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the listener to drain (it ends at POLLHUP), then stop it."""
        if self.stop_w < 0:
            return
        if self.ident is not None:
            self.join(timeout)
            if self.is_alive():
                os.write(self.stop_w, b"x")
                self.join(2.0)
        with self.lock:                # exactly one of stop() and run() closes stop_r
            os.close(self.stop_w)
            self.stop_w = -1
            if self.done or self.ident is None:
                os.close(self.stop_r)

    def snapshot(self) -> tuple[list[Event], Event | None, str | None]:
        with self.lock:
            copies = []
            for e in self.events.values():
                c = Event(e.category, e.name, e.nr, e.abi, e.action, e.errno, e.count,
                          list(e.first_args), e.first_pid, e.comm)
                c.beyond = set(e.beyond)
                copies.append(c)
            return copies, self.violation, self.failure

    # the thread
    def run(self) -> None:
        lfd = -1
        try:
            lfd = self._receive_fd()
            if lfd < 0:
                return
            self.got_fd.set()
            self._serve(lfd)
        except Exception as e:  # noqa: BLE001 - recorded; the run is then ended (fail closed)
            with self.lock:
                self.failure = f"{type(e).__name__}: {e}"
        finally:
            if lfd >= 0:
                os.close(lfd)      # refused calls now fail with ENOSYS (no listener)
            try:
                self.sock.close()
            except OSError:
                pass
            with self.lock:
                self.done = True
                if self.stop_w < 0:
                    os.close(self.stop_r)

    def _receive_fd(self) -> int:
        p = select.poll()
        p.register(self.sock, select.POLLIN)
        p.register(self.stop_r, select.POLLIN)
        while True:
            for fd, _ev in p.poll():
                if fd == self.stop_r:
                    return -1
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 64, 1)
                if not data:
                    return -1      # every holder of the other end is gone: no filter was loaded
                if fds:
                    for extra in fds[1:]:
                        os.close(extra)
                    return fds[0]

    def _serve(self, lfd: int) -> None:
        lib = _lib()
        sizes = _NotifSizes()
        _libc.syscall(ctypes.c_long(resolve_name("seccomp")), ctypes.c_uint(SECCOMP_GET_NOTIF_SIZES),
                      ctypes.c_uint(0), ctypes.byref(sizes))
        nsize = max(sizes.notif, ctypes.sizeof(_Notif))
        rsize = max(sizes.resp, ctypes.sizeof(_Resp))
        req_buf = ctypes.create_string_buffer(nsize)
        resp_buf = ctypes.create_string_buffer(rsize)
        req = _Notif.from_buffer(req_buf)
        resp = _Resp.from_buffer(resp_buf)
        p = select.poll()
        p.register(lfd, select.POLLIN)
        p.register(self.stop_r, select.POLLIN)
        while True:
            events = dict(p.poll())
            if self.stop_r in events:
                return
            ev = events.get(lfd, 0)
            if ev & select.POLLIN:
                ctypes.memset(req_buf, 0, nsize)          # the kernel wants a zeroed buffer
                if lib.seccomp_notify_receive(lfd, ctypes.addressof(req_buf)) != 0:
                    continue                               # the caller died meanwhile
                self._handle(lib, lfd, req, resp, resp_buf, rsize)
                self.answered += 1
                if self.answered >= self.MAX_ANSWERS and self.plan.mode != "learn":
                    self.saturated = True
                    return
            elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return                                     # every filtered task is gone

    def _handle(self, lib: Any, lfd: int, req: _Notif, resp: _Resp, resp_buf: Any, rsize: int) -> None:
        nr, arch = req.data.nr, req.data.arch
        args = [int(a) for a in req.data.args]
        name, abi = describe_call(arch, nr)
        category, action, err = self.plan.decide(name, abi, args)
        tid = int(req.pid)
        with self.lock:
            key = (category, name)
            ev = self.events.get(key)
            if ev is None:
                ev = self.events[key] = Event(category, name, nr, abi, action, err,
                                              first_args=args, first_pid=pid_in_jail(tid),
                                              comm=_comm(tid))
            ev.count += 1
            if category == "used":
                for prof in self.learn_bases:
                    conds = prof.rules.get(name)
                    if conds and not any(c.holds(args) for c in conds):
                        ev.beyond.add(prof.name)
            if action == "kill" and self.violation is None:
                self.violation = ev
        ctypes.memset(resp_buf, 0, rsize)
        resp.id = req.id
        if action == "kill":
            self._kill(lib, lfd, tid, req.id)
            resp.error = -_errno.EPERM                     # if it still waits: refused anyway
        elif action == "continue":
            resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE
        else:
            resp.error = -err
        lib.seccomp_notify_respond(lfd, ctypes.addressof(resp_buf))   # ENOENT if it died: fine

    def _kill(self, lib: Any, lfd: int, tid: int, notif_id: int) -> None:
        """SIGKILL the caller, checking through the notification id that tid is still it."""
        try:
            pidfd = os.pidfd_open(tid, PIDFD_THREAD)
        except OSError:
            try:
                pidfd = os.pidfd_open(tid)
            except OSError:
                pidfd = -1
        try:
            if lib.seccomp_notify_id_valid(lfd, notif_id) != 0:
                return                                     # already gone
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            else:
                os.kill(tid, signal.SIGKILL)
            self.kills += 1
        except OSError:
            pass
        finally:
            if pidfd >= 0:
                os.close(pidfd)
