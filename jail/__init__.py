"""hivejail: run governance scripts in a Linux namespace jail.

    from jail import Jail, load_policy
    result = Jail(load_policy("security_policy.yml")).run(["python3", "/job/tally.py"])
    print(result.status, result.exit_code)

Imports are lazy so that `hivejail exec` pays only for what a run uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Jail", "Policy", "PolicyError", "Result", "default_policy", "load_policy"]

if TYPE_CHECKING:
    from .policy import Policy, PolicyError, default_policy, load_policy
    from .result import Result
    from .supervisor import Jail


def __getattr__(name: str) -> Any:
    if name == "Jail":
        from .supervisor import Jail
        return Jail
    if name == "Result":
        from .result import Result
        return Result
    if name in ("Policy", "PolicyError", "default_policy", "load_policy"):
        from . import policy
        return getattr(policy, name)
    raise AttributeError(name)
