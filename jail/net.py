"""Network namespace: every jail gets its own; mode none brings up only lo.

The allowlist mode (veth, addresses, nftables egress filter) lives in
jail/netallow.py and is imported only when a policy asks for it.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from .ipc import SetupError
from .policy import Policy
from .steps import RunContext, Step

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up() -> None:
    """ip link set lo up, with one ioctl (no netlink library needed for this)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


class NoNetwork(Step):
    """A fresh network namespace with only the loopback interface up."""
    name = "network"

    def prepare(self, ctx: RunContext) -> None:
        ctx.layers["network"] = "none"

    def in_init(self, ctx: RunContext) -> None:
        try:
            loopback_up()
        except OSError as e:
            raise SetupError.from_oserror("init", "bring up lo", e) from None


def network_step(policy: Policy) -> Step:
    if policy.network.mode == "allowlist":
        from .netallow import AllowlistNetwork
        return AllowlistNetwork()
    return NoNetwork()
