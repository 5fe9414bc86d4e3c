"""Smoke run of the core hostile-script and contract tests on the guest kernel.

The same test functions as the host suite (tests/test_hostile.py,
tests/test_core.py), root and rootless, so the jail is proven on Debian 12's
6.1 kernel as well as on the host's.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from test_core import (root, test_exit_codes_follow_the_contract,  # noqa: E402,F401
                       test_result_record_has_every_field, test_setup_error_names_the_step_and_path,
                       test_wall_timeout_kills_the_whole_jail)
from test_hostile import *  # noqa: E402,F401,F403  (tests and their fixtures)
