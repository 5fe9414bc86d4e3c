"""Typed messages between the supervisor and the jail's child stages.

Stages talk over a close-on-exec SOCK_SEQPACKET socketpair: one datagram is
one JSON message, so framing cannot go wrong.  Every message has a type
``t``; a stage that receives a type it did not expect raises
``UnexpectedMessage`` naming both, in the spirit of youki's typed channel.
A child stage that fails sends an ``error`` message (stage, op, path, errno,
message) and exits; the supervisor turns it into one clear line.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 65536


@dataclass
class SetupError(Exception):
    """A setup step failed; ``stage`` is where (supervisor, intermediate, init, payload)."""
    stage: str
    op: str
    message: str
    path: str | None = None
    errno: int | None = None
    fix: str | None = None

    def __str__(self) -> str:
        where = f" {self.path}" if self.path else ""
        text = f"{self.stage}: {self.op}{where}: {self.message}"
        return f"{text} ({self.fix})" if self.fix else text

    def to_message(self) -> dict[str, Any]:
        return {"t": "error", "stage": self.stage, "op": self.op, "path": self.path,
                "errno": self.errno, "message": self.message, "fix": self.fix}

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> "SetupError":
        return cls(stage=msg.get("stage", "?"), op=msg.get("op", "?"),
                   message=msg.get("message", "?"), path=msg.get("path"),
                   errno=msg.get("errno"), fix=msg.get("fix"))

    @classmethod
    def from_oserror(cls, stage: str, op: str, e: OSError, path: str | None = None,
                     fix: str | None = None) -> "SetupError":
        return cls(stage=stage, op=op, message=str(e.strerror or e), path=path,
                   errno=e.errno, fix=fix)


class UnexpectedMessage(Exception):
    def __init__(self, expected: str, got: dict[str, Any] | None) -> None:
        got_t = "end of stream" if got is None else got.get("t")
        super().__init__(f"expected message {expected!r}, got {got_t!r}")
        self.got = got


def channel() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return a, b


def send(sock: socket.socket, t: str, **fields: Any) -> None:
    fields["t"] = t
    sock.send(json.dumps(fields).encode())


def send_error(sock: socket.socket, err: SetupError) -> None:
    try:
        sock.send(json.dumps(err.to_message()).encode())
    except OSError:
        pass


def recv(sock: socket.socket) -> dict[str, Any] | None:
    """Next message, or None at end of stream (the peer exited or exec'd)."""
    data = sock.recv(MAX_MESSAGE)
    if not data:
        return None
    return json.loads(data)


def expect(sock: socket.socket, t: str) -> dict[str, Any]:
    """Receive one message of type ``t``; errors from the peer are raised as SetupError."""
    msg = recv(sock)
    if msg is not None and msg.get("t") == "error":
        raise SetupError.from_message(msg)
    if msg is None or msg.get("t") != t:
        raise UnexpectedMessage(t, msg)
    return msg


def fd_send(sock: socket.socket, t: str, fds: list[int], **fields: Any) -> None:
    fields["t"] = t
    socket.send_fds(sock, [json.dumps(fields).encode()], fds)


def fd_recv(sock: socket.socket, maxfds: int = 4) -> tuple[dict[str, Any] | None, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, maxfds)
    for fd in fds:
        os.set_inheritable(fd, False)
    return (json.loads(data) if data else None), fds
