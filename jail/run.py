"""One audited run: audit preflight, the jail, the signed record, the exit code.

Fail closed: with ``audit.required: true`` a log that cannot take a record
refuses the run before anything starts; a record that could not be made
durable after the run makes ``exec`` exit non-zero with UNAUDITED, whatever
the payload returned.  With ``required: false`` the same problems become an
``unaudited`` alert in the result.
"""

from __future__ import annotations

from typing import Any, Sequence

from .policy import Policy
from .result import EXIT_SETUP, Result


def run_audited(policy: Policy, argv: Sequence[str], cwd: str | None = None,
                options: dict[str, Any] | None = None) -> tuple[Result, int]:
    from .supervisor import Jail
    audit = policy.audit
    log = None
    problem = None
    if audit.dir is not None:
        from .audit import AuditError, AuditLog
        try:
            log = AuditLog.open(audit.dir)
            log.preflight(min_free_bytes=audit.min_free, lock_timeout_s=audit.lock_timeout)
        except AuditError as e:
            log, problem = None, str(e)
            if audit.required:
                result = Result(command=list(argv), policy_sha256=policy.sha256,
                                reason=f"UNAUDITED, refused to start: {e}", exit_code=EXIT_SETUP)
                return result, EXIT_SETUP
    result = Jail(policy, options=options).run(argv, cwd=cwd)
    exit_code = result.cli_exit_code
    if audit.dir is None:
        result.alerts.append({"kind": "unaudited", "severity": "info",
                              "detail": "audit disabled by policy (audit.dir: null)"})
        return result, exit_code
    if log is not None:
        from .audit import AuditError
        try:
            seq = log.append(result.to_dict())
            result.audit = {"dir": audit.dir, "seq": seq}
            return result, exit_code
        except AuditError as e:
            problem = str(e)
    result.alerts.append({"kind": "unaudited", "severity": "error" if audit.required else "warning",
                          "detail": f"UNAUDITED: {problem}"})
    if audit.required:
        return result, EXIT_SETUP if exit_code == 0 else exit_code
    return result, exit_code
