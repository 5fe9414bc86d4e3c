"""Setup cost of network.mode allowlist next to none (run as root).

    /opt/hivejail/venv/bin/python bench/bench_net.py [--runs N]

Warm: N runs of /bin/true in one process per mode (pyroute2 already
imported), wall time of the whole run and the time spent in the network
step's own hooks.  Cold: a fresh interpreter per run (includes importing
pyroute2 and loading libnftables), which is what `hivejail exec` pays.

No packet is sent anywhere: the payload is /bin/true.  The allowlist names
10.213.255.2:8080, routed through a veth the bench creates (hjbenchh,
10.213.255.1/29) and removes, so no real uplink's forwarding is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VETH, PEER = "hjbenchh", "hjbenchs"

POLICY = """\
version: 1
name: bench-net
filesystem:
  mounts: [{source: /usr, target: /usr}]
  symlinks: {/bin: usr/bin, /lib: usr/lib, /lib64: usr/lib64}
audit: {dir: null}
"""
ALLOW = """\
network:
  mode: allowlist
  allow: [{host: 10.213.255.2, ports: [8080]}, {cidr: 10.213.255.0/29, ports: [53], proto: udp}]
"""

ONE = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from jail import Jail
from jail.policy import parse_policy_text
r = Jail(parse_policy_text(sys.argv[2])).run(["/bin/true"])
print(json.dumps({"status": r.status, "total_s": time.perf_counter() - t0, "wall_s": r.wall_s}))
"""


def _sh(*args: str) -> None:
    subprocess.run(list(args), check=False, capture_output=True)


def _timed_step_class():
    """Wrap every hook of the network step to measure its own cost."""
    from jail import net, netallow
    spent: dict[str, float] = {}

    def wrap(cls):
        class Timed(cls):  # type: ignore[misc, valid-type]
            pass
        for hook in ("prepare", "from_parent", "in_init", "finish", "cleanup"):
            orig = getattr(cls, hook)

            def timed(self, *a, _orig=orig, _hook=hook):
                t = time.perf_counter()
                try:
                    return _orig(self, *a)
                finally:
                    if _hook != "in_init":       # in_init runs in the child
                        spent[_hook] = spent.get(_hook, 0.0) + time.perf_counter() - t
            setattr(Timed, hook, timed)
        return Timed
    return wrap(net.NoNetwork), wrap(netallow.AllowlistNetwork), spent


def warm(runs: int) -> dict:
    from jail import supervisor
    from jail.policy import parse_policy_text
    import jail.net as net
    Timed_none, Timed_allow, spent = _timed_step_class()
    out = {}
    for mode, text in (("none", POLICY), ("allowlist", POLICY + ALLOW)):
        policy = parse_policy_text(text)
        orig = net.network_step
        net.network_step = lambda p: Timed_allow() if p.network.mode == "allowlist" else Timed_none()
        try:
            supervisor.Jail(policy).run(["/bin/true"])            # warm up imports
            spent.clear()
            walls = []
            for _ in range(runs):
                t = time.perf_counter()
                r = supervisor.Jail(policy).run(["/bin/true"])
                walls.append(time.perf_counter() - t)
                assert r.status == "ok", r.reason
        finally:
            net.network_step = orig
        out[mode] = {"median_ms": round(statistics.median(walls) * 1000, 2),
                     "mean_ms": round(statistics.mean(walls) * 1000, 2),
                     "network_step_ms": {k: round(v / runs * 1000, 2) for k, v in spent.items()}}
    return out


def cold(runs: int) -> dict:
    out = {}
    for mode, text in (("none", POLICY), ("allowlist", POLICY + ALLOW)):
        totals = []
        for _ in range(runs):
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", ONE, str(ROOT), text], capture_output=True,
                               text=True, check=True)
            totals.append(time.perf_counter() - t)
            assert json.loads(p.stdout)["status"] == "ok", p.stdout + p.stderr
        out[mode] = {"median_ms": round(statistics.median(totals) * 1000, 1),
                     "mean_ms": round(statistics.mean(totals) * 1000, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cold-runs", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_net: run as root")
    _sh("ip", "link", "del", VETH)
    _sh("ip", "link", "add", VETH, "type", "veth", "peer", "name", PEER)
    _sh("ip", "addr", "add", "10.213.255.1/29", "dev", VETH)
    _sh("ip", "link", "set", VETH, "up")
    try:
        report = {"warm (in-process, per run)": warm(args.runs),
                  "cold (fresh interpreter, per run)": cold(args.cold_runs)}
    finally:
        _sh("ip", "link", "del", VETH)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
