"""The jail's resource limits on cgroup v2, in the guest: the host's very tests.

tests/test_limits.py holds the test bodies; they run on the host against
its cgroup v1 / hybrid driver, and here, imported as they are, against the
v2 driver (memory.max + oom.group, pids.max, cpu.max, io.max on the scratch
disk, cgroup.kill, delegation with the leaf move).  The fixtures they use
come from tests/conftest.py and tests/test_limits.py itself.
"""
from __future__ import annotations

from tests.conftest import make_policy  # noqa: F401  (a fixture the shared tests use)
from tests.test_limits import *  # noqa: F401,F403
