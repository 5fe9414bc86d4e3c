"""Learning mode's output: the calls one run used, as a policy fragment to review.

In learning mode (``hivejail exec --seccomp-learn FILE``) the filter sends
every call but the jail's own bootstrap to the listener, which lets it run
and counts it as a "used" Event; escape classes are still refused.  At the
end the Seccomp step writes FILE from ``learned_fragment``: ``profile:
strict`` (or ``default``, see there) plus the calls the run used beyond it,
each with a note saying where it would otherwise come from.
"""

from __future__ import annotations

from typing import Any

from .notify import Event
from .profiles import Profile, escape_classes, load_profile


def _needs(profile: Profile, name: str, variants: set[str]) -> bool:
    """Does a run that used ``name`` (with argument ``variants`` seen) need more than ``profile``?"""
    conds = profile.rules.get(name, False)
    if conds is False:
        return True
    return conds is not None and profile.name in variants


def learned_fragment(events: list[Event], command: list[str], result: Any = None) -> str:
    """A policy fragment a reviewer can read and commit: a profile + what else ran.

    The base is ``strict``; if the run needed an escape-class call that only
    ``default`` allows (say, a personality query), the base is ``default``,
    since no policy may list an escape class under ``allow``.
    """
    strict, default = load_profile("strict"), load_profile("default")
    used = {e.name: e.count for e in events if e.category == "used" and e.abi is None}
    variants = {e.name: e.beyond for e in events if e.category == "used" and e.abi is None}
    refused = sorted((e for e in events if e.category != "used"), key=lambda e: e.name)
    escapes = escape_classes()
    base = strict
    if any(n in escapes and _needs(strict, n, variants[n]) for n in used):
        base = default
    extra = sorted(n for n in used if _needs(base, n, variants[n]))
    lines = ["# hivejail --seccomp-learn: the system calls one run used.",
             f"# command: {' '.join(command)}"]
    if result is not None and getattr(result, "id", ""):
        lines.append(f"# run: {result.id} at {result.started_at}, status {result.status}")
    lines += [f"# {len(used)} distinct calls; {len(used) - len(extra)} are in the {base.name}"
              f" profile, {len(extra)} are added below.",
              "# Review each addition, then paste this block into security_policy.yml.",
              "seccomp:",
              f"  profile: {base.name}",
              "  on_violation: kill"]
    if extra:
        lines.append("  allow:")
        for n in extra:
            where = default.group_of(n)
            if n in base.rules:
                note = f"{base.name} allows it only as {' or '.join(map(str, base.rules[n] or []))}"
            elif where and default.rules.get(n, 0) is None:
                note = f"in default/{where}"
            else:
                note = "not in default"
            lines.append(f"    - {n:<24} # used {used[n]}x; {note}")
    else:
        lines.append("  allow: []")
    lines.append(f"# Every call used (count), by {base.name}-profile group:")
    by_group: dict[str, list[str]] = {}
    for n in sorted(used):
        by_group.setdefault(base.group_of(n) or f"(beyond {base.name})", []).append(f"{n} {used[n]}")
    for g, items in by_group.items():
        lines.append(f"#   {g}: {', '.join(items)}")
    if refused:
        lines.append("# Refused during learning (never allowed; not learnable):")
        for e in refused:
            lines.append(f"#   {e.name} x{e.count} ({e.category})")
    return "\n".join(lines) + "\n"
