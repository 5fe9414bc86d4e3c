"""hivejail's tamper-evident audit log: a small transparency log.

Records are RFC 8785 canonical JSON lines; an RFC 9162 Merkle tree covers the
exact bytes of every line; after each durable append the writer signs a C2SP
tlog-checkpoint (signed-note, Ed25519).  `hivejail audit verify` checks the
log against an operator-held verifier key, `prove`/`verify-proof` give an
offline inclusion proof for one run, and `witness` keeps the last checkpoint
elsewhere so that truncation and rewrites with a stolen key are caught.

This module stays cheap to import: `hivejail exec` with audit off must not pay
for cryptography.  The writer and everything else load on first use:

    from jail.audit import AuditLog, AuditError
    log = AuditLog.open("/var/lib/hivejail/audit")
    log.preflight(min_free_bytes=64 << 20, lock_timeout_s=5)   # before the run
    seq = log.append(result_record)                             # after it
"""

from __future__ import annotations

from typing import Any


class AuditError(Exception):
    """The audit log cannot take (or did not durably take) a record.

    str(error) is one line for the operator: what failed and how to fix it.
    """


_LAZY = {"AuditLog": "log", "init_log": "log", "status": "log", "verify_log": "verify"}

__all__ = ["AuditError", *_LAZY]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
